"""The access policy on the server: set only whole and valid, versioned and
audited, each node's packet filter in its long-poll answer (only when it
holds another), ``wire admin policy`` over the admin socket, and
``--policy FILE`` with SIGHUP in a real ``twistd wire-server``."""

from __future__ import annotations

import json
import os
import signal

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.helpers import make_coordinator, registration_for, settled
from tests.serverproc import ServerProcess
from tests.test_daemon import eventually
from wire.addressing import AddressPool, parse_subnet
from wire.cli.admin import format_policy_explained, format_policy_history, parse_target
from wire.cli.formatting import Style
from wire.ops import OpError
from wire.policy import PolicyError
from wire.node.netmap import NodeNetmap
from wire.protocol import Cursor, NetmapAnswer
from wire.protocol.filter import NO_FILTER, filter_digest
from wire.server.admin import Admin, build_admin_site
from wire.server.auth import Authority
from wire.server.coordinator import Coordinator
from wire.server.registry import Registry
from wire.web import encode_json

POLICY = """{
  // web may reach the database; ops reach everything
  "groups": {"group:ops": ["ops1"]},
  "acls": [
    {"action": "accept", "src": ["tag:web"], "proto": "tcp", "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["group:ops"], "dst": ["*:*"]},
  ],
  "tests": [{"src": "web1", "accept": ["db1:5432"], "deny": ["db1:22"]}],
}"""


class Mesh:
    def __init__(self, test: unittest.TestCase):
        self.test = test
        self.coordinator = make_coordinator(test)
        self.clock = self.coordinator.clock
        self.authority = Authority(self.coordinator.store, self.clock)
        self.coordinator.authority = self.authority
        self.admin = Admin(self.coordinator, "https://vpn.example.org:8787", "ab" * 32)
        self.ids: dict[str, str] = {}

    def enroll(self, name: str, *tags: str) -> str:
        _, secret = settled(self.authority.create_key(tags=tuple(sorted(tags))))
        d = Deferred.fromCoroutine(self.coordinator.enroll(secret, registration_for(name), "203.0.113.9"))
        result, _ = self.test.successResultOf(d)
        self.ids[name] = result.record.node_id
        return result.record.node_id

    def poll(self, name: str, holds: str | None, cursor: Cursor | None = None) -> dict:
        d = self.coordinator.netmap(str(cursor or Cursor("x", 0)), 0, self.ids[name], holds_filter=holds)
        answer = self.test.successResultOf(d)
        # What goes on the wire is what counts: the spliced bytes must be the merged answer.
        self.test.assertEqual(json.loads(encode_json(answer)), json.loads(json.dumps(dict(answer))))
        return json.loads(encode_json(answer))

    def audit(self, event: str) -> list[str]:
        return [e["detail"] for e in settled(self.authority.audit_log(1000)) if e["event"] == event]


