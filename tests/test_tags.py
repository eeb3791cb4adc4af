"""Tags and ephemeral nodes: a join key gives its nodes tags (and may make
them ephemeral), only the admin changes a node's tags, the netmap shows them,
and an ephemeral node offline too long is removed with its credential."""

from __future__ import annotations

import json
import os
import sqlite3

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers import make_coordinator, registration_for, settled
from wire.addressing import AddressPool, parse_subnet
from wire.protocol import PeerView, ProtocolError
from wire.protocol.fields import parse_tag, parse_tags
from wire.server.admin import Admin, build_admin_site
from wire.server.auth import Authority
from wire.server.coordinator import Coordinator
from wire.server.registry import Registry
from wire.server.store import SCHEMA_VERSION, open_store


class TagSyntaxTests(unittest.TestCase):
    def test_a_tag_is_tag_colon_a_dns_label(self):
        self.assertEqual(parse_tag("web"), "tag:web")
        self.assertEqual(parse_tag("TAG:DB-1"), "tag:db-1")
        self.assertEqual(parse_tags(["tag:web", "web", "db"]), ("tag:db", "tag:web"))
        for bad in ("", "tag:", "tag:-x", "tag:a b", "tag:a.b", 5, "x" * 64, "tag:é", "tag:\u212aube"):
            with self.assertRaises(ProtocolError, msg=repr(bad)):
                parse_tag(bad)
        # The Kelvin sign lower-cases to "k": it must not pass as a name or a tag.
        from wire.protocol.fields import parse_node_name
        with self.assertRaises(ProtocolError):
            parse_node_name("\u212aube")
        self.assertEqual(parse_node_name("Kube"), "kube")
        with self.assertRaises(ProtocolError):
            parse_tags([f"t{i}" for i in range(33)])
        with self.assertRaises(ProtocolError):
            parse_tags("tag:web")

    def test_a_node_shows_a_peers_valid_tags_only(self):
        view = {"node_id": "n1", "node_name": "web1", "vpn_ip": "10.99.0.2", "wg_public_key": "A" * 43 + "="}
        self.assertEqual(PeerView.from_json(view).tags, ())  # a seed server sends none
        shown = PeerView.from_json(view | {"tags": ["tag:web", "\x1b[2J", 5, "tag:db"]}).tags
        self.assertEqual(shown, ("tag:db", "tag:web"))
        self.assertEqual(PeerView.from_json(view | {"tags": "tag:web"}).tags, ())


class Mesh:
    """A coordinator with authentication, an admin, and its clock."""

    def __init__(self, test: unittest.TestCase, data_dir: str | None = None, clock: Clock | None = None):
        self.test = test
        self.coordinator = make_coordinator(test, data_dir=data_dir, clock=clock)
        self.clock = self.coordinator.clock
        self.authority = Authority(self.coordinator.store, self.clock)
        self.coordinator.authority = self.authority
        self.admin = Admin(self.coordinator, "https://vpn.example.org:8787", "ab" * 32)

    def enroll(self, secret: str, name: str):
        d = Deferred.fromCoroutine(self.coordinator.enroll(secret, registration_for(name), "203.0.113.9"))
        result, _ = self.test.successResultOf(d)
        return result.record

    def view(self, name: str) -> dict:
        return next(n for n in self.coordinator.status()["nodes"] if n["node_name"] == name)

    def events(self, event: str) -> list[str]:
        return [e["detail"] for e in settled(self.authority.audit_log(1000)) if e["event"] == event]


