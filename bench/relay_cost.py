"""The relay's CPU cost on the server, per forwarded frame.

Run by hand (no root needed):

    .venv/bin/python bench/relay_cost.py --frames 50000 --burst 4 --pause 0.0002

The server's relay port (the same StunServerProtocol and RelayTable that
``twistd wire-server`` runs) listens on 127.0.0.1 in this process; a forked
sender plays node A (pre-sealed frames, paced in bursts) and a forked
receiver plays node B. Reported: frames forwarded, and this process's CPU
(user + system, from getrusage, after start-up) per forwarded frame. The
system part includes the kernel's loopback delivery of each sent frame.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import epollreactor  # noqa: E402

epollreactor.install()
from twisted.internet import reactor  # noqa: E402

from wire.relayproto import FrameKey, TO_SERVER  # noqa: E402
from wire.server.relay import RelayTable  # noqa: E402
from wire.stun import StunServerProtocol  # noqa: E402

SO_RCVBUFFORCE = 33


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def node_a(server, grant, frames: int, burst: int, pause: float, payload_bytes: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    key = FrameKey(grant.key)
    sock.sendto(key.seal(grant.token, TO_SERVER, 1, b""), server)
    time.sleep(0.3)
    payload = os.urandom(payload_bytes)
    sealed = [key.seal(grant.token, TO_SERVER, i + 2, payload) for i in range(frames)]
    for i, frame in enumerate(sealed):
        sock.sendto(frame, server)
        if i % burst == burst - 1:
            time.sleep(pause)


def node_b(server, grant, ready_fd: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    sock.sendto(FrameKey(grant.key).seal(grant.token, TO_SERVER, 1, b""), server)
    os.write(ready_fd, b"x")
    sock.settimeout(1.0)
    try:
        while True:
            sock.recv(4096)
    except socket.timeout:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--burst", type=int, default=4, help="frames sent back to back")
    parser.add_argument("--pause", type=float, default=0.0002, help="seconds between bursts")
    parser.add_argument("--payload", type=int, default=1420, help="payload bytes per frame")
    options = parser.parse_args()

    outcomes: collections.Counter = collections.Counter()
    table = RelayTable(reactor)
    grant_a, grant_b = table.grant("a", "b"), table.grant("b", "a")
    port = reactor.listenUDP(0, StunServerProtocol(reactor, observe=lambda outcome: outcomes.update((outcome,)), relay=table.handle), interface="127.0.0.1")
    server = ("127.0.0.1", port.getHost().port)
    ready_r, ready_w = os.pipe()
    children = []
    pid = os.fork()
    if pid == 0:
        node_b(server, grant_b, ready_w)
        os._exit(0)
    children.append(pid)
    start = {}

    def start_sender():
        os.read(ready_r, 1)
        start["cpu"], start["wall"] = cpu_seconds(), time.monotonic()
        pid = os.fork()
        if pid == 0:
            node_a(server, grant_a, options.frames, options.burst, options.pause, options.payload)
            os._exit(0)
        children.append(pid)

    def wait_for_children():
        for child in children:
            os.waitpid(child, 0)
        reactor.callFromThread(report)

    def report():
        cpu = cpu_seconds() - start["cpu"]
        forwarded = outcomes["relay_forwarded"]
        print(json.dumps({
            "frames_sent": options.frames,
            "forwarded": forwarded,
            "payload_bytes": options.payload,
            "offered_frames_per_s": round(options.frames / max(1e-9, (time.monotonic() - start["wall"] - 1.0)), 0),
            "server_cpu_s": round(cpu, 3),
            "server_us_per_forwarded_frame": round(cpu / max(1, forwarded) * 1e6, 1),
            "outcomes": dict(outcomes),
        }, indent=2))
        reactor.stop()

    reactor.callWhenRunning(lambda: (start_sender(), reactor.callInThread(wait_for_children)))
    reactor.run()


if __name__ == "__main__":
    main()
