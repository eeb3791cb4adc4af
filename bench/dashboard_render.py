"""How the dashboard copes with a large mesh: a real ``twistd wire-server``
with ``--nodes`` enrolled nodes, each reporting paths to a few peers, and the
dashboard opened in headless Chromium (tests/browser.py).

    .venv/bin/python -m bench.dashboard_render [--nodes 1000] [--peers 3]

Measured in the page: from navigation to every node drawn (first render),
the mesh view's size, and, while nodes leave one after another, how long
each takes to turn grey and the longest task the page ran (a frozen page
shows as a long task).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time

from twisted.internet import defer, reactor, task

from bench.replica_lag import _Cleanups
from bench.stats import percentile
from tests.browser import Browser, browser_unavailable, wait_for
from tests.helpers import key_for, registration_for
from tests.serverproc import ServerProcess
from tests.test_cli import run_wire
from wire.admin_ops import AdminOps
from wire.client import CoordinationClient
from wire.jointoken import decode_join_token
from wire.protocol import PathMode
from wire.protocol.report import NodeReport, PeerReport

KINDS = [(PathMode.DIRECT, "public", "198.51.100.7:51820"), (PathMode.RELAY, "relay-kernel", "203.0.113.1:3481"),
         (PathMode.LAN, "lan", "192.168.1.20:51820"), (PathMode.RELAY_TCP, "relay-shim", None)]

OBSERVE_LONG_TASKS = """
window.__longest = 0;
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration); })
  .observe({entryTypes: ["longtask"]});
"""


async def measure(nodes: int, peers: int, leaving: int) -> dict:
    cleanups = _Cleanups()
    data_dir = tempfile.mkdtemp(prefix="wire-bench-ui-")
    cleanups.addCleanup(shutil.rmtree, data_dir, True)
    try:
        server = ServerProcess(cleanups, data_dir, extra_args=("--no-rate-limits",))
        await server.start()
        token = (await AdminOps(reactor, data_dir).create_key(reusable=True))["token"]
        secret = decode_join_token(token).secret
        names = [f"n{i:05d}" for i in range(nodes)]
        clients: dict[str, CoordinationClient] = {}
        ids: dict[str, str] = {}

        async def enroll(name: str) -> None:
            client = CoordinationClient(server.client(), server.url)
            answer = await client.enroll(registration_for(name), secret)
            client.use_credential(answer.credential)
            clients[name], ids[name] = client, answer.node_id

        started = time.perf_counter()
        for i in range(0, nodes, 50):
            await defer.gatherResults([defer.Deferred.fromCoroutine(enroll(n)) for n in names[i:i + 50]])
        enrolled = time.perf_counter() - started
        rng = random.Random(7)

        async def report(i: int) -> None:
            name = names[i]
            chosen = {names[(i + k) % nodes] for k in range(1, peers + 1)}
            entries = tuple(PeerReport(ids[p], *rng.choice(KINDS), 3.0, 1000, 2000) for p in sorted(chosen))
            await clients[name].report(NodeReport(ids[name], key_for(name), entries, "0.1.0"))

        for i in range(0, nodes, 50):
            await defer.gatherResults([defer.Deferred.fromCoroutine(report(j)) for j in range(i, min(nodes, i + 50))])
        await task.deferLater(reactor, 6, lambda: None)  # the reports' batch is written

        code, out, err = await run_wire("admin", "--data-dir", data_dir, "dashboard", "--json")
        url = json.loads(out)["url"]
        browser = Browser(cleanups, tempfile.mkdtemp(prefix="wire-bench-shots-"))

        def first_render(driver):
            driver.get(url)
            wait_for(driver, lambda d: d.find_elements("css selector", 'meta[name="wire-csrf"]'), timeout=60, what="the page")
            driver.execute_script(OBSERVE_LONG_TASKS)
            wait_for(driver, lambda d: d.execute_script("return document.querySelectorAll('#topology g.node').length") == nodes,
                     timeout=120, what="every node drawn")
            drawn_at = driver.execute_script("return performance.now()")
            size = driver.execute_script(
                "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/v1/mesh')).map(e => e.transferSize)")
            browser.screenshot("large-mesh")
            return drawn_at / 1000.0, size

        rendered, sizes = await browser.call(first_render)
        grey = []
        for name in names[:leaving]:
            await clients[name].leave(ids[name], key_for(name))
            node_id = ids[name]
            _, took = await browser.call(lambda d, n=node_id: wait_for(
                d, lambda d: d.execute_script(f"return document.querySelector('#topology g.node[data-node-id=\"{n}\"]').dataset.online") == "false",
                timeout=30, what=f"{n} grey"))
            grey.append(took)
        longest = await browser.call(lambda d: d.execute_script("return window.__longest"))
        return {
            "nodes": nodes,
            "reported_peers_per_node": peers,
            "enroll_seconds": round(enrolled, 1),
            "first_render_seconds": round(rendered, 2),
            "mesh_answer_bytes": sizes[:1],
            "grey_seconds_p50": round(percentile(grey, 50), 2),
            "grey_seconds_max": round(max(grey), 2),
            "longest_task_ms_while_updating": round(longest, 1),
        }
    finally:
        await cleanups.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--peers", type=int, default=3, help="paths each node reports")
    parser.add_argument("--leaving", type=int, default=10, help="nodes that leave one after another, each timed")
    args = parser.parse_args()
    problem = browser_unavailable()
    if problem:
        raise SystemExit(problem)
    result: dict = {}

    async def run() -> None:
        result.update(await measure(args.nodes, args.peers, args.leaving))

    d = defer.Deferred.fromCoroutine(run())
    d.addErrback(lambda f: (f.printTraceback(), result.setdefault("error", str(f.value))))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
