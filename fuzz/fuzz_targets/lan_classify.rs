#![no_main]
//! LAN emulation's view of packets: whatever a local program writes into the TUN, or a peer
//! sends through its session, is classified, captured or received without a panic, and
//! what the classifier and the physical rewrite return is consistent with the bytes.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lanrage_core::lan::{self, Capture, Class, Lan, Member, Via};
use libfuzzer_sys::fuzz_target;

const ME: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);
const BCAST: Ipv4Addr = Ipv4Addr::new(10, 66, 255, 255);

fuzz_target!(|data: &[u8]| {
    match lan::classify(data, Some(BCAST)) {
        Class::Lan(d) => {
            assert!(d.size <= data.len() && d.size >= 28);
            let dst = *d.dst.ip();
            assert!(dst == BCAST || dst.is_broadcast() || dst.is_multicast());
        }
        Class::Igmp(changes) => assert!(changes.len() <= data.len() / 8),
        Class::Unsupported(_) | Class::NotLan => {}
    }
    if let Some(p) = lan::from_physical(data, ME, BCAST) {
        match lan::classify(&p, Some(BCAST)) {
            Class::Lan(d) => assert_eq!(*d.src.ip(), ME),
            other => panic!("a rewritten packet is LAN traffic: {other:?}"),
        }
    }
    let now = Instant::now();
    let mut lan = Lan::new(1);
    let members = [Member { ip: Ipv4Addr::new(10, 66, 0, 3), connected: true }];
    if let Capture::Forward(to) = lan.capture(data, Via::Tun, Some(BCAST), &members, now) {
        assert_eq!(to, vec![members[0].ip]);
    }
    let _ = lan.receive(data, Some(BCAST), now + Duration::from_millis(1));
    assert!(lan.trace().count() <= 2);
});
