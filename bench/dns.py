"""How fast does the node's mesh resolver answer?  Run by hand (no privileges).

    python bench/dns.py [--peers 10000] [--seconds 5] [--window 32] [--rate 10000] [--server-cpu 0] [--load-cpu 1]

Starts, as child processes, a wire.node.dns.MeshDns on 127.0.0.1 holding
PEERS peers (each with an IPv4 and an IPv6 address), pinned to one core, and
a fake upstream resolver (twisted.names, a fixed answer) that the MeshDns
forwards to. The load runs in this process on another core, with plain
sockets and pre-encoded questions (so the load costs as little as it can):

- throughput: WINDOW questions in flight for SECONDS, for random mesh names
  (A); queries/s, and p50/p99 latency under that load;
- at a rate: RATE questions a second (default 10,000), sent on schedule
  whatever the answers do; p50/p99 latency at that load;
- latency: one question at a time (no queueing), p50/p99, for mesh names;
- forwarding: one at a time, the same upstream name asked of the upstream
  directly and through the MeshDns; the difference is what forwarding adds.

Prints the figures as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import statistics
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UPSTREAM_NAME = b"example.com"


def peers(count: int) -> dict[str, list[str]]:
    return {f"node{i}": [f"10.99.{i // 250}.{1 + i % 250}", f"fd7a:115c:a1e0::{i:x}"] for i in range(count)}


def question(ident: int, name: bytes, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(label)]) + label for label in name.split(b"."))
    return struct.pack("!HBBHHHH", ident, 1, 0, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", qtype, 1)


# The child processes.


def serve_mesh(count: int, upstream_port: int, ready: int) -> None:
    from twisted.internet import reactor

    from wire.node.dns.server import MeshDns

    mesh = MeshDns(reactor, "127.0.0.1", 0, reverse_networks=["10.99.0.0/16"], upstream=[f"127.0.0.1:{upstream_port}"])
    netmap = peers(count)
    started = time.perf_counter()
    mesh.update(netmap)
    build = time.perf_counter() - started

    def started_listening(_: object) -> None:
        os.write(ready, json.dumps({"port": mesh.port, "zone_build_seconds": build}).encode() + b"\n")

    reactor.callWhenRunning(lambda: mesh.start().addCallback(started_listening))
    reactor.run()


def serve_upstream(ready: int) -> None:
    from twisted.internet import defer, reactor
    from twisted.names import common, dns, server

    class Fixed(common.ResolverBase):
        def _lookup(self, name, cls, type, timeout):  # type: ignore[no-untyped-def]
            return defer.succeed(([dns.RRHeader(name, dns.A, dns.IN, 60, dns.Record_A("192.0.2.1", 60))], [], []))

    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(server.DNSServerFactory(authorities=[Fixed()])), interface="127.0.0.1")
    os.write(ready, json.dumps({"port": port.getHost().port}).encode() + b"\n")
    reactor.run()


def spawn(role: list[str], cpu: int | None) -> tuple[subprocess.Popen[bytes], dict]:
    read, write = os.pipe()
    command = [sys.executable, os.path.abspath(__file__), *role, "--ready-fd", str(write)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    child = subprocess.Popen(command, pass_fds=(write,))
    os.close(write)
    with os.fdopen(read) as lines:
        line = lines.readline()
    if not line:
        raise SystemExit(f"{role[0]} did not start")
    return child, json.loads(line)


# The load.


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def closed_loop(port: int, names: list[bytes], count: int) -> list[float]:
    """Latencies (s) of COUNT questions asked one at a time."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(2)
    latencies = []
    for i in range(count):
        data = question(i & 0xFFFF, names[i % len(names)])
        started = time.perf_counter()
        sock.send(data)
        while True:
            reply = sock.recv(4096)
            if reply[:2] == data[:2]:
                break
        latencies.append(time.perf_counter() - started)
    sock.close()
    return latencies


