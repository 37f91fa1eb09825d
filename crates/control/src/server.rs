//! The HTTP/1.1 accept loop: hyper directly rather than `axum::serve`, which has no
//! header-read timeout and no per-client connection cap. Idle connections (1 100 of them
//! from one client stopped all service under a 1024 open-file limit) are closed after
//! [`Limits::header_read_timeout`](crate::Limits), and a client address holds at most
//! [`Limits::connections_per_ip`](crate::Limits) at once; more are closed as soon as they
//! are accepted, before they cost a task or a buffer.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_service::Service as _;

use crate::limits::{Limits, client_key};

/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// Pause after an accept error (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(Mutex::new(HashMap::<IpAddr, usize>::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut failing = false;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set holds only live ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    failing = false;
                    a
                }
                Err(e) => {
                    if !failing {
                        // Most likely out of file descriptors: the connections in hand
                        // still get served, new ones wait.
                        tracing::warn!(error = %e, "control plane cannot accept connections; retrying");
                        failing = true;
                    } else {
                        tracing::debug!(error = %e, "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(guard) = ConnGuard::new(&open, peer.ip(), limits.connections_per_ip) else {
            tracing::debug!(%peer, "connection refused: too many from this address");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        conns.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            limits,
            stop_rx.clone(),
            guard,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!(
            left = conns.len(),
            "shutdown: closing connections still busy"
        );
        conns.shutdown().await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    guard: ConnGuard,
) {
    // A WebSocket outlives this function (hyper hands the socket over on upgrade): the
    // route holds a clone, so the connection counts against its address until it closes.
    let slot = ConnectionSlot(Arc::new(guard));
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // What `ConnectInfo` extractors (and the per-address quotas) read.
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(slot.clone());
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Covers the wait for the next request on a kept-alive connection too: hyper arms
        // it whenever it starts reading a request head.
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = async move {
        // Dropping the borrow before the next await keeps this future `Send`.
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts, resets and garbage from clients: theirs to worry about.
        tracing::trace!(%peer, error = %e, "connection ended with an error");
    }
}

/// A connection's place under its address's cap, shared with whatever outlives the
/// request (an upgraded WebSocket); freed when the last holder drops it.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<ConnGuard>);

/// One open connection counted against its client's address; uncounted on drop.
struct ConnGuard {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl ConnGuard {
    fn new(open: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, cap: usize) -> Option<Self> {
        let key = client_key(ip);
        let mut map = lock(open);
        let n = map.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Self {
            open: Arc::clone(open),
            key,
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.open);
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A counter map stays consistent between operations; keep serving after a panic.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_address_and_uncounted_when_closed() {
        let open = Arc::new(Mutex::new(HashMap::new()));
        let a: IpAddr = "198.51.100.1".parse().expect("ip");
        let b: IpAddr = "198.51.100.2".parse().expect("ip");
        let held: Vec<ConnGuard> = (0..3)
            .map(|_| ConnGuard::new(&open, a, 3).expect("under the cap"))
            .collect();
        assert!(ConnGuard::new(&open, a, 3).is_none());
        let other = ConnGuard::new(&open, b, 3).expect("another address");
        drop(held);
        assert!(ConnGuard::new(&open, a, 3).is_some());
        drop(other);
        assert!(lock(&open).is_empty());
    }
}
