//! Game detection and per-game tuning, sans-IO.
//!
//! The daemon gathers an [`Observation`] (processes, window titles, which process holds
//! which port) and hands it to a [`Detector`] built once from the loaded profiles. The
//! detector matches:
//!
//! - **process names**, exactly, by glob, or fuzzily (normalised Levenshtein ≥
//!   [`FUZZY_THRESHOLD`] after lower-casing and stripping `.exe`/`.bat`), from the process's
//!   `comm`, its executable and its `argv[0]`; an entry with `args` also needs one
//!   command-line argument to match;
//! - **window titles** against the profiles' title globs;
//! - **ports** a process holds against the profiles' game ports.
//!
//! Each piece of evidence has a score ([`Score`]); the scores for one game in one process
//! combine as independent evidence, `1 - Π(1 - s)`, capped at 0.99, so agreeing sources
//! raise the confidence. The method shown is the strongest source (process > window >
//! port). Name lookups are cached per distinct name, so a scan over hundreds of
//! processes costs a hash lookup each once their names have been seen.
//!
//! [`Tracker`] turns successive scans into start/stop events and a bounded history, and
//! [`tuning`] says what the running games want from the network.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

pub use lanrage_proto::games::{
    Detection, EventKind, GameEvent, Method, PortRange, Priority, Profile,
};

use crate::lan;
use crate::stun::{Filtering, Mapping};

/// Smallest normalised Levenshtein similarity that counts as a fuzzy name match.
pub const FUZZY_THRESHOLD: f64 = 0.85;
/// Detections below this confidence are not reported.
pub const MIN_CONFIDENCE: f64 = 0.5;
/// Highest confidence a detection can reach.
pub const MAX_CONFIDENCE: f64 = 0.99;
/// Events kept in the history.
pub const HISTORY_LEN: usize = 256;
/// Distinct process names whose match is remembered.
const NAME_CACHE: usize = 8192;
/// Linux truncates a process's `comm` to this many bytes.
const COMM_LEN: usize = 15;
/// Ports that belong to system services, never taken as a sign of a game (mDNS, SSDP).
const SYSTEM_PORTS: &[u16] = &[1900, 5353];

/// The score of each kind of evidence.
#[derive(Debug, Clone, Copy)]
pub struct Score;

impl Score {
    /// The executable named exactly, with the profile's argument pattern matched.
    pub const EXACT_ARGS: f64 = 0.97;
    pub const EXACT: f64 = 0.95;
    /// The process's truncated `comm` equals the start of a long profile name.
    pub const TRUNCATED: f64 = 0.93;
    pub const GLOB_ARGS: f64 = 0.94;
    pub const GLOB: f64 = 0.92;
    /// A fuzzy match scores from `FUZZY_MIN` (at the threshold) up to `FUZZY_MAX`.
    pub const FUZZY_MIN: f64 = 0.6;
    pub const FUZZY_MAX: f64 = 0.85;
    pub const TITLE_EXACT: f64 = 0.85;
    pub const TITLE_GLOB: f64 = 0.8;
    /// A UDP or TCP game port held by the process, when only one profile lists it.
    pub const PORT_UDP: f64 = 0.6;
    pub const PORT_TCP: f64 = 0.5;
    /// Factor for a port several profiles list.
    pub const PORT_SHARED: f64 = 0.6;

    /// Score of a fuzzy match with similarity `sim` (≥ the threshold).
    pub fn fuzzy(sim: f64) -> f64 {
        let t = ((sim - FUZZY_THRESHOLD) / (1.0 - FUZZY_THRESHOLD)).clamp(0.0, 1.0);
        Self::FUZZY_MIN + t * (Self::FUZZY_MAX - Self::FUZZY_MIN)
    }
}

/// Combines independent evidence: `1 - Π(1 - s)`, capped at [`MAX_CONFIDENCE`].
pub fn combine(scores: impl IntoIterator<Item = f64>) -> f64 {
    let miss: f64 = scores
        .into_iter()
        .map(|s| 1.0 - s.clamp(0.0, 1.0))
        .product();
    (1.0 - miss).min(MAX_CONFIDENCE)
}

/// One running process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// The kernel's name for it (`comm`, at most 15 bytes on Linux).
    pub name: String,
    /// Path of its executable, when readable.
    pub exe: Option<String>,
    /// Its command line, `argv[0]` first.
    pub cmd: Vec<String>,
}

/// A top-level window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub pid: Option<u32>,
    pub title: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A bound UDP socket or listening TCP socket and the process that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    pub pid: u32,
    pub transport: Transport,
    pub port: u16,
}

/// What the daemon saw in one scan.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub processes: Vec<Process>,
    pub windows: Vec<Window>,
    pub sockets: Vec<Socket>,
}

/// Lower-cases and strips a Windows `.exe` or `.bat` suffix.
pub fn normalize(name: &str) -> String {
    let lower = name.trim().to_lowercase();
    for ext in [".exe", ".bat"] {
        if let Some(stem) = lower.strip_suffix(ext)
            && !stem.is_empty()
        {
            return stem.to_owned();
        }
    }
    lower
}

/// The last component of a Unix or Windows path.
pub fn basename(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// Shell-style match of `text` against `pattern` (`*` any run, `?` one character), both
/// already lower-cased.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

fn has_windows_ext(s: &str) -> bool {
    let l = s.to_lowercase();
    l.ends_with(".exe") || l.ends_with(".bat")
}

/// How a process name matched a profile entry.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NameMatch {
    Exact,
    Truncated,
    Glob,
    Fuzzy(f64),
}

/// A profile entry a name matched, before its argument pattern is checked.
#[derive(Debug, Clone, PartialEq)]
struct Hit {
    profile: usize,
    how: NameMatch,
    args: Option<String>,
}

