"""IPv6 mesh addresses on the server: each node's, from the mesh's prefix
(drawn once and kept, or --subnet6), stable across registrations and
restarts, given to a schema-7 registry's nodes as it loads, renewed when the
prefix changes; carried in the register answer, the peer views, /status,
``wire admin nodes list`` and the access policy's directory."""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial import unittest

from tests.helpers import TEST_SUBNET6, make_coordinator, registration_for, settled
from tests.test_policy_server import Mesh
from tests.helpers import short_dir
from wire.addressing import Ipv6Pool, parse_subnet6
from wire.cli.admin import format_nodes, parse_target
from wire.cli.formatting import Style
from wire.protocol import NetmapAnswer, RegisterAnswer
from wire.server.meshprefix import SUBNET6_KEY, mesh_prefix6
from wire.server.options import Options
from wire.server.store import StoreError, open_store
from wire.server.tap import build_coordinator

PREFIX = ipaddress.IPv6Network(TEST_SUBNET6)


def in_prefix(address: str, prefix: ipaddress.IPv6Network = PREFIX) -> bool:
    return ipaddress.IPv6Address(address) in prefix


class RegistryAddressTests(unittest.TestCase):
    def setUp(self):
        self.data_dir = self.mktemp()
        self.coordinator = make_coordinator(self, data_dir=self.data_dir)
        self.registry = self.coordinator.registry

    def register(self, name: str, **fields):
        return self.registry.register(registration_for(name, **fields), "203.0.113.9", self.coordinator.now()).record

    def test_a_new_node_gets_its_hashed_address_kept_across_registrations_and_restarts(self):
        record = self.register("web1")
        self.assertEqual(record.vpn_ip6, Ipv6Pool(PREFIX).allocate(record.node_id, set()))
        self.assertEqual(self.register("web1", port=51999).vpn_ip6, record.vpn_ip6, "a changed registration keeps it")
        settled(self.coordinator.store.close())
        again = make_coordinator(self, data_dir=self.data_dir)
        self.assertEqual(again.registry.get(record.node_id).vpn_ip6, record.vpn_ip6)
        self.assertEqual(again.registry.by_vpn_ip(record.vpn_ip6.upper()).node_id, record.node_id, "any spelling finds it")

    def test_an_address_taken_makes_the_next_node_take_its_next_candidate(self):
        web1 = self.register("web1")
        node_id = registration_for("db1").node_id
        first = next(Ipv6Pool(PREFIX).candidates(node_id))
        # web1 holds db1's first candidate (as after a prefix change could happen).
        web1.vpn_ip6 = str(first)
        self.coordinator.store.put(web1)
        self.coordinator.store.write_pending()
        settled(self.coordinator.store.close())
        again = make_coordinator(self, data_dir=self.data_dir)
        db1 = again.registry.register(registration_for("db1"), "203.0.113.9", again.now()).record
        self.assertNotEqual(db1.vpn_ip6, str(first))
        self.assertTrue(in_prefix(db1.vpn_ip6))

    def test_a_server_without_a_prefix_gives_none_and_its_answer_says_nothing_of_ipv6(self):
        coordinator = make_coordinator(self, subnet6=None)
        record = coordinator.registry.register(registration_for("web1"), "203.0.113.9", coordinator.now()).record
        self.assertEqual(record.vpn_ip6, "")
        body = coordinator.registered_answer(record, "203.0.113.9").to_json()
        self.assertNotIn("vpn_ip6", body)
        self.assertNotIn("vpn_ip6", coordinator.registry.view(record, coordinator.now()))

    def test_a_node_imported_from_a_seed_state_gets_one(self):
        from tests.helpers import body_for
        from wire.server.seed_import import import_seed_state

        body = dict(body_for("old1"), vpn_ip="10.99.0.5")
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({body["node_id"]: body}, f)
        import_seed_state(path, self.registry, self.coordinator.now())
        record = self.registry.get(body["node_id"])
        self.assertEqual(record.vpn_ip6, Ipv6Pool(PREFIX).allocate(record.node_id, set()))
        self.assertEqual(self.registry.by_vpn_ip(record.vpn_ip6), record)

    def test_the_mesh_prefix_cannot_be_advertised_as_a_route(self):
        from wire.protocol import ProtocolError

        with self.assertRaises(ProtocolError) as caught:
            self.register("web1", advertise_routes=["fd7a:115c:a1e0:5::/64"])
        self.assertIn("overlaps the mesh's own subnet fd7a:115c:a1e0::/48", caught.exception.problem)


