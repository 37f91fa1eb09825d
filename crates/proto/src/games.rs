//! Game profiles: the schema of `profiles/*.toml` and its validation.
//!
//! A profile file holds one table per game, keyed by the game id:
//!
//! ```toml
//! [openarena]
//! name = "OpenArena"
//! executables = ["openarena", { name = "ioq3ded", args = "*baseoa*" }]
//! ports = [27960, "27961-27963"]
//! broadcast = true
//! priority = "high"
//! ```
//!
//! Every field is checked on its own, so an error names the file, the game and the field;
//! a broken game is skipped and the rest of its file still loads. Parsing is pure: the
//! caller reads the files.

use std::fmt;
use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Widest port range one entry may name.
pub const MAX_RANGE: u16 = 1024;
/// Smallest and largest profile MTU.
pub const MTU_RANGE: (u16, u16) = (1280, 1500);
/// Shortest and longest profile keepalive, in seconds.
pub const KEEPALIVE_RANGE: (u16, u16) = (5, 60);

/// Every field a profile may have.
pub const FIELDS: &[&str] = &[
    "name",
    "description",
    "executables",
    "titles",
    "ports",
    "protocol",
    "broadcast",
    "discovery_ports",
    "multicast_groups",
    "keepalive",
    "mtu",
    "priority",
    "low_latency",
    "high_bandwidth",
    "steam_app_ids",
    "physical_capture",
];

/// One game's profile, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    pub id: String,
    pub name: String,
    /// The file the profile came from, without `.toml` (the genre for shipped files).
    pub genre: String,
    /// `built-in`, or the path of the user file that defined it.
    pub source: String,
    #[serde(default)]
    pub description: String,
    pub executables: Vec<Executable>,
    #[serde(default)]
    pub titles: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
    #[serde(default)]
    pub broadcast: bool,
    /// Ports its LAN discovery uses (the game ports unless the file says otherwise).
    #[serde(default)]
    pub discovery_ports: Vec<PortRange>,
    #[serde(default)]
    #[schema(value_type = Vec<String>, format = Ipv4)]
    pub multicast_groups: Vec<Ipv4Addr>,
    /// Seconds between keepalives, when the game needs its own.
    #[serde(default)]
    pub keepalive: Option<u16>,
    #[serde(default)]
    pub mtu: Option<u16>,
    pub priority: Priority,
    #[serde(default)]
    pub low_latency: bool,
    #[serde(default)]
    pub high_bandwidth: bool,
    #[serde(default)]
    pub steam_app_ids: Vec<u32>,
    #[serde(default)]
    pub physical_capture: bool,
}

/// A process a profile recognises: its name (glob `*` and `?` allowed), and optionally
/// a glob one of its command-line arguments must match (for shared engines and
/// interpreters: `ioq3ded`, `java`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Executable {
    Name(String),
    WithArgs { name: String, args: String },
}

impl Executable {
    pub fn name(&self) -> &str {
        match self {
            Self::Name(n) | Self::WithArgs { name: n, .. } => n,
        }
    }

    pub fn args(&self) -> Option<&str> {
        match self {
            Self::Name(_) => None,
            Self::WithArgs { args, .. } => Some(args),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
    Both,
}

impl Protocol {
    pub fn udp(self) -> bool {
        matches!(self, Self::Udp | Self::Both)
    }

    pub fn tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::Both)
    }
}

/// How a game's packets are treated next to bulk traffic.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Medium,
    High,
}

impl Priority {
    /// The DSCP code point the outer packets carry: EF (46) for high, AF21 (18) for
    /// medium, best effort for low.
    pub fn dscp(self) -> u8 {
        match self {
            Self::High => 46,
            Self::Medium => 18,
            Self::Low => 0,
        }
    }
}

/// An inclusive port range; a single port is `start == end`. Written `27960` or
/// `"27960-27963"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn one(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortSpec {
    One(i64),
    Range(String),
}

