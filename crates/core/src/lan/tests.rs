use super::*;

const ME: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);
const PARTY_BCAST: Ipv4Addr = Ipv4Addr::new(10, 66, 255, 255);
const MDNS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);

#[allow(clippy::disallowed_methods)]
fn start() -> Instant {
    Instant::now()
}

fn udp(dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    build_udp(
        SocketAddrV4::new(ME, 50_000),
        SocketAddrV4::new(dst, port),
        payload,
    )
}

fn members(n: u8) -> Vec<Member> {
    (3..3 + n)
        .map(|i| Member {
            ip: Ipv4Addr::new(10, 66, 0, i),
            connected: true,
        })
        .collect()
}

fn capture(lan: &mut Lan, packet: &[u8], now: Instant) -> Capture {
    lan.capture(packet, Via::Tun, Some(PARTY_BCAST), &members(3), now)
}

#[test]
fn classification_of_party_lan_destinations() {
    let b = Some(PARTY_BCAST);
    let kind = |dst| match classify(&udp(dst, 7777, b"x"), b) {
        Class::Lan(d) => Some(d.kind),
        _ => None,
    };
    assert_eq!(kind(PARTY_BCAST), Some(Kind::Broadcast));
    assert_eq!(kind(Ipv4Addr::BROADCAST), Some(Kind::LimitedBroadcast));
    assert_eq!(kind(MDNS), Some(Kind::Multicast));
    assert_eq!(
        kind(Ipv4Addr::new(239, 255, 255, 250)),
        Some(Kind::Multicast)
    );
    assert_eq!(kind(Ipv4Addr::new(239, 0, 0, 1)), Some(Kind::Multicast));
    // Unicast, another network's broadcast, and the party broadcast of a /24 inside our /16.
    assert_eq!(kind(Ipv4Addr::new(10, 66, 0, 3)), None);
    assert_eq!(kind(Ipv4Addr::new(192, 168, 1, 255)), None);
    assert_eq!(kind(Ipv4Addr::new(10, 66, 0, 255)), None);
    // Without a party, only the limited broadcast and multicast are LAN destinations.
    assert!(matches!(
        classify(&udp(PARTY_BCAST, 7777, b"x"), None),
        Class::NotLan
    ));

    let Class::Lan(d) = classify(&udp(PARTY_BCAST, 27015, b"hello"), b) else {
        panic!("a UDP broadcast is LAN traffic");
    };
    assert_eq!(d.src, SocketAddrV4::new(ME, 50_000));
    assert_eq!(d.dst, SocketAddrV4::new(PARTY_BCAST, 27015));
    assert_eq!(d.size, 28 + 5);
}

#[test]
fn non_udp_fragments_and_malformed_packets_are_not_carried() {
    let b = Some(PARTY_BCAST);
    let mut icmp = udp(PARTY_BCAST, 7777, b"x");
    icmp[9] = 1;
    assert_eq!(classify(&icmp, b), Class::Unsupported("not UDP"));
    let mut frag = udp(PARTY_BCAST, 7777, b"x");
    frag[6] = 0x20; // more fragments
    assert_eq!(classify(&frag, b), Class::Unsupported("fragmented"));
    let mut later = udp(PARTY_BCAST, 7777, b"x");
    later[7] = 0x10; // offset
    assert_eq!(classify(&later, b), Class::Unsupported("fragmented"));
    let mut short_udp = udp(PARTY_BCAST, 7777, b"x");
    short_udp[24..26].copy_from_slice(&200u16.to_be_bytes()); // UDP length beyond the packet
    assert_eq!(classify(&short_udp, b), Class::Unsupported("malformed"));
    let mut tiny_udp = udp(PARTY_BCAST, 7777, b"x");
    tiny_udp[24..26].copy_from_slice(&4u16.to_be_bytes()); // shorter than its own header
    assert_eq!(classify(&tiny_udp, b), Class::Unsupported("malformed"));
    assert_eq!(from_physical(&tiny_udp, ME, PARTY_BCAST), None);
    let mut long_total = udp(PARTY_BCAST, 7777, b"x");
    long_total[2..4].copy_from_slice(&500u16.to_be_bytes());
    assert_eq!(classify(&long_total, b), Class::NotLan);
    assert_eq!(classify(&[0x45; 10], b), Class::NotLan);
    assert_eq!(classify(&[0x60; 40], b), Class::NotLan); // IPv6
    assert_eq!(classify(&[], b), Class::NotLan);
}