class CarriedTests(unittest.TestCase):
    """The answer, the views, /status, the admin's list, the policy."""

    def setUp(self):
        self.mesh = Mesh(self)
        for name, tags in (("web1", ("tag:web",)), ("db1", ("tag:db",)), ("ops1", ())):
            self.mesh.enroll(name, *tags)
        self.registry = self.mesh.coordinator.registry
        self.web1 = self.registry.by_name("web1")
        self.db1 = self.registry.by_name("db1")

    def test_the_enroll_answer_carries_the_address_and_the_prefix(self):
        d = Deferred.fromCoroutine(self.mesh.coordinator.enroll(settled(self.mesh.authority.create_key())[1], registration_for("new1"), "203.0.113.9"))
        result, credential = self.successResultOf(d)
        answer = self.mesh.coordinator.registered_answer(result.record, "203.0.113.9", credential)
        body = json.loads(json.dumps(answer.to_json()))
        self.assertEqual(body["vpn_subnet6"], TEST_SUBNET6)
        self.assertTrue(in_prefix(body["vpn_ip6"]))
        self.assertEqual(RegisterAnswer.from_json(body).vpn_ip6, result.record.vpn_ip6)

    def test_the_netmap_and_status_views_carry_it(self):
        answer = NetmapAnswer.from_json(self.mesh.poll("web1", None))
        seen = {peer.node_name: peer.vpn_ip6 for peer in answer.upserts}
        self.assertEqual(seen["db1"], self.db1.vpn_ip6)
        self.assertEqual(answer.me.vpn_ip6 if answer.me else seen["web1"], self.web1.vpn_ip6)
        status = {node["node_name"]: node for node in self.mesh.coordinator.status()["nodes"]}
        self.assertEqual(status["db1"]["vpn_ip6"], self.db1.vpn_ip6)
        peers = self.mesh.coordinator.online_peers()["peers"]
        self.assertEqual({p["node_name"]: p["vpn_ip6"] for p in peers}["web1"], self.web1.vpn_ip6)

    def test_wire_admin_nodes_list_shows_it(self):
        shown = {"ok": True, **self.mesh.coordinator.status()}
        text = format_nodes(shown, Style(False))
        self.assertIn("VPN IPV6", text)
        self.assertIn(self.db1.vpn_ip6, text)
        self.assertEqual(self.mesh.admin.find_node(self.db1.vpn_ip6), self.db1, "a node is found by its IPv6 address")

    def test_the_policy_directory_holds_both_addresses(self):
        from tests.test_policy_server import POLICY

        settled(self.mesh.admin.set_policy(POLICY))
        allowed = self.mesh.admin.explain_policy(self.web1.vpn_ip6, "db1", 5432, "tcp")
        self.assertEqual((allowed["allowed"], allowed["rule"]), (True, 0))
        self.assertFalse(self.mesh.admin.explain_policy(self.web1.vpn_ip6, self.db1.vpn_ip6, 22, "tcp")["allowed"])
        self.assertTrue(self.mesh.admin.explain_policy("web1", f"[{self.db1.vpn_ip6}]", 5432, "tcp")["allowed"])
        # As `wire admin policy explain web1 [ADDRESS]:5432` gives it.
        dst, port, proto = parse_target(f"[{self.db1.vpn_ip6}]:5432")
        self.assertTrue(self.mesh.admin.explain_policy("web1", dst, port, proto)["allowed"])

    def test_a_policy_may_name_an_ipv6_mesh_address(self):
        settled(self.mesh.admin.set_policy(
            '{"acls": [{"action": "accept", "src": ["%s"], "dst": ["db1:22"]}]}' % self.web1.vpn_ip6
        ))
        self.assertTrue(self.mesh.admin.explain_policy("web1", "db1", 22, "tcp")["allowed"], "the address is web1's")
        self.assertFalse(self.mesh.admin.explain_policy("ops1", "db1", 22, "tcp")["allowed"])
        sources = {s for rule in self.mesh.coordinator.policy.filter_for(self.db1.node_id) or () for s in rule.sources}
        self.assertEqual(sources, {f"{self.web1.vpn_ip6}/128"})