impl PortSpec {
    fn check(self) -> Result<PortRange, String> {
        let port = |n: i64| {
            u16::try_from(n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{n} is not a port (1-65535)"))
        };
        match self {
            Self::One(n) => port(n).map(PortRange::one),
            Self::Range(s) => {
                let (a, b) = s
                    .split_once('-')
                    .ok_or_else(|| format!("\"{s}\" is neither a port nor a range \"a-b\""))?;
                let num = |t: &str| {
                    t.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("\"{s}\" is not a range \"a-b\""))
                };
                let (start, end) = (port(num(a)?)?, port(num(b)?)?);
                if start > end {
                    return Err(format!("range \"{s}\" ends before it starts"));
                }
                if end - start >= MAX_RANGE {
                    return Err(format!("range \"{s}\" is wider than {MAX_RANGE} ports"));
                }
                Ok(PortRange { start, end })
            }
        }
    }
}

impl utoipa::PartialSchema for PortRange {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(65535)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]{1,5}-[0-9]{1,5}$")),
            )
            .description(Some("A UDP/TCP port, or an inclusive range \"a-b\"."))
            .into()
    }
}

impl utoipa::ToSchema for PortRange {}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.start == self.end {
            s.serialize_u16(self.start)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PortSpec::deserialize(d)?
            .check()
            .map_err(serde::de::Error::custom)
    }
}

/// How a game was recognised, strongest first: its process, one of its windows, or a
/// port it holds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Port,
    Window,
    Process,
}

/// Confidence from which a detection reads "definitely".
pub const DEFINITELY: f64 = 0.9;
/// Confidence from which it reads "probably" (below: "maybe").
pub const PROBABLY: f64 = 0.6;

/// A game running on this device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Detection {
    pub id: String,
    pub name: String,
    /// 0 to 1: how sure the match is (see `docs/games.md`).
    pub confidence: f64,
    pub method: Method,
    /// The process it was found in (for a window without a known owner, 0).
    pub pid: u32,
    /// Milliseconds since the Unix epoch when it was first seen.
    #[serde(default)]
    pub since_ms: u64,
}

