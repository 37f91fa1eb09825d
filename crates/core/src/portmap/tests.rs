use super::*;

const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(100, 128, 66, 2);
const PORT: u16 = 51820;

/// Any instant: the mapper only ever sees time through its arguments.
fn start() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

/// How a gateway answers, following the RFCs' wire formats.
#[derive(Clone, Copy)]
enum Gateway {
    /// Speaks PCP and NAT-PMP; maps to `port` for `life` seconds.
    Both { port: u16, life: u32 },
    /// Speaks NAT-PMP only: PCP requests get NAT-PMP's "unsupported version".
    NatPmpOnly { port: u16, life: u32 },
    /// Answers PCP with this result code.
    PcpRefuses(u8),
}

fn answer(gw: Gateway, req: &[u8]) -> Option<Vec<u8>> {
    match (gw, req[0]) {
        (Gateway::Both { port, life }, 2) => Some(pcp_success(req, port, life)),
        (Gateway::PcpRefuses(code), 2) => {
            let mut a = pcp_success(req, 0, 0);
            a[3] = code;
            Some(a)
        }
        (Gateway::NatPmpOnly { .. }, 2) => Some(vec![0, 0x81, 0, 1, 0, 0, 0, 9]),
        (Gateway::Both { port, life } | Gateway::NatPmpOnly { port, life }, 0) => {
            Some(natpmp(req, port, life))
        }
        _ => None,
    }
}

fn pcp_success(req: &[u8], port: u16, life: u32) -> Vec<u8> {
    assert_eq!(req.len(), 60, "PCP MAP request is 60 bytes");
    assert_eq!(&req[8..24], &ME.to_ipv6_mapped().octets(), "client IP");
    let mut a = vec![2, 0x81, 0, 0];
    a.extend_from_slice(&life.to_be_bytes());
    a.extend_from_slice(&77u32.to_be_bytes()); // epoch
    a.extend_from_slice(&[0; 12]);
    a.extend_from_slice(&req[24..40]); // nonce, protocol, reserved
    a.extend_from_slice(&req[40..42]); // internal port
    a.extend_from_slice(&port.to_be_bytes());
    a.extend_from_slice(&PUBLIC.to_ipv6_mapped().octets());
    a
}

fn natpmp(req: &[u8], port: u16, life: u32) -> Vec<u8> {
    match req[1] {
        0 => {
            let mut a = vec![0, 128, 0, 0, 0, 0, 0, 77];
            a.extend_from_slice(&PUBLIC.octets());
            a
        }
        1 => {
            assert_eq!(req.len(), 12);
            let mut a = vec![0, 129, 0, 0, 0, 0, 0, 77];
            a.extend_from_slice(&req[4..6]);
            a.extend_from_slice(&port.to_be_bytes());
            a.extend_from_slice(&life.to_be_bytes());
            a
        }
        _ => panic!("unexpected NAT-PMP opcode {}", req[1]),
    }
}

/// Runs the mapper against `gw` for `span`, answering every request at once.
fn run(m: &mut PortMapper, gw: Option<Gateway>, mut now: Instant, span: Duration) -> Instant {
    let end = now + span;
    loop {
        m.handle_timeout(now);
        while let Some(req) = m.poll_transmit() {
            if let Some(a) = gw.and_then(|g| answer(g, &req)) {
                m.handle_datagram(&a, now);
            }
        }
        let next = m.poll_timeout().expect("always a deadline");
        if next > end {
            return end;
        }
        now = next.max(now);
    }
}

