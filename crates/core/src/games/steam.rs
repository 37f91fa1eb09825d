//! Steam's library files: `libraryfolders.vdf` (where the libraries are) and
//! `appmanifest_*.acf` (one installed game each), both Valve KeyValues text.

/// A KeyValues node: a string or a block of pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Block(Vec<(String, Value)>),
}

impl Value {
    /// The first child named `key` (case-insensitive, as Steam writes both cases).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Self::Block(pairs) => pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v),
            Self::Str(_) => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            Self::Block(_) => None,
        }
    }
}

/// Deepest nesting accepted (real files use 3 or 4 levels).
const MAX_DEPTH: usize = 32;

/// Parses KeyValues text into its top-level pairs; `None` if it is malformed.
pub fn parse(text: &str) -> Option<Vec<(String, Value)>> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let pairs = block(&tokens, &mut pos, 0)?;
    (pos == tokens.len()).then_some(pairs)
}

#[derive(Debug, PartialEq)]
enum Token {
    Str(String),
    Open,
    Close,
}

fn tokenize(text: &str) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '{' => out.push(Token::Open),
            '}' => out.push(Token::Close),
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            other => s.push(other),
                        },
                        other => s.push(other),
                    }
                }
                out.push(Token::Str(s));
            }
            _ => {
                // An unquoted token runs to whitespace or a brace.
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || n == '{' || n == '}' || n == '"' {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(Token::Str(s));
            }
        }
    }
    Some(out)
}

fn block(tokens: &[Token], pos: &mut usize, depth: usize) -> Option<Vec<(String, Value)>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut pairs = Vec::new();
    while let Some(t) = tokens.get(*pos) {
        let key = match t {
            Token::Close => return Some(pairs),
            Token::Open => return None,
            Token::Str(k) => k.clone(),
        };
        *pos += 1;
        let value = match tokens.get(*pos)? {
            Token::Str(s) => {
                *pos += 1;
                Value::Str(s.clone())
            }
            Token::Open => {
                *pos += 1;
                let inner = block(tokens, pos, depth + 1)?;
                if tokens.get(*pos) != Some(&Token::Close) {
                    return None;
                }
                *pos += 1;
                Value::Block(inner)
            }
            Token::Close => return None,
        };
        pairs.push((key, value));
    }
    (depth == 0).then_some(pairs)
}

/// The library paths listed in `libraryfolders.vdf` (old and new formats).
pub fn library_folders(text: &str) -> Vec<String> {
    let Some(top) = parse(text) else {
        return Vec::new();
    };
    let Some((_, root)) = top
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("libraryfolders"))
    else {
        return Vec::new();
    };
    let Value::Block(entries) = root else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_digit()))
        .filter_map(|(_, v)| match v {
            Value::Str(path) => Some(path.clone()),
            block => block.get("path").and_then(Value::as_str).map(str::to_owned),
        })
        .collect()
}

/// One installed game, from its `appmanifest_<id>.acf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub app_id: u32,
    pub name: String,
    pub install_dir: String,
}

pub fn app_manifest(text: &str) -> Option<App> {
    let top = parse(text)?;
    let (_, state) = top
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("AppState"))?;
    Some(App {
        app_id: state.get("appid")?.as_str()?.parse().ok()?,
        name: state.get("name")?.as_str()?.to_owned(),
        install_dir: state
            .get("installdir")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_library_folder_formats_are_read() {
        let new = r#""libraryfolders"
{
	"0"
	{
		"path"		"/home/ana/.local/share/Steam"
		"label"		""
		"apps"
		{
			"228980"		"386826486"
		}
	}
	"1" { "path" "/mnt/games/SteamLibrary" }
}"#;
        assert_eq!(
            library_folders(new),
            ["/home/ana/.local/share/Steam", "/mnt/games/SteamLibrary"]
        );
        let old = "\"LibraryFolders\"\n{\n\t\"TimeNextStatsReport\"\t\t\"1\"\n\t\"1\"\t\t\"/data/steam\"\n}\n";
        assert_eq!(library_folders(old), ["/data/steam"]);
        assert!(library_folders("not { valid").is_empty());
        assert!(library_folders("").is_empty());
    }

    #[test]
    fn an_app_manifest_gives_id_name_and_folder() {
        let acf = "\"AppState\"\n{\n\t\"appid\"\t\t\"730\"\n\t\"Universe\"\t\t\"1\"\n\t\"name\"\t\t\"Counter-Strike 2\"\n\t\"installdir\"\t\t\"Counter-Strike Global Offensive\"\n\t\"UserConfig\" { \"language\" \"english\" }\n}\n";
        assert_eq!(
            app_manifest(acf),
            Some(App {
                app_id: 730,
                name: "Counter-Strike 2".into(),
                install_dir: "Counter-Strike Global Offensive".into()
            })
        );
        assert_eq!(
            app_manifest("\"AppState\" { \"appid\" \"x\" \"name\" \"n\" }"),
            None
        );
        assert_eq!(app_manifest("\"AppState\" { \"name\" \"n\" }"), None);
    }

    #[test]
    fn malformed_text_is_rejected_not_panicked_on() {
        for bad in [
            "{",
            "}",
            "\"a\" {",
            "\"a\" { \"b\" }",
            "\"unterminated",
            "\"a\" }",
            "a { b { c { d",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        let deep = "\"a\" {".repeat(100) + &"}".repeat(100);
        assert!(parse(&deep).is_none(), "too deep");
        assert_eq!(parse("// comment\n\"k\" \"v\"").map(|p| p.len()), Some(1));
    }
}
