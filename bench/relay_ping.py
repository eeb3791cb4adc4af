"""Relay frame round trips through a real server's relay port, one process.

    echo '{"a": "TOKEN:KEY", "b": "TOKEN:KEY"}' | python -m bench.relay_ping --relay 127.0.0.1:PORT \
        [--seconds 20] [--rate 200]

Two sockets play the two sides of one relay session (their grants from
``POST /relay``, token hex and key base64, read from stdin: keys are never
put on a command line). Side A sends a frame every
1/rate s carrying its send time; the server forwards it to B, B sends it
straight back, the server forwards it to A. Printed on stdout, one JSON
object: ``rounds`` as [sent_at (time.monotonic(), shared with the bench),
round trip seconds or null when lost]. Blocking sockets on one thread:
nothing here shares a reactor with the load.
"""

from __future__ import annotations

import argparse
import base64
import json
import select
import socket
import struct
import sys
import time

from wire.relayproto import TO_NODE, TO_SERVER, FrameError, FrameKey, payload_view, read_header

_STAMP = struct.Struct("!Qd")  # sequence, send time
# A round trip later than this counts as lost (waited for after the last send).
LOST_AFTER = 10.0


class Side:
    def __init__(self, grant: str, relay: tuple[str, int]):
        token_hex, _, key_b64 = grant.partition(":")
        self.token = bytes.fromhex(token_hex)
        self.key = FrameKey(base64.b64decode(key_b64))
        self.relay = relay
        self.counter = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def send(self, payload: bytes) -> None:
        self.counter += 1
        self.sock.sendto(self.key.seal(self.token, TO_SERVER, self.counter, payload), self.relay)

    def receive(self) -> list[bytes]:
        """The payloads of the frames waiting (checked: ours, from the relay)."""
        out = []
        while True:
            try:
                frame, _ = self.sock.recvfrom(4096)
            except BlockingIOError:
                return out
            try:
                token, direction, _ = read_header(frame)
            except FrameError:
                continue
            if token == self.token and direction == TO_NODE and self.key.authentic(frame):
                out.append(bytes(payload_view(frame)))


def ping(relay: tuple[str, int], grant_a: str, grant_b: str, seconds: float, rate: float) -> dict:
    a, b = Side(grant_a, relay), Side(grant_b, relay)
    # Keepalives (empty payloads) tell the relay where each side is.
    for _ in range(3):
        a.send(b"")
        b.send(b"")
        time.sleep(0.05)
    sent: dict[int, float] = {}
    rounds: dict[int, float | None] = {}
    interval = 1.0 / rate
    started = time.monotonic()
    next_send = started
    sequence = 0
    answered = 0
    end = started + seconds
    while True:
        now = time.monotonic()
        if now >= end + LOST_AFTER or (now >= end and answered == sequence):
            break
        if now >= next_send and now < end:
            sequence += 1
            sent[sequence] = now
            rounds[sequence] = None
            a.send(_STAMP.pack(sequence, now))
            next_send += interval
            if next_send < now:  # fell behind (this process was not scheduled): no catching up in a burst
                next_send = now + interval
        timeout = max(0.0, min(next_send, end + LOST_AFTER) - time.monotonic())
        ready, _, _ = select.select([a.sock, b.sock], [], [], timeout)
        if b.sock in ready:
            for payload in b.receive():
                if len(payload) == _STAMP.size:
                    b.send(payload)  # straight back
        if a.sock in ready:
            arrived = time.monotonic()
            for payload in a.receive():
                if len(payload) != _STAMP.size:
                    continue
                seq, at = _STAMP.unpack(payload)
                if seq in sent and rounds[seq] is None and arrived - at <= LOST_AFTER:
                    rounds[seq] = arrived - at
                    answered += 1
    return {
        "rate": rate,
        "seconds": seconds,
        "rounds": [[round(sent[s], 6), None if rounds[s] is None else round(rounds[s], 6)] for s in sorted(sent)],
    }


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", type=parse_address, required=True, help="the server's relay (UDP) HOST:PORT")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=200.0, help="round trips started per second")
    options = parser.parse_args()
    try:
        grants = json.loads(sys.stdin.readline())
        a, b = str(grants["a"]), str(grants["b"])
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"bench.relay_ping: stdin must be one JSON line {{\"a\": GRANT, \"b\": GRANT}}: {e}")
    print(json.dumps(ping(options.relay, a, b, options.seconds, options.rate)))


if __name__ == "__main__":
    main()
