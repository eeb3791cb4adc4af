"""The relay in the report: bench/relay_throughput.py, plus what is still TODO.

Issue 7 was written before the relay existed, and asked for a clear TODO
here rather than a made-up number. The relay has since landed
(wire/server/relay.py), and bench/relay_throughput.py (run as root: a lab
mesh in network namespaces, iperf3 through a direct and a relayed pair)
measures what a relayed node gets; :func:`run` runs it and reports its JSON.

bench/relay_cost.py measures the server's CPU per forwarded frame for one
session on loopback (the server's own relay protocol and table, in process).

TODO(relay server bench): still not measured, against a real
``twistd wire-server`` pinned like the other benches:
  - frames/s forwarded for 100 and 1,000 sessions;
  - added latency per frame (p50/p99) through the relay vs direct loopback;
  - that frames with an unknown token or from a non-holder are dropped at
    line rate without a reply (tests prove they are dropped; not the rate).
No number is reported for those until that bench exists.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from bench.processes import BENCH_CHECKOUT, CollectingProcess

TODO = "relay server cost for 100 and 1,000 sessions and its added latency are not measured yet (one session's CPU per frame: bench/relay_cost.py); see bench/relay.py"


async def run(reactor, seconds: float = 10.0, timeout: float = 600.0) -> dict:
    """bench/relay_throughput.py's figures (relayed vs direct, through the lab)."""
    script = os.path.join(BENCH_CHECKOUT, "bench", "relay_throughput.py")
    if not os.path.exists(script):
        return {"status": "todo", "todo": TODO, "throughput": {"skipped": "bench/relay_throughput.py is missing"}}
    if os.geteuid() != 0:
        return {"status": "todo", "todo": TODO, "throughput": {"skipped": "needs root (a lab mesh in network namespaces)"}}
    missing = [p for p in ("ip", "wg", "wireguard-go", "iperf3", "nft") if shutil.which(p) is None]
    if missing:
        return {"status": "todo", "todo": TODO, "throughput": {"skipped": f"missing programs: {', '.join(missing)}"}}
    process = CollectingProcess()
    argv = [sys.executable, script, f"--seconds={seconds:g}"]
    reactor.spawnProcess(process, argv[0], argv, env=dict(os.environ, PYTHONPATH=BENCH_CHECKOUT), path=BENCH_CHECKOUT)
    timer = reactor.callLater(timeout, lambda: process.ended.called or process.transport.signalProcess("KILL"))
    code = await process.ended
    if timer.active():
        timer.cancel()
    if code != 0:
        throughput = {"failed": f"exit {code}", "stderr": process.stderr[-2000:].decode(errors="replace")}
    else:
        try:
            throughput = json.loads(process.stdout)
        except ValueError:
            throughput = {"failed": "no JSON on stdout", "stdout": process.stdout[-2000:].decode(errors="replace")}
    return {"status": "partial", "todo": TODO, "throughput": throughput}