class PolicyBookTests(unittest.TestCase):
    def setUp(self):
        self.mesh = Mesh(self)
        for name, tags in (("web1", ("tag:web",)), ("db1", ("tag:db",)), ("ops1", ())):
            self.mesh.enroll(name, *tags)
        self.book = self.mesh.coordinator.policy

    def test_no_policy_at_first(self):
        self.assertFalse(self.book.active)
        self.assertIsNone(self.book.filter_for(self.mesh.ids["web1"]))
        self.assertEqual(self.mesh.admin.policy()["policy_set"], False)

    def test_a_valid_policy_is_versioned_audited_and_kept(self):
        shown = settled(self.mesh.admin.set_policy(POLICY))
        self.assertEqual((shown["version"], shown["source"], shown["policy_set"]), (1, "admin", True))
        self.assertEqual(self.mesh.audit("policy.set"), ["version 1 (admin), was 0"])
        rules = self.book.filter_for(self.mesh.ids["db1"]) or ()
        self.assertEqual(sorted((r.proto or "any", [p.to_json() for p in r.ports]) for r in rules), [("any", []), ("tcp", [[5432, 5432]])])
        # A new server on the same registry has the same policy in force.
        store = self.mesh.coordinator.store
        registry = Registry(store, AddressPool(parse_subnet("10.99.0.0/16")))
        registry.load(store.load(), self.mesh.clock.seconds())
        again = Coordinator(self.mesh.clock, store, registry, authority=Authority(store, self.mesh.clock))
        self.assertEqual((again.policy.current.version, again.policy.current.text), (1, POLICY))

    def test_an_invalid_policy_changes_nothing_and_says_why(self):
        settled(self.mesh.admin.set_policy(POLICY))
        cases = {
            '{"acls": [}': "line 1, column 11",
            '{"acls": [{"action": "accept", "src": ["tag:web"], "dst": ["nass:80"]}]}': 'unknown node or host "nass"',
            '{"acls": [{"action": "accept", "src": ["*"], "dst": ["db1:70000"]}]}': "70000",
            POLICY.replace('"deny": ["db1:22"]', '"deny": ["db1:5432"]'): "tests[0]",
            '{"acl": []}': "acl",
        }
        for text, said in cases.items():
            with self.assertRaises(PolicyError, msg=text) as caught:
                settled(self.mesh.admin.set_policy(text))
            self.assertIn(said, str(caught.exception))
        self.assertEqual(self.book.current.version, 1, "nothing changed")
        self.assertEqual(self.mesh.admin.check_policy(POLICY), {"valid": True, "rules": 2, "tests": 1})

    def test_a_tag_only_a_join_key_hands_out_may_be_named(self):
        settled(self.mesh.authority.create_key(tags=("tag:ci",)))
        settled(self.mesh.admin.set_policy('{"acls": [{"action": "accept", "src": ["tag:ci"], "dst": ["db1:22"]}]}'))
        with self.assertRaises(PolicyError):
            settled(self.mesh.admin.set_policy('{"acls": [{"action": "accept", "src": ["tag:nobody"], "dst": ["db1:22"]}]}'))

    def test_clear_history_rollback_and_explain(self):
        settled(self.mesh.admin.set_policy(POLICY))
        settled(self.mesh.admin.clear_policy())
        self.assertFalse(self.book.active)
        rolled = settled(self.mesh.admin.rollback_policy(1))
        self.assertEqual((rolled["version"], rolled["source"]), (3, "rollback 1"))
        history = settled(self.mesh.admin.policy_history())
        self.assertEqual([(v["version"], v["source"], v["policy_set"]) for v in history["versions"]], [(1, "admin", True), (2, "clear", False), (3, "rollback 1", True)])
        with self.assertRaises(LookupError):
            settled(self.mesh.admin.rollback_policy(9))
        allowed = self.mesh.admin.explain_policy("web1", "db1", 5432, "tcp")
        self.assertEqual((allowed["allowed"], allowed["rule"]), (True, 0))
        denied = self.mesh.admin.explain_policy("web1", "db1", 22, "tcp")
        self.assertFalse(denied["allowed"])
        self.assertEqual(self.mesh.admin.explain_policy("db1", "web1", 80, "tcp")["allowed"], False, "one way only")
        self.assertEqual(self.mesh.admin.explain_policy("ops1", "web1", 22, "tcp")["allowed"], True)
        text = format_policy_explained(allowed, Style(False))
        self.assertTrue(text.startswith("web1 -> db1:5432/tcp: allowed (accepted by acls[0])"), text)
        self.assertIn("← in force", format_policy_history(history, Style(False)))

    def test_the_admin_socket_refuses_bad_policy_requests_clearly(self):
        http = StubTreq(build_admin_site(self.mesh.admin).resource)

        def post(body) -> tuple[int, dict]:
            async def call():
                response = await http.post("http://wire-admin/policy", json=body)
                return response.code, json.loads(await response.content())

            d = Deferred.fromCoroutine(call())
            http.flush()
            return self.successResultOf(d)

        code, answer = post({"action": "set", "text": "{"})
        self.assertEqual(code, 400)
        self.assertIn("line 1", answer["error"])
        self.assertEqual(post({"action": "set", "text": 5})[0], 400)
        self.assertEqual(post({"action": "launch"})[0], 400)
        self.assertEqual(post({"action": "rollback", "version": "1"})[0], 400)
        self.assertEqual(post({"action": "rollback", "version": 7})[0], 404)
        self.assertEqual(post({"action": "explain", "src": "web1", "dst": "db1", "port": 70000})[0], 400)
        code, answer = post({"action": "set", "text": POLICY})
        self.assertEqual((code, answer["version"]), (200, 1))


