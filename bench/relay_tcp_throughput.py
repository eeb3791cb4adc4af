"""The relay over TCP against a direct path, in the same lab run, and the
server's memory per idle relay stream.

Run by hand, as root (it builds a lab mesh in network namespaces):

    sudo .venv/bin/python bench/relay_tcp_throughput.py --seconds 10 --streams 200

Two public nodes form the direct pair. The TCP-relayed pair: a node behind a
router that drops all UDP (its frames go over TLS on the server's API port)
and a node behind a hard NAT (on the relay's UDP port); the server bridges
the two. For each pair: iperf3 TCP throughput, and a steady 10 Mbit/s UDP
stream's loss inside the tunnel. Targets (issue 18): TCP-relayed TCP at
least 30 % of direct, no loss at 10 Mbit/s. Then ``--streams`` idle relay
streams are opened from one lab host (each authenticated as a registered
node of an open server) and the server's RSS before and after gives the
memory per idle stream.

``--profile DIR`` samples the server and the TCP-relayed node with py-spy
during the TCP-relayed iperf (raw stacks in DIR, top functions in the
report); py-spy slows what it samples, so take figures from a run without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import deferLater, react

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import profiling  # noqa: E402
from bench.relay_throughput import iperf  # noqa: E402
from wire.demo import SERVER_PORT, MeshLab  # noqa: E402
from wire.runner import ProcessRunner  # noqa: E402

# Opens N relay streams to an open server (registering N nodes first), holds them, prints when ready.
HOLD_STREAMS = textwrap.dedent(
    """
    import hashlib, json, socket, ssl, sys, time, urllib.request, base64
    url, count = sys.argv[1], int(sys.argv[2])
    context = ssl._create_unverified_context()
    host, port = url.split("//")[1].split(":")
    streams = []
    for n in range(count):
        name = f"idle{n}"
        node_id = hashlib.sha256(name.encode()).hexdigest()[:32]
        key = base64.b64encode(hashlib.sha256(b"k" + name.encode()).digest()).decode()
        body = json.dumps({"node_id": node_id, "node_name": name, "wg_public_key": key, "port": 51820}).encode()
        urllib.request.urlopen(urllib.request.Request(url + "/register", data=body), context=context, timeout=10).read()
        raw = socket.create_connection((host, int(port)), timeout=10)
        tls = context.wrap_socket(raw, server_hostname=host) if url.startswith("https") else raw
        tls.sendall(("GET /relay/stream HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\n"
                     f"Upgrade: wire-relay/1\\r\\nX-Wire-Node: {node_id}\\r\\n\\r\\n").encode())
        answer = tls.recv(200)
        assert answer.startswith(b"HTTP/1.1 101"), answer
        streams.append(tls)
    print("ready", flush=True)
    time.sleep(3600)
    """
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def block_udp(mesh: MeshLab, router: str) -> None:
    rule = ["nft", "insert", "rule", "ip", "wire_lab", "forward", "meta", "l4proto", "udp", "drop"]
    (await mesh.lab.run(router, rule, timeout=10)).check()


def node_daemon_pid(mesh: MeshLab, name: str) -> int:
    """The pid of the wire-node daemon in host ``name``'s namespace."""
    theirs = os.stat(f"/run/netns/{mesh.lab.hosts[name].namespace}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            mine = os.stat(f"/proc/{pid}/ns/net")
            if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"wire-node" in f.read():
                    return int(pid)
        except OSError:
            continue  # gone meanwhile
    raise RuntimeError(f"no wire-node daemon in {name}")


async def profiled(reactor, pids: dict[str, int], seconds: float, out_dir: str, work) -> dict:
    """``work()``'s result, with py-spy sampling each of ``pids`` meanwhile."""
    os.makedirs(out_dir, exist_ok=True)
    raw = {name: os.path.join(out_dir, f"{name}.txt") for name in pids}
    recordings = [profiling.record(reactor, pid, seconds, raw[name]) for name, pid in pids.items()]
    result = await work()
    await gatherResults(recordings)
    return {"result": result, "profiles": {name: profiling.summarize(path) for name, path in raw.items()}}


async def idle_stream_memory(reactor, count: int) -> dict:
    """The server's RSS growth for ``count`` idle streams (an open server of its own)."""
    mesh = MeshLab(reactor, ProcessRunner(reactor), open_server=True, server_args=("--no-rate-limits",))
    try:
        await mesh.setup()
        await mesh.add_host("holder")
        assert mesh.server is not None
        pid = mesh.server.pid
        await deferLater(reactor, 1.0, lambda: None)
        before = rss_kib(pid)
        holder = mesh.lab.start("holder", [sys.executable, "-c", HOLD_STREAMS, mesh.server_url, str(count)], log_prefix="holder")
        for _ in range(600):
            if any("ready" in line for line in holder.tail):
                break
            if not holder.running:
                raise RuntimeError("the stream holder failed: " + " | ".join(holder.tail))
            await deferLater(reactor, 0.2, lambda: None)
        await deferLater(reactor, 2.0, lambda: None)
        after = rss_kib(pid)
        await holder.stop()
        return {
            "streams": count,
            "server_rss_before_mib": round(before / 1024, 1),
            "server_rss_after_mib": round(after / 1024, 1),
            # Each stream's node was registered too: this is an upper bound for a stream alone.
            "kib_per_idle_stream_and_node": round((after - before) / count, 1),
        }
    finally:
        await mesh.teardown()


async def main(reactor, seconds: float, streams: int, profile_dir: str | None = None) -> None:
    mesh = MeshLab(reactor, ProcessRunner(reactor))
    report: dict = {}
    try:
        await mesh.setup()
        await mesh.lab.add_router("office", nat="easy")
        await block_udp(mesh, "office")
        await mesh.lab.add_router("cgn", nat="hard")
        hosts = (("pub1", None), ("pub2", None), ("blocked1", "office"), ("hard2", "cgn"))
        for name, router in hosts:
            await mesh.add_host(name, router)
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name, _ in hosts])
        for _ in range(90):
            if await mesh.ping("blocked1", "hard2", count=1, wait=1):
                break
        paths = {n["node_name"]: n.get("path") for n in (await mesh.status("blocked1"))["nodes"]}
        direct_tcp = await iperf(mesh, "pub1", "pub2", seconds)
        if profile_dir:
            assert mesh.server is not None
            pids = {"server": mesh.server.pid, "node_blocked1": node_daemon_pid(mesh, "blocked1")}
            sampled = await profiled(reactor, pids, seconds, profile_dir, lambda: iperf(mesh, "blocked1", "hard2", seconds))
            relay_tcp, report["profiles"] = sampled["result"], sampled["profiles"]
        else:
            relay_tcp = await iperf(mesh, "blocked1", "hard2", seconds)
        direct_udp = await iperf(mesh, "pub1", "pub2", seconds, udp_rate="10M")
        relay_udp = await iperf(mesh, "blocked1", "hard2", seconds, udp_rate="10M")
        report |= {
            "blocked1_to_hard2_path": paths.get("hard2"),
            "direct_tcp_mbit_s": direct_tcp["mbit_s"],
            "relay_tcp_side_tcp_mbit_s": relay_tcp["mbit_s"],
            "relay_tcp_over_direct_percent": round(100 * relay_tcp["mbit_s"] / direct_tcp["mbit_s"], 1),
            "direct_udp_10M": direct_udp,
            "relay_tcp_side_udp_10M": relay_udp,
            "targets": {"relay_tcp_over_direct_percent": ">= 30", "relay_tcp_side_udp_10M_lost_percent": "0"},
        }
    finally:
        await mesh.teardown()
    print(json.dumps(report, indent=2), flush=True)
    if streams:
        print(json.dumps({"idle_streams": await idle_stream_memory(reactor, streams)}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=200, help="idle relay streams for the memory figure (0: none)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the server and the relayed node during the relayed iperf")
    options = parser.parse_args()
    react(lambda reactor: ensureDeferred(main(reactor, options.seconds, options.streams, options.profile)))
