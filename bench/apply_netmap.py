"""How long does applying a netmap to wireguard-go take?  Run by hand, as root.

    python bench/apply_netmap.py [--peers 1000] [--changes 10]

Creates a fresh network namespace holding only its loopback, a wireguard-go
interface in it (LinuxWireGuard with use_kernel=False), applies a netmap of
random peers (real X25519 keys, 10.99.x.y/32 allowed-ips, endpoints in
198.18.0.0/15, persistent-keepalive 0 so no handshake is ever started: the
peers do not exist, and with no route out of the namespace nothing could
leave it anyway), then a second netmap that differs in a few peers, then the
same netmap again (no spawn), and prints the timings as JSON on stdout.
Everything it made is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import secrets
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import react  # noqa: E402
from twisted.logger import LogLevel, LogLevelFilterPredicate, FilteringLogObserver, globalLogBeginner  # noqa: E402
from twisted.logger import textFileLogObserver  # noqa: E402

from tests.fakes import PassThroughRunner  # noqa: E402
from wire.keys import generate_private_key, public_key_for  # noqa: E402
from wire.node.wireguard import LinuxWireGuard, PeerConfig  # noqa: E402
from wire.runner import ProcessRunner, find_program  # noqa: E402

ENDPOINTS = ipaddress.IPv4Network("198.18.0.0/15")


def count_wg_sets(wg_sets: list[int]):
    """A PassThroughRunner inspector: the argv bytes of each `wg set` (without the netns prefix)."""

    def inspect(argv: tuple[str, ...]) -> None:
        if list(argv[:2]) == ["wg", "set"]:
            wg_sets.append(sum(len(word) + 1 for word in argv))

    return inspect


def random_peer(rng: random.Random, index: int) -> PeerConfig:
    key = public_key_for(generate_private_key())
    endpoint = ENDPOINTS[rng.randrange(1, ENDPOINTS.num_addresses - 1)]
    return PeerConfig(
        key,
        (f"10.99.{1 + index // 250}.{1 + index % 250}/32",),
        f"{endpoint}:{rng.randrange(1024, 65536)}",
        persistent_keepalive=0,
    )


def changed_netmap(
    rng: random.Random, netmap: dict[str, PeerConfig], changes: int, peers: int
) -> dict[str, PeerConfig]:
    """A netmap differing in `changes` peers: some moved, some gone, some new."""
    result = dict(netmap)
    keys = rng.sample(sorted(netmap), changes)
    moved, gone = keys[: changes - 2 * (changes // 3)], keys[changes - 2 * (changes // 3) : changes - changes // 3]
    for key in moved:
        old = result[key]
        result[key] = PeerConfig(key, old.allowed_ips, f"{ENDPOINTS[rng.randrange(1, 100_000)]}:51820", 0)
    for key in gone:
        del result[key]
    for index in range(changes // 3):
        new = random_peer(rng, peers + index)
        result[new.public_key] = new
    return result


async def timed_apply(wg: LinuxWireGuard, wg_sets: list[int], netmap: dict[str, PeerConfig]) -> dict:
    before = len(wg_sets)
    started = time.perf_counter()
    changed = await wg.apply(netmap)
    seconds = time.perf_counter() - started
    spawns = wg_sets[before:]
    return {"seconds": round(seconds, 4), "peers_changed": changed, "wg_spawns": len(spawns), "argv_bytes": sum(spawns)}


async def bench(reactor, peers: int, changes: int) -> dict:
    root = ProcessRunner(reactor)
    tag = secrets.token_hex(3)
    namespace, interface = f"wbench-{tag}", f"wb{tag}"
    wg_sets: list[int] = []
    runner = PassThroughRunner(root, prefix=("ip", "netns", "exec", namespace), inspect=count_wg_sets(wg_sets))
    wg = LinuxWireGuard(runner, interface, clock=reactor, use_kernel=False)
    rng = random.Random()
    (await root.run(["ip", "netns", "add", namespace])).check()
    try:
        (await root.run(["ip", "-n", namespace, "link", "set", "lo", "up"])).check()
        started = time.perf_counter()
        await wg.up(generate_private_key(), 51820, "10.99.0.1", 16)
        up_seconds = time.perf_counter() - started

        started = time.perf_counter()
        netmap = {config.public_key: config for config in (random_peer(rng, i) for i in range(peers))}
        build_seconds = time.perf_counter() - started

        first = await timed_apply(wg, wg_sets, netmap)
        started = time.perf_counter()
        status = await wg.status()
        status_seconds = time.perf_counter() - started
        assert len(status.peers) == peers, f"{len(status.peers)} peers on the interface, expected {peers}"

        second_netmap = changed_netmap(rng, netmap, changes, peers)
        second = await timed_apply(wg, wg_sets, second_netmap)
        status = await wg.status()
        assert {p.public_key for p in status.peers} == set(second_netmap), "the interface does not hold the netmap"
        again = await timed_apply(wg, wg_sets, second_netmap)

        links = (await runner.run(["ip", "-o", "link", "show"])).check().stdout.decode()
        return {
            "backend": wg.backend,
            "wireguard_go": (await root.run(["wireguard-go", "--version"])).stdout.decode().split("\n")[0],
            "namespace_links": sorted(line.split(":")[1].strip() for line in links.splitlines()),
            "peers": peers,
            "up_seconds": round(up_seconds, 4),
            "build_netmap_seconds": round(build_seconds, 4),
            "first_apply": first,
            "status_seconds": round(status_seconds, 4),
            "second_apply": {**second, "changes_asked": changes},
            "unchanged_apply": again,
        }
    finally:
        try:
            await wg.down()
        finally:
            pids = (await root.run(["ip", "netns", "pids", namespace])).stdout.decode().split()
            if pids:
                await root.run(["kill", "-KILL", *pids])
            (await root.run(["ip", "netns", "delete", namespace])).check()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=10)
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run this as root: it creates a network namespace and a WireGuard interface")
    for program in ("ip", "wg", "wireguard-go"):
        find_program(program)
    # Warnings and errors to stderr; stdout carries the JSON only.
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )

    async def run(reactor) -> None:
        result = await bench(reactor, options.peers, options.changes)
        print(json.dumps(result, indent=2))

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
