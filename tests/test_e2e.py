"""End to end, for real: a wire server and nodes in network namespaces, joined
through the real ``wire`` CLI, with real wireguard-go tunnels and real pings."""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial import unittest

from wire.demo import MeshLab
from wire.install import check_install
from wire.node import launcher
from wire.lab import LabUnavailable, check_requirements
from wire.relayproto import MAGIC
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


async def what_nodes_saw(mesh: MeshLab, names: list[str]) -> str:
    """For a failure's message: each node's WireGuard and its daemon's log tail."""
    told = []
    for name in names:
        node = mesh.nodes[name]
        shown = await mesh.lab.run(name, ["wg", "show", node.interface], timeout=10)
        told.append(f"--- {name} ({node.vpn_ip}): wg show\n{shown.stdout.decode(errors='replace')}")
        told.append(f"--- {name}'s daemon log:\n{launcher.log_tail(node.config_dir, lines=60)}")
    return "\n".join(told)


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
        self.assertEqual((paths["epsilon"]["path"], paths["epsilon"]["endpoint_kind"]), ("lan", "lan"))
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


async def public_mesh(test: unittest.TestCase, names) -> MeshLab:
    """A lab mesh of public nodes, every one joined with the real ``wire up``;
    torn down when the test ends."""
    mesh = MeshLab(reactor, ProcessRunner(reactor))
    test.addCleanup(mesh.teardown)
    await mesh.setup()
    for name in names:
        await mesh.add_host(name)
    await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in names])
    return mesh


def _cmdline(pid: str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


class NatTraversalTests(unittest.TestCase):
    """Easy and hard NATs: direct wherever possible, relayed only where not."""

    timeout = 240
    skip = lab_unavailable()

    async def build(self, hosts: list[tuple[str, str | None]], routers: dict[str, str]) -> MeshLab:
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        for router, nat in routers.items():
            await mesh.lab.add_router(router, nat=nat)
        for name, router in hosts:
            await mesh.add_host(name, router)
        answers = await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name, _ in hosts])
        self.nat_types = {a["node_name"]: a["nat_type"] for a in answers}
        return mesh

    async def paths_from(self, mesh: MeshLab, name: str) -> dict[str, str]:
        status = await mesh.status(name)
        return {n["node_name"]: n.get("path") for n in status["nodes"] if not n["this_node"]}

    async def assert_all_pairs_ping(self, mesh: MeshLab, attempts: int = 5) -> None:
        matrix = await mesh.ping_matrix(attempts=attempts)
        failed = sorted(pair for pair, ok in matrix.items() if not ok)
        if failed:
            self.fail(f"pairs that did not ping: {failed}\n{await what_nodes_saw(mesh, sorted({n for pair in failed for n in pair}))}")

    async def test_public_and_easy_nat_nodes_are_all_direct(self):
        mesh = await self.build([("alpha", None), ("gamma", "home"), ("delta", "office")], {"home": "easy", "office": "easy"})
        self.assertEqual(self.nat_types, {"alpha": "none", "gamma": "easy", "delta": "easy"})
        await self.assert_all_pairs_ping(mesh)
        for name in ("alpha", "gamma", "delta"):
            paths = await self.paths_from(mesh, name)
            self.assertEqual(set(paths.values()), {"direct"}, f"paths from {name}: {paths}")

    async def test_hard_nat_pairs_are_relayed_and_the_rest_direct(self):
        mesh = await self.build(
            [("alpha", None), ("gamma", "home"), ("hard1", "corp"), ("hard2", "cgn")],
            {"home": "easy", "corp": "hard", "cgn": "hard"},
        )
        self.assertEqual(self.nat_types["hard1"], "hard")
        self.assertEqual(self.nat_types["hard2"], "hard")
        await self.assert_all_pairs_ping(mesh)
        self.assertEqual(await self.paths_from(mesh, "hard1"), {"alpha": "direct", "gamma": "relay", "hard2": "relay"})
        self.assertEqual(await self.paths_from(mesh, "gamma"), {"alpha": "direct", "hard1": "relay", "hard2": "relay"})
        status = await mesh.status("hard2")
        reasons = {n["node_name"]: n.get("path_reason") for n in status["nodes"]}
        self.assertEqual(reasons["hard1"], "relay: hard NAT on hard1 and hard2")

    async def test_relayed_pair_recovers_after_server_restart(self):
        mesh = await self.build([("hard1", "corp"), ("hard2", "cgn")], {"corp": "hard", "cgn": "hard"})
        await self.assert_all_pairs_ping(mesh)
        await mesh.kill_server(signal.SIGKILL)
        await mesh.start_server()
        restarted = reactor.seconds()

        async def both_ways() -> bool:
            return await mesh.ping("hard1", "hard2", wait=1) and await mesh.ping("hard2", "hard1", wait=1)

        waited = await eventually(both_ways, timeout=20, what="relayed pair pings after the restart")
        self.assertLess(reactor.seconds() - restarted, 10.5, f"took {waited:.1f}s")

    async def test_forged_relay_frames_are_never_forwarded(self):
        mesh = await self.build([("hard1", "corp"), ("hard2", "cgn"), ("mallory", None)], {"corp": "hard", "cgn": "hard"})
        await self.assert_all_pairs_ping(mesh)
        before = await self.relay_counts(mesh)
        # Well-formed frames (the real magic, header layout and size) with
        # made-up tokens and MACs, from a third party.
        script = (
            "import os, socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(200):\n"
            "    s.sendto(sys.argv[3].encode() + os.urandom(8) + b'\\x00' + i.to_bytes(8, 'big') + os.urandom(100) + os.urandom(16), (sys.argv[1], int(sys.argv[2])))\n"
        )
        server = mesh.lab.hosts["server"].address
        result = await mesh.lab.run("mallory", [sys.executable, "-c", script, server, "8788", MAGIC.decode("ascii")])
        self.assertEqual(result.rc, 0, result.stderr)
        await deferLater(reactor, 0.5, lambda: None)
        after = await self.relay_counts(mesh)
        unknown = after.get("relay_unknown", 0) - before.get("relay_unknown", 0)
        cut_off = after.get("rate_limited", 0) - before.get("rate_limited", 0)
        # Refused as unknown while mallory had STUN budget, then dropped unread.
        self.assertGreaterEqual(unknown, 1)
        self.assertGreaterEqual(unknown + cut_off, 200, (unknown, cut_off))
        self.assertGreater(cut_off, 0, "a flood from one address is cut off")
        self.assertTrue(await mesh.ping("hard1", "hard2", count=2), "the relayed pair is unaffected")

    async def relay_counts(self, mesh: MeshLab) -> dict[str, float]:
        url = mesh.server_url + "/metrics"
        fetch = [
            sys.executable,
            "-c",
            "import ssl, sys, urllib.request; "
            "print(urllib.request.urlopen(sys.argv[1], context=ssl._create_unverified_context()).read().decode())",
            url,
        ]
        text = (await mesh.lab.run("mallory", fetch)).stdout.decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith("wire_stun_datagrams_total{"):
                label = line.split('outcome="', 1)[1].split('"', 1)[0]
                counts[label] = float(line.rsplit(" ", 1)[1])
        return counts


