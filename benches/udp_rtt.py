#!/usr/bin/env python3
"""Small-UDP round-trip tool: a stdlib-only stand-in for `sockperf ping-pong`.

  udp_rtt.py server --bind IP [--port 11111]
      echo every datagram back to its sender, until killed.

  udp_rtt.py client --dst IP [--port 11111] [--size 64] [--mps 1000] [--secs 5] [--warmup 0.4]
      ping-pong: one datagram of SIZE bytes in flight at a time, paced to MPS messages/s
      for SECS seconds; the first WARMUP seconds are not counted. Prints one line:
        median_us=<x> p99_us=<y> min_us=<z> samples=<n> lost=<m>
      Exit status 1 if no reply came back at all.
"""
import argparse
import socket
import struct
import sys
import time


def server(args: argparse.Namespace) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.bind, args.port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)


def percentile(sorted_vals: list, p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of an already sorted list."""
    import math
    k = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def client(args: argparse.Namespace) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((args.dst, args.port))
    s.settimeout(args.timeout)
    size = max(args.size, 8)
    pad = b"\0" * (size - 8)
    interval = 1.0 / args.mps
    t_start = time.perf_counter()
    t_end = t_start + args.secs
    t_count = t_start + args.warmup
    rtts = []
    lost = 0
    seq = 0
    next_send = t_start
    while True:
        now = time.perf_counter()
        if now >= t_end:
            break
        if now < next_send:
            time.sleep(next_send - now)
        next_send += interval
        seq += 1
        t0 = time.perf_counter()
        s.send(struct.pack("!Q", seq) + pad)
        while True:
            try:
                data = s.recv(65535)
            except (socket.timeout, ConnectionRefusedError):
                if t0 >= t_count:
                    lost += 1
                break
            t1 = time.perf_counter()
            if len(data) >= 8 and struct.unpack("!Q", data[:8])[0] == seq:
                if t0 >= t_count:
                    rtts.append((t1 - t0) * 1e6)
                break
            # a late reply to an earlier (timed-out) message: keep waiting for ours
        if next_send < time.perf_counter() - 1.0:
            next_send = time.perf_counter()  # do not burst to catch up after a stall
    if not rtts:
        print(f"median_us=nan p99_us=nan min_us=nan samples=0 lost={lost}")
        return 1
    rtts.sort()
    n = len(rtts)
    med = rtts[n // 2] if n % 2 else (rtts[n // 2 - 1] + rtts[n // 2]) / 2
    print(
        f"median_us={med:.1f} p99_us={percentile(rtts, 99):.1f} "
        f"min_us={rtts[0]:.1f} samples={n} lost={lost}"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    sp = sub.add_parser("server")
    sp.add_argument("--bind", default="0.0.0.0")
    sp.add_argument("--port", type=int, default=11111)
    cp = sub.add_parser("client")
    cp.add_argument("--dst", required=True)
    cp.add_argument("--port", type=int, default=11111)
    cp.add_argument("--size", type=int, default=64)
    cp.add_argument("--mps", type=float, default=1000)
    cp.add_argument("--secs", type=float, default=5)
    cp.add_argument("--warmup", type=float, default=0.4)
    cp.add_argument("--timeout", type=float, default=1.0, help="per-message reply timeout, s")
    args = ap.parse_args()
    try:
        return server(args) if args.mode == "server" else client(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