fn igmp(payload: &[u8]) -> Vec<u8> {
    let mut p = udp(Ipv4Addr::new(224, 0, 0, 22), 0, &[]);
    p.truncate(20);
    p.extend_from_slice(payload);
    let len = u16::try_from(p.len()).expect("small");
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[9] = PROTO_IGMP;
    p
}

#[test]
fn igmp_joins_and_leaves_change_the_forwarded_groups() {
    let now = start();
    let g = Ipv4Addr::new(239, 1, 2, 3);
    let mut lan = Lan::new(1);
    let gen0 = lan.generation();
    // IGMPv2 report, then the packet to the group on a forwarded port goes out.
    let v2 = igmp(&[0x16, 0, 0, 0, 239, 1, 2, 3]);
    assert_eq!(capture(&mut lan, &v2, now), Capture::Memberships);
    assert!(lan.joined().contains(&g));
    assert!(lan.groups().contains(&g));
    assert_ne!(lan.generation(), gen0);
    assert!(matches!(
        capture(&mut lan, &udp(g, 7777, b"a"), now),
        Capture::Forward(_)
    ));
    // IGMPv2 leave.
    capture(&mut lan, &igmp(&[0x17, 0, 0, 0, 239, 1, 2, 3]), now);
    assert!(!lan.joined().contains(&g));
    assert_eq!(
        capture(&mut lan, &udp(g, 7777, b"b"), now),
        Capture::Dropped(Drop::NotForwarded)
    );
    // IGMPv3: one record CHANGE_TO_EXCLUDE (join) with an aux word and a source to skip,
    // then CHANGE_TO_INCLUDE {} (leave) for another group.
    let mut v3 = vec![0x22, 0, 0, 0, 0, 0, 0, 2];
    v3.extend_from_slice(&[4, 1, 0, 1, 239, 9, 9, 9, 1, 2, 3, 4, 0, 0, 0, 0]);
    v3.extend_from_slice(&[3, 0, 0, 0, 239, 1, 2, 3]);
    assert_eq!(
        classify(&igmp(&v3), None),
        Class::Igmp(vec![
            Membership::Join(Ipv4Addr::new(239, 9, 9, 9)),
            Membership::Leave(g)
        ])
    );
    // Truncated records stop the parse without panicking; unicast groups are ignored.
    assert_eq!(classify(&igmp(&v3[..20]), None), Class::Igmp(vec![]));
    assert_eq!(
        classify(&igmp(&[0x16, 0, 0, 0, 10, 0, 0, 1]), None),
        Class::Igmp(vec![Membership::Join(Ipv4Addr::new(10, 0, 0, 1))]),
        "v1/v2 reports carry the group as given; the kernel only sends multicast ones"
    );
    lan.clear_joined();
    assert!(lan.joined().is_empty());
}

