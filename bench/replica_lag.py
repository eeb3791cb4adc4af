"""How fast a change at one replica reaches a long-poll at another: two real
``twistd wire-server`` processes on one throw-away PostgreSQL (tests.pgcluster).

    python -m bench.replica_lag [--changes 100] [--burst 500]

First ``--changes`` registrations at A one at a time, each timed from its
POST to the answer of a long-poll waiting at B; then ``--burst``
registrations at A, 50 at a time, timed until B's netmap holds them all.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import tempfile
import time

from twisted.internet import defer, reactor, task

from bench.stats import percentile
from tests import pgcluster
from tests.helpers import body_for
from tests.serverproc import ServerProcess, http_client


class _Cleanups:
    """What ServerProcess needs of a test: somewhere to leave its cleanup."""

    def __init__(self) -> None:
        self.calls: list = []

    def addCleanup(self, f, *args) -> None:
        self.calls.append((f, args))

    async def run(self) -> None:
        for f, args in reversed(self.calls):
            result = f(*args)
            if isinstance(result, defer.Deferred) or inspect.iscoroutine(result):
                await result


async def measure(changes: int, burst: int) -> None:
    pg = pgcluster.cluster()
    database = pg.create_database()
    cleanups = _Cleanups()
    http = http_client()
    servers = []
    try:
        for name in ("a", "b"):
            data_dir = tempfile.mkdtemp(prefix=f"wire-bench-{name}-")
            cleanups.addCleanup(shutil.rmtree, data_dir, True)
            args = ("--open", "--no-rate-limits", f"--database={pg.url(database)}", f"--replica-name={name}")
            servers.append(ServerProcess(cleanups, data_dir, extra_args=args))
        a, b = servers
        await a.start()
        await b.start()

        async def post(name: str) -> None:
            response = await http.post(f"{a.url}/register", data=json.dumps(body_for(name)).encode(), timeout=30)
            await response.content()
            assert response.code == 200, response.code

        async def peers(since: str, wait: float = 0) -> dict:
            response = await http.get(f"{b.url}/peers?since={since}&wait={wait}", timeout=60)
            return json.loads(await response.content())

        await post("first")
        await task.deferLater(reactor, 0.5, lambda: None)
        cursor = (await peers("0:0"))["cursor"]
        took = []
        for i in range(changes):
            waiting = defer.Deferred.fromCoroutine(peers(cursor, 30))
            await task.deferLater(reactor, 0.02, lambda: None)
            started = time.perf_counter()
            await post(f"seq{i}")
            cursor = (await waiting)["cursor"]
            took.append(time.perf_counter() - started)
        p50, p99 = (percentile(took, q) or 0.0 for q in (50, 99))
        print(
            f"A->B, one at a time ({changes}): p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {max(took) * 1000:.1f} ms (POST at A to B's answer)"
        )

        started = time.perf_counter()
        for start in range(0, burst, 50):
            await defer.gatherResults([defer.Deferred.fromCoroutine(post(f"burst{i}")) for i in range(start, min(burst, start + 50))])
        posted = time.perf_counter() - started
        while True:
            names = {n["node_name"] for n in (await peers("0:0"))["upserts"]}
            if all(f"burst{i}" in names for i in range(burst)):
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        print(f"burst of {burst} at A (50 at a time): all acknowledged in {posted:.2f} s, all at B {time.perf_counter() - started:.2f} s after the first POST")
    finally:
        for server in servers:
            await server.stop()
        await cleanups.run()
        pg.drop_database(database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--burst", type=int, default=500)
    args = parser.parse_args()
    if pgcluster.skip_reason():
        raise SystemExit(f"bench.replica_lag: {pgcluster.skip_reason()}")
    task.react(lambda _: defer.Deferred.fromCoroutine(measure(args.changes, args.burst)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