def throughput(port: int, names: list[bytes], window: int, seconds: float) -> dict:
    """WINDOW questions in flight for SECONDS; a question lost is re-sent after 1 s."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    rng = random.Random(1)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    next_id = 0
    answered = lost = 0

    def send() -> None:
        nonlocal next_id
        ident = next_id
        next_id = (next_id + 1) & 0xFFFF
        sock.send(question(ident, rng.choice(names)))
        sent[ident] = time.perf_counter()

    start = time.perf_counter()
    end = start + seconds
    for _ in range(window):
        send()
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        readable, _, _ = select.select([sock], [], [], 0.1)
        if not readable:
            for ident, when in list(sent.items()):
                if now - when > 1:
                    del sent[ident]
                    lost += 1
                    send()
            continue
        while True:
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                break
            ident = struct.unpack_from("!H", reply)[0]
            when = sent.pop(ident, None)
            if when is None:
                continue
            answered += 1
            latencies.append(time.perf_counter() - when)
            send()
    elapsed = time.perf_counter() - start
    sock.close()
    return {
        "elapsed": elapsed,
        "qps": answered / elapsed,
        "answered": answered,
        "lost": lost,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def paced(port: int, names: list[bytes], rate: float, seconds: float) -> dict:
    """RATE questions a second, sent on time whatever the answers do (an open
    loop: queueing in the server shows as latency, not as a slower sender)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    rng = random.Random(2)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    interval = 1 / rate
    start = time.perf_counter()
    total = int(rate * seconds)
    for index in range(total):
        due = start + index * interval
        while True:
            now = time.perf_counter()
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                if now >= due:
                    break
                continue
            when = sent.pop(struct.unpack_from("!H", reply)[0], None)
            if when is not None:
                latencies.append(now - when)
        ident = index & 0xFFFF
        sock.send(question(ident, rng.choice(names)))
        sent[ident] = time.perf_counter()
    deadline = time.perf_counter() + 1
    while sent and time.perf_counter() < deadline:
        try:
            reply = sock.recv(4096)
        except BlockingIOError:
            continue
        when = sent.pop(struct.unpack_from("!H", reply)[0], None)
        if when is not None:
            latencies.append(time.perf_counter() - when)
    elapsed = time.perf_counter() - start
    sock.close()
    return {
        "offered_qps": rate,
        "sent_qps": total / (elapsed - 1 if sent else elapsed),
        "answered": len(latencies),
        "lost": total - len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "mesh", "upstream"])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--rate", type=float, default=10_000, help="the paced run's queries a second")
    parser.add_argument("--samples", type=int, default=5_000)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--upstream-port", type=int, default=0)
    parser.add_argument("--ready-fd", type=int)
    options = parser.parse_args()
    if options.role == "mesh":
        return serve_mesh(options.peers, options.upstream_port, options.ready_fd)
    if options.role == "upstream":
        return serve_upstream(options.ready_fd)

    os.sched_setaffinity(0, {options.load_cpu})
    upstream, upstream_info = spawn(["upstream"], options.load_cpu)
    mesh, mesh_info = spawn(["mesh", "--peers", str(options.peers), "--upstream-port", str(upstream_info["port"])], options.server_cpu)
    try:
        names = [f"node{i}.wire.internal".encode() for i in range(options.peers)]
        closed_loop(mesh_info["port"], names, 2_000)  # warm: every name's records built once
        cpu_before = cpu_seconds(mesh.pid)
        load = throughput(mesh_info["port"], names, options.window, options.seconds)
        load["server_cpu_percent"] = (cpu_seconds(mesh.pid) - cpu_before) / load.pop("elapsed") * 100
        cpu_before = cpu_seconds(mesh.pid)
        at_rate = paced(mesh_info["port"], names, options.rate, options.seconds)
        at_rate["server_cpu_percent"] = (cpu_seconds(mesh.pid) - cpu_before) / options.seconds * 100
        quiet = closed_loop(mesh_info["port"], names, options.samples)
        direct = closed_loop(upstream_info["port"], [UPSTREAM_NAME], options.samples)
        forwarded = closed_loop(mesh_info["port"], [UPSTREAM_NAME], options.samples)
        result = {
            "peers": options.peers,
            "zone_build_ms": mesh_info["zone_build_seconds"] * 1000,
            "mesh_under_load": load,
            "mesh_at_rate": at_rate,
            "mesh_one_at_a_time": {"p50_ms": percentile(quiet, 0.5) * 1000, "p99_ms": percentile(quiet, 0.99) * 1000},
            "upstream_direct": {"p50_ms": percentile(direct, 0.5) * 1000, "mean_ms": statistics.mean(direct) * 1000},
            "upstream_forwarded": {"p50_ms": percentile(forwarded, 0.5) * 1000, "mean_ms": statistics.mean(forwarded) * 1000},
            "forwarding_adds_p50_ms": (percentile(forwarded, 0.5) - percentile(direct, 0.5)) * 1000,
        }
        print(json.dumps(result, indent=2))
    finally:
        for child in (mesh, upstream):
            child.terminate()
            child.wait()


if __name__ == "__main__":
    main()