class FilterInTheNetmapTests(unittest.TestCase):
    def setUp(self):
        self.mesh = Mesh(self)
        for name, tags in (("web1", ("tag:web",)), ("db1", ("tag:db",)), ("ops1", ())):
            self.mesh.enroll(name, *tags)

    def test_no_policy_no_filter_unless_the_node_holds_one(self):
        self.assertNotIn("filter", self.mesh.poll("db1", None))
        self.assertNotIn("filter", self.mesh.poll("db1", NO_FILTER))
        self.assertIsNone(self.mesh.poll("db1", "0123456789abcdef")["filter"], "a node holding a filter drops it")

    def test_a_node_gets_its_filter_once_and_again_when_it_changes(self):
        settled(self.mesh.admin.set_policy(POLICY))
        answer = self.mesh.poll("db1", None)
        rules = answer["filter"]
        # Peers by name and tag (the node resolves them), each with the rule it comes from.
        self.assertCountEqual(
            rules,
            [
                {"peers": ["ops1"], "rules": [1]},
                {"peers": ["tag:web"], "proto": "tcp", "ports": [[5432, 5432]], "rules": [0]},
            ],
        )
        digest = filter_digest(rules)
        self.assertNotIn("filter", self.mesh.poll("db1", digest), "it has it")
        # web1's filter: only ops may reach it.
        self.assertEqual(len(self.mesh.poll("web1", None)["filter"]), 1)
        # Another web node joins: db1's filter names tag:web, so it stays, and is not sent again.
        self.mesh.enroll("web2", "tag:web")
        self.assertNotIn("filter", self.mesh.poll("db1", digest))
        # db1 retagged web: its own filter changes, and its answer says so.
        self.successResultOf(ensureDeferred(self.mesh.admin.tag_node("db1", ("tag:web",))))
        changed = self.mesh.poll("db1", digest)["filter"]
        self.assertEqual(changed, self.mesh.poll("web1", None)["filter"])
        self.assertNotEqual(filter_digest(changed), digest)

    def test_a_policy_change_wakes_a_waiting_poll_with_the_new_filter(self):
        settled(self.mesh.admin.set_policy(POLICY))
        first = self.mesh.poll("db1", None)
        d = self.mesh.coordinator.netmap(first["cursor"], 30, self.mesh.ids["db1"], holds_filter=filter_digest(first["filter"]))
        self.assertNoResult(d)
        settled(self.mesh.admin.clear_policy())
        self.mesh.clock.advance(0)
        answer = json.loads(encode_json(self.successResultOf(d)))
        self.assertIn("filter", answer)
        self.assertIsNone(answer["filter"])


class WhoWakesTests(unittest.TestCase):
    def test_a_policy_change_wakes_only_the_nodes_whose_view_or_filter_changed(self):
        mesh = Mesh(self)
        for name, tags in (("web1", ("tag:web",)), ("db1", ("tag:db",)), ("ops1", ())):
            mesh.enroll(name, *tags)
        settled(mesh.admin.set_policy(POLICY))
        first = {name: mesh.poll(name, None) for name in mesh.ids}
        waiting = {
            name: mesh.coordinator.netmap(first[name]["cursor"], 30, mesh.ids[name], holds_filter=filter_digest(first[name]["filter"]))
            for name in mesh.ids
        }
        # web may now also reach db's ssh: db's filter changes, no one's view does.
        settled(mesh.admin.set_policy(POLICY.replace('"dst": ["tag:db:5432"]', '"dst": ["tag:db:5432,22"]').replace(', "deny": ["db1:22"]', "")))
        mesh.clock.advance(0)
        db = json.loads(encode_json(self.successResultOf(waiting["db1"])))
        self.assertEqual(sorted(tuple(p) for rule in db["filter"] for p in rule.get("ports", [])), [(22, 22), (5432, 5432)])
        self.assertNoResult(waiting["web1"])
        self.assertNoResult(waiting["ops1"])
        # Their next poll (the same cursor) answers at once, with nothing new.
        mesh.clock.advance(30)
        web = json.loads(encode_json(self.successResultOf(waiting["web1"])))
        self.assertEqual((web["upserts"], web["removals"]), ([], []))
        self.assertNotIn("filter", web)


class ParseTargetTests(unittest.TestCase):
    def test_targets(self):
        self.assertEqual(parse_target("db1:5432"), ("db1", 5432, "tcp"))
        self.assertEqual(parse_target("db1:53/udp"), ("db1", 53, "udp"))
        self.assertEqual(parse_target("db1/icmp"), ("db1", None, "icmp"))
        self.assertEqual(parse_target("10.99.0.7:22"), ("10.99.0.7", 22, "tcp"))
        self.assertEqual(parse_target("[fd7a::1]:22"), ("fd7a::1", 22, "tcp"))
        self.assertEqual(parse_target("fd7a::1"), ("fd7a::1", None, "tcp"))
        for bad in ("db1:http", "db1:70000", "[fd7a::1"):
            with self.assertRaises(OpError, msg=bad):
                parse_target(bad)


