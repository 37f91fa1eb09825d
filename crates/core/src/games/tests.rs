use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use lanrage_proto::games::parse_file;

use super::*;

fn profiles(text: &str) -> Vec<Profile> {
    let (ok, errs) = parse_file(text, "test.toml", "test", "test");
    assert!(errs.is_empty(), "{errs:?}");
    ok
}

const SAMPLE: &str = r#"
[openarena]
name = "OpenArena"
executables = ["openarena", { name = "ioq3ded", args = "*baseoa*" }]
ports = ["27960-27963"]
broadcast = true
priority = "high"

[quake3]
name = "Quake III Arena"
executables = ["ioq3ded", "quake3.exe"]
ports = ["27960-27963"]
broadcast = true

[rocket_league]
name = "Rocket League"
executables = ["RocketLeague.exe"]
titles = ["Rocket League*"]
ports = [7777, "7778-7779"]
priority = "high"
keepalive = 10

[battlefield]
name = "Battlefield"
executables = ["bf*.exe"]
ports = [25200]

[minecraft]
name = "Minecraft Java Edition"
executables = [{ name = "java", args = "*minecraft*" }, { name = "javaw.exe", args = "*minecraft*" }]
ports = [25565]
protocol = "both"
discovery_ports = [4445]
broadcast = true
multicast_groups = ["224.0.2.60"]
mtu = 1380

[zero_ad]
name = "0 A.D."
executables = ["pyrogenesis", "0ad"]
ports = [20595]
"#;

fn detector() -> Detector {
    Detector::new(Index::new(profiles(SAMPLE)))
}

