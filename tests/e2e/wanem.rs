//! WAN impairment for the NAT lab. This kernel has no `sch_netem`, so a router's WAN
//! packets are sent to an NFQUEUE (iptables) and a thread of the test holds each one for
//! the link's delay before accepting it, or drops it with the link's loss probability.
//!
//! The thread enters the router's network namespace (`setns` changes only the calling
//! thread) and speaks nfnetlink_queue over a netlink socket itself: bind the queue, ask for
//! packet metadata only, then one verdict per packet id. The delay is constant, so verdicts
//! go out in arrival order, as on a real link.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const AF_INET: u16 = 2;
/// Packets the kernel holds for us before it drops (its default, 1024, is a burst).
const QUEUE_MAXLEN: u32 = 16_384;

/// One impaired link: a thread holding the packets of one queue in one namespace.
pub struct Wanem {
    stop: Arc<AtomicBool>,
    /// Packets seen and dropped.
    pub packets: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Wanem {
    /// Starts holding the packets of `queue` in namespace `netns` for `delay`, dropping
    /// `loss_pct` percent of them. Panics if the queue cannot be bound.
    pub fn start(netns: &str, queue: u16, delay: Duration, loss_pct: f64, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/var/run/netns/{netns}");
        let (s, p, d) = (
            Arc::clone(&stop),
            Arc::clone(&packets),
            Arc::clone(&dropped),
        );
        let thread = std::thread::spawn(move || {
            let sock = match open(&path, queue) {
                Ok(sock) => {
                    let _ = ready_tx.send(Ok(()));
                    sock
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            run(&sock, queue, delay, loss_pct, seed, &s, &p, &d);
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("WAN emulator on {netns} queue {queue}: {e}"),
            Err(_) => panic!("WAN emulator on {netns} queue {queue} did not start"),
        }
        Self {
            stop,
            packets,
            dropped,
            thread: Some(thread),
        }
    }
}

impl Drop for Wanem {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(netns: &str, queue: u16) -> Result<OwnedFd, String> {
    let ns = std::fs::File::open(netns).map_err(|e| format!("{netns}: {e}"))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| format!("netlink socket: {e}"))?;
    bind(sock.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| format!("bind: {e}"))?;
    let _ = setsockopt(&sock, sockopt::RcvBuf, &(8 << 20));
    let mut cmd = Vec::new();
    attr(
        &mut cmd,
        NFQA_CFG_CMD,
        &[NFQNL_CFG_CMD_BIND, 0, 0, AF_INET as u8],
    );
    request(&sock, queue, &cmd, 1)?;
    let mut params = Vec::new();
    let mut p = 0xffffu32.to_be_bytes().to_vec();
    p.push(NFQNL_COPY_META);
    attr(&mut params, NFQA_CFG_PARAMS, &p);
    attr(
        &mut params,
        NFQA_CFG_QUEUE_MAXLEN,
        &QUEUE_MAXLEN.to_be_bytes(),
    );
    request(&sock, queue, &params, 2)?;
    Ok(sock)
}

/// Appends a netlink attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A nfnetlink_queue message: netlink header, nfgenmsg with the queue number, attributes.
fn message(queue: u16, msg: u16, flags: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[0, 0]); // AF_UNSPEC, NFNETLINK_V0
    m.extend_from_slice(&queue.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

/// Sends a config request and waits for its acknowledgement.
fn request(sock: &OwnedFd, queue: u16, attrs: &[u8], seq: u32) -> Result<(), String> {
    let m = message(
        queue,
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        attrs,
    );
    send(sock.as_raw_fd(), &m, MsgFlags::empty()).map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 8192];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| format!("{e}"))?;
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if n < 20 || kind != NLMSG_ERROR {
        return Err(format!(
            "unexpected answer of type {kind} to a queue config"
        ));
    }
    let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if errno != 0 {
        return Err(format!("queue config refused: errno {}", -errno));
    }
    Ok(())
}

/// The packet ids in a buffer of netlink messages.
fn packet_ids(buf: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut off = 0;
    while off + 20 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            let mut a = off + 20;
            while a + 4 <= off + len {
                let alen = u16::from_ne_bytes([buf[a], buf[a + 1]]) as usize;
                let akind = u16::from_ne_bytes([buf[a + 2], buf[a + 3]]) & 0x3fff;
                if alen < 4 || a + alen > off + len {
                    break;
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    ids.push(u32::from_be_bytes([
                        buf[a + 4],
                        buf[a + 5],
                        buf[a + 6],
                        buf[a + 7],
                    ]));
                }
                a += alen.next_multiple_of(4);
            }
        }
        off += len.next_multiple_of(4);
    }
    ids
}

fn verdict(sock: &OwnedFd, queue: u16, id: u32, accept: bool) {
    let mut payload = (if accept { NF_ACCEPT } else { NF_DROP })
        .to_be_bytes()
        .to_vec();
    payload.extend_from_slice(&id.to_be_bytes());
    let mut attrs = Vec::new();
    attr(&mut attrs, NFQA_VERDICT_HDR, &payload);
    let m = message(queue, NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, &attrs);
    let _ = send(sock.as_raw_fd(), &m, MsgFlags::empty());
}

#[allow(clippy::too_many_arguments)]
fn run(
    sock: &OwnedFd,
    queue: u16,
    delay: Duration,
    loss_pct: f64,
    seed: u64,
    stop: &AtomicBool,
    packets: &AtomicU64,
    dropped: &AtomicU64,
) {
    let mut held: VecDeque<(Instant, u32)> = VecDeque::new();
    let mut rng = seed | 1;
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, id)) = held.pop_front() {
                verdict(sock, queue, id, true);
            }
        }
        let wait = held
            .front()
            .map_or(Duration::from_millis(50), |(due, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(50));
        let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(50);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0) {
            continue;
        }
        while let Ok(n) = recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            let now = Instant::now();
            for id in packet_ids(&buf[..n]) {
                packets.fetch_add(1, Ordering::Relaxed);
                // xorshift64: reproducible loss from the seed.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if (rng % 10_000) as f64 / 100.0 < loss_pct {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    verdict(sock, queue, id, false);
                } else {
                    held.push_back((now + delay, id));
                }
            }
        }
    }
    for (_, id) in held {
        verdict(sock, queue, id, true);
    }
}