class PolicyFileProcessTests(unittest.TestCase):
    """A real twistd wire-server with --policy: at start, on SIGHUP, and a bad file."""

    timeout = 60

    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.policy_path = os.path.abspath(self.mktemp())

    def write(self, text: str) -> None:
        with open(self.policy_path, "w") as f:
            f.write(text)

    async def test_loaded_at_start_reloaded_on_sighup_and_a_bad_file_refused(self):
        self.write('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}')
        server = ServerProcess(self, self.data_dir, extra_args=("--open", f"--policy={self.policy_path}"))
        await server.start()

        def versions() -> list[tuple]:
            import sqlite3

            db = sqlite3.connect(os.path.join(self.data_dir, "registry.sqlite3"))
            try:
                return db.execute("SELECT version, source FROM policies ORDER BY version").fetchall()
            finally:
                db.close()

        self.assertEqual(versions(), [(1, f"file {self.policy_path}")])
        self.write('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:80"]}]}')
        server._transport.signalProcess(signal.SIGHUP)
        await eventually(lambda: len(versions()) == 2, timeout=10)
        self.write('{"acls": [')
        server._transport.signalProcess(signal.SIGHUP)
        await eventually(lambda: "was refused" in server.output, timeout=10)
        self.assertIn("version 2 stays in force", server.output)
        self.assertEqual(len(versions()), 2)
        await server.stop()
        # At start, a bad file stops the server, saying why.
        failing = ServerProcess(self, self.data_dir, extra_args=("--open", f"--policy={self.policy_path}"))
        with self.assertRaises(AssertionError) as caught:
            await failing.start()
        self.assertIn("--policy: the policy in", str(caught.exception))
        await deferLater(reactor, 0, lambda: None)


class VisibilityTests(unittest.TestCase):
    """A node learns only the peers it may reach or that may reach it."""

    def setUp(self):
        self.mesh = Mesh(self)
        for name, tags in (("web1", ("tag:web",)), ("db1", ("tag:db",)), ("ops1", ()), ("plain1", ())):
            self.mesh.enroll(name, *tags)
        settled(self.mesh.admin.set_policy(POLICY))

    def names(self, answer: dict) -> list[str]:
        """The peers in an answer (a node whose class reaches itself is in its own: it is "me" to the node)."""
        me = answer.get("me", {}).get("node_name")
        return sorted(view["node_name"] for view in answer["upserts"] if view["node_name"] != me)

    def test_each_node_sees_its_peers_and_itself_apart(self):
        db = self.mesh.poll("db1", None)
        self.assertEqual(self.names(db), ["ops1", "web1"])
        self.assertEqual(db["me"]["node_name"], "db1")
        self.assertEqual(self.names(self.mesh.poll("web1", None)), ["db1", "ops1"])
        self.assertEqual(self.names(self.mesh.poll("ops1", None)), ["db1", "plain1", "web1"])
        plain = self.mesh.poll("plain1", None)
        self.assertEqual(self.names(plain), ["ops1"], "ops may reach everyone, so plain1 sees ops1")
        # The seed's /status and /peers for a node: the same view.
        shown = self.mesh.coordinator.status(seen_by=self.mesh.ids["db1"])
        self.assertEqual(sorted(n["node_name"] for n in shown["nodes"]), ["db1", "ops1", "web1"])
        self.assertEqual(len(self.mesh.coordinator.status()["nodes"]), 4, "the admin sees all")

    def test_no_relay_between_nodes_that_may_not_be_peers(self):
        plain, db = (self.mesh.coordinator.registry.get(self.mesh.ids[n]) for n in ("plain1", "db1"))
        from wire.server.auth import Forbidden

        refused = ensureDeferred(self.mesh.coordinator.relay_grant(plain.node_id, plain.wg_public_key, db.node_id, caller=plain.node_id))
        self.failureResultOf(refused, Forbidden)
        web = self.mesh.coordinator.registry.get(self.mesh.ids["web1"])
        granted = ensureDeferred(self.mesh.coordinator.relay_grant(web.node_id, web.wg_public_key, db.node_id, caller=web.node_id))
        self.assertIsNotNone(self.successResultOf(granted))

    def test_a_change_of_who_sees_whom_reaches_each_node_as_what_it_gained_and_lost(self):
        """Each node's map (a real NodeNetmap fed the answers) holds exactly
        the peers it may see, after every tag and policy change."""
        maps = {name: NodeNetmap(self.mesh.ids[name]) for name in self.mesh.ids}
        cursors = {name: Cursor("x", 0) for name in self.mesh.ids}

        def sync(name: str) -> dict:
            answer = self.mesh.poll(name, None, cursors[name])
            maps[name].apply(NetmapAnswer.from_json(answer))
            cursors[name] = _cursor(answer["cursor"])
            return answer

        def held(name: str) -> list[str]:
            return sorted(p.node_name for p in maps[name].peers.values())

        for name in maps:
            sync(name)
        self.assertEqual(held("db1"), ["ops1", "web1"])
        self.assertEqual(held("plain1"), ["ops1"])
        self.assertEqual(maps["db1"].me.node_name if maps["db1"].me else None, "db1")
        # plain1 becomes a web node: db1 gains it, in a delta.
        self.successResultOf(Deferred.fromCoroutine(self.mesh.admin.tag_node("plain1", ("tag:web",))))
        answer = sync("db1")
        self.assertFalse(answer["full"])
        self.assertEqual(held("db1"), ["ops1", "plain1", "web1"])
        self.assertEqual(held("plain1"), ["ops1"], "not synced yet")
        # web1 loses its tag: db1 loses it (a removal), and so on for everyone.
        self.successResultOf(Deferred.fromCoroutine(self.mesh.admin.tag_node("web1", ())))
        answer = sync("db1")
        self.assertIn(self.mesh.ids["web1"], answer["removals"])
        self.assertEqual(held("db1"), ["ops1", "plain1"])
        # plain1 has not polled since before both changes: its whole view, once.
        self.assertTrue(sync("plain1")["full"])
        self.assertEqual(held("plain1"), ["db1", "ops1"])
        # No policy: every node sees every node again.
        settled(self.mesh.admin.clear_policy())
        for name in maps:
            sync(name)
            self.assertEqual(held(name), sorted(set(maps) - {name}), name)
        # A policy again (its test would now fail: web1 has no tag): views shrink, told as removals.
        with self.assertRaises(PolicyError):
            settled(self.mesh.admin.set_policy(POLICY))
        untested = POLICY.replace('  "tests": [{"src": "web1", "accept": ["db1:5432"], "deny": ["db1:22"]}],\n', "")
        self.assertNotEqual(untested, POLICY)
        settled(self.mesh.admin.set_policy(untested))
        answer = sync("web1")
        self.assertFalse(answer["full"])
        self.assertEqual(held("web1"), ["ops1"], "untagged web1: only ops reaches it")


