"""Routes beyond the mesh on the server: advertised routes recorded from
registrations, approvals (the admin's and the policy's autoApprovers) kept
across re-registration, restart and migration, one primary per prefix with
failover when it goes offline, the netmap's ``routes`` and ``exit_node``,
``wire admin routes`` over the admin socket and the CLI, and a real
``twistd wire-server``."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.helpers import body_for, make_coordinator, registration_for, settled
from tests.serverproc import ServerProcess
from wire.admin_ops import AdminOps
from wire.cli.admin import format_route_changed, format_routes
from wire.cli.formatting import Style
from wire.cli.parser import build_parser, parse
from wire.client import CoordinationClient, make_http_client
from wire.jointoken import decode_join_token
from wire.protocol import Cursor, NetmapAnswer, PeerView, ProtocolError, RegisterOutcome
from wire.server.admin import Admin, RouteRefused, build_admin_site
from wire.server.api import build_root
from wire.server.auth import Authority
from wire.server.store import open_store
from wire.web import encode_json

LAN = "192.168.1.0/24"


class RouteMesh:
    """A coordinator in memory with authentication and an admin, on a fake clock."""

    def __init__(self, test: unittest.TestCase, data_dir: str | None = None, **registry_options):
        self.test = test
        self.data_dir = data_dir or test.mktemp()
        self.coordinator = make_coordinator(test, data_dir=self.data_dir, **registry_options)
        self.clock = self.coordinator.clock
        self.registry = self.coordinator.registry
        self.authority = Authority(self.coordinator.store, self.clock)
        self.coordinator.authority = self.authority
        self.admin = Admin(self.coordinator, "https://vpn.example.org:8787", "ab" * 32)
        self.ids: dict[str, str] = {}

    def enroll(self, name: str, routes: tuple[str, ...] = (), tags: tuple[str, ...] = ()) -> str:
        _, secret = settled(self.authority.create_key(tags=tags))
        registration = registration_for(name, advertise_routes=list(routes))
        d = Deferred.fromCoroutine(self.coordinator.enroll(secret, registration, "203.0.113.9"))
        result, _ = self.test.successResultOf(d)
        self.ids[name] = result.record.node_id
        return result.record.node_id

    def register(self, name: str, routes: tuple[str, ...] = ()):
        registration = registration_for(name, advertise_routes=list(routes))
        d = Deferred.fromCoroutine(self.coordinator.register(registration, "203.0.113.9", self.ids.get(name)))
        self.clock.advance(0)  # the group commit
        return self.test.successResultOf(d)

    def record(self, name: str):
        return self.registry.get(self.ids[name])

    def poll(self, name: str, cursor: str | None = None) -> dict:
        d = self.coordinator.netmap(cursor or str(Cursor("x", 0)), 0, self.ids[name])
        return json.loads(encode_json(self.test.successResultOf(d)))

    def views(self, answer: dict) -> dict[str, dict]:
        return {view["node_name"]: view for view in answer["upserts"]}

    def audit(self, event: str) -> list[str]:
        return [e["detail"] for e in settled(self.authority.audit_log(1000)) if e["event"] == event]


class AdvertisedRoutesTests(unittest.TestCase):
    def setUp(self):
        self.mesh = RouteMesh(self)

    def test_a_registration_records_them_and_a_change_is_a_netmap_change(self):
        self.mesh.enroll("router1", (LAN,))
        self.assertEqual(self.mesh.record("router1").advertised_routes, (LAN,))
        serial = self.mesh.registry.changes.serial
        self.assertIs(self.mesh.register("router1", (LAN,)).outcome, RegisterOutcome.HEARTBEAT)
        self.assertEqual(self.mesh.registry.changes.serial, serial)
        self.assertIs(self.mesh.register("router1", (LAN, "10.1.0.0/16")).outcome, RegisterOutcome.CHANGED)
        self.assertGreater(self.mesh.registry.changes.serial, serial)
        self.assertEqual(self.mesh.record("router1").advertised_routes, ("10.1.0.0/16", LAN))

    def test_a_route_over_the_mesh_subnet_is_refused_and_nothing_is_stored(self):
        for route in ("10.99.0.0/24", "10.0.0.0/8"):
            _, secret = settled(self.mesh.authority.create_key())
            d = Deferred.fromCoroutine(self.mesh.coordinator.enroll(secret, registration_for("bad", advertise_routes=[route]), "203.0.113.9"))
            self.assertEqual(
                str(self.failureResultOf(d, ProtocolError).value),
                f"advertise_routes: {route} overlaps the mesh's own subnet 10.99.0.0/16; advertise the networks beside it",
            )
        self.assertIsNone(self.mesh.registry.by_name("bad"))
        self.mesh.enroll("exit1", ("0.0.0.0/0", "::/0"))  # an exit holds the mesh, and is meant to

    def test_over_http_the_overlap_is_a_400_naming_it(self):
        coordinator = make_coordinator(self)
        http = StubTreq(build_root(coordinator))

        async def call():
            body = body_for("router1", advertise_routes=["10.99.7.0/24", LAN])
            response = await http.post("http://wire.test/register", data=json.dumps(body).encode())
            return response.code, json.loads(await response.content())

        d = Deferred.fromCoroutine(call())
        coordinator.clock.advance(0)
        http.flush()
        code, answer = self.successResultOf(d)
        self.assertEqual(code, 400)
        self.assertIn("10.99.7.0/24 overlaps the mesh's own subnet 10.99.0.0/16", answer["error"])
        self.assertEqual(len(coordinator.registry), 0)


class ApprovalTests(unittest.TestCase):
    def setUp(self):
        self.mesh = RouteMesh(self)
        self.mesh.enroll("router1", (LAN, "0.0.0.0/0"))
        self.mesh.enroll("laptop")

    def test_only_approved_routes_reach_peers(self):
        router = self.mesh.views(self.mesh.poll("laptop"))["router1"]
        self.assertNotIn("routes", router)
        self.assertNotIn("exit_node", router)
        shown = settled(self.mesh.admin.approve_route("router1", LAN))
        self.assertEqual((shown["changed"], shown["primary"], shown["approved"]), (True, [LAN], [LAN]))
        router = self.mesh.views(self.mesh.poll("laptop"))["router1"]
        self.assertEqual(router["routes"], [LAN])
        self.assertNotIn("exit_node", router)
        settled(self.mesh.admin.approve_route("router1", "0.0.0.0/0"))
        router = self.mesh.views(self.mesh.poll("laptop"))["router1"]
        self.assertEqual((router["routes"], router["exit_node"]), ([LAN], True), "an exit is never among routes")
        peer = PeerView.from_json(router)
        self.assertEqual((peer.routes, peer.exit_node), ((LAN,), True))
        self.assertEqual(self.mesh.audit("route.approve"), [f"node router1 ({self.mesh.ids['router1']}): 0.0.0.0/0", f"node router1 ({self.mesh.ids['router1']}): {LAN}"])

    def test_an_approval_reaches_a_waiting_poll_as_a_delta(self):
        first = self.mesh.poll("laptop")
        d = self.mesh.coordinator.netmap(first["cursor"], 20, self.mesh.ids["laptop"])
        self.assertNoResult(d)
        settled(self.mesh.admin.approve_route("router1", LAN))
        self.mesh.clock.advance(0)
        answer = NetmapAnswer.from_json(json.loads(encode_json(self.successResultOf(d))))
        self.assertEqual([(p.node_name, p.routes) for p in answer.upserts], [("router1", (LAN,))])

    def test_approval_survives_re_registration_and_restart_and_outlives_the_advertisement(self):
        settled(self.mesh.admin.approve_route("router1", LAN))
        self.mesh.register("router1", ("10.1.0.0/16",))  # stops advertising LAN
        record = self.mesh.record("router1")
        self.assertEqual((record.approved_routes, record.served_routes), ((LAN,), ()))
        self.assertNotIn("routes", self.mesh.views(self.mesh.poll("laptop"))["router1"], "no longer served")
        self.mesh.register("router1", (LAN,))
        self.assertEqual(self.mesh.views(self.mesh.poll("laptop"))["router1"]["routes"], [LAN], "served again")
        settled(self.mesh.coordinator.store.close())
        again = RouteMesh(self, data_dir=self.mesh.data_dir)
        record = again.registry.get(self.mesh.ids["router1"])
        self.assertEqual((record.advertised_routes, record.approved_routes), ((LAN,), (LAN,)))
        self.assertEqual(again.registry.routes.primary(LAN), record.node_id)

    def test_reject_unapproves_and_is_audited(self):
        settled(self.mesh.admin.approve_route("router1", LAN))
        shown = settled(self.mesh.admin.reject_route("router1", LAN))
        self.assertEqual((shown["approved"], shown["primary"]), ([], []))
        self.assertNotIn("routes", self.mesh.views(self.mesh.poll("laptop"))["router1"])
        self.assertEqual(self.mesh.audit("route.reject"), [f"node router1 ({self.mesh.ids['router1']}): {LAN}"])
        with self.assertRaises(LookupError):
            settled(self.mesh.admin.reject_route("router1", LAN))

    def test_approving_twice_changes_nothing_and_a_route_may_be_approved_before_it_is_advertised(self):
        settled(self.mesh.admin.approve_route("router1", LAN))
        self.assertFalse(settled(self.mesh.admin.approve_route("router1", LAN))["changed"])
        self.assertEqual(len(self.mesh.audit("route.approve")), 1)
        early = settled(self.mesh.admin.approve_route("laptop", "172.16.0.0/12"))
        self.assertEqual((early["approved"], early["primary"]), (["172.16.0.0/12"], []))
        self.assertEqual(format_route_changed(early, Style(False)), "172.16.0.0/12 approved for laptop; served once laptop advertises it")


class FailoverTests(unittest.TestCase):
    """Two routers for one prefix on a fake clock: the primary stays while
    online; once the offline sweep takes it offline the other is primary in
    the same sweep, a netmap change of both."""

    OFFLINE_AFTER = 6.0

    def setUp(self):
        self.mesh = RouteMesh(self, offline_after=self.OFFLINE_AFTER)
        for name in ("router1", "router2"):
            self.mesh.enroll(name, (LAN,))
            settled(self.mesh.admin.approve_route(name, LAN))
        self.mesh.enroll("laptop")

    def beat(self, *names: str) -> None:
        for name in names:
            self.mesh.registry.seen(self.mesh.ids[name], self.mesh.clock.seconds())

    def test_the_standby_takes_over_within_offline_after_plus_a_sweep(self):
        registry = self.mesh.registry
        self.assertEqual(registry.routes.primary(LAN), self.mesh.ids["router1"])
        cursor = self.mesh.poll("laptop")["cursor"]
        died_at = self.mesh.clock.seconds()
        took_over = None
        for _ in range(20):  # router1 is silent from now on; the sweep runs every second
            self.mesh.clock.advance(1)
            self.beat("router2", "laptop")
            self.mesh.coordinator.sweep()
            if registry.routes.primary(LAN) == self.mesh.ids["router2"]:
                took_over = self.mesh.clock.seconds()
                break
        self.assertIsNotNone(took_over)
        self.assertLessEqual(took_over - died_at, self.OFFLINE_AFTER + 1)
        views = self.mesh.views(self.mesh.poll("laptop", cursor))
        self.assertEqual(set(views), {"router1", "router2"}, "a change of both")
        self.assertEqual((views["router1"]["online"], "routes" in views["router1"], views["router2"]["routes"]), (False, False, [LAN]))
        # router1 is back: router2 stays primary (no flapping).
        self.beat("router1")
        self.assertEqual(registry.routes.primary(LAN), self.mesh.ids["router2"])

    def test_a_router_leaving_or_removed_hands_over_at_once(self):
        router1 = self.mesh.record("router1")
        self.mesh.coordinator.leave(router1.node_id, router1.wg_public_key, router1.node_id)
        self.assertEqual(self.mesh.registry.routes.primary(LAN), self.mesh.ids["router2"])
        removed = Deferred.fromCoroutine(self.mesh.admin.remove_node("router2"))
        self.mesh.clock.advance(0)
        self.successResultOf(removed)
        self.assertEqual(self.mesh.registry.routes.primary(LAN), router1.node_id, "the last primary keeps it, offline")

    def test_a_heartbeating_long_poll_comes_back_within_a_third_of_offline_after(self):
        cursor = self.mesh.poll("laptop")["cursor"]
        d = self.mesh.coordinator.netmap(cursor, 25, self.mesh.ids["laptop"])
        self.mesh.clock.advance(self.OFFLINE_AFTER / 3 - 1)
        self.assertNoResult(d)
        self.mesh.clock.advance(2)  # waits end on whole seconds
        self.successResultOf(d)


POLICY = """{
  "groups": {"group:routers": ["router2"]},
  "tagOwners": {"tag:router": [], "tag:exit": []},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "autoApprovers": {
    "routes": {"192.168.0.0/16": ["tag:router"], "10.1.0.0/16": ["group:routers"]},
    "exitNode": ["tag:exit"],
  },
}"""


class AutoApproverTests(unittest.TestCase):
    def setUp(self):
        self.mesh = RouteMesh(self)
        self.mesh.enroll("router2", ("10.1.0.0/16",))
        settled(self.mesh.admin.set_policy(POLICY))

    def test_at_enrollment_a_matching_node_has_contained_routes_approved(self):
        self.mesh.enroll("router1", (LAN, "172.16.0.0/12", "0.0.0.0/0"), tags=("tag:router",))
        self.assertEqual(self.mesh.record("router1").approved_routes, (LAN,), "172.16/12 is not inside, exits need exitNode")
        self.mesh.enroll("other", (LAN,))
        self.assertEqual(self.mesh.record("other").approved_routes, ())
        self.mesh.enroll("exit1", ("0.0.0.0/0", "::/0"), tags=("tag:exit",))
        self.assertEqual(self.mesh.record("exit1").approved_routes, ("0.0.0.0/0", "::/0"))
        self.assertTrue(self.mesh.views(self.mesh.poll("other"))["exit1"]["exit_node"])

    def test_a_policy_change_approves_what_nodes_already_advertise(self):
        self.assertEqual(self.mesh.record("router2").approved_routes, ("10.1.0.0/16",), "by group, when the policy was set")
        self.mesh.clock.advance(0)
        reopened = open_store(self.mesh.data_dir, self.mesh.clock)
        self.addCleanup(reopened.close)
        stored = {r.node_name: r for r in reopened.load()}
        self.assertEqual(stored["router2"].approved_routes, ("10.1.0.0/16",), "made durable")

    def test_a_tag_change_approves_and_the_policy_s_approvals_cannot_be_rejected(self):
        self.mesh.enroll("nas", (LAN,))
        self.assertEqual(self.mesh.record("nas").approved_routes, ())
        self.successResultOf(Deferred.fromCoroutine(self.mesh.admin.tag_node("nas", ("tag:router",))))
        self.assertEqual(self.mesh.record("nas").approved_routes, (LAN,))
        with self.assertRaises(RouteRefused) as caught:
            settled(self.mesh.admin.reject_route("nas", LAN))
        self.assertIn("approved by the access policy's autoApprovers", str(caught.exception))
        listed = {n["node_name"]: n for n in self.mesh.admin.routes()["nodes"]}
        self.assertEqual(listed["nas"]["auto_approved"], [LAN])
        self.assertIn("primary (autoApprovers)", format_routes(self.mesh.admin.routes(), Style(False)))

    def test_a_re_registration_advertising_a_new_route_has_it_approved(self):
        self.mesh.enroll("router1", (LAN,), tags=("tag:router",))
        self.mesh.register("router1", (LAN, "192.168.2.0/24", "172.16.0.0/12"))
        self.assertEqual(self.mesh.record("router1").approved_routes, (LAN, "192.168.2.0/24"))

    def test_at_start_the_policy_in_force_approves_what_was_not_saved(self):
        self.mesh.enroll("router1", (LAN,), tags=("tag:router",))
        settled(self.mesh.coordinator.store.close())
        db = sqlite3.connect(os.path.join(self.mesh.data_dir, "registry.sqlite3"))
        db.execute("UPDATE nodes SET approved_routes = ''")  # as after a crash before the commit
        db.commit()
        db.close()
        again = RouteMesh(self, data_dir=self.mesh.data_dir)
        self.assertEqual(again.registry.get(self.mesh.ids["router1"]).approved_routes, (LAN,))
        self.assertEqual(again.registry.routes.primary(LAN), self.mesh.ids["router1"])
        self.assertIn((LAN,), settled(again.coordinator.store.query("SELECT approved_routes FROM nodes")), "and written")

    def test_approvals_are_kept_when_the_policy_no_longer_makes_them(self):
        settled(self.mesh.admin.clear_policy())
        self.assertEqual(self.mesh.record("router2").approved_routes, ("10.1.0.0/16",))
        settled(self.mesh.admin.reject_route("router2", "10.1.0.0/16"))  # now the admin's to take back
        self.assertEqual(self.mesh.record("router2").approved_routes, ())


class AdminSocketTests(unittest.TestCase):
    def setUp(self):
        self.mesh = RouteMesh(self)
        self.mesh.enroll("router1", (LAN,))
        self.http = StubTreq(build_admin_site(self.mesh.admin).resource)

    def call(self, method: str, body: dict | None = None) -> tuple[int, dict]:
        async def call():
            if method == "GET":
                response = await self.http.get("http://wire-admin/routes")
            else:
                response = await self.http.post("http://wire-admin/routes", json=body)
            return response.code, json.loads(await response.content())

        d = Deferred.fromCoroutine(call())
        self.http.flush()
        return self.successResultOf(d)

    def test_list_approve_reject(self):
        code, listed = self.call("GET")
        self.assertEqual((code, [(n["node_name"], n["advertised"], n["approved"]) for n in listed["nodes"]]), (200, [("router1", [LAN], [])]))
        code, approved = self.call("POST", {"action": "approve", "node": "router1", "route": LAN})
        self.assertEqual((code, approved["primary"], approved["online"]), (200, [LAN], True))
        code, rejected = self.call("POST", {"action": "reject", "node": self.mesh.ids["router1"], "route": LAN})
        self.assertEqual((code, rejected["approved"]), (200, []))

    def test_refusals_are_clear(self):
        cases = [
            ({"action": "approve", "node": "router1", "route": "192.168.1.1/24"}, 400, "route: '192.168.1.1/24' is not a network"),
            ({"action": "approve", "node": "router1", "route": "10.99.0.0/24"}, 400, "overlaps the mesh's own subnet 10.99.0.0/16"),
            ({"action": "approve", "node": "nobody", "route": LAN}, 404, "no node 'nobody'"),
            ({"action": "reject", "node": "router1", "route": LAN}, 404, f"{LAN} is not approved for router1"),
            ({"action": "launch", "node": "router1", "route": LAN}, 400, "action: must be approve or reject"),
            ({"action": "approve", "node": "router1"}, 400, "route: must be a non-empty string"),
        ]
        for body, status, message in cases:
            code, answer = self.call("POST", body)
            self.assertEqual(code, status, body)
            self.assertIn(message, answer["error"], body)


class CliTests(unittest.TestCase):
    def test_the_commands_parse(self):
        parser = build_parser()
        args = parse(parser, ["admin", "routes", "approve", "router1", LAN])
        self.assertEqual((args.topic, args.action, args.node, args.route), ("routes", "approve", "router1", LAN))
        args = parse(parser, ["admin", "routes", "list", "--json"])
        self.assertEqual((args.action, args.json), ("list", True))
        self.assertEqual(parse(parser, ["admin", "routes", "reject", "r", "0.0.0.0/0"]).action, "reject")

    def test_the_listing_says_what_each_route_does(self):
        node = {"node_name": "router1", "node_id": "x", "vpn_ip": "10.99.0.5", "online": True, "exit_node": True, "auto_approved": []}
        result = {"nodes": [
            dict(node, advertised=[LAN, "0.0.0.0/0", "10.2.0.0/16"], approved=[LAN, "0.0.0.0/0", "172.16.0.0/12"], primary=[LAN]),
            dict(node, node_name="router2", online=False, advertised=[LAN], approved=[LAN], primary=[], exit_node=False),
        ]}
        self.assertEqual(format_routes(result, Style(False)).splitlines(), [
            "  NODE     STATUS   ROUTE           ADVERTISED  APPROVED  SERVING",
            "  router1  online   0.0.0.0/0       yes         yes       exit node",
            "  router1  online   10.2.0.0/16     yes         no        awaiting approval (wire admin routes approve)",
            "  router1  online   172.16.0.0/12   no          yes       approved, not advertised",
            "  router1  online   192.168.1.0/24  yes         yes       primary",
            "  router2  offline  192.168.1.0/24  yes         yes       standby",
        ])
        self.assertIn("no node advertises routes", format_routes({"nodes": []}, Style(False)))


class MigrationTests(unittest.TestCase):
    def test_a_schema_6_registry_gains_the_route_columns_and_keeps_its_nodes(self):
        data_dir = self.mktemp()
        coordinator = make_coordinator(self, data_dir=data_dir)
        coordinator.registry.register(registration_for("web1"), "203.0.113.9", coordinator.now())
        settled(coordinator.store.close())
        db = sqlite3.connect(os.path.join(data_dir, "registry.sqlite3"))
        db.execute("ALTER TABLE nodes DROP COLUMN approved_routes")
        db.execute("ALTER TABLE nodes DROP COLUMN advertised_routes")
        db.execute("PRAGMA user_version = 6")
        db.commit()
        db.close()
        mesh = RouteMesh(self, data_dir=data_dir)
        self.assertEqual(settled(mesh.coordinator.store.query("PRAGMA user_version"))[0][0], 13)
        (record,) = mesh.registry.records()
        self.assertEqual((record.node_name, record.advertised_routes, record.approved_routes), ("web1", (), ()))
        settled(mesh.admin.approve_route("web1", LAN))
        self.assertEqual(settled(mesh.coordinator.store.query("SELECT approved_routes FROM nodes")), [(LAN,)])


class RealServerTests(unittest.TestCase):
    """Against ``twistd wire-server``: a router enrolls advertising a LAN, the
    admin approves it over the socket, a peer's netmap carries it, and the
    approval survives ``kill -9``."""

    timeout = 60

    async def test_an_approved_route_reaches_a_peer_and_survives_kill_9(self):
        data_dir = tempfile.mkdtemp(prefix="wire-routes-")  # UNIX socket paths are short
        self.addCleanup(shutil.rmtree, data_dir, True)
        server = ServerProcess(self, data_dir)
        await server.start()
        admin = AdminOps(reactor, data_dir)
        http = make_http_client(reactor, persistent=False, tls_fingerprint=server.fingerprint)
        nodes = {}
        for name, routes in (("router1", [LAN]), ("laptop", [])):
            join = decode_join_token((await admin.create_key())["token"])
            enrolled = await CoordinationClient(http, server.url).enroll(registration_for(name, advertise_routes=routes), join.secret)
            nodes[name] = CoordinationClient(http, server.url, enrolled.credential)
        approved = await admin.route_action("approve", "router1", LAN)
        self.assertEqual(approved["primary"], [LAN])
        answer = await nodes["laptop"].netmap(str(Cursor("x", 0)), 0)
        self.assertEqual({p.node_name: p.routes for p in answer.upserts}["router1"], (LAN,))
        await server.kill()
        restarted = ServerProcess(self, data_dir, port=server.port)
        await restarted.start()
        listed = await AdminOps(reactor, data_dir).routes()
        self.assertEqual([(n["node_name"], n["approved"], n["primary"]) for n in listed["nodes"]], [("router1", [LAN], [LAN])])
        await restarted.stop()
