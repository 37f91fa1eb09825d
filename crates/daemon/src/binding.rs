//! The I/O shell of `lanrage_core::lifetime`: two sockets of their own, so nothing but the
//! measurement touches the binding it measures.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanrage_core::lifetime::{Lifetime, LifetimeProbe, Socket};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Keepalive from a measured lifetime: half the longest idle time the binding survived,
/// between 1 s and WireGuard's customary 25 s.
pub fn keepalive_for(l: &Lifetime) -> Duration {
    (l.at_least / 2).clamp(Duration::from_secs(1), Duration::from_secs(25))
}

/// A measurement running in its own task; dropping it stops the task.
pub struct Measurement {
    pub result: watch::Receiver<Option<Lifetime>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Measurement {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Measurement {
    /// Starts measuring against STUN server `server` (which must honour RESPONSE-PORT).
    pub fn start(server: SocketAddr) -> Self {
        let (tx, result) = watch::channel(None);
        let task = tokio::spawn(async move {
            if let Err(e) = run(server, &tx).await {
                tracing::debug!(error = %e, "binding lifetime not measured");
            }
        });
        Self { result, task }
    }

    /// The measurement has ended (with or without a result).
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }
}

async fn run(server: SocketAddr, tx: &watch::Sender<Option<Lifetime>>) -> std::io::Result<()> {
    let x = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
    let y = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
    let mut probe = LifetimeProbe::new(server, rand::random(), Instant::now());
    let (mut bx, mut by) = (vec![0u8; 1500], vec![0u8; 1500]);
    loop {
        while let Some((sock, bytes)) = probe.poll_transmit() {
            let socket = if sock == Socket::X { &x } else { &y };
            if let Err(e) = socket.send_to(&bytes, server).await {
                tracing::trace!(error = %e, "binding lifetime request not sent");
            }
        }
        let Some(deadline) = probe.poll_timeout() else {
            break;
        };
        tokio::select! {
            r = x.recv_from(&mut bx) => if let Ok((n, from)) = r {
                probe.handle_response(Socket::X, from, &bx[..n], Instant::now());
            },
            r = y.recv_from(&mut by) => if let Ok((n, from)) = r {
                probe.handle_response(Socket::Y, from, &by[..n], Instant::now());
            },
            () = tokio::time::sleep_until(deadline.into()) => probe.handle_timeout(Instant::now()),
        }
        tx.send_if_modified(|cur| {
            let new = probe.lifetime();
            (*cur != new).then(|| *cur = new).is_some()
        });
    }
    let found = probe.lifetime();
    if let Some(l) = found {
        tracing::info!(
            at_least_s = l.at_least.as_secs_f64(),
            below_s = l.below.map(|b| b.as_secs_f64()),
            "NAT binding lifetime measured"
        );
    }
    tx.send_replace(found);
    Ok(())
}
