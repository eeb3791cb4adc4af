"""End to end, for real: a wire server and nodes in network namespaces, joined
through the real ``wire`` CLI, with real wireguard-go tunnels and real pings."""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial import unittest

from wire.demo import MeshLab
from wire.install import check_install
from wire.lab import LabUnavailable, check_requirements
from wire.runner import ProcessRunner


def lab_unavailable() -> str | None:
    try:
        check_requirements()
    except LabUnavailable as e:
        return f"the lab cannot run here: {e}"
    tools = check_install()
    if not tools.ok:
        return f"WireGuard is missing: {', '.join(tools.missing)}"
    return None


async def eventually(check, timeout: float, step: float = 0.2, what: str = "condition") -> float:
    """Await ``check()`` (a coroutine function) until true; returns seconds waited."""
    started = reactor.seconds()
    while True:
        if await check():
            return reactor.seconds() - started
        if reactor.seconds() - started > timeout:
            raise AssertionError(f"{what} not met within {timeout}s")
        await deferLater(reactor, step, lambda: None)


class MeshTests(unittest.TestCase):
    """One mesh for the whole class would hide state between tests; each test
    builds its own (a few seconds) so failures stay independent."""

    timeout = 240
    skip = lab_unavailable()

    async def build(self, public=("alpha", "beta"), natted=(("gamma", "home"), ("delta", "office"))) -> MeshLab:
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        for router in sorted({r for _, r in natted}):
            await mesh.lab.add_router(router, nat="easy")
        for name in public:
            await mesh.add_host(name)
        for name, router in natted:
            await mesh.add_host(name, router)
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in (*public, *(n for n, _ in natted))])
        return mesh

    async def assert_all_pairs_ping(self, mesh: MeshLab, attempts: int = 5) -> None:
        matrix = await mesh.ping_matrix(attempts=attempts)
        failed = sorted(pair for pair, ok in matrix.items() if not ok)
        self.assertEqual(failed, [], "pairs that could not ping over the VPN")

    async def test_every_pair_pings_and_nat_nodes_use_lan_when_shared(self):
        mesh = await self.build(natted=(("gamma", "home"), ("delta", "office"), ("epsilon", "home")))
        await self.assert_all_pairs_ping(mesh)
        status = await mesh.status("gamma")
        paths = {n["node_name"]: n for n in status["nodes"]}
        # gamma and epsilon share the "home" router: they talk over the LAN.
        epsilon_lan = mesh.lab.hosts["epsilon"].lan_address
        self.assertEqual(paths["epsilon"]["endpoint"].split(":")[0], epsilon_lan)
        self.assertEqual(paths["alpha"]["path"], "direct")

    async def test_new_node_is_pinged_within_3s_of_up(self):
        mesh = await self.build(natted=())
        await mesh.add_host("late")
        await mesh.up("late")
        waited = await eventually(lambda: mesh.ping("alpha", "late", wait=1), timeout=3, step=0, what="alpha pings the new node")
        self.assertLess(waited, 3)

    async def test_down_shows_offline_at_once(self):
        mesh = await self.build(natted=())
        await mesh.down("beta")
        status = await mesh.status("alpha")
        beta = next(n for n in status["nodes"] if n["node_name"] == "beta")
        self.assertEqual(beta["status"], "offline")
        links = await mesh.lab.run("beta", ["ip", "link", "show", mesh.nodes["beta"].interface])
        self.assertNotEqual(links.rc, 0, "wire down must remove the interface")
        del mesh.nodes["beta"]

    async def test_server_killed_tunnels_survive_and_nodes_come_back(self):
        mesh = await self.build()
        await self.assert_all_pairs_ping(mesh)
        await mesh.kill_server(signal.SIGKILL)
        await self.assert_all_pairs_ping(mesh, attempts=2)
        killed_at = reactor.seconds()
        await mesh.start_server()

        async def all_reregistered() -> bool:
            status = await mesh.status("alpha")
            return all(n["status"] == "online" and n["last_seen_ago"] <= reactor.seconds() - killed_at for n in status["nodes"])

        waited = await eventually(all_reregistered, timeout=10, what="every node re-registered")
        self.assertLess(waited, 10)

    async def test_killed_wireguard_go_is_restored(self):
        mesh = await self.build(natted=())
        await self.assert_all_pairs_ping(mesh)
        interface = mesh.nodes["alpha"].interface
        pids = await mesh.lab.run("alpha", ["ip", "netns", "pids", mesh.lab.hosts["alpha"].namespace])
        wireguard_go = [
            pid for pid in pids.stdout.decode().split()
            if _cmdline(pid)[:1] and os.path.basename(_cmdline(pid)[0]) == "wireguard-go" and interface in _cmdline(pid)
        ]
        self.assertEqual(len(wireguard_go), 1, "one wireguard-go serves the interface")
        os.kill(int(wireguard_go[0]), signal.SIGKILL)
        await eventually(lambda: mesh.ping("alpha", "beta", wait=1), timeout=20, what="tunnel restored")


def _cmdline(pid: str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []
