"""Paths that agree and heal, for real: wireguard-go in namespaces behind
nftables NATs, the bad day played out, and both ``wg show`` endpoints of
every pair compared at each step."""

from __future__ import annotations

import re
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.test_e2e import eventually, lab_unavailable
from wire.demo import MeshLab
from wire.node import launcher
from wire.protocol.paths import FIRST_RETRY, RETRY_TIMEOUT
from wire.runner import ProcessRunner

BLOCK_TABLE = "wiretest_block"


def mode_of(endpoint: str | None) -> str:
    """What a ``wg show`` endpoint says of the path: the relay shim is on loopback."""
    if not endpoint or endpoint == "(none)":
        return "none"
    return "relay" if endpoint.startswith("127.") else "direct"


def _proven_path(node: dict) -> str:
    """A status entry's path once its daemon's planner has proven it (or relays)."""
    if node.get("path_phase") in ("working", "relayed"):
        return node.get("path", "none")
    return f"{node.get('path', 'none')} ({node.get('path_phase')})"


class PathsLab:
    """A lab mesh and what its nodes' WireGuard shows."""

    def __init__(self, test: unittest.TestCase, mesh: MeshLab):
        self.test = test
        self.mesh = mesh

    async def endpoints(self, name: str) -> dict[str, str]:
        """Peer name -> endpoint, as ``wg show IFACE endpoints`` has it in the node's namespace."""
        node = self.mesh.nodes[name]
        result = await self.mesh.lab.run(name, ["wg", "show", node.interface, "endpoints"], timeout=10)
        keys = await self.keys()
        shown = {}
        for line in result.stdout.decode().splitlines():
            key, _, endpoint = line.partition("\t")
            if key in keys:
                shown[keys[key]] = endpoint.strip()
        return shown

    async def keys(self) -> dict[str, str]:
        status = await self.mesh.status(sorted(self.mesh.nodes)[0])
        return {n["wg_public_key"]: n["node_name"] for n in status["nodes"]}

    async def modes(self, names: list[str] | None = None) -> dict[tuple[str, str], str]:
        """(a, b) -> the mode of a's WireGuard endpoint for b, for every ordered pair."""
        names = names or sorted(self.mesh.nodes)
        shown = await gatherResults([Deferred.fromCoroutine(self.endpoints(n)) for n in names])
        return {(a, b): mode_of(ends.get(b)) for a, ends in zip(names, shown) for b in names if a != b}

    async def status_paths(self) -> dict[tuple[str, str], str]:
        """(a, b) -> the path a's daemon shows for b (what ``wire status`` shows:
        connecting until proven), asked of each daemon over its control socket:
        starting a CLI per node per check costs seconds on a loaded machine,
        time the bounds below are not about."""
        names = sorted(self.mesh.nodes)
        shown = await gatherResults([Deferred.fromCoroutine(self.mesh.daemon_status(n)) for n in names])
        return {
            (a, p["node_name"]): _proven_path({"path": p.get("path"), "path_phase": p.get("phase")})
            for a, status in zip(names, shown)
            for p in status["peers"]
        }

    async def left_at(self, *pairs: tuple[str, str]) -> list[float]:
        """For each (me, peer): when me's daemon took its current path to peer (its clock)."""
        found = []
        for me, peer in pairs:
            status = await self.mesh.daemon_status(me)
            (entry,) = [p for p in status["peers"] if p["node_name"] == peer]
            found.append(float(entry["since"]))
        return found

    async def echoing(self, a: str, b: str) -> bool:
        """Whether each of the two daemons hears the other answer its path probes."""
        for me, peer in ((a, b), (b, a)):
            status = await self.mesh.daemon_status(me)
            if not any(p["node_name"] == peer and p.get("echoing") for p in status["peers"]):
                return False
        return True

    @staticmethod
    def split(modes: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
        """Pairs whose two sides do not agree."""
        return sorted((a, b) for (a, b), mode in modes.items() if a < b and mode != modes[(b, a)])

    async def settled(self, expected: dict[tuple[str, str], str], timeout: float, what: str) -> float:
        """Wait until every pair named in ``expected`` (both orders) has that mode on both sides."""
        last: dict = {}

        async def check() -> bool:
            last.clear()
            last.update(await self.modes())
            if not all(last[(a, b)] == mode and last[(b, a)] == mode for (a, b), mode in expected.items()):
                return False
            # WireGuard has the endpoints; each daemon must also have proven
            # them (heard the peer on them), not only configured them.
            shown = await self.status_paths()
            last["daemons"] = shown
            return all(shown[(a, b)] == mode and shown[(b, a)] == mode for (a, b), mode in expected.items())

        try:
            return await eventually(check, timeout=timeout, step=0.5, what=what)
        except AssertionError:
            raise AssertionError(f"{what} not within {timeout}s: {last}\n{self.logs()}") from None

    def logs(self) -> str:
        """Every node daemon's log tail, for a failure's message."""
        return "\n".join(
            f"--- {name}'s daemon log:\n{launcher.log_tail(node.config_dir, lines=30)}" for name, node in sorted(self.mesh.nodes.items())
        )

    def ping_stream(self, source: str, target: str, seconds: float, interval: float = 0.2):
        """A ping every ``interval`` for ``seconds``, in the background."""
        address = self.mesh.nodes[target].vpn_ip
        count = int(seconds / interval)
        return self.mesh.lab.start(
            source, ["ping", "-n", "-q", "-i", str(interval), "-W", "1", "-c", str(count), address], log_prefix=f"ping-{source}"
        )

    @staticmethod
    async def lost_seconds(stream, interval: float = 0.2) -> float:
        await stream.when_exited()
        text = "\n".join(stream.tail)
        match = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        assert match, f"no ping summary in {text!r}"
        sent, received = int(match.group(1)), int(match.group(2))
        return (sent - received) * interval

    async def block_direct(self, router: str, public_ip: str, port: int = 51820) -> None:
        """A drop rule in a NAT router: no UDP between its LAN and ``public_ip:port``."""
        rules = (
            f"table inet {BLOCK_TABLE} {{\n  chain forward {{\n    type filter hook forward priority -10;\n"
            f"    ip daddr {public_ip} udp dport {port} drop\n    ip saddr {public_ip} udp sport {port} drop\n  }}\n}}\n"
        )
        (await self.mesh.lab.run(router, ["nft", "-f", "-"], stdin=rules.encode(), timeout=10)).check()

    async def unblock(self, router: str) -> None:
        (await self.mesh.lab.run(router, ["nft", "delete", "table", "inet", BLOCK_TABLE], timeout=10)).check()


class PathsAgreeTests(unittest.TestCase):
    timeout = 400
    skip = lab_unavailable()

    async def build(self) -> PathsLab:
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        await mesh.lab.add_router("home", nat="easy")
        await mesh.lab.add_router("office", nat="easy")
        await mesh.add_host("alpha")
        await mesh.add_host("gamma", "home")
        await mesh.add_host("delta", "office")
        await gatherResults([Deferred.fromCoroutine(mesh.up(n)) for n in ("alpha", "gamma", "delta")])
        lab = PathsLab(self, mesh)
        await lab.settled(self.all_direct, timeout=30, what="every pair direct at the start")
        return lab

    all_direct = {("alpha", "gamma"): "direct", ("alpha", "delta"): "direct", ("delta", "gamma"): "direct"}

    async def test_down_and_up_of_a_public_node_and_a_server_kill(self):
        lab = await self.build()
        mesh = lab.mesh
        # (1) The public node leaves and comes back.
        await mesh.down("alpha")
        await mesh.up("alpha")
        stream = lab.ping_stream("gamma", "alpha", seconds=20)
        waited = await lab.settled(self.all_direct, timeout=30, what="direct again after alpha's down and up")
        lost = await lab.lost_seconds(stream)
        self.assertLessEqual(lost, 3.0, f"seconds of pings lost once alpha was up again (settled in {waited:.1f}s)")
        # (2) The server is killed and restarted: no pair changes mode, none splits.
        await mesh.kill_server(signal.SIGKILL)
        await mesh.start_server()
        for _ in range(20):
            modes = await lab.modes()
            self.assertEqual(lab.split(modes), [], f"split after the server restart: {modes}")
            self.assertEqual(set(modes.values()), {"direct"}, f"a pair changed mode after the server restart: {modes}")
            await deferLater(reactor, 0.5, lambda: None)
        status = await mesh.status("gamma")
        by_name = {n["node_name"]: n for n in status["nodes"]}
        self.assertEqual((by_name["alpha"]["path"], by_name["alpha"]["endpoint_kind"]), ("direct", "public"))

    async def test_a_blocked_direct_path_falls_back_on_both_sides_and_heals(self):
        lab = await self.build()
        mesh = lab.mesh
        alpha_ip = mesh.lab.public_address("alpha")
        # The bound below is for a path whose peer answers probes (found dead
        # within DEAD_AFTER); one that never answered is given longer, as it must.
        await eventually(lambda: lab.echoing("alpha", "gamma"), timeout=20, step=0.5, what="alpha and gamma answering each other's probes")
        stream = lab.ping_stream("gamma", "alpha", seconds=25)
        await lab.block_direct("home", alpha_ip)
        blocked_at = reactor.seconds()
        relayed = {("alpha", "gamma"): "relay", ("alpha", "delta"): "direct", ("delta", "gamma"): "direct"}
        await lab.settled(relayed, timeout=30, what="alpha and gamma on the relay, both sides")
        # When each daemon left the dead path, by its own clock (its path's
        # "since"): what the bound is about, not how long this test's checks
        # (a process per node per look) took to see it on a loaded machine.
        left = await lab.left_at(("alpha", "gamma"), ("gamma", "alpha"))
        waited = max(left) - blocked_at
        self.assertLessEqual(waited, 12.0, f"the dead direct path left within 10 s (and the daemons' 1 s checks): {left}\n{lab.logs()}")
        lost = await lab.lost_seconds(stream)
        self.assertLessEqual(lost, 12.0, "pings lost while the dead path was found")
        status = await mesh.status("gamma")
        alpha = {n["node_name"]: n for n in status["nodes"]}["alpha"]
        self.assertEqual((alpha["path"], alpha["endpoint_kind"], alpha["path_decided_by"]), ("relay", "relay-shim", "server"))
        self.assertIn("the direct path stopped working; direct tried again in", alpha["path_reason"])
        # The first retry comes while the block holds: it fails, costing a few seconds, and the pair stays relayed.
        stream = lab.ping_stream("gamma", "alpha", seconds=FIRST_RETRY + 10)
        modes_seen = set()
        while reactor.seconds() - blocked_at < waited + FIRST_RETRY + RETRY_TIMEOUT + 8:
            modes = await lab.modes(["alpha", "gamma"])
            modes_seen.add(modes[("alpha", "gamma")])
            await deferLater(reactor, 0.5, lambda: None)
        self.assertIn("direct", modes_seen, "the first retry tried direct")
        await lab.settled(relayed, timeout=5, what="back on the relay after the failed retry")
        lost = await lab.lost_seconds(stream)
        self.assertLessEqual(lost, RETRY_TIMEOUT + 3, "pings a failed retry cost")
        # The block is lifted: the next retry (2 minutes on) finds the direct path, for both.
        await lab.unblock("home")
        lifted_at = reactor.seconds()
        await lab.settled(self.all_direct, timeout=2 * FIRST_RETRY + 20, what="direct again once the block is lifted")
        self.assertLessEqual(reactor.seconds() - lifted_at, 2 * FIRST_RETRY + 20)
        status = await mesh.status("alpha")
        gamma = {n["node_name"]: n for n in status["nodes"]}["gamma"]
        self.assertEqual((gamma["path"], gamma["endpoint_kind"]), ("direct", "public"))

    async def test_a_nat_that_moves_every_mapping_is_followed_within_30_s(self):
        lab = await self.build()
        mesh = lab.mesh

        async def gamma_nat_port() -> int:
            status = await mesh.status("alpha")
            return {n["node_name"]: n["nat_port"] for n in status["nodes"]}["gamma"]

        self.assertNotIn(await gamma_nat_port(), range(30000, 31000))
        stream = lab.ping_stream("delta", "gamma", seconds=30)
        await mesh.lab.rebind_nat("home", 30000, 30999)
        rebound = reactor.seconds()

        async def moved() -> bool:
            return await gamma_nat_port() in range(30000, 31000)

        await eventually(moved, timeout=25, step=0.5, what="gamma's new NAT mapping registered")
        left = 30 - (reactor.seconds() - rebound)
        await lab.settled(self.all_direct, timeout=max(left, 1), what="every pair with gamma direct again")
        self.assertLessEqual(reactor.seconds() - rebound, 30.5)
        self.assertTrue(await mesh.ping("delta", "gamma"), "delta reaches gamma on its new mapping")
        lost = await lab.lost_seconds(stream)
        self.assertLessEqual(lost, 5.0, "pings lost while the NAT's move was found and told")