impl Hit {
    fn score(&self, args_matched: bool) -> f64 {
        match (self.how, args_matched) {
            (NameMatch::Exact, true) => Score::EXACT_ARGS,
            (NameMatch::Exact, false) => Score::EXACT,
            (NameMatch::Truncated, _) => Score::TRUNCATED,
            (NameMatch::Glob, true) => Score::GLOB_ARGS,
            (NameMatch::Glob, false) => Score::GLOB,
            (NameMatch::Fuzzy(sim), _) => Score::fuzzy(sim),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    profile: usize,
    /// Lower-cased argument glob.
    args: Option<String>,
}

/// The profiles, indexed for matching. Built once per profile set.
#[derive(Debug, Clone, Default)]
pub struct Index {
    profiles: Vec<Profile>,
    by_id: HashMap<String, usize>,
    /// Normalised name → entries.
    exact: HashMap<String, Vec<Entry>>,
    /// First [`COMM_LEN`] bytes of long lower-cased names → entries (a Linux `comm`).
    truncated: HashMap<String, Vec<Entry>>,
    /// Lower-cased patterns, and whether the pattern names a Windows extension.
    globs: Vec<(String, bool, Entry)>,
    /// Normalised plain names without argument patterns: fuzzy candidates.
    plain: Vec<(String, usize)>,
    /// Lower-cased title patterns.
    titles: Vec<(String, usize)>,
    ports: HashMap<(Transport, u16), Vec<usize>>,
}

impl Index {
    /// Indexes `profiles`; a later profile with the same id replaces an earlier one (user
    /// profiles override the shipped ones).
    pub fn new(profiles: impl IntoIterator<Item = Profile>) -> Self {
        let mut merged: Vec<Profile> = Vec::new();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for p in profiles {
            match by_id.get(&p.id) {
                Some(&i) => merged[i] = p,
                None => {
                    by_id.insert(p.id.clone(), merged.len());
                    merged.push(p);
                }
            }
        }
        let mut index = Self {
            by_id,
            ..Self::default()
        };
        for (i, p) in merged.iter().enumerate() {
            for e in &p.executables {
                let entry = Entry {
                    profile: i,
                    args: e.args().map(str::to_lowercase),
                };
                let name = e.name();
                if is_glob(name) {
                    index
                        .globs
                        .push((name.to_lowercase(), has_windows_ext(name), entry));
                    continue;
                }
                let lower = name.to_lowercase();
                if lower.len() > COMM_LEN
                    && let Some(prefix) = lower.get(..COMM_LEN)
                {
                    index
                        .truncated
                        .entry(prefix.to_owned())
                        .or_default()
                        .push(entry.clone());
                }
                let norm = normalize(name);
                if entry.args.is_none() {
                    index.plain.push((norm.clone(), i));
                }
                index.exact.entry(norm).or_default().push(entry);
            }
            for t in &p.titles {
                index.titles.push((t.to_lowercase(), i));
            }
            if p.titles.is_empty() {
                index.titles.push((p.name.to_lowercase(), i));
            }
            for r in &p.ports {
                for port in r.iter() {
                    for (on, transport) in [
                        (p.protocol.udp(), Transport::Udp),
                        (p.protocol.tcp(), Transport::Tcp),
                    ] {
                        if on {
                            let ids = index.ports.entry((transport, port)).or_default();
                            if !ids.contains(&i) {
                                ids.push(i);
                            }
                        }
                    }
                }
            }
        }
        index.profiles = merged;
        index
    }

    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Whether some profile lists this port (only those sockets need an owner).
    pub fn watches_port(&self, transport: Transport, port: u16) -> bool {
        self.ports.contains_key(&(transport, port))
    }

    pub fn get(&self, id: &str) -> Option<&Profile> {
        self.by_id.get(id).map(|&i| &self.profiles[i])
    }

    /// Every profile entry one process name matches, by name alone.
    fn name_hits(&self, raw: &str) -> Vec<Hit> {
        let lower = raw.trim().to_lowercase();
        let norm = normalize(raw);
        let mut hits = Vec::new();
        let mut push = |entries: Option<&Vec<Entry>>, how| {
            for e in entries.into_iter().flatten() {
                hits.push(Hit {
                    profile: e.profile,
                    how,
                    args: e.args.clone(),
                });
            }
        };
        push(self.exact.get(&norm), NameMatch::Exact);
        if lower.len() == COMM_LEN {
            push(self.truncated.get(&lower), NameMatch::Truncated);
        }
        for (pattern, windows_ext, e) in &self.globs {
            if glob(pattern, &lower) || (!windows_ext && glob(pattern, &norm)) {
                hits.push(Hit {
                    profile: e.profile,
                    how: NameMatch::Glob,
                    args: e.args.clone(),
                });
            }
        }
        if hits.is_empty() && norm.chars().count() >= 4 {
            let n = norm.chars().count() as f64;
            let mut best: Option<(f64, usize)> = None;
            for (name, profile) in &self.plain {
                let m = name.chars().count() as f64;
                // Similarity can reach the threshold only if the lengths are this close.
                if (n - m).abs() > (1.0 - FUZZY_THRESHOLD) * n.max(m) {
                    continue;
                }
                let sim = strsim::normalized_levenshtein(&norm, name);
                if sim >= FUZZY_THRESHOLD && best.is_none_or(|(b, _)| sim > b) {
                    best = Some((sim, *profile));
                }
            }
            if let Some((sim, profile)) = best {
                hits.push(Hit {
                    profile,
                    how: NameMatch::Fuzzy(sim),
                    args: None,
                });
            }
        }
        hits
    }
}

/// The names a process goes by: `argv[0]`'s and the executable's file names, and its
/// `comm` unless that is just one of them cut to 15 bytes.
pub fn process_names(p: &Process) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let full = p
        .cmd
        .first()
        .map(|a| basename(a))
        .into_iter()
        .chain(p.exe.as_deref().map(basename));
    for n in full.chain(std::iter::once(p.name.as_str())) {
        let n = n.trim();
        let comm_is_cut = n == p.name
            && n.len() == COMM_LEN
            && names.iter().any(|x| x.len() > COMM_LEN && x.starts_with(n));
        if !n.is_empty() && !comm_is_cut && !names.iter().any(|x| x == n) {
            names.push(n.to_owned());
        }
    }
    names
}

/// The rules engine: profiles plus the per-name match cache.
#[derive(Debug, Clone, Default)]
pub struct Detector {
    index: Index,
    cache: HashMap<String, Vec<Hit>>,
}

/// Evidence for one game in one process.
#[derive(Debug, Default)]
struct Evidence {
    scores: Vec<f64>,
    method: Option<Method>,
}

impl Detector {
    pub fn new(index: Index) -> Self {
        Self {
            index,
            cache: HashMap::new(),
        }
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Distinct names whose matches are cached.
    pub fn cached_names(&self) -> usize {
        self.cache.len()
    }

    fn hits(&mut self, name: &str) -> Vec<Hit> {
        if let Some(h) = self.cache.get(name) {
            return h.clone();
        }
        let hits = self.index.name_hits(name);
        if self.cache.len() >= NAME_CACHE {
            self.cache.clear();
        }
        self.cache.insert(name.to_owned(), hits.clone());
        hits
    }

    /// The best process-name match for one process: `(profile, score)`.
    pub fn match_process(&mut self, p: &Process) -> Option<(&Profile, f64)> {
        let best = self.best_for_process(p)?;
        Some((&self.index.profiles[best.0], best.1))
    }

    fn best_for_process(&mut self, p: &Process) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        let mut args_lower: Option<Vec<String>> = None;
        for name in process_names(p) {
            for hit in self.hits(&name) {
                let matched = match &hit.args {
                    None => false,
                    Some(pattern) => {
                        let args = args_lower.get_or_insert_with(|| {
                            p.cmd.iter().skip(1).map(|a| a.to_lowercase()).collect()
                        });
                        if !args.iter().any(|a| glob(pattern, a)) {
                            continue;
                        }
                        true
                    }
                };
                let score = hit.score(matched);
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((hit.profile, score));
                }
            }
        }
        best
    }

