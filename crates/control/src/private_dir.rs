//! Private state on disk: the directories holding LANrage's databases, keys and tokens are
//! mode 0700 and the files in them 0600, owned by the user the server runs as.
//!
//! A database holds invite codes and party secrets, so a world-readable one lets any local
//! user join (or spy on) a party behind the local API's back. The process also sets its
//! umask to 077 at start (`lanrage` does, in `main`), so files SQLite creates later (`-wal`,
//! `-shm`) are born private; this module repairs what already exists.

use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context as _, bail};

/// Creates `dir` (mode 0700) or repairs it: refuses a directory owned by another user,
/// narrows a looser mode to 0700, and narrows every file directly inside it to 0600.
///
/// The one exception is a shared sticky directory such as `/tmp` (a database path an
/// operator chose there): only the files named `only` are narrowed then, and the directory
/// is left as it is.
pub fn secure(dir: &Path, only: Option<&str>) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
    }
    let meta = fs::metadata(dir)
        .with_context(|| format!("reading the state directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("the state directory {} is not a directory", dir.display());
    }
    // S_ISVTX: a directory many users share by design.
    let shared = meta.mode() & 0o1000 != 0;
    if !shared {
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            bail!(
                "the state directory {} belongs to user id {}, not to this user ({me}): \
                 another user could read or replace its secrets; use a directory of your own \
                 (--state-dir) or fix its owner",
                dir.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {} to mode 0700", dir.display()))?;
            tracing::info!(dir = %dir.display(), "state directory narrowed to mode 0700");
        }
    }
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if let Some(prefix) = only
            && !entry.file_name().to_string_lossy().starts_with(prefix)
        {
            continue;
        }
        // Not followed: a symlink is not ours to change.
        let meta = entry.path().symlink_metadata()?;
        if meta.is_file() && meta.mode() & 0o077 != 0 {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {} to mode 0600", entry.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").mode() & 0o7777
    }

    #[test]
    fn creates_private_and_repairs_loose_modes() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b");
        secure(&dir, None).expect("create");
        assert_eq!(mode(&dir), 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let db = dir.join("x.db");
        fs::write(&db, b"secret").expect("write");
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).expect("chmod");
        let already = dir.join("key");
        fs::write(&already, b"k").expect("write");
        fs::set_permissions(&already, fs::Permissions::from_mode(0o400)).expect("chmod");
        secure(&dir, None).expect("repair");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        // Tighter than 0600 is left alone.
        assert_eq!(mode(&already), 0o400);
    }

    #[test]
    fn a_shared_sticky_directory_keeps_its_mode_and_only_our_files_narrow() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let ours = dir.join("control.db-wal");
        let theirs = dir.join("other.txt");
        for f in [&ours, &theirs] {
            fs::write(f, b"x").expect("write");
            fs::set_permissions(f, fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        secure(dir, Some("control.db")).expect("secure");
        assert_eq!(mode(dir), 0o1777);
        assert_eq!(mode(&ours), 0o600);
        assert_eq!(mode(&theirs), 0o644);
    }

    #[test]
    fn a_file_is_not_a_state_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("f");
        fs::write(&file, b"x").expect("write");
        let err = secure(&file, None).expect_err("refused");
        assert!(err.to_string().contains("not a directory"), "{err:#}");
    }
}
