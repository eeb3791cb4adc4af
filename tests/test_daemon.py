"""The node daemon against a real coordination server on 127.0.0.1, with a fake WireGuard."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.fakes import FakeWireGuard, fixed_nat
from tests.helpers import body_for, make_coordinator
from tests.serverproc import http_client
from wire.client import CoordinationClient, make_http_client
from wire.keys import load_or_create_keys
from wire.node.config import NodeConfig, load_config, save_config
from wire.node.control import node_status
from wire.node.daemon import NodeDaemon
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
