"""How long does the node's packet filter take to apply?  Run by hand, as root.

    python bench/firewall.py [--peers 1000] [--rules 10] [--rounds 5]

Creates a fresh network namespace holding only its loopback and applies, with
wire.node.firewall.Firewall, a filter for PEERS mesh peers (10.99.x.y and
fd7a::x:y sources) spread over RULES rules (tcp, udp, icmp, any protocol,
with and without ports), every peer also a probe source: the first apply
(one `nft -f -`, timed as a whole and as the nft process alone), the same filter again (no nft run at all), and a filter
differing in one peer (the whole table replaced again), each ROUNDS times
(the table removed and the parsed sources forgotten before each first apply). Prints the timings as JSON on
stdout (best and median seconds). The namespace is removed at the end, also
on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import react  # noqa: E402
from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner  # noqa: E402
from twisted.logger import textFileLogObserver  # noqa: E402

from tests.fakes import PassThroughRunner  # noqa: E402
from wire.node.firewall import Firewall, _parse, ruleset  # noqa: E402
from wire.protocol.filter import FilterRule, PortRange  # noqa: E402
from wire.runner import ProcessRunner, find_program  # noqa: E402

_KINDS = [
    ("tcp", (PortRange(22, 22),)),
    ("tcp", (PortRange(80, 80), PortRange(443, 443), PortRange(8000, 8999))),
    ("udp", (PortRange(53, 53),)),
    ("icmp", ()),
    (None, ()),
    (None, (PortRange(5000, 5100),)),
]


def peer_address(index: int) -> tuple[str, str]:
    return f"10.99.{1 + index // 250}.{1 + index % 250}", f"fd7a::{1 + index // 250:x}:{1 + index % 250:x}"


def filter_for(peers: int, rules: int, offset: int = 0) -> tuple[list[FilterRule], list[str]]:
    """RULES rules whose sources are the PEERS peers, dealt out in turn (v4 and v6)."""
    addresses = [peer_address(i + offset) for i in range(peers)]
    result = []
    for r in range(rules):
        proto, ports = _KINDS[r % len(_KINDS)]
        if r >= len(_KINDS):  # more rules than kinds: shift the ports so rules stay distinct
            ports = tuple(PortRange(p.first + r, p.last + r) for p in ports) or (PortRange(10000 + r, 10000 + r),)
            proto = proto if proto != "icmp" else "tcp"
        sources = tuple(f"{a}/{128 if ':' in a else 32}" for pair in addresses[r::rules] for a in pair)
        result.append(FilterRule(sources, proto, ports))
    return result, [a for pair in addresses for a in pair]


class TimingRunner:
    """Hands commands on, timing each `nft` to its end (stdin fed, output read)."""

    def __init__(self, inner, nft_runs: list[float]) -> None:
        self.inner = inner
        self.nft_runs = nft_runs

    async def _timed(self, argv, **kwargs):
        started = time.perf_counter()
        result = await self.inner.run(argv, **kwargs)
        self.nft_runs.append(time.perf_counter() - started)
        return result

    def run(self, argv, **kwargs) -> Deferred:
        if list(argv[:2]) == ["nft", "-f"]:
            return Deferred.fromCoroutine(self._timed(argv, **kwargs))
        return self.inner.run(argv, **kwargs)


async def timed(firewall: Firewall, rules: list[FilterRule], probe: list[str]) -> tuple[float, bool]:
    started = time.perf_counter()
    ran = await firewall.apply(rules, probe)
    return time.perf_counter() - started, ran


def summary(seconds: list[float]) -> dict:
    return {"best": round(min(seconds), 4), "median": round(statistics.median(seconds), 4)}


async def bench(reactor, peers: int, rules: int, rounds: int) -> dict:
    root = ProcessRunner(reactor)
    tag = secrets.token_hex(3)
    namespace = f"wfwbench-{tag}"
    nft_runs: list[float] = []  # wall seconds of each `nft` process
    runner = TimingRunner(PassThroughRunner(root, prefix=("ip", "netns", "exec", namespace)), nft_runs)
    firewall = Firewall(runner, f"wb{tag}")
    (await root.run(["ip", "netns", "add", namespace])).check()
    try:
        (await root.run(["ip", "-n", namespace, "link", "set", "lo", "up"])).check()
        started = time.perf_counter()
        first_rules, probe = filter_for(peers, rules)
        changed_rules, changed_probe = filter_for(peers, rules, offset=1)  # one peer gone, one new
        text = ruleset(firewall.table, firewall.interface, first_rules, probe)
        build_seconds = time.perf_counter() - started
        firsts, unchanged, changed, nft_first, nft_changed = [], [], [], [], []
        for _ in range(rounds):
            await firewall.remove()
            _parse.cache_clear()  # a cold first apply: no source parsed before
            before = len(nft_runs)
            seconds, ran = await timed(firewall, first_rules, probe)
            assert ran and len(nft_runs) == before + 1, "the first apply is one nft run"
            firsts.append(seconds)
            seconds, ran = await timed(firewall, first_rules, probe)
            assert not ran and len(nft_runs) == before + 1, "an unchanged apply runs nothing"
            unchanged.append(seconds)
            seconds, ran = await timed(firewall, changed_rules, changed_probe)
            assert ran and len(nft_runs) == before + 2, "a change is one nft run"
            changed.append(seconds)
            nft_first.append(nft_runs[before])
            nft_changed.append(nft_runs[before + 1])
        listed = (await runner.run(["nft", "list", "table", "inet", firewall.table])).check().stdout.decode()
        await firewall.remove()
        tables = (await runner.run(["nft", "list", "tables"])).check().stdout.decode()
        assert tables == "", f"tables left: {tables!r}"
        version = (await root.run(["nft", "--version"])).stdout.decode().strip()
        return {
            "nft": version,
            "peers": peers,
            "rules": rules,
            "sources": 2 * peers,
            "rounds": rounds,
            "ruleset_bytes": len(text),
            "ruleset_lines_in_kernel": len(listed.splitlines()),
            "build_ruleset_seconds": round(build_seconds, 4),
            "first_apply_seconds": summary(firsts),
            "first_apply_nft_process_seconds": summary(nft_first),
            "unchanged_apply_seconds": summary(unchanged),
            "changed_apply_seconds": summary(changed),
            "changed_apply_nft_process_seconds": summary(nft_changed),
        }
    finally:
        (await root.run(["ip", "netns", "delete", namespace])).check()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run this as root: it creates a network namespace and an nftables table in it")
    for program in ("ip", "nft"):
        find_program(program)
    # Warnings and errors to stderr; stdout carries the JSON only.
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )

    async def run(reactor) -> None:
        result = await bench(reactor, options.peers, options.rules, options.rounds)
        print(json.dumps(result, indent=2))

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