class SecurityTests(unittest.TestCase):
    """Only invited nodes get in, and a removed node is cut off everywhere."""

    timeout = 240
    skip = lab_unavailable()

    async def build(self, names=("alpha", "beta", "gamma")) -> MeshLab:
        return await public_mesh(self, names)

    async def test_no_key_no_entry(self):
        mesh = await self.build(names=("alpha",))
        await mesh.add_host("eve")
        # Without a token: the server's self-signed certificate is not trusted...
        config_dir = os.path.join(mesh._workdir, "eve")
        result = await mesh.lab.run(
            "eve", wire_cli("--config-dir", config_dir, "up", "--server", mesh.server_url, "--name", "eve", "--json", "--wait", "10"), env=_env()
        )
        self.assertNotEqual(result.rc, 0)
        await mesh.lab.run("eve", wire_cli("--config-dir", config_dir, "down"), env=_env())
        # ...and even ignoring the certificate, nothing but /health answers.
        script = (
            "import ssl, sys, urllib.request, urllib.error\n"
            "ctx = ssl._create_unverified_context()\n"
            "for path in ('/peers', '/peers?since=0&wait=0', '/status'):\n"
            "    try:\n"
            "        urllib.request.urlopen(sys.argv[1] + path, context=ctx)\n"
            "        print(path, 200)\n"
            "    except urllib.error.HTTPError as e:\n"
            "        print(path, e.code)\n"
        )
        answer = await mesh.lab.run("eve", [sys.executable, "-c", script, mesh.server_url])
        codes = dict(line.split(" ", 1) for line in answer.stdout.decode().splitlines())
        self.assertEqual(codes, {"/peers": "401", "/peers?since=0&wait=0": "401", "/status": "401"})
        status = await mesh.status("alpha")
        self.assertEqual([n["node_name"] for n in status["nodes"]], ["alpha"])

    async def test_wrong_fingerprint_refuses_to_talk(self):
        from wire.admin_ops import AdminOps
        from wire.jointoken import JoinToken, decode_join_token

        mesh = await self.build(names=("alpha",))
        await mesh.add_host("mallet")
        created = await AdminOps(reactor, mesh.server_data_dir).create_key()
        real = decode_join_token(created["token"])
        forged = JoinToken(real.server_url, "0" * 64, real.secret).encode()
        config_dir = os.path.join(mesh._workdir, "mallet")
        result = await mesh.lab.run(
            "mallet", wire_cli("--config-dir", config_dir, "up", "--join", forged, "--name", "mallet", "--json"), env=_env()
        )
        self.assertNotEqual(result.rc, 0)
        self.assertIn("certificate", result.stdout.decode() + result.stderr.decode())
        keys = (await AdminOps(reactor, mesh.server_data_dir).keys())["keys"]
        used = {k["key_id"]: k["uses"] for k in keys}
        self.assertEqual(used[created["key"]["key_id"]], 0, "the secret never reached the server")

    async def test_removed_node_loses_its_tunnels_within_2s(self):
        from wire.admin_ops import AdminOps

        mesh = await self.build()
        matrix = await mesh.ping_matrix(attempts=5)
        self.assertTrue(all(matrix.values()), matrix)
        beta_key = (await mesh.status("beta"))
        beta_key = next(n["wg_public_key"] for n in beta_key["nodes"] if n["node_name"] == "beta")
        removed_at = reactor.seconds()
        await AdminOps(reactor, mesh.server_data_dir).remove_node("beta")

        async def gone_everywhere() -> bool:
            for name in ("alpha", "gamma"):
                peers = await mesh.lab.run(name, ["wg", "show", mesh.nodes[name].interface, "peers"])
                if beta_key in peers.stdout.decode():
                    return False
            return True

        await eventually(gone_everywhere, timeout=5, step=0.05, what="beta removed from every peer")
        self.assertLess(reactor.seconds() - removed_at, 2.0)
        self.assertFalse(await mesh.ping("alpha", "beta", wait=1))
        del mesh.nodes["beta"]  # its credential no longer works; nothing to take down


def wire_cli(*args: str) -> list[str]:
    from wire.demo import wire_argv

    return wire_argv(*args)


def _env() -> dict:
    from wire.twistd import wire_environment

    return wire_environment()