impl Detection {
    /// "definitely OpenArena", "probably …", "maybe …".
    pub fn summary(&self) -> String {
        let word = if self.confidence >= DEFINITELY {
            "definitely"
        } else if self.confidence >= PROBABLY {
            "probably"
        } else {
            "maybe"
        };
        format!("{word} {}", self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Started,
    Stopped,
}

/// A game starting or stopping, for the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GameEvent {
    pub at_ms: u64,
    pub event: EventKind,
    pub id: String,
    pub name: String,
    pub pid: u32,
    pub confidence: f64,
    pub method: Method,
}

/// A problem in a profile file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProfileError {
    pub file: String,
    /// The game whose table is wrong (`None` when the whole file is unreadable).
    pub game: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        match (&self.game, &self.field) {
            (Some(g), Some(field)) => write!(f, "{g}.{field}: ")?,
            (Some(g), None) => write!(f, "{g}: ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProfileError {}

/// Parses one profile file. `file` names it in errors; `genre` and `source` are recorded
/// on each profile. Returns the games that are valid and one error per game (or for the
/// file) that is not.
pub fn parse_file(
    text: &str,
    file: &str,
    genre: &str,
    source: &str,
) -> (Vec<Profile>, Vec<ProfileError>) {
    let err = |game: Option<&str>, field: Option<&str>, message: String| ProfileError {
        file: file.to_owned(),
        game: game.map(str::to_owned),
        field: field.map(str::to_owned),
        message,
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let what = e.message().trim().to_owned();
            let message = match line {
                Some(l) => format!("line {l}: {what}"),
                None => what,
            };
            return (Vec::new(), vec![err(None, None, message)]);
        }
    };
    let mut profiles = Vec::new();
    let mut errors = Vec::new();
    for (id, value) in table {
        match parse_game(&id, value, genre, source) {
            Ok(p) => profiles.push(p),
            Err((field, message)) => errors.push(err(Some(&id), field.as_deref(), message)),
        }
    }
    (profiles, errors)
}

type FieldError = (Option<String>, String);

fn parse_game(
    id: &str,
    value: toml::Value,
    genre: &str,
    source: &str,
) -> Result<Profile, FieldError> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err((
            None,
            "a game id is lower-case letters, digits and `_`".to_owned(),
        ));
    }
    let toml::Value::Table(mut t) = value else {
        return Err((None, "expected a table of fields".to_owned()));
    };
    if let Some(unknown) = t.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err((
            Some(unknown.clone()),
            format!("unknown field (fields are: {})", FIELDS.join(", ")),
        ));
    }
    let name: String = required(&mut t, "name")?;
    if name.trim().is_empty() {
        return Err((Some("name".into()), "must not be empty".into()));
    }
    let executables: Vec<Executable> = required(&mut t, "executables")?;
    if executables.is_empty() {
        return Err((
            Some("executables".into()),
            "needs at least one process name".into(),
        ));
    }
    for (i, e) in executables.iter().enumerate() {
        let at = Some(format!("executables[{i}]"));
        check_pattern(e.name()).map_err(|m| (at.clone(), m))?;
        if let Some(a) = e.args() {
            check_pattern(a).map_err(|m| (at.clone(), format!("args: {m}")))?;
        }
    }
    let titles: Vec<String> = optional(&mut t, "titles")?.unwrap_or_default();
    for (i, title) in titles.iter().enumerate() {
        check_pattern(title).map_err(|m| (Some(format!("titles[{i}]")), m))?;
    }
    let ports = port_list(&mut t, "ports")?;
    let discovery_ports = match t.contains_key("discovery_ports") {
        true => port_list(&mut t, "discovery_ports")?,
        false => ports.clone(),
    };
    let multicast_groups: Vec<Ipv4Addr> = optional(&mut t, "multicast_groups")?.unwrap_or_default();
    if let Some(g) = multicast_groups.iter().find(|g| !g.is_multicast()) {
        return Err((
            Some("multicast_groups".into()),
            format!("{g} is not a multicast group (224.0.0.0/4)"),
        ));
    }
    let keepalive: Option<u16> = optional(&mut t, "keepalive")?;
    if let Some(k) = keepalive
        && !(KEEPALIVE_RANGE.0..=KEEPALIVE_RANGE.1).contains(&k)
    {
        return Err((
            Some("keepalive".into()),
            format!(
                "{k} s is outside {}-{} s",
                KEEPALIVE_RANGE.0, KEEPALIVE_RANGE.1
            ),
        ));
    }
    let mtu: Option<u16> = optional(&mut t, "mtu")?;
    if let Some(m) = mtu
        && !(MTU_RANGE.0..=MTU_RANGE.1).contains(&m)
    {
        return Err((
            Some("mtu".into()),
            format!("{m} is outside {}-{}", MTU_RANGE.0, MTU_RANGE.1),
        ));
    }
    Ok(Profile {
        id: id.to_owned(),
        name,
        genre: genre.to_owned(),
        source: source.to_owned(),
        description: optional(&mut t, "description")?.unwrap_or_default(),
        executables,
        titles,
        ports,
        protocol: optional(&mut t, "protocol")?.unwrap_or(Protocol::Udp),
        broadcast: optional(&mut t, "broadcast")?.unwrap_or(false),
        discovery_ports,
        multicast_groups,
        keepalive,
        mtu,
        priority: optional(&mut t, "priority")?.unwrap_or(Priority::Medium),
        low_latency: optional(&mut t, "low_latency")?.unwrap_or(false),
        high_bandwidth: optional(&mut t, "high_bandwidth")?.unwrap_or(false),
        steam_app_ids: optional(&mut t, "steam_app_ids")?.unwrap_or_default(),
        physical_capture: optional(&mut t, "physical_capture")?.unwrap_or(false),
    })
}

fn optional<T: DeserializeOwned>(t: &mut toml::Table, key: &str) -> Result<Option<T>, FieldError> {
    match t.remove(key) {
        None => Ok(None),
        Some(v) => v
            .try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| (Some(key.to_owned()), e.message().trim().to_owned())),
    }
}

fn required<T: DeserializeOwned>(t: &mut toml::Table, key: &str) -> Result<T, FieldError> {
    optional(t, key)?.ok_or_else(|| (Some(key.to_owned()), "missing (required)".to_owned()))
}

fn port_list(t: &mut toml::Table, key: &str) -> Result<Vec<PortRange>, FieldError> {
    let specs: Vec<toml::Value> = optional(t, key)?.unwrap_or_default();
    specs
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = || Some(format!("{key}[{i}]"));
            let spec: PortSpec = v
                .try_into()
                .map_err(|_| (at(), "expected a port number or a range \"a-b\"".to_owned()))?;
            spec.check().map_err(|m| (at(), m))
        })
        .collect()
}