class TaggedKeyTests(unittest.TestCase):
    def setUp(self):
        self.mesh = Mesh(self)

    def test_a_node_enrolled_with_a_tagged_key_carries_its_tags(self):
        _, secret = settled(self.mesh.authority.create_key(reusable=True, tags=("tag:prod", "tag:web")))
        record = self.mesh.enroll(secret, "web1")
        self.assertEqual(record.tags, ("tag:prod", "tag:web"))
        self.assertEqual(self.mesh.view("web1")["tags"], ["tag:prod", "tag:web"])
        # The node registering again (anything in its body) keeps them: a node cannot set its own tags.
        again = registration_for("web1", lan_ip="192.168.1.9")
        d = Deferred.fromCoroutine(self.mesh.coordinator.register(again, "203.0.113.9", node_id=record.node_id))
        self.mesh.clock.advance(0)  # the store's commit
        self.assertEqual(self.successResultOf(d).record.tags, ("tag:prod", "tag:web"))

    def test_an_untagged_key_gives_no_tags(self):
        _, secret = settled(self.mesh.authority.create_key())
        self.assertEqual(self.mesh.enroll(secret, "db1").tags, ())
        self.assertEqual(self.mesh.view("db1")["tags"], [])

    def test_the_admin_replaces_a_nodes_tags_and_it_is_audited_and_kept(self):
        _, secret = settled(self.mesh.authority.create_key(tags=("tag:web",)))
        record = self.mesh.enroll(secret, "web1")
        serial = self.mesh.coordinator.registry.changes.serial
        answer = self.successResultOf(Deferred.fromCoroutine(self.mesh.admin.tag_node("web1", ("tag:db", "tag:prod"))))
        self.assertEqual((answer["old_tags"], answer["tags"]), (["tag:web"], ["tag:db", "tag:prod"]))
        self.assertGreater(self.mesh.coordinator.registry.changes.serial, serial, "a netmap change")
        self.assertEqual(self.mesh.events("node.tag"), [f"node web1 ({record.node_id}): [tag:web] -> [tag:db tag:prod]"])
        self.successResultOf(Deferred.fromCoroutine(self.mesh.admin.tag_node(record.vpn_ip, ())))
        self.assertEqual(self.mesh.view("web1")["tags"], [])
        self.successResultOf(Deferred.fromCoroutine(self.mesh.admin.tag_node(record.node_id, ("tag:ops",))))
        # Kept across a restart of the server.
        data_dir = self.mesh.coordinator.data_dir
        settled(self.mesh.coordinator.store.close())
        store = open_store(data_dir, Clock())
        self.addCleanup(store.close)
        [stored] = store.load()
        self.assertEqual(stored.tags, ("tag:ops",))

    def test_the_admin_api_validates_tags_and_ephemeral_times(self):
        http = StubTreq(build_admin_site(self.mesh.admin).resource)

        def post(path: str, body: dict) -> tuple[int, dict]:
            async def call():
                response = await http.post(f"http://wire-admin/{path}", json=body)
                return response.code, json.loads(await response.content())

            d = Deferred.fromCoroutine(call())
            http.flush()
            return self.successResultOf(d)

        code, created = post("keys", {"tags": ["web", "tag:prod"], "ephemeral_after": 600})
        self.assertEqual((code, created["key"]["tags"], created["key"]["ephemeral_after"]), (200, ["tag:prod", "tag:web"], 600))
        self.assertEqual(post("keys", {"tags": ["bad tag"]})[0], 400)
        self.assertEqual(post("keys", {"tags": "tag:web"})[0], 400)
        code, error = post("keys", {"ephemeral_after": 5})
        self.assertEqual(code, 400)
        self.assertIn("ephemeral_after: at least 60 s", error["error"])
        self.assertEqual(post("keys", {"ephemeral_after": True})[0], 400)
        self.assertEqual(post("tag-node", {"node": "nobody", "tags": []})[0], 404)
        self.assertEqual(post("tag-node", {"node": "nobody", "tags": ["a b"]})[0], 400)