    /// The profile a window title names: `(profile, score)`.
    pub fn match_title(&self, title: &str) -> Option<(&Profile, f64)> {
        self.title_hit(title)
            .map(|(i, s)| (&self.index.profiles[i], s))
    }

    fn title_hit(&self, title: &str) -> Option<(usize, f64)> {
        let t = title.trim().to_lowercase();
        if t.is_empty() {
            return None;
        }
        let mut best: Option<(usize, f64)> = None;
        for (pattern, i) in &self.index.titles {
            let score = if *pattern == t {
                Score::TITLE_EXACT
            } else if is_glob(pattern) && glob(pattern, &t) {
                Score::TITLE_GLOB
            } else {
                continue;
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((*i, score));
            }
        }
        best
    }

    /// Matches one scan. `since_ms` is left 0 (the [`Tracker`] dates detections).
    pub fn scan(&mut self, obs: &Observation) -> Vec<Detection> {
        let mut evidence: HashMap<(u32, usize), Evidence> = HashMap::new();
        let mut add = |pid: u32, profile: usize, score: f64, method: Method| {
            let e = evidence.entry((pid, profile)).or_default();
            e.scores.push(score);
            e.method = e.method.max(Some(method));
        };
        for p in &obs.processes {
            if let Some((profile, score)) = self.best_for_process(p) {
                add(p.pid, profile, score, Method::Process);
            }
        }
        for w in &obs.windows {
            if let Some((profile, score)) = self.title_hit(&w.title) {
                add(w.pid.unwrap_or(0), profile, score, Method::Window);
            }
        }
        let mut seen_ports: BTreeSet<(u32, Transport, u16)> = BTreeSet::new();
        for s in &obs.sockets {
            if s.port < 1024
                || SYSTEM_PORTS.contains(&s.port)
                || !seen_ports.insert((s.pid, s.transport, s.port))
            {
                continue;
            }
            let Some(profiles) = self.index.ports.get(&(s.transport, s.port)) else {
                continue;
            };
            let base = match s.transport {
                Transport::Udp => Score::PORT_UDP,
                Transport::Tcp => Score::PORT_TCP,
            };
            let score = if profiles.len() == 1 {
                base
            } else {
                base * Score::PORT_SHARED
            };
            for &profile in profiles {
                add(s.pid, profile, score, Method::Port);
            }
        }

        // Per process, the game with the most confidence (then the stronger method).
        let mut per_pid: BTreeMap<u32, (usize, f64, Method)> = BTreeMap::new();
        for ((pid, profile), e) in evidence {
            let confidence = combine(e.scores.iter().copied());
            let method = e.method.unwrap_or(Method::Port);
            let better = match per_pid.get(&pid) {
                None => true,
                Some(&(p, c, m)) => {
                    (confidence, method, std::cmp::Reverse(profile)) > (c, m, std::cmp::Reverse(p))
                }
            };
            if better {
                per_pid.insert(pid, (profile, confidence, method));
            }
        }
        // Per game, its best process.
        let mut per_game: BTreeMap<usize, Detection> = BTreeMap::new();
        for (pid, (profile, confidence, method)) in per_pid {
            if confidence < MIN_CONFIDENCE {
                continue;
            }
            let p = &self.index.profiles[profile];
            let replace = per_game
                .get(&profile)
                .is_none_or(|d| (confidence, method) > (d.confidence, d.method));
            if replace {
                per_game.insert(
                    profile,
                    Detection {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        confidence: (confidence * 1000.0).round() / 1000.0,
                        method,
                        pid,
                        since_ms: 0,
                    },
                );
            }
        }
        let mut out: Vec<Detection> = per_game.into_values().collect();
        out.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }
}

