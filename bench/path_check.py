"""What does the once-a-second path check cost at N peers?  Run by hand.

    python bench/path_check.py [--peers 10000] [--runs 20]

One reconcile is what the node daemon does every second: read WireGuard's
counters, move every peer's path forward (wire.node.paths), build the
desired peers, diff them. Here WireGuard is the in-memory fake (its status
costs nothing like `wg show dump`, which bench/apply_netmap.py measures),
so the figure is the Python work of the check itself. Prints JSON: the
first run (every PeerConfig built and checked), then the median and worst
of the steady runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from tests.fakes import FakeWireGuard  # noqa: E402
from wire.node.netmap import NodeNetmap  # noqa: E402
from wire.node.paths import Me  # noqa: E402
from wire.node.reconciler import Reconciler  # noqa: E402
from wire.protocol import NatType, NetmapAnswer  # noqa: E402


def key(i: int) -> str:
    return base64.b64encode(hashlib.sha256(str(i).encode()).digest()).decode()


def view(i: int) -> dict:
    return {
        "node_id": hashlib.sha256(str(i).encode()).hexdigest()[:32],
        "node_name": f"n{i}",
        "vpn_ip": f"10.{99 + i // 65536}.{(i // 256) % 256}.{i % 256}",
        "wg_public_key": key(i),
        "public_ip": f"198.18.{(i // 256) % 256}.{i % 256}",
        "nat_port": 40000,
        "port": 51820,
        "nat_type": "easy",
        "online": True,
    }


def bench(peers: int, runs: int) -> dict:
    clock = Clock()
    clock.advance(1_700_000_000)
    netmap = NodeNetmap("me")
    netmap.apply(NetmapAnswer.from_json({"cursor": "e:1", "full": True, "upserts": [view(i) for i in range(peers)]}))
    reconciler = Reconciler(
        clock=clock,
        wireguard=FakeWireGuard(clock=clock),
        netmap=netmap,
        client=None,  # type: ignore[arg-type]  # no relay, no reports: every pair is proven at once
        node_id="me",
        public_key=key(-1),
        me=lambda: Me("me", "203.0.113.1", NatType.EASY),
        track=Deferred.fromCoroutine,
        interface_up=lambda: True,
        stopping=lambda: False,
    )
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        Deferred.fromCoroutine(reconciler.reconcile())
        times.append((time.perf_counter() - started) * 1000)
        clock.advance(1)
    steady = times[2:]
    return {
        "peers": peers,
        "first_ms": round(times[0], 1),
        "steady_median_ms": round(statistics.median(steady), 1),
        "steady_max_ms": round(max(steady), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=20)
    options = parser.parse_args()
    print(json.dumps(bench(options.peers, max(3, options.runs)), indent=2))


if __name__ == "__main__":
    main()
