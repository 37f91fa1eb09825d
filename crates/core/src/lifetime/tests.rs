use super::*;

fn server() -> SocketAddr {
    "203.0.113.10:3478".parse().expect("addr")
}

fn start() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

/// Answers a request the way `lanrage_relay::answer` does: to RESPONSE-PORT if set.
fn answer(req: &[u8], from_port: u16) -> (u16, Vec<u8>) {
    let Some(Stun::BindingRequest {
        txid,
        response_port,
        ..
    }) = stun::parse(req)
    else {
        panic!("not a binding request");
    };
    let mapped: SocketAddr = format!("198.51.100.2:{from_port}").parse().expect("addr");
    let to = response_port.unwrap_or(from_port);
    (to, stun::binding_success(txid, mapped, None))
}

#[test]
fn a_server_without_response_port_yields_no_lifetime() {
    let t0 = start();
    let mut p = LifetimeProbe::new(server(), 1, t0);
    let mut now = t0;
    for _ in 0..20 {
        while let Some((sock, req)) = p.poll_transmit() {
            // This server ignores RESPONSE-PORT: every answer goes back to its sender.
            let (_, reply) = answer(&req, 40000);
            p.handle_response(sock, server(), &reply, now);
        }
        let Some(next) = p.poll_timeout() else { break };
        now = next;
        p.handle_timeout(now);
    }
    assert!(p.is_done());
    assert_eq!(p.lifetime(), None);
}

#[test]
fn an_unreachable_server_ends_the_measurement_without_a_result() {
    let t0 = start();
    let mut p = LifetimeProbe::new(server(), 2, t0);
    let mut sent = 0;
    let mut now = t0;
    while let Some(next) = p.poll_timeout() {
        while p.poll_transmit().is_some() {
            sent += 1;
        }
        now = next;
        p.handle_timeout(now);
    }
    assert_eq!(sent, SENDS);
    assert!(now - t0 <= Duration::from_secs(3));
    assert_eq!(p.lifetime(), None);
}

#[test]
fn answers_from_elsewhere_or_for_other_transactions_are_ignored() {
    let t0 = start();
    let mut p = LifetimeProbe::new(server(), 3, t0);
    let (sock, req) = p.poll_transmit().expect("X's first request");
    assert_eq!(sock, Socket::X);
    let (_, reply) = answer(&req, 40000);
    p.handle_response(sock, "203.0.113.99:3478".parse().expect("addr"), &reply, t0);
    p.handle_response(Socket::X, server(), b"junk", t0);
    let other = stun::binding_success([9; 12], "198.51.100.2:1".parse().expect("addr"), None);
    p.handle_response(Socket::X, server(), &other, t0);
    assert!(matches!(p.phase, Phase::Establish { .. }));
    p.handle_response(Socket::X, server(), &reply, t0);
    assert_eq!(
        p.poll_timeout(),
        Some(t0 + FIRST_WAIT),
        "X now stays silent for the first wait"
    );
}