fn proc(pid: u32, name: &str, exe: Option<&str>, cmd: &[&str]) -> Process {
    Process {
        pid,
        name: name.to_owned(),
        exe: exe.map(str::to_owned),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn matched(d: &mut Detector, p: &Process) -> Option<(String, f64)> {
    d.match_process(p).map(|(p, s)| (p.id.clone(), s))
}

#[test]
fn glob_matches_like_a_shell() {
    let table = [
        ("bf*.exe", "bf4.exe", true),
        ("bf*.exe", "bf2042.exe", true),
        ("bf*.exe", "bfv.exe", true),
        ("bf*.exe", "bf4", false),
        ("bf*.exe", "abf4.exe", false),
        ("*.x86_64", "valheim.x86_64", true),
        ("game?", "game2", true),
        ("game?", "game", false),
        ("game?", "game22", false),
        ("*baseoa*", "baseoa", true),
        ("*baseoa*", "fs_game=baseoa/x", true),
        ("a*b*c", "axbyC", false), // patterns are lower-cased by the caller
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("**", "", true),
    ];
    for (pattern, text, want) in table {
        assert_eq!(glob(pattern, text), want, "{pattern} ~ {text}");
    }
}

#[test]
fn names_are_normalised_and_paths_cut_to_the_file_name() {
    assert_eq!(normalize("RocketLeague.EXE"), "rocketleague");
    assert_eq!(normalize("start.bat"), "start");
    assert_eq!(normalize(".exe"), ".exe");
    assert_eq!(basename("/usr/lib/ioquake3/ioq3ded"), "ioq3ded");
    assert_eq!(
        basename(r"C:\Games\RL\RocketLeague.exe"),
        "RocketLeague.exe"
    );
    assert_eq!(basename("plain"), "plain");
}

#[test]
fn a_comm_cut_to_15_bytes_is_not_matched_on_its_own() {
    let p = proc(
        7,
        "RocketLeague.ex",
        Some("/tmp/x/RocketLeague.exe"),
        &["/tmp/x/RocketLeague.exe", "-nosplash"],
    );
    assert_eq!(process_names(&p), vec!["RocketLeague.exe".to_owned()]);
    // Under Wine the executable is the loader and argv[0] a Windows path.
    let wine = proc(
        8,
        "RocketLeague.ex",
        Some("/usr/lib/wine/wine64-preloader"),
        &[r"Z:\games\rl\Binaries\Win64\RocketLeague.exe"],
    );
    let mut d = detector();
    assert_eq!(
        matched(&mut d, &wine).map(|m| m.0).as_deref(),
        Some("rocket_league")
    );
    // Only the cut name is known (argv unreadable): still recognised, a little less sure.
    let bare = proc(9, "RocketLeague.ex", None, &[]);
    assert_eq!(
        matched(&mut d, &bare),
        Some(("rocket_league".to_owned(), Score::TRUNCATED))
    );
}

#[test]
fn exact_glob_args_and_fuzzy_matches_score_in_that_order() {
    let mut d = detector();
    let cases: &[(Process, Option<(&str, f64)>)] = &[
        (
            proc(
                1,
                "RocketLeague.ex",
                Some("/g/RocketLeague.exe"),
                &["/g/RocketLeague.exe"],
            ),
            Some(("rocket_league", Score::EXACT)),
        ),
        (
            proc(2, "rocketleague", None, &["rocketleague"]),
            Some(("rocket_league", Score::EXACT)),
        ),
        (
            proc(
                3,
                "ioq3ded",
                Some("/usr/lib/ioquake3/ioq3ded"),
                &[
                    "/usr/lib/ioquake3/ioq3ded",
                    "+set",
                    "com_basegame",
                    "baseoa",
                ],
            ),
            Some(("openarena", Score::EXACT_ARGS)),
        ),
        (
            proc(
                4,
                "ioq3ded",
                Some("/usr/lib/ioquake3/ioq3ded"),
                &["/usr/lib/ioquake3/ioq3ded", "+map", "q3dm17"],
            ),
            Some(("quake3", Score::EXACT)),
        ),
        (
            proc(5, "bf4.exe", None, &["C:\\bf4.exe"]),
            Some(("battlefield", Score::GLOB)),
        ),
        (
            proc(6, "BF2042.exe", None, &[]),
            Some(("battlefield", Score::GLOB)),
        ),
        (
            proc(
                7,
                "java",
                Some("/usr/lib/jvm/bin/java"),
                &["java", "-cp", "x.jar", "net.minecraft.client.main.Main"],
            ),
            Some(("minecraft", Score::EXACT_ARGS)),
        ),
        (
            proc(
                8,
                "java",
                Some("/usr/lib/jvm/bin/java"),
                &["java", "-jar", "gradle.jar"],
            ),
            None,
        ),
        (
            proc(9, "pyrogenesis", None, &["pyrogenesis"]),
            Some(("zero_ad", Score::EXACT)),
        ),
        (
            proc(10, "RocketLeage.exe", None, &["RocketLeage.exe"]),
            Some(("rocket_league", Score::fuzzy(1.0 - 1.0 / 12.0))),
        ),
        (proc(11, "RockLeague.exe", None, &["RockLeague.exe"]), None), // 0.83 < 0.85
        (proc(12, "bash", Some("/usr/bin/bash"), &["bash"]), None),
        (
            proc(
                13,
                "systemd",
                Some("/usr/lib/systemd/systemd"),
                &["/sbin/init"],
            ),
            None,
        ),
        (proc(14, "bf4", None, &["bf4"]), None), // the glob names a Windows executable
    ];
    for (p, want) in cases {
        let got = matched(&mut d, p);
        match (got, want) {
            (None, None) => {}
            (Some((id, score)), Some((wid, wscore))) => {
                assert_eq!(id, *wid, "{p:?}");
                assert!((score - wscore).abs() < 1e-9, "{p:?}: {score} vs {wscore}");
            }
            (got, want) => panic!("{p:?}: got {got:?}, want {want:?}"),
        }
    }
    const { assert!(Score::EXACT_ARGS > Score::EXACT && Score::EXACT > Score::GLOB_ARGS) };
    assert!(Score::GLOB > Score::fuzzy(0.99) && Score::fuzzy(0.99) > Score::fuzzy(0.85));
    assert!((Score::fuzzy(0.85) - Score::FUZZY_MIN).abs() < 1e-12);
}

#[test]
fn the_fuzzy_threshold_is_0_85_normalised_levenshtein() {
    // "rocketleague" (12): one edit is 0.917, two edits 0.833.
    assert!(strsim::normalized_levenshtein("rocketleage", "rocketleague") >= FUZZY_THRESHOLD);
    assert!(strsim::normalized_levenshtein("rockleague", "rocketleague") < FUZZY_THRESHOLD);
    let mut d = detector();
    assert!(matched(&mut d, &proc(1, "rocketleagu", None, &[])).is_some());
    assert!(matched(&mut d, &proc(1, "rocketlea", None, &[])).is_none());
    // Short names never match fuzzily: "0ad" vs "oad" would be 0.67 anyway, and "bash"
    // vs "bast" must not become a game.
    assert!(matched(&mut d, &proc(1, "oad", None, &[])).is_none());
}

#[test]
fn names_are_looked_up_once() {
    let mut d = detector();
    let p = proc(
        1,
        "ioq3ded",
        Some("/usr/lib/ioquake3/ioq3ded"),
        &["/usr/lib/ioquake3/ioq3ded"],
    );
    for _ in 0..3 {
        d.scan(&Observation {
            processes: vec![p.clone()],
            ..Observation::default()
        });
    }
    assert_eq!(d.cached_names(), 1);
}

#[test]
fn process_beats_window_beats_port_and_agreeing_evidence_adds_up() {
    let mut d = detector();
    let obs = Observation {
        processes: vec![
            proc(
                10,
                "RocketLeague.ex",
                Some("/g/RocketLeague.exe"),
                &["/g/RocketLeague.exe"],
            ),
            proc(20, "wine-thing", None, &["wine-thing"]),
            proc(30, "server", None, &["./server"]),
        ],
        windows: vec![Window {
            pid: Some(20),
            title: "Rocket League (64-bit, DX11)".into(),
        }],
        sockets: vec![
            Socket {
                pid: 10,
                transport: Transport::Udp,
                port: 7777,
            },
            Socket {
                pid: 30,
                transport: Transport::Udp,
                port: 20595,
            },
            Socket {
                pid: 31,
                transport: Transport::Tcp,
                port: 25565,
            },
            Socket {
                pid: 32,
                transport: Transport::Udp,
                port: 27960,
            }, // two profiles list it
            Socket {
                pid: 33,
                transport: Transport::Udp,
                port: 5353,
            },
        ],
    };
    let found = d.scan(&obs);
    let by_id = |id: &str| found.iter().find(|g| g.id == id).cloned();

    let rl = by_id("rocket_league").expect("rocket league");
    assert_eq!(
        (rl.method, rl.pid),
        (Method::Process, 10),
        "the process wins over the window"
    );
    assert!(
        (rl.confidence - combine([Score::EXACT, Score::PORT_UDP])).abs() < 1e-3,
        "{rl:?}"
    );
    assert!(
        rl.confidence > Score::EXACT,
        "the port agrees and adds to it"
    );

    let zero_ad = by_id("zero_ad").expect("a unique UDP port alone finds it");
    assert_eq!((zero_ad.method, zero_ad.pid), (Method::Port, 30));
    assert!((zero_ad.confidence - Score::PORT_UDP).abs() < 1e-9);
    assert!(zero_ad.confidence < rl.confidence);

    let mc = by_id("minecraft").expect("a TCP port too");
    assert!((mc.confidence - Score::PORT_TCP).abs() < 1e-9);
    // A port two profiles share is too weak alone; mDNS is never a game.
    assert!(by_id("openarena").is_none() && by_id("quake3").is_none());
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found.windows(2).all(|w| w[0].confidence >= w[1].confidence),
        "sorted"
    );

    // The window alone (its process unknown) is a "probably".
    let only_window = Observation {
        windows: vec![Window {
            pid: None,
            title: "Rocket League (64-bit)".into(),
        }],
        ..Observation::default()
    };
    let w = d.scan(&only_window);
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].method, w[0].pid), (Method::Window, 0));
    assert_eq!(w[0].summary(), "probably Rocket League");
    assert_eq!(rl.summary(), "definitely Rocket League");
}

