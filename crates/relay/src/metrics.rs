//! The relay's Prometheus metrics: [`render`] turns a [`Load`] into the text format, and
//! [`serve`] (or [`router`], to mount it in another server) answers `GET /metrics` with it.
//!
//! Everything comes from [`Handle::load`], so an embedded relay (the daemon's host mode)
//! serves its own numbers, never another component's.

use std::future::Future;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lanrage_proto::metrics::{self, Exposition, Kind};
use tokio::net::TcpListener;

use crate::{Handle, Load};

/// The relay's metrics in the Prometheus text format. The TURN families appear only when
/// the relay runs TURN.
pub fn render(load: &Load) -> String {
    let mut e = Exposition::new();
    e.family(
        "lanrage_relay_uptime_seconds",
        Kind::Gauge,
        "Seconds since the relay bound its sockets.",
    )
    .sample(&[], load.uptime.as_secs_f64());
    e.family(
        "lanrage_relay_stun_responses_total",
        Kind::Counter,
        "STUN Binding requests answered.",
    )
    .sample(&[], load.stun_answered);
    if load.turn {
        render_turn(&mut e, load);
    }
    e.finish()
}

/// A router answering `GET /metrics` for `relay`.
pub fn router(relay: Handle) -> Router {
    Router::new()
        .route("/metrics", get(handler))
        .with_state(relay)
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    relay: Handle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(relay))
        .with_graceful_shutdown(shutdown)
        .await
        .context("relay metrics server")
}

async fn handler(State(relay): State<Handle>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        render(&relay.load()),
    )
        .into_response()
}

