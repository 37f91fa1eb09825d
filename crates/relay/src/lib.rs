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

/// The reply to one datagram, if it deserves one. Only Binding requests are answered; the
/// answer is 32 bytes (44 for IPv6) against a request of at least 20, so a spoofed source
/// gains at most a 2.2× reflection, far below what makes STUN worth abusing.
pub fn answer(from: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
    match stun::parse(datagram)? {
        Stun::BindingRequest { txid } => Some(stun::binding_success(txid, from)),
        Stun::BindingSuccess { .. } => None,
    }
}

/// Serves STUN on every address in `listen` until `shutdown` completes.
pub async fn serve(
    listen: &[SocketAddr],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for &addr in listen {
        let socket = Arc::new(
            UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding UDP {addr}"))?,
        );
        tracing::info!(%addr, "STUN server listening");
        tasks.spawn(run_socket(socket));
    }
    shutdown.await;
    tasks.shutdown().await;
    Ok(())
}

async fn run_socket(socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::trace!(error = %e, "receive error");
                continue;
            }
        };
        if let Some(reply) = answer(from, &buf[..n])
            && let Err(e) = socket.send_to(&reply, from).await
        {
            tracing::trace!(error = %e, "send error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_binding_requests_with_the_source_address() {
        let from: SocketAddr = "198.51.100.2:40000".parse().expect("addr");
        let reply = answer(from, &stun::binding_request([4; 12])).expect("an answer");
        assert_eq!(
            stun::parse(&reply),
            Some(Stun::BindingSuccess {
                txid: [4; 12],
                mapped: from
            })
        );
        // Responses, garbage and empty datagrams get nothing back.
        assert_eq!(answer(from, &reply), None);
        assert_eq!(answer(from, b"hello"), None);
        assert_eq!(answer(from, &[]), None);
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
                mapped: me
            })
        );
        let _ = stop.send(());
        task.await.expect("no panic").expect("clean stop");
    }
}