/// Running games over time: start and stop events, and a bounded history.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    active: BTreeMap<String, Detection>,
    history: VecDeque<GameEvent>,
}

impl Tracker {
    /// Takes one scan's detections at `now_ms` (Unix milliseconds); returns what started
    /// and stopped.
    pub fn update(&mut self, detections: Vec<Detection>, now_ms: u64) -> Vec<GameEvent> {
        let mut events = Vec::new();
        let mut next: BTreeMap<String, Detection> = BTreeMap::new();
        for mut d in detections {
            match self.active.get(&d.id) {
                Some(old) => d.since_ms = old.since_ms,
                None => {
                    d.since_ms = now_ms;
                    events.push(event(&d, EventKind::Started, now_ms));
                }
            }
            next.insert(d.id.clone(), d);
        }
        for (id, old) in &self.active {
            if !next.contains_key(id) {
                events.push(event(old, EventKind::Stopped, now_ms));
            }
        }
        self.active = next;
        for e in &events {
            if self.history.len() == HISTORY_LEN {
                self.history.pop_front();
            }
            self.history.push_back(e.clone());
        }
        events
    }

    /// The games running now, most confident first.
    pub fn active(&self) -> Vec<Detection> {
        let mut v: Vec<Detection> = self.active.values().cloned().collect();
        v.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then_with(|| a.id.cmp(&b.id))
        });
        v
    }

    pub fn history(&self) -> impl Iterator<Item = &GameEvent> {
        self.history.iter()
    }
}

fn event(d: &Detection, kind: EventKind, at_ms: u64) -> GameEvent {
    GameEvent {
        at_ms,
        event: kind,
        id: d.id.clone(),
        name: d.name.clone(),
        pid: d.pid,
        confidence: d.confidence,
        method: d.method,
    }
}

/// The seeds' NAT classes, for keepalive sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatClass {
    FullCone,
    AddressRestricted,
    PortRestricted,
    Symmetric,
    Unknown,
}

impl NatClass {
    /// From a NAT probe's mapping and filtering behaviour (RFC 4787 / 5780).
    pub fn from_behaviour(mapping: Mapping, filtering: Filtering) -> Self {
        match mapping {
            Mapping::AddressDependent
            | Mapping::AddressAndPortDependent
            | Mapping::EndpointDependent => Self::Symmetric,
            Mapping::Unknown => Self::Unknown,
            Mapping::EndpointIndependent => match filtering {
                Filtering::EndpointIndependent => Self::FullCone,
                Filtering::AddressDependent => Self::AddressRestricted,
                Filtering::AddressAndPortDependent => Self::PortRestricted,
                Filtering::Unknown => Self::Unknown,
            },
        }
    }

