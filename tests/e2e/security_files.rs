//! Local users: the daemon's and the control plane's state (invite codes, party secrets,
//! keys, the local API token) is readable by its owner only, even in a directory that
//! already existed with a loose mode, and a state directory owned by another user is
//! refused (issue 17, point 6).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{BIN, Lab, run};

/// The uid and gid of `nobody` on Debian: the local user who must not read anything.
const NOBODY: u32 = 65534;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").mode() & 0o7777
}

/// Every regular file directly in `dir`, with its mode.
fn file_modes(dir: &Path) -> Vec<(String, u32)> {
    let mut files: Vec<(String, u32)> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("metadata").mode() & 0o7777,
            )
        })
        .collect();
    files.sort();
    files
}

/// Whether user `nobody` can read `path` (with `setpriv`, util-linux).
fn nobody_reads(path: &Path) -> bool {
    let out = run(Command::new("setpriv").args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        "cat",
        &path.display().to_string(),
    ]));
    out.status.success() && !out.stdout.is_empty()
}

/// A directory that exists before LANrage starts, with the mode a default umask gives.
fn loose_dir(path: &Path) {
    std::fs::create_dir_all(path).expect("mkdir");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn state_files_are_private_even_in_a_loose_existing_directory() {
    let mut lab = Lab::new("files", 1);
    // The lab's own temporary directory is 0700; open it up so that only LANrage's modes
    // stand between user `nobody` and the secrets.
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod lab dir");
    let state = lab.state_dir(1);
    loose_dir(&state);
    // A database file left world-readable by an earlier version (an empty file is a valid
    // empty SQLite database).
    let db = state.join("daemon.db");
    std::fs::write(&db, b"").expect("write");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let control_dir = lab.dir.path().join("control");
    loose_dir(&control_dir);

    lab.start_control();
    // Host mode as well: the daemon's own state dir then holds control.db too.
    lab.start_daemon(1, &["--control-listen", "0.0.0.0:8667"]);
    let invite = lab.cli_ok(1, &["party", "create", "secret party"]);
    assert!(invite.starts_with("lr1-"), "{invite}");
    // The write-behind commits within ~100 ms.
    std::thread::sleep(Duration::from_secs(1));

    assert_eq!(mode(&state), 0o700, "daemon state dir");
    let files = file_modes(&state);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["daemon.db", "daemon.db-wal", "control.db", "private.key"] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }
    for (name, m) in &files {
        assert_eq!(m & 0o077, 0, "{name} is mode {m:o}: others can read it");
    }
    assert_eq!(mode(&control_dir), 0o700, "control plane database dir");
    let control_files = file_modes(&control_dir);
    assert!(
        control_files.iter().any(|(n, _)| n == "control.db"),
        "{control_files:?}"
    );
    for (name, m) in &control_files {
        assert_eq!(m & 0o077, 0, "control {name} is mode {m:o}");
    }
    // And so the local user `nobody` reads nothing, with or without the directory's help.
    for f in [
        &db,
        &state.join("control.db"),
        &control_dir.join("control.db"),
    ] {
        assert!(!nobody_reads(f), "nobody read {}", f.display());
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(
        !nobody_reads(&db),
        "nobody read daemon.db through an open directory"
    );
    // The party survives the repair: the daemon still answers with it.
    assert_eq!(lab.status(1)["party"]["name"], "secret party");
}

#[test]
fn a_state_directory_owned_by_another_user_is_refused() {
    let lab = Lab::new("owner", 1);
    let state = lab.state_dir(1);
    loose_dir(&state);
    nix_chown(&state, NOBODY);
    let out = run(Lab::in_ns(&lab.player_ns(1), "timeout")
        .args(["20", BIN, "up", "--state-dir"])
        .arg(&state)
        .args(["--control-listen", "127.0.0.1:8667"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the daemon started: {stderr}");
    // `timeout` exits 124 when it had to stop the program: it must have exited by itself.
    assert_ne!(
        out.status.code(),
        Some(124),
        "the daemon kept running: {stderr}"
    );
    assert!(
        stderr.contains(&format!("belongs to user id {NOBODY}")),
        "unclear error: {stderr}"
    );
    // Nothing was written into the other user's directory.
    assert!(file_modes(&state).is_empty(), "{:?}", file_modes(&state));

    let control = lab.dir.path().join("ctl");
    loose_dir(&control);
    nix_chown(&control, NOBODY);
    let db = format!("sqlite://{}", control.join("control.db").display());
    let out = run(Lab::in_ns(&lab.control_ns(), "timeout").args([
        "20",
        BIN,
        "control",
        "--listen",
        "127.0.0.1:8667",
        "--database",
        &db,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the control plane started: {stderr}");
    assert_ne!(out.status.code(), Some(124), "it kept running: {stderr}");
    assert!(
        stderr.contains(&format!("belongs to user id {NOBODY}")),
        "unclear error: {stderr}"
    );
}

fn nix_chown(path: &Path, uid: u32) {
    let out = run(Command::new("chown").arg(format!("{uid}:{uid}")).arg(path));
    assert!(out.status.success(), "chown failed");
}
