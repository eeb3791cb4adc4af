"""How much an idle node daemon costs: CPU (% of one core) and RSS.

Run by hand, as root (it builds a lab mesh in network namespaces):

    sudo .venv/bin/python bench/node_idle.py --nodes 4 --seconds 60

It joins N nodes through the real CLI, lets the mesh settle, then samples
each daemon's /proc counters over the measuring window (wireguard-go is
reported separately: it is WireGuard, not wire). Targets (node issue):
an idle daemon under 1% of one core and under 60 MB RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import deferLater, react

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wire.demo import MeshLab  # noqa: E402
from wire.node.launcher import PIDFILE  # noqa: E402
from wire.runner import ProcessRunner  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wireguard_go_pid(interface: str) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"wireguard-go" and interface.encode() in argv:
            return int(pid)
    return None


async def main(reactor, nodes: int, seconds: float, settle: float) -> None:
    mesh = MeshLab(reactor, ProcessRunner(reactor))
    try:
        await mesh.setup()
        names = [f"n{i}" for i in range(nodes)]
        for name in names:
            await mesh.add_host(name)
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in names])
        matrix = await mesh.ping_matrix(attempts=5)
        await deferLater(reactor, settle, lambda: None)
        pids = {}
        for name in names:
            with open(os.path.join(mesh.nodes[name].config_dir, PIDFILE)) as f:
                pids[name] = (int(f.read()), wireguard_go_pid(mesh.nodes[name].interface))
        before = {name: (cpu_seconds(d), cpu_seconds(w) if w else 0.0) for name, (d, w) in pids.items()}
        started = reactor.seconds()
        await deferLater(reactor, seconds, lambda: None)
        elapsed = reactor.seconds() - started
        results = {}
        for name, (daemon, wg) in pids.items():
            daemon_cpu = (cpu_seconds(daemon) - before[name][0]) / elapsed * 100
            wg_cpu = ((cpu_seconds(wg) - before[name][1]) / elapsed * 100) if wg else None
            results[name] = {
                "daemon_cpu_percent": round(daemon_cpu, 3),
                "daemon_rss_mb": round(rss_mb(daemon), 1),
                "wireguard_go_cpu_percent": None if wg_cpu is None else round(wg_cpu, 3),
                "wireguard_go_rss_mb": round(rss_mb(wg), 1) if wg else None,
            }
        report = {
            "nodes": nodes,
            "window_seconds": round(elapsed, 1),
            "all_pairs_ping": all(matrix.values()),
            "per_node": results,
            "max_daemon_cpu_percent": max(r["daemon_cpu_percent"] for r in results.values()),
            "max_daemon_rss_mb": max(r["daemon_rss_mb"] for r in results.values()),
            "targets": {"daemon_cpu_percent": "< 1", "daemon_rss_mb": "< 60"},
        }
        print(json.dumps(report, indent=2))
    finally:
        await mesh.teardown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after the mesh is up")
    options = parser.parse_args()
    react(lambda reactor: ensureDeferred(main(reactor, options.nodes, options.seconds, options.settle)))
