"""A node trusts its server only as far as it must: a hostile or broken
server can neither route foreign traffic through it, stop it, nor confuse it.

The daemon runs on a fake clock against :class:`HostileServer` (the
scripted server of test_daemon, whose answers a test can poison), with a
fake WireGuard; each test checks what reached the interface, WireGuard's
peers, config.json, and that the loops still take the next good answer.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

from twisted.internet.defer import ensureDeferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.fakes import FakeWireGuard, fixed_nat, started_daemon
from tests.helpers import body_for, key_for
from tests.test_daemon import ScriptedServer, peer_view
from wire.client import BadAnswer
from wire.jointoken import JoinToken
from wire.node.config import ConfigError, NodeConfig, load_config, save_config
from wire.node.control import node_status
from wire.node.daemon import NAT_RECHECK_INTERVAL, PATH_CHECK_INTERVAL, NodeDaemon
from wire.node.heartbeat import HEARTBEAT_INTERVAL
from wire.node.netmap import NodeNetmap
from wire.node.state import Phase
from wire.node.trust import (
    Mesh,
    PeerScreen,
    Untrusted,
    assignment,
    assignment6,
    mesh_subnet,
    mesh_subnet6,
    own_address,
)
from wire.protocol import NatType, NetmapAnswer, ProtocolError, RegisterAnswer
from wire.stun import MappedAddress, NatReport

LAN_IP = "192.168.1.10"
GOOD = {"vpn_ip": "10.99.0.5", "vpn_subnet": "10.99.0.0/16"}


def peer(name: str, number: int, **fields) -> dict:
    """A peer view (test_daemon's), with fields a hostile server changed."""
    return peer_view(name, number) | fields


class HostileServer(ScriptedServer):
    """The scripted server, whose register and enroll answers a test poisons:
    ``assign`` replaces fields of the answer (None: leave the field out)."""

    def __init__(self, clock, heartbeat: str | None = "longpoll"):
        super().__init__(clock, heartbeat)
        self.assign: dict = {}
        self.credential: str | None = None
        self.enrollments = 0

    def _poisoned(self, answer: RegisterAnswer) -> RegisterAnswer:
        body = answer.to_json()
        for name, value in self.assign.items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        return RegisterAnswer.from_json(body)

    async def register(self, registration):
        return self._poisoned(await super().register(registration))

    async def enroll(self, registration, secret: str):
        self.enrollments += 1
        self.registrations.append(self.clock.seconds())
        answer = await ScriptedServer.register(self, registration)
        return self._poisoned(RegisterAnswer.from_json(answer.to_json() | {"credential": "cred-1"}))

    def use_credential(self, credential):
        self.credential = credential


class TrustRuleTests(unittest.TestCase):
    """The rule of wire.node.trust, on its own."""

    def test_sane_mesh_subnets_are_accepted(self):
        for text in ("10.99.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.50.0/24", "100.64.0.0/10", "10.1.2.0/30", "fd12:3456::/48", "fd00::/120"):
            self.assertEqual(str(mesh_subnet(text)), text)

    def test_insane_mesh_subnets_are_refused_naming_the_field(self):
        for text in (
            "8.0.0.0/8",  # public
            "127.0.0.0/8",  # loopback
            "169.254.0.0/16",  # link-local
            "224.0.0.0/4",  # multicast
            "2000::/8",  # public IPv6
            "fe80::/64",  # link-local IPv6
            "10.0.0.0/7",  # wider than any private block
            "10.1.2.0/31",  # too narrow
            "fd00::/40",  # too wide for v6
            "fd00::/124",  # too narrow for v6
            "10.99.0.1/16",  # host bits set
            "nonsense",
        ):
            with self.assertRaises(Untrusted, msg=text) as caught:
                mesh_subnet(text)
            self.assertEqual(caught.exception.field, "vpn_subnet")

    def test_a_mesh_holding_the_lan_or_the_server_is_refused(self):
        with self.assertRaises(Untrusted):
            mesh_subnet("192.168.0.0/16", avoid=[LAN_IP])
        with self.assertRaises(Untrusted):
            mesh_subnet("10.0.0.0/8", avoid=["", "10.1.1.1"])
        self.assertEqual(str(mesh_subnet("10.99.0.0/16", avoid=[LAN_IP, "203.0.113.1"])), "10.99.0.0/16")

    def test_own_address_inside_not_network_nor_broadcast(self):
        subnet = mesh_subnet("10.99.0.0/16")
        self.assertEqual(own_address("10.99.0.5", subnet), "10.99.0.5")
        for bad in ("10.98.0.5", "10.99.0.0", "10.99.255.255", "8.8.8.8", "127.0.0.5", "fd00::5"):
            with self.assertRaises(Untrusted, msg=bad) as caught:
                own_address(bad, subnet)
            self.assertEqual(caught.exception.field, "vpn_ip")

    def test_the_subnet_is_fixed_once_known(self):
        self.assertEqual(assignment("", "10.98.0.0/16", "10.98.0.7"), ("10.98.0.0/16", "10.98.0.7"))
        self.assertEqual(assignment("", "", "10.99.0.7"), ("10.99.0.0/16", "10.99.0.7"), "a seed server: its subnet")
        self.assertEqual(assignment("10.99.0.0/16", "", "10.99.0.7"), ("10.99.0.0/16", "10.99.0.7"))
        with self.assertRaises(Untrusted) as caught:
            assignment("10.99.0.0/16", "10.98.0.0/16", "10.98.0.7")
        self.assertEqual(caught.exception.field, "vpn_subnet")

    def test_a_poisoned_config_json_is_a_clear_error(self):
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        base = {"server_url": "https://wire.test", "node_name": "web1", "node_id": body_for("web1")["node_id"]}
        for bad in (
            {"vpn_ip": "8.8.8.8", "vpn_subnet": "8.0.0.0/8"},
            {"vpn_ip": "8.8.8.8", "vpn_subnet": "10.99.0.0/16"},
            {"vpn_ip": "8.8.8.8"},
            {"vpn_ip": "127.0.0.5", "vpn_subnet": "127.0.0.0/8"},
            {"max_peers": 0},
            {"max_peers": "many"},
        ):
            with open(os.path.join(config_dir, "config.json"), "w") as f:
                json.dump(base | bad, f)
            with self.assertRaises(ConfigError, msg=bad):
                load_config(config_dir)
        with open(os.path.join(config_dir, "config.json"), "w") as f:
            json.dump(base | {"vpn_ip": "10.99.3.4", "vpn_subnet": "10.99"}, f)
        config = load_config(config_dir)
        self.assertEqual((config.vpn_ip, config.vpn_subnet, config.max_peers), ("10.99.3.4", "10.99.0.0/16", 10_000))

    def test_the_screen_without_a_subnet_still_refuses_what_needs_none(self):
        netmap = NodeNetmap("me", PeerScreen(lambda: Mesh(None, "10.99.0.5", key_for("me"))))
        views = [peer("a", 2), peer("b", 3, vpn_ip="224.0.0.1"), peer("c", 4, vpn_ip="10.99.0.5")]
        problems = netmap.apply(NetmapAnswer.from_json({"cursor": "e:1", "full": True, "upserts": views}))
        self.assertEqual([p.node_name for p in netmap.peers.values()], ["a"])
        self.assertEqual(len(problems), 2)


class HostileHarness(unittest.TestCase):
    """A daemon against a server a test poisons, and what reached WireGuard and config.json."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = HostileServer(self.clock, heartbeat=None)  # POST /register every heartbeat
        self.wireguard = FakeWireGuard(clock=self.clock)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)

    def start(self, token: JoinToken | None = None, recheck_nat=None, **config_fields) -> NodeDaemon:
        config = NodeConfig(server_url="https://wire.test", node_name="web1", node_id=body_for("web1")["node_id"], **config_fields)
        if token is None:
            save_config(self.config_dir, config)
        self.daemon = started_daemon(
            self,
            clock=self.clock,
            config_dir=self.config_dir,
            config=config,
            wireguard=self.wireguard,
            client=self.server,
            recheck_nat=recheck_nat,
            lan_ip=LAN_IP,
            join_token=token,
        )
        self.clock.advance(0)
        return self.daemon

    def advance(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def saved(self) -> NodeConfig | None:
        return load_config(self.config_dir)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.logged if e["log_level"] in (LogLevel.warn, LogLevel.error)]

    def push(self, upserts=(), removals=()) -> None:
        self.clock.advance(0)
        self.server.push(upserts, removals)
        self.clock.advance(0)

    def allowed(self) -> dict[str, tuple[str, ...]]:
        return {key: peer.allowed_ips for key, peer in self.wireguard.peers.items()}

    def assert_loops_running(self) -> None:
        daemon = self.daemon
        for loop in (daemon._sync, daemon._heartbeat_loop, daemon._paths_loop):
            self.assertTrue(loop.running)


class HostileTests(HostileHarness):
    # -- the node's own assignment ---------------------------------------------

    def test_a_hostile_first_assignment_changes_nothing_and_is_retried(self):
        for poison in (
            {"vpn_ip": "8.8.8.8", "vpn_subnet": "8.0.0.0/8"},
            {"vpn_ip": "192.168.1.20", "vpn_subnet": "192.168.1.0/24"},  # our LAN
            {"vpn_ip": "127.0.0.5", "vpn_subnet": "127.0.0.0/8"},
            {"vpn_ip": "2000::5", "vpn_subnet": "2000::/8"},
            {"vpn_ip": "8.8.8.8", "vpn_subnet": None},  # a seed-like answer, outside its subnet
            {"vpn_ip": "10.99.0.0"},  # the network address
            {"vpn_ip": "10.99.255.255"},  # the broadcast address
            {"vpn_ip": "10.98.0.5"},  # outside the subnet it names
        ):
            self.server.assign = poison
            daemon = self.start()
            tries = len(self.server.registrations)
            self.advance(60)
            self.assertEqual(self.wireguard.ups, [], poison)
            self.assertEqual(self.saved().vpn_ip, "", poison)
            self.assertEqual(self.saved().vpn_subnet, "", poison)
            self.assertNotEqual(daemon.state.phase, Phase.REGISTERED, poison)
            self.assertGreater(len(self.server.registrations), tries, f"{poison}: registration retried")
            field = "vpn_subnet" if poison.get("vpn_subnet") else "vpn_ip"
            self.assertTrue(any(f"({field})" in w for w in self.warnings()), f"{poison}: {self.warnings()}")
            # The next good answer is taken.
            self.server.assign = {}
            self.advance(60)
            self.assertEqual(self.wireguard.ups, [(51820, "10.99.0.5", 16)], poison)
            self.assertEqual((self.saved().vpn_ip, self.saved().vpn_subnet), ("10.99.0.5", "10.99.0.0/16"))
            self.assertEqual(daemon.state.phase, Phase.REGISTERED)
            self.assert_loops_running()
            # Again, from scratch.
            self.successResultOf(daemon.stopService())
            self.wireguard = FakeWireGuard(clock=self.clock)
            os.unlink(os.path.join(self.config_dir, "config.json"))

    def test_a_malformed_register_answer_at_start_is_retried(self):
        real = self.server.register
        answers = []

        async def malformed(registration):
            answers.append(1)
            if len(answers) <= 2:
                raise BadAnswer("POST /register", ProtocolError("vpn_ip", "missing"))
            return await real(registration)

        self.server.register = malformed  # type: ignore[method-assign]
        daemon = self.start()
        self.assertEqual(self.wireguard.ups, [])
        self.advance(30)
        self.assertEqual(self.wireguard.ups, [(51820, "10.99.0.5", 16)])
        self.assertEqual(daemon.state.phase, Phase.REGISTERED)
        self.assert_loops_running()

    def test_a_hostile_enroll_answer_keeps_the_credential_and_registers_until_sane(self):
        self.server.assign = {"vpn_ip": "8.8.8.8", "vpn_subnet": "8.0.0.0/8"}
        daemon = self.start(token=JoinToken("https://wire.test", "", "secret"))
        self.advance(30)
        self.assertEqual(self.server.enrollments, 1, "the token is used once")
        self.assertEqual(self.server.credential, "cred-1")
        self.assertEqual(self.wireguard.ups, [])
        self.assertIsNone(self.saved())
        self.server.assign = {}
        self.advance(30)
        self.assertEqual(self.wireguard.ups, [(51820, "10.99.0.5", 16)])
        self.assertEqual(self.saved().vpn_subnet, "10.99.0.0/16")
        self.assertEqual(daemon.state.phase, Phase.REGISTERED)

    def test_later_answers_cannot_move_the_mesh_or_our_address_out_of_it(self):
        daemon = self.start()
        self.assertEqual(self.wireguard.ups, [(51820, "10.99.0.5", 16)])
        for poison in (
            {"vpn_ip": "10.50.0.5", "vpn_subnet": "10.50.0.0/16"},  # a subnet change
            {"vpn_ip": "8.8.8.8", "vpn_subnet": "8.0.0.0/8"},
            {"vpn_ip": "8.8.8.8", "vpn_subnet": None},
            {"vpn_ip": "127.0.0.5", "vpn_subnet": "127.0.0.0/8"},
            {"vpn_ip": "fd00::5", "vpn_subnet": "fd00::/64"},
        ):
            self.server.assign = poison
            tries = len(self.server.registrations)
            self.advance(HEARTBEAT_INTERVAL * 2)
            self.assertGreater(len(self.server.registrations), tries, "the heartbeat goes on")
            self.assertEqual((self.saved().vpn_ip, self.saved().vpn_subnet), ("10.99.0.5", "10.99.0.0/16"), poison)
            self.assertEqual((daemon.config.vpn_ip, daemon.config.vpn_subnet), ("10.99.0.5", "10.99.0.0/16"), poison)
            self.assertEqual(self.wireguard.ups, [(51820, "10.99.0.5", 16)], poison)
        self.assertTrue(any("(vpn_subnet)" in w and "10.50.0.0/16" in w for w in self.warnings()))
        # A sane move inside the mesh is still taken (at the next start, as before).
        self.server.assign = {"vpn_ip": "10.99.0.6"}
        self.advance(HEARTBEAT_INTERVAL * 2)
        self.assertEqual(self.saved().vpn_ip, "10.99.0.6")
        self.assert_loops_running()

    def test_a_saved_poisoned_address_never_reaches_the_interface(self):
        self.start(vpn_ip="8.8.8.8", vpn_subnet="8.0.0.0/8")
        self.assertNotIn("8.8.8.8", [up[1] for up in self.wireguard.ups])
        self.assertEqual(self.wireguard.ups, [(51820, "10.99.0.5", 16)], "the server assigned one afresh")
        self.assertEqual(self.saved().vpn_subnet, "10.99.0.0/16")

    # -- peers -------------------------------------------------------------------

    def test_hostile_peers_are_skipped_and_the_next_good_one_applied(self):
        daemon = self.start()
        self.push([peer("db1", 2)])
        self.assertEqual(self.allowed(), {key_for("db1"): ("10.99.1.2/32",)})
        bad = [
            peer("p-public", 10, vpn_ip="8.8.8.8"),
            peer("p-lan", 11, vpn_ip="192.168.1.1"),
            peer("p-loopback", 12, vpn_ip="127.0.0.1"),
            peer("p-own-ip", 13, vpn_ip="10.99.0.5"),
            peer("p-multicast", 14, vpn_ip="224.0.0.5"),
            peer("p-network", 15, vpn_ip="10.99.0.0"),
            peer("p-broadcast", 16, vpn_ip="10.99.255.255"),
            peer("p-ipv6", 17, vpn_ip="fd00::17"),
            peer("p-dup-key", 18, wg_public_key=key_for("db1")),
            peer("p-own-key", 19, wg_public_key=daemon.public_key),
            peer("p-dup-ip", 20, vpn_ip="10.99.1.2"),
        ]
        self.push(bad)
        self.assertEqual(self.allowed(), {key_for("db1"): ("10.99.1.2/32",)}, "db1 keeps its address; no bad peer got in")
        self.assertEqual(sorted(p.node_name for p in daemon.netmap.peers.values()), ["db1"])
        warnings = "\n".join(self.warnings())
        for view in bad:
            self.assertIn(f"peer {view['node_name']} (", warnings)
        self.assertIn("vpn_ip 8.8.8.8 is outside the mesh subnet 10.99.0.0/16", warnings)
        self.assertIn("p-own-key", warnings)
        # A delta moving db1 out of the mesh: it keeps the record it had.
        self.push([peer("db1", 2, vpn_ip="8.8.4.4")])
        self.assertEqual(self.allowed(), {key_for("db1"): ("10.99.1.2/32",)})
        # The loops go on: the next good peer is applied.
        self.push([peer("mail", 3)])
        self.assertEqual(self.allowed(), {key_for("db1"): ("10.99.1.2/32",), key_for("mail"): ("10.99.1.3/32",)})
        self.advance(HEARTBEAT_INTERVAL * 2)
        self.assert_loops_running()

    def test_a_snapshot_keeps_the_earlier_holder_of_an_address(self):
        daemon = self.start()
        self.push([peer("db1", 2)])
        # A new server run: a newcomer listed first claims db1's address.
        self.server.epoch = "epoch2"
        self.server.peers = {}
        self.server.push([peer("thief", 9, vpn_ip="10.99.1.2"), peer("db1", 2)])
        self.advance(30)
        self.assertEqual(self.allowed(), {key_for("db1"): ("10.99.1.2/32",)})
        self.assertEqual(sorted(p.node_name for p in daemon.netmap.peers.values()), ["db1"])

    def test_too_many_peers_are_capped_with_one_problem(self):
        daemon = self.start(max_peers=3)
        self.push([peer(f"n{i}", i) for i in range(2, 9)])
        self.assertEqual(len(self.wireguard.peers), 3)
        capped = [w for w in self.warnings() if "max_peers" in w]
        self.assertEqual(len(capped), 1, capped)
        self.assertIn("4 peer(s) beyond max_peers=3", capped[0])
        self.assertEqual(len(daemon.netmap.peers), 3)

    def test_the_reconciler_never_gets_allowed_ips_outside_the_mesh(self):
        daemon = self.start()
        self.push([peer("db1", 2)])
        # Past the netmap's checks somehow (defence in depth): the reconciler filters.
        db1 = body_for("db1")["node_id"]
        daemon.netmap.peers[db1] = replace(daemon.netmap.peers[db1], vpn_ip="8.8.8.8")
        self.advance(3 * PATH_CHECK_INTERVAL)
        self.assertEqual(self.allowed(), {})
        errors = [w for w in self.warnings() if "outside the mesh subnet" in w and "AllowedIPs" in w]
        self.assertEqual(len(errors), 1, "logged once")

    # -- the loops survive a failing body -----------------------------------------

    def test_no_failing_body_stops_a_loop(self):
        moved = [False]

        async def recheck():
            if moved[0]:
                mapped = MappedAddress("198.51.100.99", 41000)
                return NatReport(nat_type=NatType.EASY, mapped_a=mapped, mapped_b=mapped, latency_ms=1.0, local_port=51820)
            return await fixed_nat()()

        daemon = self.start(recheck_nat=recheck)
        self.push([peer("db1", 2)])
        # The long-poll's answer handler raises (the client failed oddly).
        real_netmap = self.server.netmap
        self.server.netmap = lambda cursor, wait, *holds: fail(RuntimeError("boom: netmap"))  # type: ignore[method-assign]
        self.advance(5)
        self.server.netmap = real_netmap  # type: ignore[method-assign]
        # The heartbeat's body raises.
        real_register = self.server.register

        async def broken(registration):
            raise RuntimeError("boom: register")

        self.server.register = broken  # type: ignore[method-assign]
        self.advance(HEARTBEAT_INTERVAL + 1)
        # The NAT check's handler raises too (it registers when the NAT moved).
        moved[0] = True
        self.advance(NAT_RECHECK_INTERVAL + 1)
        self.server.register = real_register  # type: ignore[method-assign]
        # The path check's body raises (WireGuard's status failed).
        real_status = self.wireguard.status

        async def status_fails():
            raise RuntimeError("boom: wg show")

        self.wireguard.status = status_fails  # type: ignore[method-assign]
        self.advance(3 * PATH_CHECK_INTERVAL)
        self.wireguard.status = real_status  # type: ignore[method-assign]
        self.assertTrue(self.flushLoggedErrors(RuntimeError))
        self.assert_loops_running()
        self.assertTrue(daemon._nat_loop.running)
        # And each takes the next good answer.
        self.advance(60)
        self.push([peer("mail", 3)])
        self.assertIn(key_for("mail"), self.wireguard.peers)
        tries = len(self.server.registrations)
        self.advance(HEARTBEAT_INTERVAL * 2)
        self.assertGreater(len(self.server.registrations), tries)
        self.assertEqual(daemon.state.phase, Phase.REGISTERED)


SUBNET6 = "fd7a:115c:a1e0::/48"
GOOD6 = {"vpn_ip6": "fd7a:115c:a1e0::5", "vpn_subnet6": SUBNET6}


class IPv6TrustRuleTests(unittest.TestCase):
    """The IPv6 mesh subnet and addresses, by the rule of wire.node.trust."""

    def test_ula_subnets_of_48_to_64_are_accepted(self):
        for text in (SUBNET6, "fd00:1:2:3::/64", "fc00:1::/48", "fdff:ffff:ffff::/56"):
            self.assertEqual(str(mesh_subnet6(text)), text)

    def test_other_ipv6_subnets_are_refused_naming_the_field(self):
        for text in (
            "2001:db8::/48",  # not a ULA
            "fe80::/64",  # link-local
            "fd00::/40",  # too wide
            "fd00::/80",  # too narrow
            "fd00::1/64",  # host bits set
            "10.99.0.0/16",  # IPv4
            "nonsense",
        ):
            with self.assertRaises(Untrusted, msg=text) as caught:
                mesh_subnet6(text)
            self.assertEqual(caught.exception.field, "vpn_subnet6")
        with self.assertRaises(Untrusted):
            mesh_subnet6("fd00:1::/48", avoid=["fd00:1::99"])

    def test_the_ipv6_subnet_is_fixed_once_known(self):
        self.assertEqual(assignment6("", SUBNET6, "fd7a:115c:a1e0::5"), (SUBNET6, "fd7a:115c:a1e0::5"))
        self.assertEqual(assignment6(SUBNET6, "", "fd7a:115c:a1e0::5"), (SUBNET6, "fd7a:115c:a1e0::5"))
        self.assertEqual(assignment6("", "", ""), ("", ""), "a seed server: no IPv6")
        self.assertEqual(assignment6(SUBNET6, "", ""), (SUBNET6, ""), "no address now: the subnet stays fixed")
        for saved, answered, address, field in (
            (SUBNET6, "fd00:9::/48", "fd00:9::5", "vpn_subnet6"),  # another prefix
            ("", SUBNET6, "fd00:9::5", "vpn_ip6"),  # outside the prefix
            ("", SUBNET6, "fd7a:115c:a1e0::", "vpn_ip6"),  # the network address
            ("", SUBNET6, "10.99.0.5", "vpn_ip6"),
            ("", "", "fd7a:115c:a1e0::5", "vpn_subnet6"),  # an address without its prefix
        ):
            with self.assertRaises(Untrusted, msg=(saved, answered, address)) as caught:
                assignment6(saved, answered, address)
            self.assertEqual(caught.exception.field, field)

    def test_config_json_keeps_and_checks_the_ipv6_assignment(self):
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        base = {"server_url": "https://wire.test", "node_name": "web1", "node_id": body_for("web1")["node_id"]} | GOOD
        for bad in (
            {"vpn_ip6": "fd7a:115c:a1e0::5"},  # no subnet
            {"vpn_ip6": "fd00:9::5", "vpn_subnet6": SUBNET6},
            {"vpn_ip6": "fd7a:115c:a1e0::5", "vpn_subnet6": "2001:db8::/48"},
        ):
            with open(os.path.join(config_dir, "config.json"), "w") as f:
                json.dump(base | bad, f)
            with self.assertRaises(ConfigError, msg=bad):
                load_config(config_dir)
        with open(os.path.join(config_dir, "config.json"), "w") as f:
            json.dump(base | {"vpn_ip6": "fd7a:115c:a1e0:0::5", "vpn_subnet6": SUBNET6}, f)
        config = load_config(config_dir)
        self.assertEqual((config.vpn_ip6, config.vpn_subnet6), ("fd7a:115c:a1e0::5", SUBNET6))

    def test_mesh_holds_each_family_in_its_own_subnet(self):
        mesh = Mesh(mesh_subnet("10.99.0.0/16"), subnet6=mesh_subnet6(SUBNET6))
        self.assertTrue(mesh.holds("10.99.1.2/32"))
        self.assertTrue(mesh.holds("fd7a:115c:a1e0::2/128"))
        self.assertFalse(mesh.holds("fd00:9::2/128"))
        self.assertFalse(Mesh(mesh_subnet("10.99.0.0/16")).holds("fd7a:115c:a1e0::2/128"), "no IPv6 subnet: no IPv6 entry")


class IPv6HostileTests(HostileHarness):
    """A server's IPv6 assignment and peers' IPv6 addresses: checked, and never at the IPv4 mesh's cost."""

    def test_a_good_ipv6_assignment_reaches_the_interface_and_config(self):
        self.server.assign = dict(GOOD6)
        self.start()
        self.assertEqual(self.wireguard.ups, [(51820, "10.99.0.5", 16)])
        self.assertEqual(self.wireguard.ups6, [("fd7a:115c:a1e0::5", 48)])
        self.assertEqual((self.saved().vpn_ip6, self.saved().vpn_subnet6), ("fd7a:115c:a1e0::5", SUBNET6))

    def test_a_seed_server_gives_no_ipv6_and_the_node_works_as_before(self):
        self.start()
        self.assertEqual(self.wireguard.ups6, [("", 0)])
        self.assertEqual((self.saved().vpn_ip6, self.saved().vpn_subnet6), ("", ""))
        self.assertEqual(self.daemon.state.phase, Phase.REGISTERED)

    def test_a_hostile_first_ipv6_assignment_keeps_ipv4_working(self):
        for poison in (
            {"vpn_ip6": "fd00:9::5", "vpn_subnet6": SUBNET6},  # outside its prefix
            {"vpn_ip6": "2001:db8::5", "vpn_subnet6": "2001:db8::/48"},  # not a ULA
            {"vpn_ip6": "fd7a:115c:a1e0::5", "vpn_subnet6": "fd7a::/32"},  # too wide
        ):
            self.server.assign = poison
            daemon = self.start()
            self.assertEqual(daemon.state.phase, Phase.REGISTERED, poison)
            self.assertEqual(self.wireguard.ups, [(51820, "10.99.0.5", 16)], poison)
            self.assertEqual(self.wireguard.ups6, [("", 0)], poison)
            self.assertEqual((self.saved().vpn_ip6, self.saved().vpn_subnet6), ("", ""), poison)
            self.assertTrue(any("refusing the server's assignment (vpn_" in w for w in self.warnings()), poison)
            refused = daemon.bad_answers.view(self.clock.seconds())
            self.assertGreaterEqual(refused["count"], 1, poison)
            self.assertTrue(refused["latest"].startswith("assignment: vpn_"), refused)
            self.successResultOf(daemon.stopService())
            self.wireguard = FakeWireGuard(clock=self.clock)
            os.unlink(os.path.join(self.config_dir, "config.json"))

    def test_a_later_answer_cannot_move_the_ipv6_mesh(self):
        self.server.assign = dict(GOOD6)
        daemon = self.start()
        self.server.assign = {"vpn_ip6": "fd00:9::5", "vpn_subnet6": "fd00:9::/48"}
        self.advance(HEARTBEAT_INTERVAL * 2)
        self.assertEqual((daemon.config.vpn_ip6, daemon.config.vpn_subnet6), ("fd7a:115c:a1e0::5", SUBNET6))
        self.assertEqual((self.saved().vpn_ip6, self.saved().vpn_subnet6), ("fd7a:115c:a1e0::5", SUBNET6))
        self.assertTrue(any("(vpn_subnet6)" in w and "fixed at enrollment" in w for w in self.warnings()))
        self.assertEqual(self.wireguard.ups6, [("fd7a:115c:a1e0::5", 48)], "the interface is left as it was")
        self.assert_loops_running()

    def test_an_ipv6_address_that_comes_later_is_set_at_once(self):
        # A node that joined before its server had IPv6: its tunnels are up before the server is asked.
        daemon = self.start(vpn_ip="10.99.0.5", vpn_subnet="10.99.0.0/16")
        self.assertEqual(self.wireguard.ups6[-1], ("", 0))
        self.server.assign = dict(GOOD6)
        self.advance(HEARTBEAT_INTERVAL * 2)
        self.assertEqual(daemon.config.vpn_ip6, "fd7a:115c:a1e0::5")
        self.assertEqual(self.wireguard.ups[-1], (51820, "10.99.0.5", 16))
        self.assertEqual(self.wireguard.ups6[-1], ("fd7a:115c:a1e0::5", 48))

    def test_a_peer_whose_ipv6_fails_keeps_its_ipv4(self):
        self.server.assign = dict(GOOD6)
        daemon = self.start()
        self.push([peer("db1", 2, vpn_ip6="fd7a:115c:a1e0::2")])
        bad = [
            peer("p-outside", 10, vpn_ip6="fd00:9::10"),
            peer("p-own", 11, vpn_ip6="fd7a:115c:a1e0::5"),
            peer("p-dup", 12, vpn_ip6="fd7a:115c:a1e0::2"),
            peer("p-network", 13, vpn_ip6="fd7a:115c:a1e0::"),
            peer("p-multicast", 14, vpn_ip6="ff02::1"),
        ]
        self.push(bad)
        held = {p.node_name: p.vpn_ip6 for p in daemon.netmap.peers.values()}
        self.assertEqual(held, {"db1": "fd7a:115c:a1e0::2", **{view["node_name"]: "" for view in bad}})
        self.assertEqual(self.allowed()[key_for("db1")], ("10.99.1.2/32", "fd7a:115c:a1e0::2/128"))
        self.assertEqual(self.allowed()[key_for("p-dup")], ("10.99.1.12/32",))
        warnings = "\n".join(self.warnings())
        for view in bad:
            self.assertIn(f"peer {view['node_name']} (", warnings)
        self.assertIn("vpn_ip6 dropped (IPv4 kept): fd00:9::10 is outside the mesh subnet", warnings)
        self.assertIn("fd7a:115c:a1e0::5 is this node's own address", warnings)
        self.assertIn("fd7a:115c:a1e0::2 is already held by", warnings)

    def test_a_mesh_without_ipv6_drops_every_peer_ipv6(self):
        daemon = self.start()
        self.push([peer("db1", 2, vpn_ip6="fd7a:115c:a1e0::2")])
        self.assertEqual(daemon.netmap.peers[body_for("db1")["node_id"]].vpn_ip6, "")
        self.assertEqual(self.allowed(), {key_for("db1"): ("10.99.1.2/32",)})
        self.assertTrue(any("mesh has no IPv6 subnet" in w for w in self.warnings()))

    def test_status_shows_the_ipv6_addresses(self):
        self.server.assign = dict(GOOD6)
        daemon = self.start()
        self.push([peer("db1", 2, vpn_ip6="fd7a:115c:a1e0::2"), peer("old", 3)])
        status = self.successResultOf(ensureDeferred(node_status(daemon)))
        self.assertEqual((status["node"]["vpn_ip6"], status["node"]["vpn_subnet6"]), ("fd7a:115c:a1e0::5", SUBNET6))
        self.assertEqual({p["node_name"]: p["vpn_ip6"] for p in status["peers"]}, {"db1": "fd7a:115c:a1e0::2", "old": ""})

    def test_a_saved_poisoned_ipv6_address_never_reaches_the_interface(self):
        daemon = self.start(vpn_ip="10.99.0.5", vpn_subnet="10.99.0.0/16", vpn_ip6="fd00:9::5", vpn_subnet6=SUBNET6)
        self.assertNotIn("fd00:9::5", [up[0] for up in self.wireguard.ups6])
        self.assertEqual(self.wireguard.ups[0], (51820, "10.99.0.5", 16), "the IPv4 address is kept")
        self.assertEqual(daemon.state.phase, Phase.REGISTERED)