#[test]
fn a_title_without_patterns_matches_the_game_name_exactly() {
    let d = detector();
    assert_eq!(
        d.match_title("0 a.d.").map(|(p, s)| (p.id.as_str(), s)),
        Some(("zero_ad", Score::TITLE_EXACT))
    );
    assert!(d.match_title("0 A.D. launcher").is_none());
    assert!(d.match_title("   ").is_none());
}

#[test]
fn the_tracker_reports_starts_and_stops_and_keeps_a_bounded_history() {
    let mut d = detector();
    let mut t = Tracker::default();
    let game = Observation {
        processes: vec![proc(5, "pyrogenesis", None, &["pyrogenesis"])],
        ..Observation::default()
    };
    let ev = t.update(d.scan(&game), 1_000);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].event, ev[0].id.as_str(), ev[0].pid),
        (EventKind::Started, "zero_ad", 5)
    );
    assert!(
        t.update(d.scan(&game), 6_000).is_empty(),
        "still running: no event"
    );
    assert_eq!(t.active()[0].since_ms, 1_000, "first seen, not last");
    let ev = t.update(d.scan(&Observation::default()), 11_000);
    assert_eq!((ev[0].event, ev[0].at_ms), (EventKind::Stopped, 11_000));
    assert!(t.active().is_empty());
    for i in 0..HISTORY_LEN as u64 {
        t.update(d.scan(&game), 20_000 + 2 * i);
        t.update(Vec::new(), 20_001 + 2 * i);
    }
    assert_eq!(t.history().count(), HISTORY_LEN);
    assert_eq!(
        t.history().last().map(|e| e.event),
        Some(EventKind::Stopped)
    );
}

