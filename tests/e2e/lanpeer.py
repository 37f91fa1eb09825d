#!/usr/bin/env python3
"""A stand-in for a LAN game's discovery, for the end-to-end tests and the LAN benchmark.

  lanpeer.py listen PORT [--group G] [--join-ip IP] [--reply] [--seconds S]
      Bind 0.0.0.0:PORT with SO_BROADCAST (joining multicast group G on the interface that
      owns IP, or the one the kernel routes G to) and print one JSON line per datagram:
      {"from": "ip:port", "data": "..."}. With --reply, answer each one unicast with
      "reply:" + data, as a game server answers a lobby query.

  lanpeer.py send DST PORT PAYLOAD [--count N] [--rate PPS] [--wait S] [--bind IP]
      Send PAYLOAD (with "#i" appended when --count > 1) to DST:PORT with SO_BROADCAST
      and multicast TTL 1, then print the replies that arrive within S seconds as JSON lines.

  lanpeer.py pingpong DST PORT --count N [--interval S]
      Send N numbered probes to DST:PORT one at a time and print each round trip in
      microseconds (the listener must run with --reply); lost probes print "lost".

Everything stops by itself: listeners after --seconds (default 60), senders after --wait.
"""
import argparse
import json
import socket
import struct
import sys
import time


def udp_socket(port=0, bind_ip="0.0.0.0"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.bind((bind_ip, port))
    return s


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def listen(args):
    s = udp_socket(args.port)
    if args.group:
        iface = socket.inet_aton(args.join_ip or "0.0.0.0")
        mreq = struct.pack("4s4s", socket.inet_aton(args.group), iface)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    emit({"listening": args.port})
    print_datagrams(s, args.seconds, args.reply)


def print_datagrams(s, seconds, reply=False):
    """Prints every datagram that arrives within `seconds`, answering it when asked."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            return
        emit({"from": f"{addr[0]}:{addr[1]}", "data": data.decode(errors="replace")})
        if reply:
            s.sendto(b"reply:" + data, addr)


def send(args):
    s = udp_socket(0, args.bind)
    gap = 1.0 / args.rate if args.rate else 0.0
    start = time.monotonic()
    for i in range(args.count):
        payload = args.payload if args.count == 1 else f"{args.payload}#{i}"
        try:
            s.sendto(payload.encode(), (args.dst, args.port))
        except OSError as e:  # a full send buffer during a storm: count it, go on
            emit({"send_error": str(e)})
        if gap:
            due = start + (i + 1) * gap
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    print_datagrams(s, args.wait)


def pingpong(args):
    s = udp_socket(0)
    for i in range(args.count):
        payload = f"pp#{i}".encode()
        t0 = time.perf_counter_ns()
        s.sendto(payload, (args.dst, args.port))
        s.settimeout(1.0)
        got = None
        try:
            while True:
                data, _ = s.recvfrom(65535)
                if data == b"reply:" + payload:
                    got = time.perf_counter_ns()
                    break
        except socket.timeout:
            pass
        print("lost" if got is None else (got - t0) // 1000, flush=True)
        time.sleep(args.interval)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    l = sub.add_parser("listen")
    l.add_argument("port", type=int)
    l.add_argument("--group")
    l.add_argument("--join-ip")
    l.add_argument("--reply", action="store_true")
    l.add_argument("--seconds", type=float, default=60.0)
    s = sub.add_parser("send")
    s.add_argument("dst")
    s.add_argument("port", type=int)
    s.add_argument("payload")
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--rate", type=float, default=0.0)
    s.add_argument("--wait", type=float, default=2.0)
    s.add_argument("--bind", default="0.0.0.0")
    pp = sub.add_parser("pingpong")
    pp.add_argument("dst")
    pp.add_argument("port", type=int)
    pp.add_argument("--count", type=int, default=200)
    pp.add_argument("--interval", type=float, default=0.01)
    args = p.parse_args()
    {"listen": listen, "send": send, "pingpong": pingpong}[args.cmd](args)


if __name__ == "__main__":
    main()