#[test]
fn only_forwarded_ports_and_groups_go_out_and_all_forwards_everything() {
    let now = start();
    let mut lan = Lan::new(1);
    for port in DEFAULT_PORTS {
        assert!(
            matches!(
                capture(&mut lan, &udp(PARTY_BCAST, port, &port.to_be_bytes()), now),
                Capture::Forward(_)
            ),
            "default port {port}"
        );
    }
    assert!(matches!(
        capture(&mut lan, &udp(MDNS, 5353, b"q"), now),
        Capture::Forward(_)
    ));
    let other_group = Ipv4Addr::new(239, 7, 7, 7);
    assert_eq!(
        capture(&mut lan, &udp(other_group, 7777, b"g"), now),
        Capture::Dropped(Drop::NotForwarded)
    );
    assert_eq!(
        capture(&mut lan, &udp(PARTY_BCAST, 12_345, b"p"), now),
        Capture::Dropped(Drop::NotForwarded)
    );
    // The player's allow-list applies at once.
    let mut s = lan.settings().clone();
    s.ports.insert(12_345);
    s.groups.insert(other_group);
    lan.set_settings(s);
    assert!(matches!(
        capture(&mut lan, &udp(PARTY_BCAST, 12_345, b"p2"), now),
        Capture::Forward(_)
    ));
    assert!(matches!(
        capture(&mut lan, &udp(other_group, 7777, b"g2"), now),
        Capture::Forward(_)
    ));
    // A profile's ports and groups too.
    lan.set_profile(Profile {
        ports: [27_960].into(),
        groups: [Ipv4Addr::new(225, 1, 1, 1)].into(),
        physical_ports: BTreeSet::new(),
    });
    assert!(lan.ports().contains(&27_960));
    assert!(lan.groups().contains(&Ipv4Addr::new(225, 1, 1, 1)));
    assert!(matches!(
        capture(&mut lan, &udp(Ipv4Addr::BROADCAST, 27_960, b"q3"), now),
        Capture::Forward(_)
    ));
    // `all`: any port, any group.
    let mut s = lan.settings().clone();
    s.all = true;
    let generation = lan.generation();
    lan.set_settings(s);
    assert_ne!(lan.generation(), generation, "routes change with `all`");
    assert!(matches!(
        capture(
            &mut lan,
            &udp(Ipv4Addr::new(239, 200, 0, 1), 1, b"any"),
            now
        ),
        Capture::Forward(_)
    ));
    let c = lan.counters();
    assert_eq!(c.not_forwarded, 2);
    assert_eq!(c.captured, c.forwarded + c.not_forwarded);
}

#[test]
fn fan_out_reaches_every_connected_member_once() {
    let mut all = members(3);
    all.push(all[0]); // listed twice: still one copy
    all.push(Member {
        ip: Ipv4Addr::new(10, 66, 0, 9),
        connected: false,
    });
    let (to, skipped) = fan_out(&all);
    assert_eq!(
        to,
        vec![
            Ipv4Addr::new(10, 66, 0, 3),
            Ipv4Addr::new(10, 66, 0, 4),
            Ipv4Addr::new(10, 66, 0, 5)
        ]
    );
    assert_eq!(
        skipped,
        vec![(Ipv4Addr::new(10, 66, 0, 9), Drop::NotConnected)]
    );
    assert_eq!(fan_out(&[]), (vec![], vec![]));

    let now = start();
    let mut lan = Lan::new(1);
    let out = lan.capture(
        &udp(PARTY_BCAST, 7777, b"lobby"),
        Via::Tun,
        Some(PARTY_BCAST),
        &all,
        now,
    );
    assert_eq!(out, Capture::Forward(to.clone()));
    let event = lan.trace().last().expect("traced");
    assert_eq!(event.sent_to, to);
    assert_eq!(event.skipped.len(), 1);
    assert_eq!(lan.counters().copies, 3);
}