#[test]
fn keepalive_follows_the_game_then_the_nat_and_never_outlives_the_binding() {
    use Filtering as F;
    use Mapping as M;
    let table = [
        (
            M::EndpointIndependent,
            F::EndpointIndependent,
            NatClass::FullCone,
            60,
        ),
        (
            M::EndpointIndependent,
            F::AddressDependent,
            NatClass::AddressRestricted,
            30,
        ),
        (
            M::EndpointIndependent,
            F::AddressAndPortDependent,
            NatClass::PortRestricted,
            15,
        ),
        (
            M::AddressAndPortDependent,
            F::AddressAndPortDependent,
            NatClass::Symmetric,
            5,
        ),
        (
            M::AddressDependent,
            F::EndpointIndependent,
            NatClass::Symmetric,
            5,
        ),
        (M::EndpointDependent, F::Unknown, NatClass::Symmetric, 5),
        (M::EndpointIndependent, F::Unknown, NatClass::Unknown, 25),
        (M::Unknown, F::EndpointIndependent, NatClass::Unknown, 25),
    ];
    for (m, f, class, secs) in table {
        let c = NatClass::from_behaviour(m, f);
        assert_eq!(c, class, "{m:?}/{f:?}");
        assert_eq!(keepalive(None, c, None), Duration::from_secs(secs));
    }
    let s = Duration::from_secs;
    assert_eq!(
        keepalive(Some(10), NatClass::FullCone, None),
        s(10),
        "the game's own value wins"
    );
    assert_eq!(keepalive(Some(10), NatClass::Symmetric, None), s(10));
    assert_eq!(
        keepalive(None, NatClass::FullCone, Some(s(20))),
        s(20),
        "drops seen: raised"
    );
    assert_eq!(keepalive(Some(10), NatClass::FullCone, Some(s(4))), s(4));
    assert_eq!(
        keepalive(None, NatClass::PortRestricted, Some(s(25))),
        s(15),
        "a longer lifetime changes nothing"
    );
}

#[test]
fn tuning_collects_discovery_priority_mtu_and_keepalive() {
    let index = Index::new(profiles(SAMPLE));
    let pick = |ids: &[&str]| tuning(ids.iter().filter_map(|id| index.get(id)));

    let none = pick(&[]);
    assert_eq!(none, Tuning::default());

    let oa = pick(&["openarena"]);
    assert_eq!(oa.lan.ports, (27960..=27963).collect::<BTreeSet<u16>>());
    assert!(oa.lan.groups.is_empty() && oa.lan.physical_ports.is_empty());
    assert!(oa.priority.contains(27961) && !oa.priority.contains(27964));
    assert_eq!((oa.mtu, oa.keepalive), (None, None));

    let mixed = pick(&["minecraft", "rocket_league", "battlefield"]);
    assert_eq!(
        mixed.lan.ports,
        BTreeSet::from([4445]),
        "only games that broadcast"
    );
    assert_eq!(
        mixed.lan.groups,
        BTreeSet::from([Ipv4Addr::new(224, 0, 2, 60)])
    );
    assert!(
        mixed.priority.contains(7778),
        "rocket league is high priority"
    );
    assert!(
        !mixed.priority.contains(25565) && !mixed.priority.contains(25200),
        "medium is not"
    );
    assert_eq!((mixed.mtu, mixed.keepalive), (Some(1380), Some(10)));
}

#[test]
fn port_sets_merge_and_answer_membership() {
    let r = |a, b| PortRange { start: a, end: b };
    let p = Ports::new([r(10, 20), r(5, 5), r(21, 30), r(100, 100), r(15, 18)]);
    assert_eq!(p.ranges(), &[r(5, 5), r(10, 30), r(100, 100)]);
    for (port, want) in [
        (4, false),
        (5, true),
        (6, false),
        (10, true),
        (30, true),
        (31, false),
        (100, true),
        (65535, false),
    ] {
        assert_eq!(p.contains(port), want, "{port}");
    }
    assert!(!Ports::default().contains(0));
    let edge = Ports::new([r(65535, 65535), r(0, 0)]);
    assert!(edge.contains(65535) && edge.contains(0));
}

