"""How long the reactor thread stalls while the store writes, and what one
registration's commit costs, on SQLite or PostgreSQL.

    python -m bench.store_stall [--database postgresql://...] [--nodes 1000]

A probe on the reactor asks to run every millisecond and keeps the longest
gap it saw; meanwhile ``--nodes`` registrations arrive 50 per reactor turn
(each answered after its group commit), then 200 more one at a time (each
waiting for its own commit: the cost of a commit). Runs against this
checkout's store or, for a before-and-after, an older one on PYTHONPATH (its
synchronous store writes on the reactor thread).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from twisted.internet import defer, reactor, task

from tests.helpers import registration_for
from wire.addressing import AddressPool, parse_subnet
from wire.server.coordinator import Coordinator
from wire.server.registry import Registry
from wire.server.store import open_store


class StallProbe:
    def __init__(self) -> None:
        self.longest = 0.0
        self._last = time.perf_counter()
        self._loop = task.LoopingCall(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now

    def start(self) -> None:
        self._last = time.perf_counter()
        self._loop.start(0.001)

    def stop(self) -> None:
        self._loop.stop()


async def run(nodes: int, database: str | None, directory: str | None = None) -> dict:
    data_dir = tempfile.mkdtemp(prefix="wire-bench-", dir=directory)
    store = open_store(data_dir, reactor, database) if database else open_store(data_dir, reactor)
    if hasattr(store, "serve"):
        store.serve()  # this checkout: answers come back from the database thread
    registry = Registry(store, AddressPool(parse_subnet("10.96.0.0/12")))
    registry.load(store.load(), reactor.seconds())
    coordinator = Coordinator(reactor, store, registry)
    in_store = _time_calls(store, "_commit_now")
    probe = StallProbe()
    probe.start()
    started = time.perf_counter()
    for batch in range(0, nodes, 50):
        turn = [
            defer.Deferred.fromCoroutine(coordinator.register(registration_for(f"n{i}"), "203.0.113.5"))
            for i in range(batch, min(nodes, batch + 50))
        ]
        await defer.gatherResults(turn)
    burst = time.perf_counter() - started
    stall = probe.longest
    single = []
    for i in range(200):
        t = time.perf_counter()
        await coordinator.register(registration_for(f"one{i}"), "203.0.113.5")
        single.append(time.perf_counter() - t)
    probe.stop()
    closed = store.close()
    if isinstance(closed, defer.Deferred):
        await closed
    single.sort()
    return {
        "engine": "postgresql" if database else "sqlite",
        "registrations": nodes,
        "burst_s": round(burst, 3),
        "longest_reactor_stall_ms": round(stall * 1000, 1),
        # The reactor thread's own time in group commits (the old store's fsyncs were here).
        "longest_commit_on_reactor_ms": round(max(in_store) * 1000, 2),
        "commits_on_reactor_total_ms": round(sum(in_store) * 1000, 1),
        "commit_median_ms": round(single[len(single) // 2] * 1000, 2),
        "commit_p99_ms": round(single[int(len(single) * 0.99)] * 1000, 2),
    }


def _time_calls(store, name: str) -> list[float]:
    """How long each call of ``store.name`` keeps the calling (reactor) thread."""
    taken: list[float] = []
    real = getattr(store, name)

    def timed(*args):
        t = time.perf_counter()
        try:
            return real(*args)
        finally:
            taken.append(time.perf_counter() - t)

    setattr(store, name, timed)
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=None, help="a PostgreSQL URL [SQLite in a temp dir]")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--dir", default=None, help="where SQLite's data dir goes (a real disk: fsyncs cost) [the temp dir]")
    args = parser.parse_args()

    async def go() -> None:
        print(await run(args.nodes, args.database, args.dir))

    task.react(lambda _: defer.Deferred.fromCoroutine(go()))


if __name__ == "__main__":
    main()
