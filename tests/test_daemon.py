"""The node daemon against a real coordination server on 127.0.0.1, with a fake WireGuard."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from tests.fakes import FakeWireGuard, fixed_nat
from tests.helpers import body_for, make_coordinator
from tests.serverproc import http_client
from wire.client import CoordinationClient, ServerError, ServerUnreachable, make_http_client
from wire.keys import load_or_create_keys
from wire.node.config import NodeConfig, load_config, save_config
from wire.node.control import node_status
from wire.node.daemon import HEARTBEAT_INTERVAL, REGISTER_AT_LEAST_EVERY, NodeDaemon
from wire.protocol import NetmapAnswer, RegisterAnswer, Registration
from wire.server.api import build_site


async def eventually(predicate, timeout: float = 5.0, step: float = 0.02) -> None:
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, step, lambda: None)
        waited += step


class DaemonTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.coordinator = make_coordinator(self, clock=reactor)
        self.listen()
        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)

    def listen(self, port: int = 0):
        self.port = reactor.listenTCP(port, build_site(self.coordinator), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    def make_daemon(self, name="web1", lan_ip="192.168.1.10", **config_fields):
        config = NodeConfig(server_url=self.url, node_name=name, node_id=body_for(name)["node_id"], **config_fields)
        save_config(self.config_dir, config)
        self.wireguard = FakeWireGuard(clock=reactor)
        daemon = NodeDaemon(
            clock=reactor,
            config_dir=self.config_dir,
            config=config,
            keys=load_or_create_keys(self.config_dir),
            wireguard=self.wireguard,
            client=CoordinationClient(make_http_client(reactor, persistent=False), self.url),
            probe_nat=fixed_nat(),
            lan_ip=lambda: lan_ip,
        )
        daemon.startService()
        self.addCleanup(daemon.stopService)
        return daemon

    async def register_other(self, name, **fields):
        response = await http_client().post(self.url + "/register", data=json.dumps(body_for(name, **fields)).encode())
        self.assertEqual(response.code, 200)
        return json.loads(await response.content())

    async def test_registers_brings_interface_up_and_saves_assignment(self):
        daemon = self.make_daemon()
        await daemon.when_registered()
        await eventually(lambda: daemon.interface_ready)
        record = self.coordinator.registry.get(daemon.config.node_id)
        self.assertEqual((record.nat_port, record.nat_type, record.lan_ip), (40000, "easy", "192.168.1.10"))
        self.assertEqual(self.wireguard.ups, [(51820, record.vpn_ip, 16)])
        saved = load_config(self.config_dir)
        self.assertEqual((saved.vpn_ip, saved.vpn_subnet, saved.nat_port), (record.vpn_ip, "10.99.0.0/16", 40000))

    async def test_new_peer_is_configured_at_once(self):
        daemon = self.make_daemon()
        await daemon.when_registered()
        await eventually(lambda: daemon.netmap.cursor != "0")
        started = reactor.seconds()
        other = await self.register_other("db1", lan_ip="10.1.1.1")
        await eventually(lambda: len(self.wireguard.peers) == 1)
        self.assertLess(reactor.seconds() - started, 2.0)
        (peer,) = self.wireguard.peers.values()
        self.assertEqual(peer.allowed_ips, (f"{other['vpn_ip']}/32",))
        # Both seen from 127.0.0.1, so "behind the same NAT": the LAN address wins.
        self.assertEqual(peer.endpoint, "10.1.1.1:51820")
        self.assertEqual(peer.persistent_keepalive, 25)
        # The fake WireGuard handshakes at once: the path shows as proven.
        status = await node_status(daemon)
        self.assertEqual([(p["node_name"], p["path"]) for p in status["peers"]], [("db1", "direct")])

    async def test_removed_peer_leaves_wireguard(self):
        daemon = self.make_daemon()
        await daemon.when_registered()
        other = await self.register_other("db1")
        await eventually(lambda: len(self.wireguard.peers) == 1)
        self.coordinator.registry.remove(body_for("db1")["node_id"])
        await eventually(lambda: len(self.wireguard.peers) == 0)

    async def test_server_restart_keeps_peers_and_node_reregisters(self):
        daemon = self.make_daemon()
        await daemon.when_registered()
        await self.register_other("db1")
        await eventually(lambda: len(self.wireguard.peers) == 1)
        port_number = self.port.getHost().port
        await self.port.stopListening()
        self.coordinator.close()  # answers open long-polls, closes the store
        await eventually(lambda: not daemon.contact.reachable)
        await deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(len(self.wireguard.peers), 1, "an unreachable server must not remove peers")
        # A new server run on the same data and port (a new netmap epoch).
        restarted_at = reactor.seconds()
        self.coordinator = make_coordinator(self, clock=reactor, data_dir=self.coordinator.data_dir)
        self.listen(port_number)
        node_id = daemon.config.node_id
        await eventually(lambda: self.coordinator.registry.get(node_id).last_seen > restarted_at, timeout=10)
        self.assertTrue(daemon.contact.reachable)
        self.assertEqual(len(self.wireguard.peers), 1)

    async def test_restart_with_saved_address_brings_interface_up_without_server(self):
        await self.port.stopListening()
        daemon = self.make_daemon(vpn_ip="10.99.5.5", vpn_subnet="10.99.0.0/16")
        await eventually(lambda: daemon.interface_ready)
        self.assertEqual(self.wireguard.ups, [(51820, "10.99.5.5", 16)])
        self.assertFalse(daemon.contact.registered)

    async def test_leave_tells_server_and_removes_interface(self):
        daemon = self.make_daemon()
        await daemon.when_registered()
        await eventually(lambda: daemon.interface_ready)
        await daemon.leave()
        self.assertTrue(self.wireguard.is_down)
        self.assertFalse(self.coordinator.registry.is_online(daemon.config.node_id))


class ScriptedServer:
    """A coordination client answering from memory on a fake clock.

    Registrations answer at once; each long-poll is answered after its wait
    with an empty delta (the first with a snapshot), or fails after a second
    while ``polls_fail`` is set.
    """

    def __init__(self, clock, heartbeat: str | None = "longpoll"):
        self.clock = clock
        self.heartbeat = heartbeat
        self.epoch = "epoch1"
        self.registrations: list[float] = []
        self.register_error: Exception | None = None
        self.polls_fail = False
        self.polls_hang = False
        self.polls = 0
        self.next_answer_extra: dict = {}

    async def register(self, registration: Registration) -> RegisterAnswer:
        body = registration.as_body()
        self.registrations.append(self.clock.seconds())
        if self.register_error is not None:
            raise self.register_error
        answer = {
            "ok": True,
            "vpn_ip": "10.99.0.5",
            "your_ip": "198.51.100.7",
            "node_id": body["node_id"],
            "node_name": body["node_name"],
            "vpn_subnet": "10.99.0.0/16",
            "offline_after": 90,
            "cursor": f"{self.epoch}:1",
        }
        if self.heartbeat is not None:
            answer["heartbeat"] = self.heartbeat
        # What wire.client.CoordinationClient gives: the answer, parsed.
        return RegisterAnswer.from_json(answer)

    def netmap(self, cursor: str, wait: float) -> Deferred:
        self.polls += 1
        if self.polls_fail:
            return deferLater(self.clock, 1.0, self._unreachable)
        if self.polls_hang:
            return Deferred()  # sent, and never answered
        answer = {"cursor": f"{self.epoch}:1", "full": not cursor.startswith(self.epoch + ":"), "upserts": [], "removals": []}
        answer.update(self.next_answer_extra)
        self.next_answer_extra = {}
        return deferLater(self.clock, 0 if answer["full"] else wait, lambda: NetmapAnswer.from_json(answer))

    def _unreachable(self):
        raise ServerUnreachable("http://wire.test is unreachable: connection refused")

    def registered_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.registrations if start < t <= end)


class LongPollHeartbeatTests(unittest.TestCase):
    """The heartbeat loop on a fake clock: when POST /register may be left out."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = ScriptedServer(self.clock)
        self.lan_ip = "192.168.1.10"

    def start(self):
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        config = NodeConfig(server_url="https://wire.test", node_name="web1", node_id=body_for("web1")["node_id"])
        save_config(config_dir, config)
        self.daemon = NodeDaemon(
            clock=self.clock,
            config_dir=config_dir,
            config=config,
            keys=load_or_create_keys(config_dir),
            wireguard=FakeWireGuard(clock=self.clock),
            client=self.server,
            probe_nat=fixed_nat(),
            lan_ip=lambda: self.lan_ip,
        )
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        self.assertEqual(len(self.server.registrations), 1, "the first registration goes out at once")
        self.started = self.clock.seconds()
        # The assignment (vpn_ip) enters the body: one more registration
        # at the first heartbeat, then the body is stable.
        self.advance(HEARTBEAT_INTERVAL)
        self.assertEqual(len(self.server.registrations), 2)

    def advance(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def registrations_over(self, seconds: float) -> int:
        start = self.clock.seconds()
        self.advance(seconds)
        return self.server.registered_between(start, self.clock.seconds())

    def test_no_register_while_the_longpoll_works(self):
        self.start()
        self.assertTrue(self.daemon.longpoll_heartbeat)
        self.assertEqual(self.registrations_over(300), 0)
        self.assertTrue(self.daemon.heartbeat_carried_by_longpoll())
        self.assertGreaterEqual(self.server.polls, 12, "the long-poll kept going")

    def test_open_server_gets_every_heartbeat(self):
        self.server.heartbeat = None
        self.start()
        self.assertFalse(self.daemon.longpoll_heartbeat)
        self.assertEqual(self.registrations_over(300), 10)

    def test_a_changed_body_registers_at_the_next_tick(self):
        self.start()
        self.assertEqual(self.registrations_over(60), 0)
        self.lan_ip = "192.168.7.7"  # the machine moved to another LAN
        self.assertEqual(self.registrations_over(HEARTBEAT_INTERVAL), 1)
        self.assertEqual(self.registrations_over(120), 0, "registered once, quiet again")

    def test_failing_longpolls_bring_the_register_back(self):
        self.start()
        self.server.polls_fail = True
        self.advance(5)  # the open poll fails when its wait ends at the latest
        self.assertGreaterEqual(self.registrations_over(HEARTBEAT_INTERVAL * 3), 3)
        self.server.polls_fail = False
        self.advance(HEARTBEAT_INTERVAL * 2)
        self.assertEqual(self.registrations_over(120), 0, "polls work again: quiet again")

    def test_a_longpoll_open_too_long_is_no_heartbeat(self):
        self.start()
        self.server.polls_hang = True
        # The open poll is answered within 25 s; the next one, sent then,
        # hangs, and counts only while it is no older than a heartbeat.
        self.assertEqual(self.registrations_over(25 + HEARTBEAT_INTERVAL), 0)
        self.assertEqual(self.registrations_over(HEARTBEAT_INTERVAL * 3), 3)
        self.assertTrue(self.daemon.contact.reachable, "registrations get through")

    def test_a_refused_registration_is_retried_as_before(self):
        self.start()
        self.server.register_error = ServerError(429, "too many registrations", retry_after=7.0)
        self.lan_ip = "192.168.7.7"
        self.advance(HEARTBEAT_INTERVAL + 20)
        tries = [t - self.started for t in self.server.registrations[2:]]
        self.assertGreaterEqual(len(tries), 3)
        self.assertTrue(all(b - a >= 7 for a, b in zip(tries, tries[1:])), f"Retry-After ignored: {tries}")
        self.assertFalse(self.daemon.heartbeat_carried_by_longpoll(), "a refused body is no registered one")
        self.server.register_error = None
        self.advance(10)
        self.assertTrue(self.daemon.heartbeat_carried_by_longpoll())
        self.assertEqual(self.registrations_over(120), 0)

    def test_full_register_at_least_every_ten_minutes(self):
        self.start()
        self.assertEqual(self.registrations_over(REGISTER_AT_LEAST_EVERY - 60), 0)
        self.assertEqual(self.registrations_over(60), 1)
        self.assertEqual(self.registrations_over(REGISTER_AT_LEAST_EVERY - 60), 0)

    def test_the_server_asking_or_restarting_registers_at_the_next_tick(self):
        self.start()
        self.server.next_answer_extra = {"register": True}
        self.assertEqual(self.registrations_over(60), 1)
        self.server.epoch = "epoch2"  # a new server run
        self.assertEqual(self.registrations_over(60), 1)
        self.assertEqual(self.registrations_over(120), 0)