class MigrationTests(unittest.TestCase):
    def make_schema_7(self) -> tuple[str, list[str]]:
        data_dir = self.mktemp()
        coordinator = make_coordinator(self, data_dir=data_dir, subnet6=None)
        ids = [coordinator.registry.register(registration_for(n), "203.0.113.9", coordinator.now()).record.node_id for n in ("web1", "db1")]
        settled(coordinator.store.close())
        db = sqlite3.connect(os.path.join(data_dir, "registry.sqlite3"))
        db.execute("DROP INDEX nodes_vpn_ip6")
        db.execute("ALTER TABLE nodes DROP COLUMN vpn_ip6")
        db.execute("PRAGMA user_version = 7")
        db.commit()
        db.close()
        return data_dir, ids

    def stored_addresses(self, data_dir: str) -> dict[str, str]:
        db = sqlite3.connect(os.path.join(data_dir, "registry.sqlite3"))
        try:
            return dict(db.execute("SELECT node_id, vpn_ip6 FROM nodes").fetchall())
        finally:
            db.close()

    def test_a_schema_7_registry_gives_every_node_an_address_as_it_loads(self):
        data_dir, ids = self.make_schema_7()
        coordinator = make_coordinator(self, data_dir=data_dir)
        self.assertEqual(settled(coordinator.store.query("PRAGMA user_version"))[0][0], 13)
        addresses = {i: coordinator.registry.get(i).vpn_ip6 for i in ids}
        self.assertEqual(addresses, {i: Ipv6Pool(PREFIX).allocate(i, set()) for i in ids})
        coordinator.store.write_pending()
        self.assertEqual(self.stored_addresses(data_dir), addresses)
        view = coordinator.registry.view(coordinator.registry.get(ids[0]), coordinator.now())
        self.assertEqual(view["vpn_ip6"], addresses[ids[0]])

    def test_a_changed_prefix_gives_every_node_a_new_address_in_it(self):
        data_dir, ids = self.make_schema_7()
        settled(make_coordinator(self, data_dir=data_dir).store.close())
        before = self.stored_addresses(data_dir)
        coordinator = make_coordinator(self, data_dir=data_dir, subnet6="fd00:aaaa:bbbb:1::/64")
        new_prefix = ipaddress.IPv6Network("fd00:aaaa:bbbb:1::/64")
        after = {i: coordinator.registry.get(i).vpn_ip6 for i in ids}
        self.assertTrue(all(in_prefix(a, new_prefix) for a in after.values()), after)
        self.assertNotEqual(before, after)
        # The old addresses are free again; each node is found by its new one only.
        self.assertIsNone(coordinator.registry.by_vpn_ip(before[ids[0]]))
        self.assertEqual(coordinator.registry.by_vpn_ip(after[ids[0]]).node_id, ids[0])

    def test_a_stored_address_that_is_no_address_is_replaced(self):
        data_dir, ids = self.make_schema_7()
        settled(make_coordinator(self, data_dir=data_dir).store.close())
        db = sqlite3.connect(os.path.join(data_dir, "registry.sqlite3"))
        db.execute("UPDATE nodes SET vpn_ip6 = 'banana' WHERE node_id = ?", (ids[0],))
        db.commit()
        db.close()
        coordinator = make_coordinator(self, data_dir=data_dir)
        self.assertEqual(coordinator.registry.get(ids[0]).vpn_ip6, Ipv6Pool(PREFIX).allocate(ids[0], set()))