#[test]
fn a_pcp_gateway_grants_the_mapping_and_it_is_renewed_with_the_same_nonce() {
    let t0 = start();
    let mut m = PortMapper::new(GW, ME, PORT, 1, t0);
    assert_eq!(m.server(), "192.168.1.1:5351".parse().expect("addr"));
    m.handle_timeout(t0);
    let first = m.poll_transmit().expect("a PCP request at once");
    assert_eq!(first[0], 2);
    assert!(m.handle_datagram(&pcp_success(&first, 40000, 120), t0));
    let got = m.mapping(t0).expect("mapped");
    assert_eq!(got.protocol, Protocol::Pcp);
    assert_eq!(got.external, SocketAddrV4::new(PUBLIC, 40000));
    // Renewed at half the 120 s granted, with the same nonce (so the same mapping) and
    // suggesting the port it has.
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    m.handle_timeout(t0 + Duration::from_secs(60));
    let renewal = m.poll_transmit().expect("renewal");
    assert_eq!(&renewal[24..36], &first[24..36]);
    assert_eq!(u16::from_be_bytes([renewal[42], renewal[43]]), 40000);
    // Kept alive for an hour of renewals.
    let gw = Gateway::Both {
        port: 40000,
        life: 120,
    };
    let end = run(
        &mut m,
        Some(gw),
        t0 + Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    assert!(m.mapping(end).is_some());
    assert_eq!(m.failures(), 0);
}

#[test]
fn a_nat_pmp_gateway_is_used_after_it_declines_pcp() {
    let t0 = start();
    let mut m = PortMapper::new(GW, ME, PORT, 2, t0);
    let gw = Gateway::NatPmpOnly {
        port: PORT,
        life: 7200,
    };
    run(&mut m, Some(gw), t0, Duration::from_millis(10));
    let got = m
        .mapping(t0)
        .expect("mapped without waiting for PCP to time out");
    assert_eq!(got.protocol, Protocol::NatPmp);
    assert_eq!(got.external, SocketAddrV4::new(PUBLIC, PORT));
}

#[test]
fn without_a_gateway_both_protocols_are_tried_then_it_waits_minutes() {
    let t0 = start();
    let mut m = PortMapper::new(GW, ME, PORT, 3, t0);
    let mut sent = Vec::new();
    let mut now = t0;
    while now < t0 + Duration::from_secs(10) {
        m.handle_timeout(now);
        while let Some(req) = m.poll_transmit() {
            sent.push((now - t0, req[0]));
        }
        now = m.poll_timeout().expect("value");
    }
    let pcp = sent.iter().filter(|(_, v)| *v == 2).count();
    assert_eq!(pcp, 4, "four PCP requests: {sent:?}");
    // NAT-PMP asks for the address and the mapping, four times, after PCP's 3.75 s.
    let natpmp: Vec<_> = sent.iter().filter(|(_, v)| *v == 0).collect();
    assert_eq!(natpmp.len(), 8);
    assert_eq!(natpmp[0].0, Duration::from_millis(3750));
    assert_eq!(m.failures(), 1);
    assert!(m.mapping(now).is_none());
    assert_eq!(
        m.poll_timeout(),
        Some(t0 + Duration::from_millis(7500) + RETRY_IDLE)
    );
}

#[test]
fn refusals_and_foreign_answers_grant_nothing() {
    let t0 = start();
    let mut m = PortMapper::new(GW, ME, PORT, 4, t0);
    m.handle_timeout(t0);
    let req = m.poll_transmit().expect("value");
    // Another client's nonce, a short packet, garbage: ignored.
    let mut other = pcp_success(&req, 40000, 120);
    other[24] ^= 1;
    for junk in [
        &other[..],
        &other[..30],
        &[2],
        &[0, 129, 0],
        &[],
        &[0xff; 60],
    ] {
        assert!(!m.handle_datagram(junk, t0));
    }
    assert!(m.mapping(t0).is_none());
    // NOT_AUTHORIZED (2): no mapping, and no asking again for minutes.
    let end = run(
        &mut m,
        Some(Gateway::PcpRefuses(2)),
        t0,
        Duration::from_secs(1),
    );
    assert!(m.mapping(end).is_none());
    assert_eq!(m.failures(), 1);
    assert!(m.poll_timeout().expect("value") >= t0 + RETRY_IDLE);
}

#[test]
fn an_unrenewed_mapping_expires_and_release_deletes_it() {
    let t0 = start();
    let mut m = PortMapper::new(GW, ME, PORT, 5, t0);
    let gw = Gateway::Both {
        port: 40000,
        life: 120,
    };
    run(&mut m, Some(gw), t0, Duration::from_millis(1));
    assert!(m.mapping(t0).is_some());
    // The gateway goes silent: the renewals fail and the mapping lapses at 120 s.
    let end = run(&mut m, None, t0, Duration::from_secs(121));
    assert!(m.mapping(end).is_none());
    // A fresh grant, then a release: lifetime 0 for the same nonce.
    run(&mut m, Some(gw), end, Duration::from_secs(400));
    assert!(m.mapping(end + Duration::from_secs(400)).is_some());
    let del = m.release().expect("a delete request");
    assert_eq!(u32::from_be_bytes([del[4], del[5], del[6], del[7]]), 0);
    assert!(m.release().is_none(), "nothing left to release");
}