def _cursor(text: str) -> Cursor:
    epoch, _, serial = text.rpartition(":")
    return Cursor(epoch, int(serial))


class RemovedWhileWaitingTests(unittest.TestCase):
    def test_a_node_removed_while_its_poll_waits_gets_an_answer_and_no_one_breaks(self):
        mesh = Mesh(self)
        for name, tags in (("web1", ("tag:web",)), ("db1", ("tag:db",)), ("ops1", ())):
            mesh.enroll(name, *tags)
        settled(mesh.admin.set_policy(POLICY))
        first = {name: mesh.poll(name, None) for name in ("web1", "db1")}
        waiting = {
            name: mesh.coordinator.netmap(first[name]["cursor"], 30, mesh.ids[name], holds_filter=filter_digest(first[name]["filter"]))
            for name in first
        }
        removed = Deferred.fromCoroutine(mesh.admin.remove_node("web1"))
        mesh.clock.advance(1)
        self.successResultOf(removed)
        db = json.loads(encode_json(self.successResultOf(waiting["db1"])))
        self.assertIn(mesh.ids["web1"], db["removals"])
        gone = json.loads(encode_json(self.successResultOf(waiting["web1"])))
        self.assertEqual(gone["upserts"], [], "a removed node sees no one")


class ConcurrentPolicyTests(unittest.TestCase):
    def test_two_versions_set_at_once_are_numbered_one_after_the_other(self):
        # A SIGHUP reload and `wire admin policy set` together.
        mesh = Mesh(self)
        for name, tags in (("web1", ("tag:web",)), ("db1", ("tag:db",)), ("ops1", ())):
            mesh.enroll(name, *tags)
        book = mesh.coordinator.policy
        store = mesh.coordinator.store
        real = store.transaction
        held: list = []

        def slow_transaction(writes):
            d: Deferred = Deferred()
            held.append((d, writes))
            return d

        store.transaction = slow_transaction  # type: ignore[method-assign]
        first = Deferred.fromCoroutine(book.set(POLICY, "admin", mesh.coordinator.audit))
        second = Deferred.fromCoroutine(book.clear(mesh.coordinator.audit))
        while held:
            d, writes = held.pop(0)
            real(writes).chainDeferred(d)
        self.assertEqual((self.successResultOf(first).version, self.successResultOf(second).version), (1, 2))
        self.assertEqual(book.current.version, 2)
