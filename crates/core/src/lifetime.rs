//! How long the NAT keeps an idle UDP binding: RFC 5780 §4.6 binding lifetime discovery,
//! as a sans-IO state machine over two sockets of the caller's, X and Y.
//!
//! Each step: X sends a Binding request to the server (creating or refreshing its binding
//! and learning its public port), stays silent for `T`, then Y asks the same server to
//! answer to X's public port (RESPONSE-PORT). The answer reaches X only if the binding is
//! still there. Steps grow `T` by half each time from 2 s; the first one that fails ends
//! the measurement with the lifetime between the last `T` that held and this one. X talks
//! to nothing else, so nothing but the steps keeps its binding alive.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::stun::{self, Stun};

/// The first wait; each step waits half as long again.
const FIRST_WAIT: Duration = Duration::from_secs(2);
/// Beyond this a binding counts as long-lived and the measurement stops (keepalives are
/// capped well below it anyway).
const MAX_WAIT: Duration = Duration::from_secs(180);
/// Requests are resent at this interval, `SENDS` times, before a step counts as failed.
const RESEND: Duration = Duration::from_millis(500);
const SENDS: u32 = 4;

/// Which of the caller's two sockets a datagram is for or came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    X,
    Y,
}

/// What the measurement found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// The longest idle time the binding survived.
    pub at_least: Duration,
    /// The idle time it did not survive; `None` while measuring, or when it outlived
    /// [`MAX_WAIT`].
    pub below: Option<Duration>,
    /// The measurement has ended.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// X's request `txid` is out (`sends` so far).
    Establish {
        txid: [u8; 12],
        sends: u32,
        next: Instant,
    },
    /// X is silent until `until`.
    Idle {
        until: Instant,
    },
    /// Y's redirected request `txid` is out; the answer must reach X.
    Test {
        txid: [u8; 12],
        sends: u32,
        next: Instant,
    },
    Done,
}

/// One binding lifetime measurement against one STUN server.
#[derive(Debug)]
pub struct LifetimeProbe {
    server: SocketAddr,
    rng: StdRng,
    phase: Phase,
    wait: Duration,
    x_port: u16,
    at_least: Option<Duration>,
    below: Option<Duration>,
    /// The server does not honour RESPONSE-PORT (its answer came back to Y).
    unsupported: bool,
    outbox: Vec<(Socket, Vec<u8>)>,
}

impl LifetimeProbe {
    pub fn new(server: SocketAddr, seed: u64, now: Instant) -> Self {
        let mut p = Self {
            server,
            rng: StdRng::seed_from_u64(seed),
            phase: Phase::Done,
            wait: FIRST_WAIT,
            x_port: 0,
            at_least: None,
            below: None,
            unsupported: false,
            outbox: Vec::new(),
        };
        p.establish(now);
        p
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The result so far: `None` until the first step held (or when the server cannot
    /// measure: unreachable, or RESPONSE-PORT not supported).
    pub fn lifetime(&self) -> Option<Lifetime> {
        if self.unsupported {
            return None;
        }
        let done = self.phase == Phase::Done;
        match (self.at_least, self.below) {
            (None, None) => None,
            (at_least, below) => Some(Lifetime {
                at_least: at_least.unwrap_or_default(),
                below,
                done,
            }),
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Establish { next, .. } | Phase::Test { next, .. } => Some(next),
            Phase::Idle { until } => Some(until),
            Phase::Done => None,
        }
    }

    /// The next request to send to [`Self::server`], and from which socket.
    pub fn poll_transmit(&mut self) -> Option<(Socket, Vec<u8>)> {
        (!self.outbox.is_empty()).then(|| self.outbox.remove(0))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Establish { txid, sends, next } if now >= next => {
                if sends < SENDS {
                    self.outbox.push((Socket::X, stun::binding_request(txid)));
                    self.phase = Phase::Establish {
                        txid,
                        sends: sends + 1,
                        next: now + RESEND,
                    };
                } else {
                    // The server stopped answering X: nothing more to learn.
                    self.phase = Phase::Done;
                }
            }
            Phase::Idle { until } if now >= until => self.test(now),
            Phase::Test { txid, sends, next } if now >= next => {
                if sends < SENDS {
                    let req = stun::binding_request_response_port(txid, self.x_port);
                    self.outbox.push((Socket::Y, req));
                    self.phase = Phase::Test {
                        txid,
                        sends: sends + 1,
                        next: now + RESEND,
                    };
                } else {
                    // X never heard the answer: its binding was gone after `wait`.
                    self.below = Some(self.wait);
                    self.phase = Phase::Done;
                }
            }
            _ => {}
        }
    }

    /// A datagram from the server arrived on `socket`.
    pub fn handle_response(&mut self, socket: Socket, from: SocketAddr, data: &[u8], now: Instant) {
        if from != self.server {
            return;
        }
        let Some(Stun::BindingSuccess { txid, mapped, .. }) = stun::parse(data) else {
            return;
        };
        match (self.phase, socket) {
            (Phase::Establish { txid: want, .. }, Socket::X) if txid == want => {
                self.x_port = mapped.port();
                self.phase = Phase::Idle {
                    until: now + self.wait,
                };
            }
            (Phase::Test { txid: want, .. }, Socket::X) if txid == want => {
                self.at_least = Some(self.wait);
                self.wait += self.wait / 2;
                if self.wait > MAX_WAIT {
                    self.phase = Phase::Done;
                } else {
                    self.establish(now);
                }
            }
            (Phase::Test { txid: want, .. }, Socket::Y) if txid == want => {
                self.unsupported = true;
                self.phase = Phase::Done;
            }
            _ => {}
        }
    }

    /// X binds (again): the first request goes out now.
    fn establish(&mut self, now: Instant) {
        let txid = self.txid();
        self.phase = Phase::Establish {
            txid,
            sends: 0,
            next: now,
        };
        self.handle_timeout(now);
    }

    /// Y asks for the answer to reach X: the first request goes out now.
    fn test(&mut self, now: Instant) {
        let txid = self.txid();
        self.phase = Phase::Test {
            txid,
            sends: 0,
            next: now,
        };
        self.handle_timeout(now);
    }

    fn txid(&mut self) -> [u8; 12] {
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        txid
    }
}

#[cfg(test)]
mod tests;