    /// The seeds' table: full cone 60 s, address-restricted 30 s, port-restricted 15 s,
    /// symmetric 5 s; WireGuard's customary 25 s when the NAT is not known.
    pub fn keepalive(self) -> Duration {
        Duration::from_secs(match self {
            Self::FullCone => 60,
            Self::AddressRestricted => 30,
            Self::PortRestricted => 15,
            Self::Symmetric => 5,
            Self::Unknown => 25,
        })
    }
}

/// The keepalive while a game runs: the game's own value if it has one, else the NAT
/// class's; never longer than `measured` (half the binding lifetime seen, when bindings
/// were seen to drop sooner than the table assumes).
pub fn keepalive(game: Option<u16>, nat: NatClass, measured: Option<Duration>) -> Duration {
    let base = game.map_or_else(|| nat.keepalive(), |s| Duration::from_secs(u64::from(s)));
    match measured {
        Some(m) if m < base => m,
        _ => base,
    }
}

/// A set of ports, as merged sorted ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports(Vec<PortRange>);

impl Ports {
    pub fn new(ranges: impl IntoIterator<Item = PortRange>) -> Self {
        let mut v: Vec<PortRange> = ranges.into_iter().collect();
        v.sort();
        let mut merged: Vec<PortRange> = Vec::with_capacity(v.len());
        for r in v {
            match merged.last_mut() {
                Some(last) if u32::from(r.start) <= u32::from(last.end) + 1 => {
                    last.end = last.end.max(r.end)
                }
                _ => merged.push(r),
            }
        }
        Self(merged)
    }

    pub fn contains(&self, port: u16) -> bool {
        let i = self.0.partition_point(|r| r.end < port);
        self.0.get(i).is_some_and(|r| r.contains(port))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }
}

/// What the running games want from the network.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tuning {
    /// Discovery ports and groups carried by LAN emulation.
    pub lan: lan::Profile,
    /// Ports of high-priority games: their packets go before bulk traffic and the outer
    /// datagrams carry DSCP EF.
    pub priority: Ports,
    /// The smallest MTU a game asks for.
    pub mtu: Option<u16>,
    /// The shortest keepalive a game asks for, in seconds.
    pub keepalive: Option<u16>,
}

/// Tuning for a set of running games.
pub fn tuning<'a>(games: impl IntoIterator<Item = &'a Profile>) -> Tuning {
    let mut t = Tuning::default();
    let mut priority = Vec::new();
    for g in games {
        let discovery = || g.discovery_ports.iter().flat_map(PortRange::iter);
        if g.broadcast || !g.multicast_groups.is_empty() {
            t.lan.ports.extend(discovery());
            t.lan.groups.extend(g.multicast_groups.iter().copied());
            if g.physical_capture {
                t.lan.physical_ports.extend(discovery());
            }
        }
        if g.priority == Priority::High {
            priority.extend(g.ports.iter().chain(&g.discovery_ports).copied());
        }
        t.mtu = smallest(t.mtu, g.mtu);
        t.keepalive = smallest(t.keepalive, g.keepalive);
    }
    t.priority = Ports::new(priority);
    t
}

/// Whether an IPv4 packet is to or from one of `ports` (TCP or UDP, first fragment).
pub fn is_priority(packet: &[u8], ports: &Ports) -> bool {
    if ports.is_empty() || packet.len() < 20 || packet[0] >> 4 != 4 {
        return false;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
    if !matches!(packet[9], 6 | 17) || fragment_offset != 0 || packet.len() < ihl + 4 {
        return false;
    }
    let src = u16::from_be_bytes([packet[ihl], packet[ihl + 1]]);
    let dst = u16::from_be_bytes([packet[ihl + 2], packet[ihl + 3]]);
    ports.contains(src) || ports.contains(dst)
}

fn smallest(a: Option<u16>, b: Option<u16>) -> Option<u16> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

pub mod builtin;
pub mod steam;

#[cfg(test)]
mod tests;
