//! The LANrage relay. Today: a STUN server (RFC 8489 Binding), so daemons learn their
//! public address and classify their NAT; serving on two addresses gives the RFC 5780
//! setup that tells mapping behaviours apart. TURN joins it with the NAT-traversal work.
//!
//! The protocol step is the sans-IO [`answer`]; [`serve`] is the UDP shell around it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use lanrage_core::stun::{self, Stun};
use tokio::net::UdpSocket;

/// The reply to one datagram that arrived on `local`, if it deserves one, and which of
/// `sockets` sends it. Only Binding requests are answered; the answer is 44 bytes (56 for
/// IPv6) against a request of at least 20, so a spoofed source gains at most a small
/// reflection.
///
/// With sockets on two IPs and two ports (RFC 5780 §4.1), answers carry OTHER-ADDRESS and
/// CHANGE-REQUEST is honoured by answering from the other IP and/or port, which is how
/// clients test their NAT's filtering. A change this relay cannot make is not answered.
pub fn answer(
    from: SocketAddr,
    local: SocketAddr,
    datagram: &[u8],
    sockets: &[SocketAddr],
) -> Option<(SocketAddr, Vec<u8>)> {
    let Stun::BindingRequest { txid, change } = stun::parse(datagram)? else {
        return None;
    };
    let other_ip = sockets
        .iter()
        .map(SocketAddr::ip)
        .find(|ip| *ip != local.ip());
    let other_port = sockets
        .iter()
        .map(SocketAddr::port)
        .find(|p| *p != local.port());
    let other = match (other_ip, other_port) {
        (Some(ip), Some(port)) => sockets
            .iter()
            .copied()
            .find(|s| s.ip() == ip && s.port() == port),
        _ => None,
    };
    let ip = if change.ip { other_ip? } else { local.ip() };
    let port = if change.port {
        other_port?
    } else {
        local.port()
    };
    let reply_from = sockets
        .iter()
        .copied()
        .find(|s| s.ip() == ip && s.port() == port)?;
    Some((reply_from, stun::binding_success(txid, from, other)))
}

/// Serves STUN on every address in `listen` until `shutdown` completes.
pub async fn serve(
    listen: &[SocketAddr],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut sockets = Vec::new();
    for &addr in listen {
        let socket = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding UDP {addr}"))?;
        let bound = socket.local_addr()?;
        tracing::info!(addr = %bound, "STUN server listening");
        sockets.push((bound, socket));
    }
    let sockets = Arc::new(sockets);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sockets.len() {
        tasks.spawn(run_socket(Arc::clone(&sockets), i));
    }
    shutdown.await;
    tasks.shutdown().await;
    Ok(())
}

async fn run_socket(sockets: Arc<Vec<(SocketAddr, UdpSocket)>>, index: usize) {
    let addrs: Vec<SocketAddr> = sockets.iter().map(|(a, _)| *a).collect();
    let (local, socket) = &sockets[index];
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::trace!(error = %e, "receive error");
                continue;
            }
        };
        let Some((reply_from, reply)) = answer(from, *local, &buf[..n], &addrs) else {
            continue;
        };
        let Some((_, out)) = sockets.iter().find(|(a, _)| *a == reply_from) else {
            continue;
        };
        if let Err(e) = out.send_to(&reply, from).await {
            tracing::trace!(error = %e, "send error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn answers_binding_requests_with_the_source_address() {
        let from = a("198.51.100.2:40000");
        let local = a("203.0.113.10:3478");
        let (reply_from, reply) =
            answer(from, local, &stun::binding_request([4; 12]), &[local]).expect("an answer");
        assert_eq!(reply_from, local);
        assert_eq!(
            stun::parse(&reply),
            Some(Stun::BindingSuccess {
                txid: [4; 12],
                mapped: from,
                other: None,
            })
        );
        // Responses, garbage and empty datagrams get nothing back.
        assert_eq!(answer(from, local, &reply, &[local]), None);
        assert_eq!(answer(from, local, b"hello", &[local]), None);
        assert_eq!(answer(from, local, &[], &[local]), None);
        // A change a single-address relay cannot make is not answered.
        let change = stun::Change {
            ip: true,
            port: false,
        };
        assert_eq!(
            answer(
                from,
                local,
                &stun::binding_request_change([5; 12], change),
                &[local]
            ),
            None
        );
    }

    #[test]
    fn rfc5780_changes_are_answered_from_the_other_addresses() {
        let from = a("198.51.100.2:40000");
        let socks = [
            a("203.0.113.10:3478"),
            a("203.0.113.11:3478"),
            a("203.0.113.10:3479"),
            a("203.0.113.11:3479"),
        ];
        let local = socks[0];
        for (ip, port, expect) in [
            (false, false, socks[0]),
            (true, false, socks[1]),
            (false, true, socks[2]),
            (true, true, socks[3]),
        ] {
            let req = stun::binding_request_change([6; 12], stun::Change { ip, port });
            let (reply_from, reply) = answer(from, local, &req, &socks).expect("an answer");
            assert_eq!(reply_from, expect, "change ip={ip} port={port}");
            assert_eq!(
                stun::parse(&reply),
                Some(Stun::BindingSuccess {
                    txid: [6; 12],
                    mapped: from,
                    other: Some(socks[3]),
                })
            );
        }
    }

    #[tokio::test]
    async fn serves_on_loopback() {
        let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        drop(server);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(&[addr], async {
                let _ = stopped.await;
            })
            .await
        });
        let mut buf = [0u8; 512];
        let mut got = None;
        for _ in 0..50 {
            probe
                .send_to(&stun::binding_request([9; 12]), addr)
                .await
                .expect("send");
            if let Ok(Ok((n, _))) = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                probe.recv_from(&mut buf),
            )
            .await
            {
                got = stun::parse(&buf[..n]);
                break;
            }
        }
        let me = probe.local_addr().expect("addr");
        assert_eq!(
            got,
            Some(Stun::BindingSuccess {
                txid: [9; 12],
                mapped: me,
                other: None
            })
        );
        let _ = stop.send(());
        task.await.expect("no panic").expect("clean stop");
    }
}
