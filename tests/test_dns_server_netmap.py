"""The mesh's DNS settings in the long-poll answer: sent to a node when the
digest it holds (``dns=``) is not the current one, never to a seed node that
names none, at once to every waiting poll when the admin changes them; over
``GET /peers`` in memory, and against a real ``twistd wire-server``."""

from __future__ import annotations

import json

import shutil
import tempfile

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial import unittest

from tests.helpers import body_for, make_coordinator, registration_for, settled
from tests.serverproc import ServerProcess
from tests.test_policy_server import Mesh
from wire.admin_ops import AdminOps
from wire.client import CoordinationClient, make_http_client
from wire.jointoken import decode_join_token
from wire.protocol import Cursor
from wire.protocol.dns import NO_DNS, DnsConfig, dns_digest
from wire.server.api import build_root
from wire.web import ViewerJson, encode_json


def poll(mesh: Mesh, name: str, holds_dns: str | None, cursor: str | None = None) -> dict:
    d = mesh.coordinator.netmap(cursor or str(Cursor("x", 0)), 0, mesh.ids[name], holds_dns=holds_dns)
    answer = mesh.test.successResultOf(d)
    # The bytes on the wire are the merged answer.
    mesh.test.assertEqual(json.loads(encode_json(answer)), json.loads(json.dumps(dict(answer))))
    return json.loads(encode_json(answer))


class DnsInTheNetmapTests(unittest.TestCase):
    def setUp(self):
        self.mesh = Mesh(self)
        for name in ("web1", "db1"):
            self.mesh.enroll(name)

    def test_a_node_gets_the_settings_once_and_again_only_when_they_change(self):
        first = poll(self.mesh, "web1", NO_DNS)
        self.assertEqual(first["dns"], DnsConfig("wire.internal").to_json())
        digest = dns_digest(first["dns"])
        self.assertNotIn("dns", poll(self.mesh, "web1", digest), "it holds them")
        settled(self.mesh.admin.add_dns_record("db", "A", "10.99.0.50"))
        changed = poll(self.mesh, "web1", digest)["dns"]
        self.assertEqual(changed["records"], [{"name": "db", "type": "A", "value": "10.99.0.50"}])
        self.assertNotIn("dns", poll(self.mesh, "web1", dns_digest(changed)))
        # A node holding some older configuration is sent the current one.
        self.assertEqual(poll(self.mesh, "db1", "0123456789abcdef")["dns"], changed)

    def test_a_seed_node_that_names_no_digest_gets_no_dns_key(self):
        settled(self.mesh.admin.add_dns_record("db", "A", "10.99.0.50"))
        self.assertNotIn("dns", poll(self.mesh, "web1", None))

    def test_every_node_shares_one_encoded_object(self):
        a = self.mesh.coordinator.netmap(str(Cursor("x", 0)), 0, self.mesh.ids["web1"], holds_dns=NO_DNS)
        b = self.mesh.coordinator.netmap(str(Cursor("x", 0)), 0, self.mesh.ids["db1"], holds_dns=NO_DNS)
        answers = [self.successResultOf(a), self.successResultOf(b)]
        for answer in answers:
            self.assertIsInstance(answer, ViewerJson)
        self.assertIs(answers[0].extras["dns"], answers[1].extras["dns"])
        # Encoded once: the second answer splices in the bytes the first made.
        first = encode_json(answers[0])
        encoded = answers[0].extras["dns"].encoded
        self.assertIn(encoded[:-1], first)
        self.assertIn(encoded[:-1], encode_json(answers[1]))
        self.assertIs(answers[1].extras["dns"].encoded, encoded)

    def test_a_change_wakes_a_waiting_poll_with_the_new_settings(self):
        first = poll(self.mesh, "web1", NO_DNS)
        d = self.mesh.coordinator.netmap(first["cursor"], 30, self.mesh.ids["web1"], holds_dns=dns_digest(first["dns"]))
        seed = self.mesh.coordinator.netmap(first["cursor"], 30, self.mesh.ids["db1"])
        self.assertNoResult(d)
        shown = settled(self.mesh.admin.forward_dns("corp.example", ["10.0.0.53"]))
        self.mesh.clock.advance(0)
        answer = json.loads(encode_json(self.successResultOf(d)))
        self.assertEqual(answer["dns"]["forward"], [{"domain": "corp.example", "resolvers": ["10.0.0.53"]}])
        self.assertEqual((answer["upserts"], answer["removals"]), ([], []), "no node changed")
        self.assertNotEqual(answer["cursor"], first["cursor"], "the serial moved")
        self.assertEqual(shown["version"], 1)
        # The seed node's poll is answered too (its cursor is behind), without dns.
        self.assertNotIn("dns", json.loads(encode_json(self.successResultOf(seed))))

    def test_a_removed_node_is_not_told(self):
        first = poll(self.mesh, "web1", NO_DNS)
        d = self.mesh.coordinator.netmap(first["cursor"], 30, self.mesh.ids["web1"], holds_dns=NO_DNS)
        removed = ensureDeferred(self.mesh.admin.remove_node("web1"))
        self.mesh.clock.advance(0)
        self.successResultOf(removed)
        self.assertNotIn("dns", json.loads(encode_json(self.successResultOf(d))))