#[test]
fn priority_is_read_from_either_port_of_tcp_and_udp_only() {
    let ports = Ports::new([PortRange::one(27960)]);
    let udp = |src: u16, dst: u16| {
        lan::build_udp(
            std::net::SocketAddrV4::new(Ipv4Addr::new(10, 66, 0, 2), src),
            std::net::SocketAddrV4::new(Ipv4Addr::new(10, 66, 0, 1), dst),
            b"x",
        )
    };
    assert!(is_priority(&udp(40000, 27960), &ports));
    assert!(is_priority(&udp(27960, 40000), &ports));
    assert!(!is_priority(&udp(40000, 40001), &ports));
    let mut tcp = udp(40000, 27960);
    tcp[9] = 6;
    assert!(is_priority(&tcp, &ports));
    let mut icmp = udp(40000, 27960);
    icmp[9] = 1;
    assert!(!is_priority(&icmp, &ports));
    let mut fragment = udp(40000, 27960);
    fragment[7] = 10; // a later fragment has no ports
    assert!(!is_priority(&fragment, &ports));
    assert!(!is_priority(&udp(40000, 27960)[..21], &ports), "truncated");
    assert!(!is_priority(&[0x60; 40], &ports), "IPv6");
    assert!(!is_priority(&udp(40000, 27960), &Ports::default()));
}

#[test]
fn a_user_profile_overrides_the_shipped_one_with_the_same_id() {
    let mut all = profiles(SAMPLE);
    all.extend(profiles(
        "[zero_ad]\nname = \"0 A.D. (mine)\"\nexecutables = [\"my0ad\"]\nports = [20600]\n",
    ));
    let index = Index::new(all);
    assert_eq!(index.len(), 6);
    assert_eq!(
        index.get("zero_ad").map(|p| p.name.as_str()),
        Some("0 A.D. (mine)")
    );
    let mut d = Detector::new(index);
    assert!(
        d.match_process(&proc(1, "pyrogenesis", None, &[]))
            .is_none(),
        "the old name is gone"
    );
    assert!(d.match_process(&proc(1, "my0ad", None, &[])).is_some());
}

fn shipped() -> Vec<Profile> {
    let mut all = Vec::new();
    for (genre, text) in builtin::FILES {
        let (ok, errs) = parse_file(text, &format!("profiles/{genre}.toml"), genre, "built-in");
        assert!(errs.is_empty(), "{errs:#?}");
        all.extend(ok);
    }
    all
}

#[test]
fn every_shipped_profile_passes_validation_and_every_file_is_embedded() {
    let all = shipped();
    assert!(all.len() >= 150, "{} profiles", all.len());
    let ids: BTreeSet<&str> = all.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "ids are unique across files");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("profiles/")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let stem = p.file_stem()?.to_string_lossy().into_owned();
            (p.extension()? == "toml").then_some(stem)
        })
        .collect();
    on_disk.sort();
    let embedded: Vec<String> = builtin::FILES
        .iter()
        .map(|(g, _)| (*g).to_owned())
        .collect();
    assert_eq!(
        embedded, on_disk,
        "builtin.rs lists exactly the files in profiles/"
    );
    for p in &all {
        assert!(
            !p.ports.is_empty(),
            "{}: a game without ports cannot be tuned",
            p.id
        );
    }
}

#[test]
fn the_match_table_holds_against_the_shipped_profiles() {
    let mut d = Detector::new(Index::new(shipped()));
    let mut checked = 0;
    for (n, line) in include_str!("match_table.txt").lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cols.len(), 3, "line {}: {line}", n + 1);
        let (name, arg, want) = (cols[0], cols[1], cols[2]);
        let mut cmd = vec![name.to_owned()];
        if arg != "-" {
            cmd.push(arg.to_owned());
        }
        // The kernel's `comm` is the name cut to 15 bytes.
        let comm: String = name
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() <= 15)
            .map(|(_, c)| c)
            .collect();
        let p = Process {
            pid: 1,
            name: comm,
            exe: None,
            cmd,
        };
        let got = d.match_process(&p).map(|(p, _)| p.id.clone());
        let want = (want != "none").then(|| want.to_owned());
        assert_eq!(got, want, "line {}: {line}", n + 1);
        checked += 1;
    }
    assert!(checked >= 50, "{checked} cases");
}