#[test]
fn duplicates_are_dropped_within_the_window_and_pass_after_it() {
    let t0 = start();
    let mut lan = Lan::new(7);
    let p = udp(PARTY_BCAST, 7777, b"announce");
    assert!(matches!(capture(&mut lan, &p, t0), Capture::Forward(_)));
    let t1 = t0 + DEDUP_WINDOW / 2;
    assert_eq!(capture(&mut lan, &p, t1), Capture::Dropped(Drop::Duplicate));
    // Another payload, port or destination is another packet.
    assert!(matches!(
        capture(&mut lan, &udp(PARTY_BCAST, 7777, b"announce2"), t1),
        Capture::Forward(_)
    ));
    assert!(matches!(
        capture(&mut lan, &udp(PARTY_BCAST, 4445, b"announce"), t1),
        Capture::Forward(_)
    ));
    assert!(matches!(
        capture(&mut lan, &udp(Ipv4Addr::BROADCAST, 7777, b"announce"), t1),
        Capture::Forward(_)
    ));
    // The window is counted from the first sighting: a repeat after it passes.
    let t2 = t0 + DEDUP_WINDOW;
    assert!(matches!(capture(&mut lan, &p, t2), Capture::Forward(_)));
    assert_eq!(lan.counters().deduplicated, 1);

    // Received packets are deduplicated per source too.
    let from_peer = build_udp(
        SocketAddrV4::new(Ipv4Addr::new(10, 66, 0, 3), 7777),
        SocketAddrV4::new(PARTY_BCAST, 7777),
        b"x",
    );
    assert_eq!(lan.receive(&from_peer, Some(PARTY_BCAST), t2), Ok(()));
    assert_eq!(
        lan.receive(&from_peer, Some(PARTY_BCAST), t2),
        Err(Drop::Duplicate)
    );
    let c = lan.counters();
    assert_eq!((c.received, c.injected), (2, 1));
}

#[test]
fn the_dedup_table_stays_bounded_under_a_storm_of_distinct_packets() {
    let now = start();
    let mut lan = Lan::new(3);
    let mut s = lan.settings().clone();
    s.rate_packets = u32::MAX;
    s.rate_bytes = u32::MAX;
    lan.set_settings(s);
    for i in 0..3 * DEDUP_CAPACITY as u32 {
        capture(&mut lan, &udp(PARTY_BCAST, 7777, &i.to_be_bytes()), now);
    }
    assert!(lan.dedup.seen.len() <= DEDUP_CAPACITY);
    assert!(lan.dedup.order.len() <= DEDUP_CAPACITY);
    assert!(lan.trace().count() <= TRACE_LEN);
}

#[test]
fn a_storm_is_cut_to_the_rate_limit_per_source() {
    let t0 = start();
    let mut lan = Lan::new(1);
    let mut s = lan.settings().clone();
    s.rate_packets = 100;
    lan.set_settings(s);
    // 10 000 distinct broadcasts over one second: the bucket's second of burst, then its
    // refill of 100 per second.
    let mut forwarded = 0;
    for i in 0..10_000u32 {
        let now = t0 + Duration::from_micros(u64::from(i) * 100);
        if matches!(
            capture(&mut lan, &udp(PARTY_BCAST, 7777, &i.to_be_bytes()), now),
            Capture::Forward(_)
        ) {
            forwarded += 1;
        }
    }
    assert!(
        (190..=201).contains(&forwarded),
        "100 of burst + ~100 refilled, got {forwarded}"
    );
    assert_eq!(lan.counters().rate_limited, 10_000 - forwarded);
    // Another source has its own bucket.
    let other = build_udp(
        SocketAddrV4::new(Ipv4Addr::new(10, 66, 0, 3), 7777),
        SocketAddrV4::new(PARTY_BCAST, 7777),
        b"mine",
    );
    assert_eq!(
        lan.receive(&other, Some(PARTY_BCAST), t0 + Duration::from_secs(1)),
        Ok(())
    );
    // After a quiet second the storming source has a full bucket again.
    let later = t0 + Duration::from_secs(3);
    for i in 0..100u32 {
        assert!(matches!(
            capture(
                &mut lan,
                &udp(PARTY_BCAST, 7777, &(i + 1_000_000).to_be_bytes()),
                later
            ),
            Capture::Forward(_)
        ));
    }
    assert_eq!(
        capture(&mut lan, &udp(PARTY_BCAST, 7777, b"one more"), later),
        Capture::Dropped(Drop::RateLimited)
    );
}

#[test]
fn the_byte_rate_limits_large_packets() {
    let now = start();
    let mut lan = Lan::new(1);
    let mut s = lan.settings().clone();
    s.rate_bytes = 10_000;
    lan.set_settings(s);
    let big = vec![0u8; 1400];
    let mut sent = 0;
    for i in 0..20u8 {
        let mut payload = big.clone();
        payload[0] = i;
        if matches!(
            capture(&mut lan, &udp(PARTY_BCAST, 7777, &payload), now),
            Capture::Forward(_)
        ) {
            sent += 1;
        }
    }
    assert_eq!(sent, 10_000 / (1400 + 28));
}

