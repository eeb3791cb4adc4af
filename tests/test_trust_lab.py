"""A real node against a hostile server process, in the lab.

The node is the real ``wire up`` daemon with wireguard-go in its own
namespace; its server is ``tests/hostile_server.py`` in the server
namespace, speaking the documented API and answering what each step
scripts. After every bad answer: no address or route the node did not
have before appears in its namespace (``ip addr``, ``ip route``), its
WireGuard holds only mesh addresses (``wg show allowed-ips``), and a good
answer that follows is applied within 5 s.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial import unittest

from tests.hostile_server import Steering, peer, peers_answer
from tests.test_e2e import eventually, lab_unavailable
from wire.demo import SERVER_PORT, MeshLab, MeshNode
from wire.keys import generate_private_key, public_key_for
from wire.node import launcher
from wire.node.config import load_config, save_config
from wire.runner import ProcessRunner
from wire.twistd import wire_environment

log = Logger()
HOSTILE_SERVER = os.path.join(os.path.dirname(__file__), "hostile_server.py")
MESH = ipaddress.ip_network("10.99.0.0/16")
OWN_IP = "10.99.0.5"  # what the hostile server assigns when it behaves
APPLIED_WITHIN = 5.0
# The node's whole-answer deadline for a long-poll (wire.client), and then the good answer.
TRICKLE_BOUND = 65 + APPLIED_WITHIN + 3


class HostileMesh(MeshLab):
    """A lab whose coordination server is the hostile one, steered through files."""

    def __init__(self, reactor, runner):
        super().__init__(reactor, runner, open_server=True)
        self.steering = Steering(os.path.join(self._workdir, "hostile"))
        self.write = self.steering.write
        self.served = self.steering.served

    async def start_server(self) -> None:
        address = self.lab.hosts["server"].address
        argv = [sys.executable, HOSTILE_SERVER, self.steering.directory, address, str(SERVER_PORT)]
        self.server = self.lab.start("server", argv, env=wire_environment(), log_prefix="hostile-server")
        await self.wait_for_server()

    async def until_served(self, path: str, version: int, what: str | None = None, timeout: float = 40) -> None:
        await eventually(
            lambda: _true(self.steering.was_served(path, version, what)), timeout=timeout, step=0.1, what=f"the node to be served {path} v{version}"
        )


class Node:
    """What one node's namespace holds: addresses, routes, WireGuard's allowed IPs."""

    def __init__(self, mesh: HostileMesh, name: str):
        self.mesh = mesh
        self.name = name

    @property
    def interface(self) -> str:
        return self.mesh.nodes[self.name].interface

    async def _json(self, argv: list[str]) -> list:
        result = await self.mesh.lab.run(self.name, argv, timeout=10)
        result.check()
        return json.loads(result.stdout or b"[]")

    async def addresses(self) -> set[str]:
        return {
            f"{link['ifname']} {_kernel_own(info['local'])}/{info['prefixlen']}"
            for link in await self._json(["ip", "-j", "address", "show"])
            for info in link.get("addr_info", [])
        }

    async def routes(self) -> set[str]:
        found = set()
        for family in ("-4", "-6"):
            for route in await self._json(["ip", "-j", family, "route", "show", "table", "all"]):
                dst = _kernel_own(route["dst"])
                found.add(f"{family} {route.get('table', 'main')} {route.get('type', 'unicast')} {dst} {route.get('dev', '')}")
        return found

    async def allowed_ips(self) -> set[str]:
        result = await self.mesh.lab.run(self.name, ["wg", "show", self.interface, "allowed-ips"], timeout=10)
        result.check()
        return {ip for line in result.stdout.decode().splitlines() for ip in line.split("\t", 1)[-1].split() if ip != "(none)"}

    async def snapshot(self) -> tuple[set[str], set[str]]:
        return await self.addresses(), await self.routes()

    def log(self) -> str:
        return launcher.log_tail(self.mesh.nodes[self.name].config_dir, lines=40)


class HostileServerLabTests(unittest.TestCase):
    timeout = 420
    skip = lab_unavailable()

    async def test_no_answer_routes_foreign_traffic_or_stops_the_node(self) -> None:
        mesh = HostileMesh(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        await mesh.add_host("alpha")
        node = Node(mesh, "alpha")
        gateway = str(next(ipaddress.ip_network(f"{mesh.lab.hosts['alpha'].address}/15", strict=False).hosts()))

        # A register answer that is not one, from the start: the daemon keeps
        # asking (it used to sit there, alive and doing nothing).
        version = mesh.write(register={"raw": '{"vpn_ip": 5, "vpn_subnet": [[[]]]}'})
        up = self.start_up(mesh, "alpha")
        await mesh.until_served("/register", version, "raw")
        await eventually(
            lambda: _true(sum(s["path"] == "/register" for s in mesh.served()) >= 3),
            timeout=20,
            what="the daemon asking again after answers it refused",
        )
        first = [peer(1, "10.99.1.1"), peer(2, "10.99.1.2")]
        mesh.write(peers=peers_answer(first))
        await up.when_exited()
        self.assertEqual(up.rc, 0, "\n".join(up.tail) + "\n" + node.log())
        mesh.nodes["alpha"].vpn_ip = OWN_IP
        await self.applied(node, first, "the first good netmap")
        before = await node.snapshot()
        self.assert_only_mesh_on_wireguard(before, node.interface)

        good = first
        own_key, twice = self.own_key(mesh), public_key_for(generate_private_key())
        bad_answers = {
            "foreign and special addresses": peers_answer(
                [
                    peer(10, "8.8.8.8"),
                    peer(11, gateway),
                    peer(12, "127.0.0.1"),
                    peer(13, OWN_IP),
                    peer(14, "224.0.0.1"),
                    peer(15, "10.99.255.255"),
                    peer(16, "10.99.0.0"),
                    peer(17, "2001:4860::8888"),
                    peer(18, "fe80::1"),
                ]
            ),
            "the node's own key, and one key twice": peers_answer(
                [peer(20, "10.99.2.1", own_key), peer(21, "10.99.2.2", twice), peer(22, "10.99.2.3", twice)]
            ),
            "upserts not a list": {"raw": '{"cursor": "1:99", "upserts": 5}'},
            "a removal that is a list": peers_answer([], full=False, removals=[[1]]),
            "200 KB of nesting": {"raw": "[" * 200_000},
            "not JSON": {"raw": "<html>\x1b[2J gotcha"},
            "20 MB of body": {"flood": 20 * 1024 * 1024},
        }
        for number, (case, spec) in enumerate(bad_answers.items()):
            version = mesh.write(peers=spec)
            await mesh.until_served("/peers", version)
            await deferLater(reactor, 1.5, lambda: None)  # the node has had time to act on it
            await self.assert_unchanged(node, before, case)
            held = await node.allowed_ips()
            self.assertNotIn(f"{OWN_IP}/32", held, case)
            # Of a key given twice, one holder at most; the node's own key, never.
            self.assertFalse(held & {"8.8.8.8/32", f"{gateway}/32", "127.0.0.1/32", "10.99.2.1/32"}, case)
            self.assertLessEqual(len(held & {"10.99.2.2/32", "10.99.2.3/32"}), 1, case)
            good = [peer(100 + 10 * number + i, f"10.99.3.{10 * number + i + 1}") for i in range(2)]
            mesh.write(peers=peers_answer(good))
            await self.applied(node, good, f"a good netmap after {case}")

        # An answer that trickles a byte every 2 s and then stalls: the
        # long-poll's whole-answer deadline ends it, and sync goes on.
        stalled = mesh.write(peers={"trickle": 2})
        await mesh.until_served("/peers", stalled, "trickle")
        started = reactor.seconds()
        good = [peer(200, "10.99.4.1")]
        mesh.write(peers=peers_answer(good))
        await self.applied(node, good, "a good netmap after a stalled answer", timeout=TRICKLE_BOUND)
        self.assertLess(reactor.seconds() - started, TRICKLE_BOUND)
        await self.assert_unchanged(node, before, "a stalled answer")

        # A heartbeat's register answer moving the node out of its mesh: refused, and not saved for the next start.
        config_dir = mesh.nodes["alpha"].config_dir
        poisoned = mesh.write(register={"vpn_ip": "8.8.8.8", "vpn_subnet": "8.0.0.0/8"}, peers=peers_answer(good))
        await mesh.until_served("/register", poisoned, timeout=45)  # the next heartbeat (every 30 s)
        await deferLater(reactor, 1, lambda: None)
        await self.assert_unchanged(node, before, "a heartbeat assigning 8.8.8.8/8")
        saved = load_config(config_dir)
        self.assertEqual((saved.vpn_ip, saved.vpn_subnet), (OWN_IP, str(MESH)))

        # Each restart registers first: every poisoned assignment is refused,
        # the node comes up on its own mesh address, the next good netmap applies.
        restarts = {
            "8.8.8.8 in 8.0.0.0/8": {"vpn_ip": "8.8.8.8", "vpn_subnet": "8.0.0.0/8"},
            "127.0.0.5 in 127.0.0.0/8": {"vpn_ip": "127.0.0.5", "vpn_subnet": "127.0.0.0/8"},
            "2000::5 in 2000::/8": {"vpn_ip": "2000::5", "vpn_subnet": "2000::/8"},
            "the LAN gateway": {"vpn_ip": gateway, "vpn_subnet": "198.18.0.0/15"},
            "an address outside the mesh": {"vpn_ip": "10.98.0.5"},
        }
        for number, (case, assignment) in enumerate(restarts.items()):
            await mesh.down("alpha")
            if number == len(restarts) - 1:
                # The admin's cap on peers, set while it is down.
                save_config(config_dir, replace(load_config(config_dir), max_peers=3))
            version = mesh.write(register=assignment, peers=peers_answer(good))
            up = self.start_up(mesh, "alpha")
            await up.when_exited()
            self.assertEqual(up.rc, 0, f"{case}:\n" + "\n".join(up.tail) + "\n" + node.log())
            await mesh.until_served("/register", version)
            await self.applied(node, good, f"the netmap after a restart with {case}")
            await self.assert_unchanged(node, before, f"a restart whose registration assigned {case}")
            saved = load_config(config_dir)
            self.assertEqual((saved.vpn_ip, saved.vpn_subnet), (OWN_IP, str(MESH)), case)

        many = [peer(300 + i, f"10.99.5.{i + 1}") for i in range(6)]
        mesh.write(peers=peers_answer(many))

        async def capped() -> bool:
            held = await node.allowed_ips()
            return len(held) == 3 and held <= {f"{p['vpn_ip']}/32" for p in many}

        await eventually(capped, timeout=APPLIED_WITHIN, step=0.2, what="at most max_peers=3 of 6 peers held")
        await self.assert_unchanged(node, before, "more peers than max_peers")
        # wire status: this server has no /status, so the daemon's view, which
        # tells the answers it refused; the node is still at its mesh address.
        shown = await mesh.cli("alpha", "status", "--json")
        status = json.loads(shown.stdout)  # exit 1: a stale view is not ok
        self.assertEqual((shown.rc, status["source"]), (1, "daemon"), status)
        [me] = [n for n in status["nodes"] if n["this_node"]]
        self.assertEqual(me["vpn_ip"], OWN_IP)
        self.assertTrue(any(line.startswith("server answers: ") for line in status["daemon_problems"]), status)

    # -- helpers ---------------------------------------------------------------

    def start_up(self, mesh: HostileMesh, name: str):
        """``wire up`` in the background (its registration is what is being played with)."""
        host = mesh.lab.hosts[name]
        node = mesh.nodes.setdefault(name, MeshNode(name, os.path.join(mesh._workdir, name), host.wireguard_interface))
        argv = mesh.wire(name, "up", "--server", mesh.server_url, "--name", name, "--interface", node.interface, "--json")
        return mesh.lab.start(name, argv, env=wire_environment(), log_prefix=f"wire-up-{name}")

    def own_key(self, mesh: HostileMesh) -> str:
        with open(os.path.join(mesh.nodes["alpha"].config_dir, "public.key")) as f:
            return f.read().strip()

    async def applied(self, node: Node, peers: list[dict], what: str, timeout: float = APPLIED_WITHIN) -> None:
        wanted = {f"{p['vpn_ip']}/32" for p in peers}
        last: set[str] = set()

        async def check() -> bool:
            last.clear()
            last.update(await node.allowed_ips())
            return last == wanted

        try:
            waited = await eventually(check, timeout=timeout, step=0.2, what=what)
            log.info("{what}: applied {waited:.1f}s after it was written", what=what, waited=waited)
        except AssertionError:
            raise AssertionError(f"{what}: WireGuard holds {sorted(last)}, not {sorted(wanted)}\n{node.log()}") from None

    async def assert_unchanged(self, node: Node, before: tuple[set[str], set[str]], case: str) -> None:
        now = await node.snapshot()
        self.assertEqual(now[0] - before[0], set(), f"{case}: new addresses\n{node.log()}")
        self.assertEqual(now[1] - before[1], set(), f"{case}: new routes\n{node.log()}")
        self.assert_only_mesh_on_wireguard(now, node.interface)
        for allowed in await node.allowed_ips():
            self.assertTrue(ipaddress.ip_network(allowed).subnet_of(MESH), f"{case}: {allowed} in AllowedIPs")  # type: ignore[arg-type]

    def assert_only_mesh_on_wireguard(self, snapshot: tuple[set[str], set[str]], interface: str) -> None:
        """The WireGuard interface has the mesh address, and routes only into
        the mesh (besides the kernel's own IPv6 link-local and multicast ones)."""
        addresses, routes = snapshot
        mine = sorted(a.split()[1] for a in addresses if a.split()[0] == interface)
        self.assertEqual([a for a in mine if not a.startswith("fe80:")], [f"{OWN_IP}/{MESH.prefixlen}"])
        for route in routes:
            family, table, kind, dst, dev = route.split(" ")
            if dev != interface:
                continue
            self.assertNotEqual(dst, "default", route)
            network = ipaddress.ip_network(dst.replace("LINK-LOCAL", "1"), strict=False)
            kernel_own = network.version == 6 and (network.is_link_local or network.is_multicast)
            self.assertTrue(kernel_own or network.subnet_of(MESH), f"a route through {interface} outside the mesh: {route}")  # type: ignore[arg-type]


def _kernel_own(address: str) -> str:
    """An IPv6 link-local host address is the kernel's, new with each new
    interface (stable-privacy): compared as one placeholder."""
    try:
        if ipaddress.ip_address(address).is_link_local and ":" in address:
            return "fe80::LINK-LOCAL"
    except ValueError:
        pass  # a network ("fe80::/64") or "default": as it is
    return address


async def _true(value: bool) -> bool:
    return value