/// A name or title pattern: not empty, printable, `*` and `?` as wildcards.
fn check_pattern(p: &str) -> Result<(), String> {
    if p.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if p.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if p.chars().all(|c| c == '*' || c == '?') {
        return Err(format!("\"{p}\" would match every process"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Profile, ProfileError> {
        let (mut ok, mut errs) = parse_file(text, "user.toml", "user", "test");
        match (ok.pop(), errs.pop()) {
            (Some(p), None) => Ok(p),
            (_, Some(e)) => Err(e),
            (None, None) => panic!("nothing parsed"),
        }
    }

    #[test]
    fn a_full_profile_parses_with_defaults() {
        let p = one(r#"
            [openarena]
            name = "OpenArena"
            executables = ["openarena", { name = "ioq3ded", args = "*baseoa*" }]
            ports = [27960, "27961-27963"]
            broadcast = true
            priority = "high"
            "#)
        .expect("valid");
        assert_eq!(p.id, "openarena");
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(
            p.ports,
            vec![
                PortRange::one(27960),
                PortRange {
                    start: 27961,
                    end: 27963
                }
            ]
        );
        assert_eq!(
            p.discovery_ports, p.ports,
            "discovery defaults to the game ports"
        );
        assert_eq!(p.executables[1].args(), Some("*baseoa*"));
        assert_eq!(p.priority.dscp(), 46);
        assert_eq!(p.keepalive, None);
        let json = serde_json::to_string(&p).expect("json");
        assert!(json.contains(r#""ports":[27960,"27961-27963"]"#), "{json}");
        let back: Profile = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, p);
    }

    #[test]
    fn every_kind_of_mistake_names_the_file_game_and_field() {
        let cases = [
            ("[g]\nname = \"G\"\n", "g", Some("executables"), "missing"),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nportz = [1]\n",
                "g",
                Some("portz"),
                "unknown field",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nports = [0]\n",
                "g",
                Some("ports[0]"),
                "not a port",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nports = [\"9-1\"]\n",
                "g",
                Some("ports[0]"),
                "ends before",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nports = [\"1-5000\"]\n",
                "g",
                Some("ports[0]"),
                "wider",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nports = [70000]\n",
                "g",
                Some("ports[0]"),
                "not a port",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nkeepalive = 2\n",
                "g",
                Some("keepalive"),
                "outside",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nmtu = 9000\n",
                "g",
                Some("mtu"),
                "outside",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nmtu = \"big\"\n",
                "g",
                Some("mtu"),
                "invalid type",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\npriority = \"urgent\"\n",
                "g",
                Some("priority"),
                "unknown variant",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nprotocol = \"sctp\"\n",
                "g",
                Some("protocol"),
                "unknown variant",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"g\"]\nmulticast_groups = [\"10.0.0.1\"]\n",
                "g",
                Some("multicast_groups"),
                "not a multicast",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = []\n",
                "g",
                Some("executables"),
                "at least one",
            ),
            (
                "[g]\nname = \"G\"\nexecutables = [\"*\"]\n",
                "g",
                Some("executables[0]"),
                "every process",
            ),
            (
                "[g]\nname = \"\"\nexecutables = [\"g\"]\n",
                "g",
                Some("name"),
                "empty",
            ),
            (
                "[Bad-Id]\nname = \"G\"\nexecutables = [\"g\"]\n",
                "Bad-Id",
                None,
                "game id",
            ),
        ];
        for (text, game, field, needle) in cases {
            let e = one(text).expect_err(text);
            assert_eq!(e.file, "user.toml");
            assert_eq!(e.game.as_deref(), Some(game), "{text}");
            assert_eq!(e.field.as_deref(), field, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn a_broken_game_is_skipped_and_its_neighbours_load() {
        let text = "[good]\nname = \"Good\"\nexecutables = [\"good\"]\n\n[bad]\nname = 3\nexecutables = [\"bad\"]\n";
        let (ok, errs) = parse_file(text, "mine.toml", "mine", "/tmp/mine.toml");
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].id, "good");
        assert_eq!(ok[0].source, "/tmp/mine.toml");
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string().split(':').take(2).collect::<Vec<_>>(),
            ["mine.toml", " bad.name"]
        );
    }

    #[test]
    fn a_syntax_error_names_the_line() {
        let (ok, errs) = parse_file(
            "[a]\nname = \"A\"\nexecutables = [\"a\"\n",
            "x.toml",
            "x",
            "t",
        );
        assert!(ok.is_empty());
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].game, None);
        assert!(errs[0].message.starts_with("line "), "{}", errs[0]);
    }
}