#[test]
fn physical_capture_is_opt_in_and_rewrites_to_the_party() {
    let now = start();
    let phys_src = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 20), 27_960);
    let subnet_bcast = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 255), 7777);
    let original = build_udp(phys_src, subnet_bcast, b"getinfo");
    let rewritten = from_physical(&original, ME, PARTY_BCAST).expect("a UDP broadcast");
    let Class::Lan(d) = classify(&rewritten, Some(PARTY_BCAST)) else {
        panic!("rewritten to a party broadcast");
    };
    assert_eq!(d.src, SocketAddrV4::new(ME, 27_960));
    assert_eq!(d.dst, SocketAddrV4::new(PARTY_BCAST, 7777));
    assert_eq!(&rewritten[28..], b"getinfo");
    // Both checksums verify: summing a header with its checksum gives zero.
    assert_eq!(checksum(&[&rewritten[..20]]), 0);
    let udp_len = (rewritten.len() - 20) as u16;
    let pseudo = [
        &rewritten[12..20],
        &[0, PROTO_UDP],
        &udp_len.to_be_bytes()[..],
    ]
    .concat();
    assert_eq!(checksum(&[&pseudo, &rewritten[20..]]), 0);
    // Limited broadcast and multicast keep their destination.
    let lb = build_udp(phys_src, SocketAddrV4::new(Ipv4Addr::BROADCAST, 7777), b"x");
    assert_eq!(
        from_physical(&lb, ME, PARTY_BCAST).map(|p| p[16..20].to_vec()),
        Some(vec![255; 4])
    );
    let mut tcp = original.clone();
    tcp[9] = 6;
    assert_eq!(from_physical(&tcp, ME, PARTY_BCAST), None);

    let mut lan = Lan::new(1);
    let peers = members(1);
    assert!(!lan.wants_physical());
    assert_eq!(
        lan.capture(&rewritten, Via::Physical, Some(PARTY_BCAST), &peers, now),
        Capture::Dropped(Drop::PhysicalOff)
    );
    lan.set_profile(Profile {
        physical_ports: [7777].into(),
        ..Profile::default()
    });
    assert!(lan.wants_physical());
    assert!(matches!(
        lan.capture(&rewritten, Via::Physical, Some(PARTY_BCAST), &peers, now),
        Capture::Forward(_)
    ));
    // The same packet seen on the TUN as well (a stack that broadcasts on every
    // interface) goes out once.
    let on_tun = build_udp(
        SocketAddrV4::new(ME, 27_960),
        SocketAddrV4::new(PARTY_BCAST, 7777),
        b"getinfo",
    );
    assert_eq!(
        lan.capture(&on_tun, Via::Tun, Some(PARTY_BCAST), &peers, now),
        Capture::Dropped(Drop::Duplicate)
    );
    assert_eq!(lan.counters().captured_physical, 2);
}

#[test]
fn the_trace_keeps_the_last_events_with_their_fate() {
    let now = start();
    let mut lan = Lan::new(1);
    for i in 0..TRACE_LEN as u32 + 10 {
        capture(
            &mut lan,
            &udp(PARTY_BCAST, 7777, &i.to_be_bytes()),
            now + Duration::from_millis(u64::from(i)),
        );
    }
    assert_eq!(lan.trace().count(), TRACE_LEN);
    let first = lan.trace().next().expect("events");
    assert_eq!(first.datagram.size, 28 + 4);
    assert_eq!(first.at, now + Duration::from_millis(10));
    capture(&mut lan, &udp(PARTY_BCAST, 9, b"no"), now);
    let last = lan.trace().last().expect("events");
    assert_eq!(last.dropped, Some(Drop::NotForwarded));
    assert!(last.sent_to.is_empty());
    assert_eq!(last.via, Via::Tun);
}