class MeshPrefixTests(unittest.TestCase):
    def setUp(self):
        self.data_dir = self.mktemp()

    def store(self):
        store = open_store(self.data_dir, Clock())
        self.addCleanup(store.close)
        return store

    def prefix(self, given, random_bytes=None):
        """As the server's start has it: drawn or read, and kept before serving."""
        store = self.store()
        prefix = mesh_prefix6(store, given) if random_bytes is None else mesh_prefix6(store, given, random_bytes)
        store.write_pending()
        return prefix

    def test_drawn_once_and_kept_across_a_restart(self):
        first = self.prefix(None, lambda n: b"\x12\x34\x56\x78\x9a")
        self.assertEqual((str(first.network), first.drawn, first.replaced), ("fd12:3456:789a::/48", True, None))
        again = self.prefix(None)
        self.assertEqual((again.network, again.drawn), (first.network, False))

    def test_given_overrides_and_is_kept_after_the_option_is_dropped(self):
        drawn = self.prefix(None).network
        given = parse_subnet6("fd00:1:2:3::/64")
        changed = self.prefix(given)
        self.assertEqual((changed.network, changed.replaced, changed.drawn), (given, drawn, False))
        self.assertEqual(self.prefix(given).replaced, None, "the same again changes nothing")
        self.assertEqual(self.prefix(None).network, given)

    def test_an_unusable_kept_prefix_stops_the_server_unless_one_is_given(self):
        store = self.store()
        store.put_meta(SUBNET6_KEY, "2001:db8::/48")
        store.write_pending()
        with self.assertRaises(StoreError) as caught:
            self.prefix(None)
        self.assertIn("give one with --subnet6", str(caught.exception))
        self.assertEqual(str(self.prefix(parse_subnet6("fd00::/48")).network), "fd00::/48")


class OptionTests(unittest.TestCase):
    def options(self, *args: str, env: dict[str, str] | None = None) -> Options:
        unset = ("WIRE_VPN_SUBNET6", "WIRE_DATA_DIR")
        self.patch(os, "environ", {**{k: v for k, v in os.environ.items() if k not in unset}, **(env or {})})
        options = Options()
        options.parseOptions(["--data-dir", short_dir(self), *args])
        return options

    def test_subnet6_from_the_command_line_the_environment_or_the_file(self):
        self.assertIsNone(self.options()["subnet6"], "none given: the one kept")
        self.assertEqual(str(self.options("--subnet6", "fd00:1::/48")["subnet6"]), "fd00:1::/48")
        self.assertEqual(str(self.options(env={"WIRE_VPN_SUBNET6": "fd00:2::/48"})["subnet6"]), "fd00:2::/48")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('subnet6 = "fd00:3::/56"\n')
        self.assertEqual(str(self.options("--config", path)["subnet6"]), "fd00:3::/56")

    def test_a_bad_subnet6_is_a_usage_error_naming_it(self):
        for bad, said in (("2001:db8::/48", "not a unique local prefix"), ("fd00::/32", "/48../64"), ("fc00::/48", "fd00::/8")):
            with self.assertRaises(usage.UsageError, msg=bad) as caught:
                self.options("--subnet6", bad)
            self.assertIn("--subnet6: ", str(caught.exception))
            self.assertIn(said, str(caught.exception))


class BuildCoordinatorTests(unittest.TestCase):
    def start(self, data_dir: str, *args: str):
        options = Options()
        options.parseOptions(["--data-dir", data_dir, "--plain-http", *args])
        coordinator, lock_file = build_coordinator(options, Clock())
        self.addCleanup(lock_file.close)
        self.addCleanup(coordinator.store.close)
        return coordinator, lock_file

    def test_the_servers_prefix_is_drawn_at_first_start_and_kept(self):
        data_dir = short_dir(self)
        coordinator, lock_file = self.start(data_dir)
        prefix = coordinator.registry.pool6.network
        self.assertEqual((prefix.prefixlen, str(prefix)[:2]), (48, "fd"))
        record = coordinator.registry.register(registration_for("web1"), "203.0.113.9", coordinator.now()).record
        settled(coordinator.store.close())
        lock_file.close()
        again, _ = self.start(data_dir)
        self.assertEqual(again.registry.pool6.network, prefix)
        self.assertEqual(again.registry.get(record.node_id).vpn_ip6, record.vpn_ip6)