fn render_turn(e: &mut Exposition, load: &Load) {
    let c = &load.counters;
    e.family(
        "lanrage_relay_allocations",
        Kind::Gauge,
        "Live TURN allocations.",
    )
    .sample(&[], load.allocations);
    e.family(
        "lanrage_relay_free_ports",
        Kind::Gauge,
        "Relay ports not allocated.",
    )
    .sample(&[], load.free_ports);
    e.family(
        "lanrage_relay_capacity",
        Kind::Gauge,
        "Allocations the relay would still grant: free ports within the relay-wide cap, 0 while draining.",
    )
    .sample(&[], load.capacity);
    e.family(
        "lanrage_relay_draining",
        Kind::Gauge,
        "1 while the relay refuses new allocations (draining), else 0.",
    )
    .sample(&[], u64::from(load.draining));
    e.family(
        "lanrage_relay_permissions",
        Kind::Gauge,
        "TURN permissions held, over all allocations.",
    )
    .sample(&[], load.permissions);
    e.family(
        "lanrage_relay_channels",
        Kind::Gauge,
        "TURN channels bound, over all allocations.",
    )
    .sample(&[], load.channels);
    e.family(
        "lanrage_relay_allocations_created_total",
        Kind::Counter,
        "TURN allocations granted.",
    )
    .sample(&[], c.allocations_made);
    e.family(
        "lanrage_relay_relayed_packets_total",
        Kind::Counter,
        "Datagrams relayed, by direction.",
    )
    .sample(&[("direction", "client_to_peer")], c.to_peer.packets)
    .sample(&[("direction", "peer_to_client")], c.to_client.packets);
    e.family(
        "lanrage_relay_relayed_bytes_total",
        Kind::Counter,
        "Payload bytes relayed (without TURN framing), by direction.",
    )
    .sample(&[("direction", "client_to_peer")], c.to_peer.bytes)
    .sample(&[("direction", "peer_to_client")], c.to_client.bytes);
    e.family(
        "lanrage_relay_auth_challenges_total",
        Kind::Counter,
        "TURN requests without credentials, answered 401 with a nonce (every client's first).",
    )
    .sample(&[], c.challenged);
    e.family(
        "lanrage_relay_auth_failures_total",
        Kind::Counter,
        "TURN requests refused for their credentials, by reason.",
    )
    .sample(&[("reason", "stale_nonce")], c.stale_nonce)
    .sample(&[("reason", "bad_credentials")], c.bad_credentials)
    .sample(&[("reason", "revoked")], c.revoked);
    let q = &c.quota;
    e.family(
        "lanrage_relay_quota_refusals_total",
        Kind::Counter,
        "Allocations refused, by limit: user, ip, party (486), total cap or no port, draining (508).",
    )
    .sample(&[("kind", "user")], q.user)
    .sample(&[("kind", "ip")], q.ip)
    .sample(&[("kind", "party")], q.party)
    .sample(&[("kind", "total")], q.total)
    .sample(&[("kind", "draining")], q.draining);
    e.family(
        "lanrage_relay_forbidden_peer_requests_total",
        Kind::Counter,
        "CreatePermission and ChannelBind requests refused (403) for a special-use or the relay's own address.",
    )
    .sample(&[], c.forbidden_peer_requests);
    e.family(
        "lanrage_relay_unknown_attribute_requests_total",
        Kind::Counter,
        "TURN requests answered 420 for an unknown comprehension-required attribute.",
    )
    .sample(&[], c.unknown_attributes);
    e.family(
        "lanrage_relay_dropped_packets_total",
        Kind::Counter,
        "Datagrams not relayed, by reason.",
    )
    .sample(&[("reason", "no_allocation")], c.no_allocation)
    .sample(&[("reason", "no_permission")], c.no_permission)
    .sample(&[("reason", "forbidden_peer")], c.forbidden_peer)
    .sample(&[("reason", "rate_limited")], c.rate_limited);
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use lanrage_core::stun;
    use lanrage_core::turn::{TurnClient, rest_credentials};
    use prometheus_parse::{Scrape, Value};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpStream, UdpSocket};

    use super::*;
    use crate::turn::{Counters, QuotaRefusals, Traffic};
    use crate::{Options, Relay, TurnOptions};

    /// Longest wait for one datagram; only keeps a broken test from hanging.
    const PATIENCE: Duration = Duration::from_secs(5);
    const SECRET: &[u8] = b"metrics-secret";

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
    }

    /// The value of the sample `name` with the label `label`, if any.
    fn value(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))?;
        match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let load = Load {
            turn: true,
            allocations: 3,
            capacity: 240,
            free_ports: 250,
            draining: true,
            permissions: 4,
            channels: 2,
            counters: Counters {
                allocations_made: 9,
                challenged: 11,
                stale_nonce: 1,
                bad_credentials: 2,
                revoked: 3,
                unknown_attributes: 4,
                quota: QuotaRefusals {
                    user: 12,
                    ip: 13,
                    party: 14,
                    total: 15,
                    draining: 16,
                },
                forbidden_peer_requests: 17,
                forbidden_peer: 18,
                no_allocation: 5,
                no_permission: 6,
                rate_limited: 7,
                to_peer: Traffic {
                    packets: 100,
                    bytes: 123_456_789_012,
                },
                to_client: Traffic {
                    packets: 80,
                    bytes: 4_000,
                },
            },
            stun_answered: 42,
            uptime: Duration::from_millis(1_500),
        };
        let text = render(&load);
        let scrape = parse(&text);
        for (name, kind) in [
            ("lanrage_relay_uptime_seconds", "gauge"),
            ("lanrage_relay_stun_responses_total", "counter"),
            ("lanrage_relay_allocations", "gauge"),
            ("lanrage_relay_free_ports", "gauge"),
            ("lanrage_relay_capacity", "gauge"),
            ("lanrage_relay_draining", "gauge"),
            ("lanrage_relay_quota_refusals_total", "counter"),
            ("lanrage_relay_forbidden_peer_requests_total", "counter"),
            ("lanrage_relay_unknown_attribute_requests_total", "counter"),
            ("lanrage_relay_permissions", "gauge"),
            ("lanrage_relay_channels", "gauge"),
            ("lanrage_relay_allocations_created_total", "counter"),
            ("lanrage_relay_relayed_packets_total", "counter"),
            ("lanrage_relay_relayed_bytes_total", "counter"),
            ("lanrage_relay_auth_challenges_total", "counter"),
            ("lanrage_relay_auth_failures_total", "counter"),
            ("lanrage_relay_dropped_packets_total", "counter"),
        ] {
            assert!(scrape.docs.contains_key(name), "HELP of {name}");
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "TYPE of {name}"
            );
        }
        let v = |name, label| value(&scrape, name, label);
        assert_eq!(v("lanrage_relay_uptime_seconds", None), Some(1.5));
        assert_eq!(v("lanrage_relay_stun_responses_total", None), Some(42.0));
        assert_eq!(v("lanrage_relay_allocations", None), Some(3.0));
        assert_eq!(v("lanrage_relay_free_ports", None), Some(250.0));
        assert_eq!(v("lanrage_relay_capacity", None), Some(240.0));
        assert_eq!(v("lanrage_relay_draining", None), Some(1.0));
        for (kind, n) in [
            ("user", 12.0),
            ("ip", 13.0),
            ("party", 14.0),
            ("total", 15.0),
            ("draining", 16.0),
        ] {
            assert_eq!(
                v("lanrage_relay_quota_refusals_total", Some(("kind", kind))),
                Some(n),
                "{kind}"
            );
        }
        assert_eq!(
            v("lanrage_relay_forbidden_peer_requests_total", None),
            Some(17.0)
        );
        assert_eq!(
            v(
                "lanrage_relay_dropped_packets_total",
                Some(("reason", "forbidden_peer"))
            ),
            Some(18.0)
        );
        assert_eq!(
            v(
                "lanrage_relay_auth_failures_total",
                Some(("reason", "revoked"))
            ),
            Some(3.0)
        );
        assert_eq!(
            v("lanrage_relay_unknown_attribute_requests_total", None),
            Some(4.0)
        );
        assert_eq!(
            v(
                "lanrage_relay_relayed_bytes_total",
                Some(("direction", "client_to_peer"))
            ),
            Some(123_456_789_012.0)
        );
        assert!(text.contains("direction=\"client_to_peer\"} 123456789012\n"));
        assert_eq!(
            v(
                "lanrage_relay_auth_failures_total",
                Some(("reason", "bad_credentials"))
            ),
            Some(2.0)
        );
        assert_eq!(
            v(
                "lanrage_relay_dropped_packets_total",
                Some(("reason", "rate_limited"))
            ),
            Some(7.0)
        );
        // A STUN-only relay has no TURN families.
        let stun_only = render(&Load {
            stun_answered: 1,
            ..Load::default()
        });
        assert!(stun_only.contains("lanrage_relay_stun_responses_total 1\n"));
        assert!(!stun_only.contains("lanrage_relay_allocations"));
    }

    /// Two distinct free UDP ports on `ip` (bound together, then released for the relay).
    async fn free_ports(ip: Ipv4Addr) -> (u16, u16) {
        let a = UdpSocket::bind((ip, 0)).await.expect("bind");
        let b = UdpSocket::bind((ip, 0)).await.expect("bind");
        let port = |s: &UdpSocket| s.local_addr().expect("addr").port();
        (port(&a), port(&b))
    }

    /// Sends what the client has queued and feeds it the relay's answers until the relay
    /// goes quiet; returns peer data if some arrived.
    async fn pump(client: &mut TurnClient, socket: &UdpSocket) -> Option<(SocketAddr, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        loop {
            while let Some(bytes) = client.poll_transmit() {
                socket.send_to(&bytes, client.server()).await.expect("send");
            }
            let wait = tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf));
            let Ok(received) = wait.await else {
                return None;
            };
            let n = received.expect("receive");
            if let Some(data) = client.handle_datagram(&buf[..n], Instant::now()) {
                return Some(data);
            }
        }
    }

    async fn get_metrics(addr: SocketAddr) -> String {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut reply = String::new();
        tokio::time::timeout(PATIENCE, tcp.read_to_string(&mut reply))
            .await
            .expect("a reply in time")
            .expect("a UTF-8 reply");
        let (head, body) = reply.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-type: {}", metrics::CONTENT_TYPE)),
            "{head}"
        );
        body.to_owned()
    }

    #[tokio::test]
    async fn serves_what_a_real_relay_did() {
        let lo = Ipv4Addr::LOCALHOST;
        let (listen_port, relay_port) = free_ports(lo).await;
        let listen = SocketAddr::from((lo, listen_port));
        let relay = Relay::bind(&Options {
            listen: vec![listen],
            turn: Some(TurnOptions {
                config: crate::turn::Config {
                    secret: SECRET.to_vec(),
                    // Client, relay and peer all sit on loopback, which relays refuse as
                    // a peer range unless it is opened.
                    allow_peers: vec!["127.0.0.0/8".parse().expect("a CIDR")],
                    ..crate::turn::Config::default()
                },
                relay_ip: IpAddr::V4(lo),
                ports: relay_port..=relay_port,
            }),
        })
        .await
        .expect("the relay binds");
        let handle = relay.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay_task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        let http = TcpListener::bind((lo, 0)).await.expect("a TCP port");
        let http_addr = http.local_addr().expect("addr");
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http_task = tokio::spawn(serve(http, handle, async {
            let _ = http_stopped.await;
        }));

        // One STUN Binding answered.
        let probe = UdpSocket::bind((lo, 0)).await.expect("bind");
        probe
            .send_to(&stun::binding_request([1; 12]), listen)
            .await
            .expect("send");
        let mut buf = [0u8; 512];
        tokio::time::timeout(PATIENCE, probe.recv(&mut buf))
            .await
            .expect("a STUN answer in time")
            .expect("receive");

        // An allocation, a permission for a peer on another loopback IP (the client leaves
        // out the relay's own IP), then one datagram each way.
        let socket = UdpSocket::bind((lo, 0)).await.expect("bind");
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let creds = rest_credentials(SECRET, "alice", unix + 3600);
        let mut client = TurnClient::new(listen, creds, 7, Instant::now());
        pump(&mut client, &socket).await;
        let relayed = client.relayed().expect("an allocation");
        let peer = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0))
            .await
            .expect("bind a second loopback IP");
        let peer_addr = peer.local_addr().expect("addr");
        client.set_peers([peer_addr.ip()], Instant::now());
        pump(&mut client, &socket).await;
        let framed = client
            .send(peer_addr, b"hello", Instant::now())
            .expect("allocated");
        socket.send_to(&framed, listen).await.expect("send");
        let (n, from) = tokio::time::timeout(PATIENCE, peer.recv_from(&mut buf))
            .await
            .expect("relayed in time")
            .expect("receive");
        assert_eq!((&buf[..n], from), (&b"hello"[..], relayed));
        pump(&mut client, &socket).await; // the ChannelBind the send asked for
        peer.send_to(b"pong", relayed).await.expect("send");
        let got = pump(&mut client, &socket).await;
        assert_eq!(got, Some((peer_addr, b"pong".to_vec())));

        let text = get_metrics(http_addr).await;
        let scrape = parse(&text);
        let v = |name, label| value(&scrape, name, label);
        let dir = |d| Some(("direction", d));
        assert_eq!(v("lanrage_relay_stun_responses_total", None), Some(1.0));
        assert_eq!(v("lanrage_relay_allocations", None), Some(1.0));
        assert_eq!(
            v("lanrage_relay_allocations_created_total", None),
            Some(1.0)
        );
        assert_eq!(v("lanrage_relay_free_ports", None), Some(0.0));
        assert_eq!(v("lanrage_relay_capacity", None), Some(0.0));
        assert_eq!(v("lanrage_relay_draining", None), Some(0.0));
        assert_eq!(v("lanrage_relay_permissions", None), Some(1.0));
        assert_eq!(v("lanrage_relay_channels", None), Some(1.0));
        assert_eq!(v("lanrage_relay_auth_challenges_total", None), Some(1.0));
        let failures = Some(("reason", "bad_credentials"));
        assert_eq!(v("lanrage_relay_auth_failures_total", failures), Some(0.0));
        let packets = "lanrage_relay_relayed_packets_total";
        let bytes = "lanrage_relay_relayed_bytes_total";
        assert_eq!(v(packets, dir("client_to_peer")), Some(1.0));
        assert_eq!(v(bytes, dir("client_to_peer")), Some(5.0));
        assert_eq!(v(packets, dir("peer_to_client")), Some(1.0));
        assert_eq!(v(bytes, dir("peer_to_client")), Some(4.0));
        for reason in [
            "no_allocation",
            "no_permission",
            "forbidden_peer",
            "rate_limited",
        ] {
            let dropped = v(
                "lanrage_relay_dropped_packets_total",
                Some(("reason", reason)),
            );
            assert_eq!(dropped, Some(0.0), "{reason}");
        }
        assert!(v("lanrage_relay_uptime_seconds", None).is_some_and(|u| u >= 0.0));

        let _ = stop_http.send(());
        tokio::time::timeout(PATIENCE, http_task)
            .await
            .expect("the metrics server stops")
            .expect("no panic")
            .expect("a clean stop");
        let _ = stop.send(());
        tokio::time::timeout(PATIENCE, relay_task)
            .await
            .expect("the relay stops")
            .expect("no panic");
    }
}
