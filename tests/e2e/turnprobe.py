#!/usr/bin/env python3
"""A minimal TURN client (RFC 8656, UDP) and UDP listener for the relay's e2e tests.

Written from the RFCs with the standard library only, so the tests exercise the relay
with a client that shares no code with it. Every answer is one JSON line on stdout.

  turnprobe.py listen --bind IP:PORT [--bind ...]
      Prints {"listening": [...]} once bound, then {"to", "from", "data"} per datagram.
  turnprobe.py probe --server IP:PORT --secret S --user ID --peer IP:PORT [--peer ...]
      Allocates, then per peer: CreatePermission, ChannelBind, a Send indication
      ("send <peer>") and ChannelData ("chan <peer>"), sent whatever the answers were.
      Prints {"allocate": code, "relayed": addr, "peers": {peer: {"permission", "channel"}}}.
  turnprobe.py allocate --server IP:PORT --secret S --user ID [--user ...] [--each N]
      N allocations per user id, each from its own socket. Prints {"codes": [[user, code]]}.

Codes: 0 for success, the ERROR-CODE otherwise, -1 when no answer came.
Credentials are TURN REST ones minted from the shared secret:
username "<expiry>:<id>", password base64(HMAC-SHA1(secret, username)).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import select
import socket
import struct
import sys
import time

COOKIE = 0x2112A442
ALLOCATE, REFRESH, SEND, CREATE_PERMISSION, CHANNEL_BIND = 0x003, 0x004, 0x006, 0x008, 0x009
SOFTWARE = 0x8022
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
CHANNEL_NUMBER, XOR_PEER_ADDRESS, DATA = 0x000C, 0x0012, 0x0013
REALM, NONCE, XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT = 0x0014, 0x0015, 0x0016, 0x0019


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def credentials(secret, user):
    username = "%d:%s" % (int(time.time()) + 3600, user)
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


def attr(kind, value):
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * pad


def xor_address(host, port):
    ip = socket.inet_aton(host)
    xip = bytes(a ^ b for a, b in zip(ip, struct.pack("!I", COOKIE)))
    return struct.pack("!BBH", 0, 1, port ^ (COOKIE >> 16)) + xip


def message(msg_type, attrs, txid=None, key=None):
    """A STUN message; with `key`, MESSAGE-INTEGRITY over it (RFC 8489 §14.5)."""
    txid = txid or os.urandom(12)
    body = b"".join(attrs)
    if key is None:
        return struct.pack("!HHI", msg_type, len(body), COOKIE) + txid + body
    head = struct.pack("!HHI", msg_type, len(body) + 24, COOKIE) + txid
    mi = hmac.new(key, head + body, hashlib.sha1).digest()
    return head + body + attr(MESSAGE_INTEGRITY, mi)


def parse(data):
    """(type, txid, {attr type: value}) of a STUN message, or None."""
    if len(data) < 20:
        return None
    msg_type, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != COOKIE or 20 + length > len(data):
        return None
    attrs, rest = {}, data[20 : 20 + length]
    while len(rest) >= 4:
        kind, n = struct.unpack("!HH", rest[:4])
        attrs.setdefault(kind, rest[4 : 4 + n])
        rest = rest[4 + n + (4 - n % 4) % 4 :]
    return msg_type, data[8:20], attrs


def code_of(answer):
    if answer is None:
        return -1
    msg_type, _, attrs = answer
    if msg_type & 0x0110 == 0x0100:
        return 0
    value = attrs.get(ERROR_CODE, b"\0\0\0\0")
    return (value[2] & 7) * 100 + value[3]


class Client:
    def __init__(self, server, user, password):
        self.server = server
        self.user, self.password = user, password
        self.realm = self.nonce = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.relayed = None

    def key(self):
        realm = self.realm.decode("utf-8", "replace")
        text = "%s:%s:%s" % (self.user, realm, self.password)
        return hashlib.md5(text.encode()).digest()

    def transact(self, msg_type, attrs):
        """Sends a request (retransmitted up to three times); returns the parsed answer."""
        txid = os.urandom(12)
        if self.nonce is None:
            # Unsigned and padded: the relay answers an unauthenticated request only with
            # as many bytes as it got (no amplification), and its 401 carries a nonce.
            msg = message(msg_type, attrs + [attr(SOFTWARE, b"turnprobe " + b"." * 46)], txid)
        else:
            signed = attrs + [
                attr(USERNAME, self.user.encode()),
                attr(REALM, self.realm),
                attr(NONCE, self.nonce),
            ]
            msg = message(msg_type, signed, txid, self.key())
        for _ in range(3):
            self.sock.sendto(msg, self.server)
            deadline = time.time() + 1.0
            while time.time() < deadline:
                ready, _, _ = select.select([self.sock], [], [], max(0, deadline - time.time()))
                if not ready:
                    break
                answer = parse(self.sock.recv(2048))
                if answer and answer[1] == txid:
                    return answer
        return None

    def request(self, msg_type, attrs):
        answer = self.transact(msg_type, attrs)
        if code_of(answer) in (401, 438) and answer[2].get(NONCE):
            self.realm, self.nonce = answer[2].get(REALM, self.realm), answer[2][NONCE]
            answer = self.transact(msg_type, attrs)
        return answer

    def allocate(self):
        answer = self.request(ALLOCATE, [attr(REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))])
        code = code_of(answer)
        if code == 0 and XOR_RELAYED_ADDRESS in answer[2]:
            v = answer[2][XOR_RELAYED_ADDRESS]
            port = struct.unpack("!H", v[2:4])[0] ^ (COOKIE >> 16)
            ip = bytes(a ^ b for a, b in zip(v[4:8], struct.pack("!I", COOKIE)))
            self.relayed = "%s:%d" % (socket.inet_ntoa(ip), port)
        return code

    def permit(self, peer):
        return code_of(self.request(CREATE_PERMISSION, [attr(XOR_PEER_ADDRESS, xor_address(*peer))]))

    def bind(self, peer, channel):
        number = attr(CHANNEL_NUMBER, struct.pack("!HH", channel, 0))
        return code_of(self.request(CHANNEL_BIND, [number, attr(XOR_PEER_ADDRESS, xor_address(*peer))]))

    def send(self, peer, data):
        ind = message(0x0016, [attr(XOR_PEER_ADDRESS, xor_address(*peer)), attr(DATA, data)])
        self.sock.sendto(ind, self.server)

    def channel_data(self, channel, data):
        pad = (4 - len(data) % 4) % 4
        self.sock.sendto(struct.pack("!HH", channel, len(data)) + data + b"\0" * pad, self.server)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def listen(args):
    socks = {}
    for b in args.bind:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(addr(b))
        socks[s] = b
    emit({"listening": args.bind})
    while True:
        ready, _, _ = select.select(list(socks), [], [])
        for s in ready:
            data, src = s.recvfrom(65535)
            emit({"to": socks[s], "from": "%s:%d" % src, "data": data.decode("utf-8", "replace")})


def probe(args):
    user, password = credentials(args.secret, args.user)
    c = Client(addr(args.server), user, password)
    result = {"allocate": c.allocate(), "relayed": c.relayed, "peers": {}}
    for i, p in enumerate(args.peer):
        peer, channel = addr(p), 0x4000 + i
        result["peers"][p] = {"permission": c.permit(peer), "channel": c.bind(peer, channel)}
        c.send(peer, ("send " + p).encode())
        c.channel_data(channel, ("chan " + p).encode())
    time.sleep(0.5)
    emit(result)


def allocate(args):
    codes, clients = [], []
    for u in args.user:
        user, password = credentials(args.secret, u)
        for _ in range(args.each):
            c = Client(addr(args.server), user, password)
            codes.append([u, c.allocate()])
            clients.append(c)
    emit({"codes": codes})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("listen")
    lp.add_argument("--bind", action="append", required=True)
    pp = sub.add_parser("probe")
    pp.add_argument("--server", required=True)
    pp.add_argument("--secret", required=True)
    pp.add_argument("--user", required=True)
    pp.add_argument("--peer", action="append", default=[])
    ap = sub.add_parser("allocate")
    ap.add_argument("--server", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--user", action="append", required=True)
    ap.add_argument("--each", type=int, default=1)
    args = p.parse_args()
    {"listen": listen, "probe": probe, "allocate": allocate}[args.cmd](args)


if __name__ == "__main__":
    main()