class EphemeralTests(unittest.TestCase):
    def setUp(self):
        self.mesh = Mesh(self)
        self.registry = self.mesh.coordinator.registry

    def test_an_ephemeral_node_offline_too_long_is_removed_with_its_credential(self):
        _, ephemeral = settled(self.mesh.authority.create_key(reusable=True, ephemeral_after=600))
        _, lasting = settled(self.mesh.authority.create_key(reusable=True))
        runner = self.mesh.enroll(ephemeral, "ci-runner")
        server = self.mesh.enroll(lasting, "web1")
        self.assertTrue(self.registry.is_ephemeral(runner.node_id))
        self.assertFalse(self.registry.is_ephemeral(server.node_id))
        # Offline (silent past offline_after), then 600 s more.
        self.mesh.clock.advance(self.registry.offline_after + 1)
        self.mesh.coordinator.sweep()
        self.assertIsNotNone(self.registry.get(runner.node_id), "offline, not yet gone")
        self.mesh.clock.advance(600)
        self.mesh.coordinator.sweep()
        self.assertIsNone(self.registry.get(runner.node_id))
        self.assertIsNotNone(self.registry.get(server.node_id), "a lasting node stays")
        self.assertEqual(self.mesh.events("node.remove.ephemeral"), [f"node ci-runner ({runner.node_id}) {runner.vpn_ip}"])
        rows = settled(self.mesh.coordinator.store.query("SELECT node_id FROM credentials"))
        self.assertEqual([r[0] for r in rows], [server.node_id])

    def test_a_node_back_in_time_stays(self):
        _, ephemeral = settled(self.mesh.authority.create_key(ephemeral_after=600))
        runner = self.mesh.enroll(ephemeral, "ci-runner")
        self.mesh.clock.advance(500)
        self.registry.seen(runner.node_id, self.mesh.clock.seconds())
        self.mesh.clock.advance(self.registry.offline_after + 500)
        self.mesh.coordinator.sweep()
        self.assertIsNotNone(self.registry.get(runner.node_id))

    def test_a_restarted_server_still_knows_its_ephemeral_nodes(self):
        _, ephemeral = settled(self.mesh.authority.create_key(ephemeral_after=600))
        runner = self.mesh.enroll(ephemeral, "ci-runner")
        data_dir, clock = self.mesh.coordinator.data_dir, self.mesh.clock
        settled(self.mesh.coordinator.store.close())
        store = open_store(data_dir, clock)
        self.addCleanup(store.close)
        registry = Registry(store, AddressPool(parse_subnet("10.99.0.0/16")))
        registry.load(store.load(), clock.seconds())
        Coordinator(clock, store, registry, authority=Authority(store, clock))
        self.assertTrue(registry.is_ephemeral(runner.node_id))


class SchemaFourTests(unittest.TestCase):
    def test_a_schema_3_registry_gains_tags_and_keeps_its_nodes_and_keys(self):
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir, mode=0o700)
        path = os.path.join(data_dir, "registry.sqlite3")
        db = sqlite3.connect(path)
        db.executescript(
            """
            CREATE TABLE nodes (node_id TEXT PRIMARY KEY, node_name TEXT NOT NULL, wg_public_key TEXT NOT NULL UNIQUE,
                vpn_ip TEXT NOT NULL UNIQUE, public_ip TEXT NOT NULL, port INTEGER NOT NULL, nat_port INTEGER NOT NULL,
                lan_ip TEXT NOT NULL, nat_type TEXT NOT NULL, registered REAL NOT NULL, last_seen REAL NOT NULL);
            CREATE TABLE join_keys (key_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL UNIQUE, created REAL NOT NULL,
                expires REAL NOT NULL, reusable INTEGER NOT NULL, uses INTEGER NOT NULL, revoked INTEGER NOT NULL, note TEXT NOT NULL);
            INSERT INTO nodes VALUES ('n1', 'web1', 'key1', '10.99.0.2', '203.0.113.9', 51820, 51820, '', 'easy', 1.0, 2.0);
            INSERT INTO join_keys VALUES ('k1', 'hash1', 1.0, 0, 1, 3, 0, 'old key');
            PRAGMA user_version = 3;
            """
        )
        db.commit()
        db.close()
        clock = Clock()
        store = open_store(data_dir, clock)
        self.addCleanup(store.close)
        self.assertEqual(settled(store.query("PRAGMA user_version"))[0][0], SCHEMA_VERSION)
        [node] = store.load()
        self.assertEqual((node.node_name, node.tags), ("web1", ()))
        [key] = Authority(store, clock).keys()
        self.assertEqual((key.key_id, key.uses, key.note, key.tags, key.ephemeral_after), ("k1", 3, "old key", (), 0.0))
