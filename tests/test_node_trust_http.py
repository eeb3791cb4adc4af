"""The node daemon against the hostile server over real 127.0.0.1 sockets.

The daemon object, its real HTTP client and the hostile server
(tests/hostile_server.py) share the test's reactor; WireGuard is the fake,
so each step can check exactly what reached it. What test_node_trust does
at the client interface, this does on the wire: answers that are not JSON,
nest 200,000 deep, run to 20 MB, or carry addresses and keys a node must
refuse. After each, the next good answer is applied within 5 s.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial import unittest

from tests.fakes import FakeWireGuard, started_daemon
from tests.helpers import body_for
from tests.hostile_server import Script, Steering, peer, peers_answer, site
from tests.test_daemon import eventually
from wire.keys import generate_private_key, public_key_for
from wire.node.config import NodeConfig, load_config, save_config
from wire.node.daemon import NodeDaemon
from wire.node.enroll import coordination_client

APPLIED_WITHIN = 5.0


class HostileServerOverHttpTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.steering = Steering(os.path.join(self.directory, "hostile"))
        self.script = script = Script(self.steering.directory)
        self.addCleanup(script.stop)
        port = reactor.listenTCP(0, site(script), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.config_dir = os.path.join(self.directory, "node")
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        save_config(self.config_dir, NodeConfig(server_url=self.url, node_name="web1", node_id=body_for("web1")["node_id"]))

    def start(self) -> NodeDaemon:
        self.script.reload()  # the state just written, before the daemon's first request
        config = load_config(self.config_dir)
        self.wireguard = FakeWireGuard(config.interface, clock=reactor)
        return started_daemon(
            self,
            clock=reactor,
            config_dir=self.config_dir,
            config=config,
            wireguard=self.wireguard,
            client=coordination_client(reactor, config, self.config_dir, persistent=False),
        )

    def held(self) -> set[str]:
        return {ip for config in self.wireguard.peers.values() for ip in config.allowed_ips}

    async def applied(self, peers: list[dict], what: str) -> None:
        wanted = {f"{p['vpn_ip']}/32" for p in peers}
        try:
            await eventually(lambda: self.held() == wanted, timeout=APPLIED_WITHIN)
        except Exception:
            self.fail(f"{what}: WireGuard holds {sorted(self.held())}, not {sorted(wanted)}")

    async def test_every_bad_answer_is_refused_and_the_next_good_one_applied(self):
        # A register answer that is no answer at first: asked again until a good one.
        self.steering.write(register={"raw": '{"vpn_ip": 5}'})
        daemon = self.start()
        await eventually(lambda: sum(s["path"] == "/register" for s in self.steering.served()) >= 2, timeout=10)
        self.assertFalse(daemon.contact.registered)
        good = [peer(1, "10.99.1.1")]
        self.steering.write(peers=peers_answer(good))
        await daemon.when_registered()
        await self.applied(good, "the first good netmap")
        self.assertEqual(self.wireguard.ups[-1][1:], ("10.99.0.5", 16))
        self.assertGreaterEqual(daemon.bad_answers.count, 2, "the refused register answers are counted")

        own_key = daemon.public_key
        twice = public_key_for(generate_private_key())
        cases = {
            "foreign addresses": peers_answer(
                [peer(10, "8.8.8.8"), peer(11, "127.0.0.1"), peer(12, "10.99.0.5"), peer(13, "224.0.0.1"), peer(14, "2001:4860::8888")]
            ),
            "own key, a key twice": peers_answer([peer(20, "10.99.2.1", own_key), peer(21, "10.99.2.2", twice), peer(22, "10.99.2.3", twice)]),
            "upserts not a list": {"raw": '{"cursor": "1:99", "upserts": 5}'},
            "a removal that is a list": peers_answer([], full=False, removals=[[1]]),
            "200 KB of nesting": {"raw": "[" * 200_000},
            "not JSON": {"raw": "\x1b[2J<html>"},
            "20 MB of body": {"flood": 20 * 1024 * 1024},
        }
        for number, (case, spec) in enumerate(cases.items()):
            before = daemon.bad_answers.count
            version = self.steering.write(peers=spec)
            await eventually(lambda: self.steering.was_served("/peers", version), timeout=10)
            await eventually(lambda: daemon.bad_answers.count > before, timeout=10)
            held = self.held()
            self.assertFalse(held & {"8.8.8.8/32", "127.0.0.1/32", "10.99.0.5/32", "224.0.0.1/32", "10.99.2.1/32"}, case)
            self.assertLessEqual(len(held & {"10.99.2.2/32", "10.99.2.3/32"}), 1, case)
            self.assertNotIn(own_key, self.wireguard.peers, case)
            self.assertTrue(daemon._sync.running, f"{case}: the sync loop goes on")
            good = [peer(100 + number, f"10.99.3.{number + 1}")]
            self.steering.write(peers=peers_answer(good))
            await self.applied(good, f"a good netmap after {case}")
        self.assertEqual([up[1] for up in self.wireguard.ups], ["10.99.0.5"], "the interface kept its one address")

        # A later register answer moving the node out of its mesh: refused, not saved.
        version = self.steering.write(register={"vpn_ip": "8.8.8.8", "vpn_subnet": "8.0.0.0/8"}, peers=peers_answer(good))
        self.script.reload()
        refused = daemon.bad_answers.count
        await daemon.register()  # what the next heartbeat does
        # At least this one is counted (the daemon's own heartbeat may have registered meanwhile too).
        self.assertGreaterEqual(daemon.bad_answers.count, refused + 1)
        self.assertIn("assignment", daemon.bad_answers.latest)
        self.assertTrue(self.steering.was_served("/register", version))
        saved = load_config(self.config_dir)
        self.assertEqual((saved.vpn_ip, saved.vpn_subnet), ("10.99.0.5", "10.99.0.0/16"))
        self.assertEqual(daemon.config.vpn_ip, "10.99.0.5")