class NoMeshDnsTests(unittest.TestCase):
    def test_a_node_holding_settings_is_told_null_and_one_holding_none_nothing(self):
        coordinator = make_coordinator(self)
        from wire.server.coordinator import Coordinator

        coordinator = Coordinator(coordinator.clock, coordinator.store, coordinator.registry, dns_domain=None)
        result = coordinator.registry.register(registration_for("web1"), "203.0.113.9", coordinator.now())
        node_id = result.record.node_id

        def answer(held):
            d = coordinator.netmap(str(Cursor("x", 0)), 0, viewer=node_id, holds_dns=held)
            return json.loads(encode_json(self.successResultOf(d)))

        self.assertIsNone(answer("0123456789abcdef")["dns"])
        self.assertNotIn("dns", answer(NO_DNS))
        self.assertNotIn("dns", answer(None))


class PeersParameterTests(unittest.TestCase):
    """``GET /peers?...&dns=DIGEST|none`` on an open server (the node names itself)."""

    def setUp(self):
        self.coordinator = make_coordinator(self)
        self.clock = self.coordinator.clock
        self.http = StubTreq(build_root(self.coordinator))

    def get(self, path: str) -> tuple[int, dict]:
        async def call():
            response = await self.http.get(f"http://wire.test{path}")
            return response.code, json.loads(await response.content())

        d = Deferred.fromCoroutine(call())
        self.clock.advance(0)
        self.http.flush()
        return self.successResultOf(d)

    def register(self) -> dict:
        async def call():
            response = await self.http.post("http://wire.test/register", data=json.dumps(body_for("web1")).encode())
            return json.loads(await response.content())

        d = Deferred.fromCoroutine(call())
        self.clock.advance(0)
        self.http.flush()
        return self.successResultOf(d)

    def test_a_bad_digest_is_a_400_naming_dns(self):
        node_id = self.register()["node_id"]
        for bad in ("banana", "0123456789ABCDEF", "0123", "", "nonenone"):
            code, body = self.get(f"/peers?since=x:0&node_id={node_id}&dns={bad}")
            self.assertEqual(code, 400, bad)
            self.assertTrue(body["error"].startswith("dns: "), body)

    def test_a_node_saying_none_gets_the_settings_and_one_saying_nothing_does_not(self):
        node_id = self.register()["node_id"]
        code, body = self.get(f"/peers?since=x:0&node_id={node_id}&dns=none")
        self.assertEqual((code, body["dns"]["domain"]), (200, "wire.internal"))
        code, body = self.get(f"/peers?since=x:0&node_id={node_id}&dns={dns_digest(body['dns'])}")
        self.assertNotIn("dns", body)
        code, body = self.get(f"/peers?since=x:0&node_id={node_id}")
        self.assertNotIn("dns", body)


class RealServerTests(unittest.TestCase):
    """Against ``twistd wire-server``: the admin adds a record over the admin
    socket; a node's long-poll saying ``dns=none`` gets it, with the domain
    the server was started with; it survives ``kill -9``."""

    timeout = 60

    async def test_a_record_added_by_the_admin_reaches_a_long_poll(self):
        # UNIX socket paths are short (108 bytes): a short data dir.
        data_dir = tempfile.mkdtemp(prefix="wire-dns-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        server = ServerProcess(self, data_dir, extra_args=("--dns-domain", "Mesh.Internal"))
        await server.start()
        admin = AdminOps(reactor, data_dir)
        added = await admin.dns_action("add-record", name="db", type="A", value="10.99.0.50")
        self.assertEqual((added["added"], added["version"], added["domain"]), ({"name": "db", "type": "A", "value": "10.99.0.50"}, 1, "mesh.internal"))
        join = decode_join_token((await admin.create_key())["token"])
        http = make_http_client(reactor, persistent=False, tls_fingerprint=join.fingerprint)
        enrolled = await CoordinationClient(http, server.url).enroll(registration_for("web1"), join.secret)
        node = CoordinationClient(http, server.url, enrolled.credential)
        answer = await node.netmap(str(Cursor("x", 0)), 0, holds_dns=NO_DNS)
        self.assertTrue(answer.dns_given)
        self.assertEqual(answer.dns, DnsConfig.from_json({"domain": "mesh.internal", "records": [added["added"]]}))
        again = await node.netmap(str(Cursor("x", 0)), 0, holds_dns=dns_digest(answer.dns.to_json()))  # type: ignore[union-attr]
        self.assertFalse(again.dns_given)
        # Acknowledged is durable: after kill -9 the next server has it.
        await server.kill()
        restarted = ServerProcess(self, data_dir, extra_args=("--dns-domain", "mesh.internal"))
        await restarted.start()
        shown = await AdminOps(reactor, data_dir).dns()
        self.assertEqual((shown["records"], shown["version"], shown["digest"]), ([added["added"]], 1, dns_digest(answer.dns.to_json())))  # type: ignore[union-attr]
        await restarted.stop()
