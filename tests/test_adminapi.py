"""The remote admin API (/api/v1, wire.server.adminapi) in memory: the
server's real resource tree with the API mounted, on a fake clock and a real
SQLite store, through treq's StubTreq. Every endpoint: its success, its
refusals (no key, bad, expired, revoked, read-only), bad input (a clear 4xx
naming the field, nothing changed), and the same answers as the socket's."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.helpers import settled
from tests.test_policy_server import Mesh
from wire.protocol import MAX_BODY_BYTES
from wire.server.adminapi import AUTH_FAILURE_BURST, AUTH_FAILURE_RATE, FAILURES_LOGGED, Caller, admin_api
from wire.server.adminops import OPERATIONS
from wire.server.adminsocket import socket_site
from wire.server.api import ClientRules, build_root
from wire.server.auth import ACTOR, AuthError, acting_as
from wire.server.ratelimit import RateLimiter

API = "https://vpn.example.org:8787/api/v1"
POLICY = """{
  "tagOwners": {"tag:web": [], "tag:db": []},
  "acls": [{"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]}],
  "tests": [{"src": "web1", "accept": ["db1:5432"], "deny": ["db1:22"]}],
}"""
BROKEN_POLICY = '{"acls": [{"action": "accept", "src": ["tag:nope"], "dst": ["*:*"]}]}'
LAN = "192.168.1.0/24"


class ApiCase(unittest.TestCase):
    def setUp(self):
        self.mesh = Mesh(self)
        self.mesh.enroll("web1", "tag:web")
        self.mesh.enroll("db1", "tag:db")
        self.mesh.coordinator.registry.unique_names = True  # as a server with authentication has it
        self.admin = self.mesh.admin
        self.clock = self.mesh.clock
        self.failures = RateLimiter(AUTH_FAILURE_RATE, AUTH_FAILURE_BURST, self.clock)
        root = build_root(self.mesh.coordinator)
        root.putChild(b"api", admin_api(self.admin, ClientRules(), self.failures))
        self.http = StubTreq(root)
        self.socket = StubTreq(socket_site(self.admin).resource)
        self.key = self.new_key(name="automation")
        self.reader = self.new_key(name="grafana", read_only=True)

    def new_key(self, **options: Any) -> str:
        return settled(self.admin.create_api_key(**options))["token"]

    def call(self, method: str, path: str, body: Any = None, key: str | None = "", headers: dict | None = None) -> tuple[int, dict, Any]:
        """(status, JSON answer, response headers) of one request; ``key`` "" is the read-write key, None no header."""
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key or self.key}"
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()

        async def call():
            response = await self.http.request(method, API + path, data=data, headers=sent)
            return response.code, await response.content(), response.headers

        d = Deferred.fromCoroutine(call())
        self.http.flush()
        self.clock.advance(0)  # a removal's commit waits for the reactor's next turn
        self.http.flush()
        code, content, answered = self.successResultOf(d)
        return code, json.loads(content) if content else {}, answered

    def ok(self, method: str, path: str, body: Any = None, key: str | None = "", headers: dict | None = None) -> dict:
        code, answer, _ = self.call(method, path, body, key, headers)
        self.assertEqual(code, 200, (method, path, answer))
        self.assertIs(answer["ok"], True)
        return answer

    def on_socket(self, method: str, path: str, body: Any = None) -> dict:
        async def call():
            response = await self.socket.request(method, "http://wire-admin" + path, json=body) if body is not None else await self.socket.request(method, "http://wire-admin" + path)
            return response.code, json.loads(await response.content())

        d = Deferred.fromCoroutine(call())
        self.socket.flush()
        code, answer = self.successResultOf(d)
        self.assertEqual(code, 200, answer)
        return answer

    def actors(self, event: str) -> list[str | None]:
        return [e["actor"] for e in settled(self.admin.audit(1000)) if e["event"] == event]

    def tags_of(self, name: str) -> list[str]:
        return self.mesh.coordinator.registry.by_name(name).tags


def key_id(token: str) -> str:
    return token.split("_")[2]


class EveryEndpointTests(ApiCase):
    def test_each_operation_of_the_table_succeeds_and_is_audited_as_the_key(self):
        called = []

        def op(name: str, method: str, path: str, body: Any = None) -> dict:
            called.append(name)
            return self.ok(method, path, body)

        web1 = self.mesh.ids["web1"]
        summary = op("health", "GET", "/health")
        self.assertEqual((summary["total"], summary["online"], summary["offline"], summary["policy_set"]), (2, 2, 0, False))
        listed = op("nodes.list", "GET", "/nodes")
        self.assertEqual([n["node_name"] for n in listed["nodes"]], ["db1", "web1"])
        shown = op("nodes.show", "GET", f"/nodes/{web1}")
        self.assertEqual((shown["node"]["node_name"], shown["routes"]["approved"]), ("web1", []))
        seen = op("mesh", "GET", "/mesh")
        self.assertEqual(([n["node_name"] for n in seen["nodes"]], seen["edges"]), (["db1", "web1"], []))
        self.assertEqual(op("policy.check", "POST", "/policy/check", {"text": POLICY}), {"ok": True, "valid": True, "rules": 1, "tests": 1})
        self.assertEqual(self.admin.policy()["policy_set"], False, "a check changes nothing")
        self.assertEqual(op("policy.set", "PUT", "/policy", {"text": POLICY})["source"], f"apikey:{key_id(self.key)}")
        self.assertEqual(op("policy.get", "GET", "/policy")["text"], POLICY)
        explained = op("policy.explain", "GET", "/policy/explain?src=web1&dst=db1&port=5432")
        self.assertEqual((explained["allowed"], explained["port"], explained["proto"]), (True, 5432, "tcp"))
        self.assertEqual(op("policy.clear", "DELETE", "/policy")["policy_set"], False)
        self.assertEqual([v["version"] for v in op("policy.history", "GET", "/policy/history")["versions"]], [1, 2])
        self.assertEqual(op("policy.rollback", "POST", "/policy/rollback", {"version": 1})["version"], 3)
        self.assertEqual(op("policy.clear", "DELETE", "/policy")["policy_set"], False)  # the rename below would break its tests
        self.assertEqual(op("nodes.rename", "POST", "/nodes/web1/rename", {"new_name": "web2"})["node_name"], "web2")
        self.assertEqual(op("nodes.tag", "PUT", "/nodes/web2/tags", {"tags": ["tag:web", "prod"]})["tags"], ["tag:prod", "tag:web"])
        self.assertEqual(self.tags_of("web2"), ("tag:prod", "tag:web"))

        created = op("keys.create", "POST", "/keys", {"reusable": True, "expires_in": 3600, "tags": ["tag:web"], "note": "ci"})
        self.assertTrue(created["join_command"].startswith("sudo wire up --join wire1."))
        join_id = created["key"]["key_id"]
        self.assertIn(join_id, [k["key_id"] for k in op("keys.list", "GET", "/keys")["keys"]])
        self.assertEqual(op("keys.revoke", "DELETE", f"/keys/{join_id}")["key"]["state"], "revoked")


        self.assertTrue(op("routes.approve", "POST", "/routes/approve", {"node": "db1", "route": LAN})["changed"])
        self.assertEqual([n["approved"] for n in op("routes.list", "GET", "/routes")["nodes"]], [[LAN]])
        self.assertEqual(op("routes.reject", "POST", "/routes/reject", {"node": "db1", "route": LAN})["approved"], [])

        self.assertEqual(op("dns.records.add", "POST", "/dns/records", {"name": "pg", "type": "A", "value": "10.99.0.50"})["added"]["name"], "pg")
        self.assertEqual([r["name"] for r in op("dns.get", "GET", "/dns")["records"]], ["pg"])
        self.assertEqual(op("dns.forward", "PUT", "/dns/forward/corp.example", {"resolvers": ["10.0.0.53"]})["forwarded"]["domain"], "corp.example")
        self.assertEqual(op("dns.unforward", "DELETE", "/dns/forward/corp.example")["unforwarded"]["domain"], "corp.example")
        self.assertEqual(op("dns.nameservers", "PUT", "/dns/nameservers", {"resolvers": ["9.9.9.9"]})["nameservers"], ["9.9.9.9"])
        self.assertEqual(op("dns.records.remove", "DELETE", "/dns/records/pg?type=A")["removed"][0]["value"], "10.99.0.50")

        removed = op("nodes.remove", "DELETE", "/nodes/db1")
        self.assertEqual(removed["removed"], "db1")
        self.assertIsNone(self.mesh.coordinator.registry.by_name("db1"))
        events = op("audit", "GET", "/audit?limit=500")["events"]

        served = {o.name for o in OPERATIONS if o.api is not None}
        self.assertEqual(set(called), served, "every endpoint of the table is exercised here")
        who = f"apikey:{key_id(self.key)}"
        changes = {e["event"]: e["actor"] for e in events if e["event"] not in ("node.enroll", "key.create", "apikey.create") or e["actor"]}
        for event in ("node.rename", "node.tag", "key.create", "key.revoke", "policy.set", "policy.clear", "route.approve", "route.reject",
                      "dns.record.add", "dns.record.remove", "dns.forward.set", "dns.forward.remove", "dns.nameservers", "node.remove"):
            self.assertEqual(changes.get(event), who, event)
        self.assertEqual(self.actors("node.enroll"), [None, None], "the nodes enrolled themselves")

    def test_the_socket_and_the_api_give_the_same_answers(self):
        settled(self.admin.set_policy(POLICY))
        settled(self.admin.add_dns_record("pg", "A", "10.99.0.50"))
        for socket_path, api_path in (("/nodes", "/nodes"), ("/keys", "/keys"), ("/policy", "/policy"), ("/dns", "/dns"), ("/routes", "/routes"), ("/audit", "/audit")):
            self.assertEqual(self.on_socket("GET", socket_path), self.ok("GET", api_path), socket_path)
        history = self.on_socket("POST", "/policy", {"action": "history"})
        self.assertEqual(history, self.ok("GET", "/policy/history"))
        checked = self.on_socket("POST", "/policy", {"action": "check", "text": POLICY})
        self.assertEqual(checked, self.ok("POST", "/policy/check", {"text": POLICY}))
        # A change: the same answer either way; the audit says who.
        by_socket = self.on_socket("POST", "/tag-node", {"node": "web1", "tags": ["tag:a"]})
        by_api = self.ok("PUT", "/nodes/web1/tags", {"tags": ["tag:a"]})
        self.assertEqual({**by_socket, "old_tags": None}, {**by_api, "old_tags": None})
        self.assertEqual((by_socket["old_tags"], by_api["old_tags"]), (["tag:web"], ["tag:a"]))
        self.assertEqual(self.actors("node.tag"), [f"apikey:{key_id(self.key)}", "admin"], "newest first")

    def test_a_trailing_slash_and_head_are_served(self):
        self.assertEqual(self.ok("GET", "/nodes/")["total"], 2)
        code, _, _ = self.call("HEAD", "/nodes")
        self.assertEqual(code, 200)


class AuthenticationTests(ApiCase):
    def refused(self, key: str | None, headers: dict | None = None) -> str:
        before = self.tags_of("web1")
        code, answer, answered = self.call("PUT", "/nodes/web1/tags", {"tags": ["tag:evil"]}, key=key, headers=headers)
        self.assertEqual(code, 401, answer)
        self.assertEqual(answered.getRawHeaders(b"www-authenticate"), [b'Bearer realm="wire"'])
        self.assertEqual(self.tags_of("web1"), before, "nothing changed")
        self.assertEqual(self.actors("node.tag"), [])
        return answer["error"]

    def test_no_key_a_bad_scheme_a_malformed_or_unknown_key_are_401_saying_which(self):
        self.assertIn("no Authorization header", self.refused(None))
        self.assertEqual(self.refused(None, {"Authorization": "Basic dXNlcjpwYXNz"}), "Authorization: use Bearer <API key>")
        self.assertIn("malformed API key", self.refused("wire_ak_nothex_short"))
        self.assertIn("malformed API key", self.refused(self.key + "x"))
        # The right id with another secret, and a well-formed id nobody has.
        self.assertEqual(self.refused(self.key[:-4] + ("AAAA" if not self.key.endswith("AAAA") else "BBBB")), "unknown API key")
        self.assertEqual(self.refused("wire_ak_000000000000_" + "A" * 43), "unknown API key")
        # A node's credential or a join key is not an admin key.
        self.assertIn("malformed API key", self.refused("x" * 43))

    def test_an_expired_key_is_refused(self):
        short = self.new_key(expires_in=60)
        self.assertEqual(self.ok("GET", "/nodes", key=short)["total"], 2)
        self.clock.advance(61)
        self.assertEqual(self.refused(short), f"API key {key_id(short)} has expired")
        listed = {k["key_id"]: k["state"] for k in settled(self.admin.api_keys())["api_keys"]}
        self.assertEqual(listed[key_id(short)], "expired")

    def test_a_revoked_key_is_refused_at_once(self):
        self.assertEqual(self.ok("GET", "/nodes")["total"], 2)
        self.on_socket("POST", "/revoke-apikey", {"key_id": key_id(self.key)})
        self.assertEqual(self.refused(self.key), f"API key {key_id(self.key)} was revoked")
        self.assertEqual(self.actors("apikey.revoke"), ["admin"])

    def test_a_read_only_key_may_only_get(self):
        self.assertEqual(self.ok("GET", "/nodes", key=self.reader)["total"], 2)
        self.assertEqual(self.ok("GET", "/audit", key=self.reader)["events"][0]["event"], "apikey.create")
        before = (self.tags_of("web1"), self.admin.policy()["version"], self.admin.dns()["version"], len(self.admin.keys()["keys"]))
        for operation in OPERATIONS:
            if operation.api is None or not operation.changes:
                continue
            method, path = operation.api
            path = path.replace("{node}", "web1").replace("{key_id}", "k1").replace("{name}", "pg").replace("{domain}", "corp.example")
            code, answer, _ = self.call(method, path, {}, key=self.reader)
            self.assertEqual((code, answer["error"]), (403, f"apikey:{key_id(self.reader)} is read-only: it may only GET"), operation.name)
        after = (self.tags_of("web1"), self.admin.policy()["version"], self.admin.dns()["version"], len(self.admin.keys()["keys"]))
        self.assertEqual(after, before, "nothing changed")

    def test_failed_authentications_are_limited_per_address_and_good_requests_are_not(self):
        for _ in range(3 * AUTH_FAILURE_BURST):
            self.ok("GET", "/nodes")
        for _ in range(AUTH_FAILURE_BURST):
            self.assertEqual(self.call("GET", "/nodes", key="wire_ak_000000000000_" + "A" * 43)[0], 401)
        code, answer, answered = self.call("GET", "/nodes")
        self.assertEqual(code, 429, "even a good key, from an address that keeps guessing")
        self.assertIn("too many failed authentications from 127.0.0.1", answer["error"])
        self.assertEqual(answered.getRawHeaders(b"retry-after"), [b"5"])
        self.clock.advance(1 / AUTH_FAILURE_RATE)
        self.assertEqual(self.ok("GET", "/nodes")["total"], 2)

    def test_refusals_are_logged_a_few_a_minute_never_with_the_key(self):
        root = build_root(self.mesh.coordinator)
        root.putChild(b"api", admin_api(self.admin, ClientRules(), None))  # no limit per address: only the log's
        self.http = StubTreq(root)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        bad = "wire_ak_000000000000_" + "S" * 43
        for _ in range(FAILURES_LOGGED + 5):
            self.assertEqual(self.call("GET", "/nodes", key=bad)[0], 401)
        self.clock.advance(60 / FAILURES_LOGGED)
        self.assertEqual(self.call("GET", "/nodes", key=bad)[0], 401)
        lines = [formatEvent(e) for e in logged if e.get("log_namespace") == "wire.server.adminapi.ApiKeyGate"]
        self.assertEqual(lines[0], "admin API: refused a request from 127.0.0.1: unknown API key")
        self.assertEqual(len(lines), FAILURES_LOGGED + 1, "the burst, and one more as the bucket refills")
        self.assertTrue(lines[-1].endswith("(5 more refusals not logged)"), lines[-1])
        self.assertFalse([line for line in lines if "S" * 43 in line])

    def test_another_kind_of_caller_without_an_authorization_header(self):
        """A CallerSource (what the dashboard's sessions plug in as) names its
        callers in the audit log, may refuse, and never overrides an API key."""

        class Sessions:
            def caller_of(self, request):
                cookie = request.getHeader(b"cookie")
                if cookie is None:
                    return None
                if cookie != b"session=good":
                    raise AuthError("session expired: log in again")
                return Caller("dashboard:s1", read_only=False)

        root = build_root(self.mesh.coordinator)
        root.putChild(b"api", admin_api(self.admin, ClientRules(), self.failures, [Sessions()]))
        self.http = StubTreq(root)
        self.assertEqual(self.ok("PUT", "/nodes/web1/tags", {"tags": ["tag:ui"]}, key=None, headers={"Cookie": "session=good"})["tags"], ["tag:ui"])
        self.assertEqual(self.actors("node.tag"), ["dashboard:s1"])
        code, answer, _ = self.call("GET", "/nodes", key=None, headers={"Cookie": "session=stale"})
        self.assertEqual((code, answer["error"]), (401, "session expired: log in again"))
        self.assertEqual(self.call("GET", "/nodes", key=None)[0], 401)
        code, answer, _ = self.call("GET", "/nodes", key="wire_ak_000000000000_" + "A" * 43, headers={"Cookie": "session=good"})
        self.assertEqual((code, answer["error"]), (401, "unknown API key"), "a bad key is not rescued by a session")

    def test_the_actor_of_a_request_stays_its_own_across_awaits(self):
        waits: list[Deferred] = [Deferred(), Deferred()]
        seen = []

        async def operation(i: int) -> None:
            await waits[i]
            seen.append(ACTOR.get())

        with acting_as("apikey:first"):
            first = Deferred.fromCoroutine(operation(0))
        with acting_as("apikey:second"):
            second = Deferred.fromCoroutine(operation(1))
        self.assertEqual(ACTOR.get(), "")
        waits[1].callback(None)
        waits[0].callback(None)
        self.successResultOf(first), self.successResultOf(second)
        self.assertEqual(seen, ["apikey:second", "apikey:first"])


class BadInputTests(ApiCase):
    def refused(self, method: str, path: str, body: Any, status: int, words: str) -> None:
        state = (self.tags_of("web1"), self.admin.policy()["version"], self.admin.dns()["version"], len(self.admin.keys()["keys"]), len(self.mesh.coordinator.registry))
        code, answer, _ = self.call(method, path, body)
        self.assertEqual(code, status, (method, path, str(body)[:100], answer))
        self.assertIn(words, answer["error"], (method, path, str(body)[:100]))
        after = (self.tags_of("web1"), self.admin.policy()["version"], self.admin.dns()["version"], len(self.admin.keys()["keys"]), len(self.mesh.coordinator.registry))
        self.assertEqual(after, state, f"nothing changed by {method} {path}")

    def test_bad_input_is_a_400_naming_the_field(self):
        for method, path, body, words in (
            ("PUT", "/nodes/web1/tags", {"tags": "tag:web"}, "tags:"),
            ("PUT", "/nodes/web1/tags", {"tags": ["bad tag"]}, "tags"),
            ("PUT", "/nodes/web1/tags", {}, "tags:"),
            ("PUT", "/nodes/web1/tags", {"tags": [], "colour": "red"}, "colour: not a field of nodes.tag"),
            ("POST", "/nodes/web1/rename", {"new_name": "no spaces please"}, "new_name"),
            ("POST", "/nodes/web1/rename", {"new_name": 7}, "new_name: must be a non-empty string"),
            ("POST", "/keys", {"expires_in": -1}, "expires_in: must be a number of seconds"),
            ("POST", "/keys", {"reusable": "yes"}, "reusable: must be true or false"),
            ("POST", "/keys", {"url": "ftp://x"}, "url:"),
            ("POST", "/keys", {"ephemeral_after": 5}, "ephemeral_after: at least 60 s"),
            ("PUT", "/policy", {"text": BROKEN_POLICY}, "tag:nope"),
            ("PUT", "/policy", {"text": 5}, "text: must be a string"),
            ("POST", "/policy/rollback", {"version": 0}, "version: must be a version number"),
            ("GET", "/policy/explain?src=web1&dst=db1&port=http", None, "port: 'http' is not a whole number"),
            ("GET", "/policy/explain?src=web1&dst=db1&port=70000", None, "port: must be 0..65535"),
            ("GET", "/policy/explain?src=web1", None, "dst: must be a non-empty string"),
            ("GET", "/audit?limit=0", None, "limit: must be 1..1000"),
            ("GET", "/audit?limit=1&limit=2", None, "limit: given 2 times"),
            ("GET", "/nodes?verbose=1", None, "verbose: not a field of nodes.list"),
            ("DELETE", "/nodes/web1?node=db1", None, "node: given in the path"),
            ("POST", "/routes/approve", {"node": "db1", "route": "10.99.0.0/24"}, "overlaps the mesh's own subnet"),
            ("POST", "/routes/approve", {"node": "db1", "route": "192.168.1.1/24"}, "route: '192.168.1.1/24' is not a network"),
            ("POST", "/dns/records", {"name": "pg", "type": "A"}, "value: must be a non-empty string"),
            ("PUT", "/dns/forward/corp.example", {"resolvers": "10.0.0.53"}, "resolvers: must be a list of strings"),
            ("PUT", "/nodes/web1/tags", b"{not json", "JSON"),
            ("PUT", "/nodes/web1/tags", b"[1, 2]", "object"),
        ):
            self.refused(method, path, body, 400, words)

    def test_an_oversize_body_is_refused(self):
        self.refused("PUT", "/policy", {"text": " " * (MAX_BODY_BYTES + 1)}, 413, f"{MAX_BODY_BYTES}")

    def test_unknown_things_are_404(self):
        for method, path, body, words in (
            ("GET", "/nodes/nobody", None, "no node 'nobody'"),
            ("POST", "/nodes/nobody/rename", {"new_name": "x"}, "no node 'nobody'"),
            ("PUT", "/nodes/nobody/tags", {"tags": []}, "no node 'nobody'"),
            ("DELETE", "/nodes/nobody", None, "no node 'nobody'"),
            ("DELETE", "/keys/nokey", None, "no join key nokey"),
            ("POST", "/policy/rollback", {"version": 99}, "99"),
            ("DELETE", "/dns/records/nope", None, "no record nope"),
            ("GET", "/nothing/here", None, "no such path: /api/v1/nothing/here"),
            ("GET", "/nodes/web1/tags/more", None, "no such path"),
        ):
            self.refused(method, path, body, 404, words)

    def test_a_wrong_method_is_405_with_the_methods_allowed(self):
        code, answer, answered = self.call("PATCH", "/nodes/web1")
        self.assertEqual(code, 405)
        self.assertIn("PATCH is not allowed on /api/v1/nodes/web1; use GET or DELETE", answer["error"])
        self.assertEqual(answered.getRawHeaders(b"allow"), [b"GET, DELETE"])
        self.assertEqual(self.call("POST", "/health")[0], 405)

    def test_a_name_taken_is_409(self):
        self.refused("POST", "/nodes/web1/rename", {"new_name": "db1"}, 409, "db1")


class OpenApiTests(ApiCase):
    def test_it_needs_no_key_and_describes_every_endpoint_served(self):
        code, document, _ = self.call("GET", "/openapi.json", key=None)
        self.assertEqual((code, document["openapi"]), (200, "3.1.0"))
        described = {
            (method.upper(), path): spec["operationId"]
            for path, methods in document["paths"].items()
            for method, spec in methods.items()
            if spec["operationId"] != "openapi"
        }
        served = {(o.api[0], "/api/v1" + o.api[1]): o.name for o in OPERATIONS if o.api is not None}
        self.assertEqual(described, served)
        tag = document["paths"]["/api/v1/nodes/{node}/tags"]["put"]
        self.assertEqual(tag["parameters"][0]["name"], "node")
        self.assertEqual(tag["requestBody"]["content"]["application/json"]["schema"]["required"], ["tags"])
        explain = document["paths"]["/api/v1/policy/explain"]["get"]
        self.assertEqual([p["name"] for p in explain["parameters"]], ["src", "dst", "port", "proto"])
        self.assertEqual(document["components"]["securitySchemes"]["apiKey"]["scheme"], "bearer")
        # Each path described answers (here: asks for a key), none is a 404 or 405.
        for (method, path), name in described.items():
            concrete = path.replace("{node}", "web1").replace("{key_id}", "k1").replace("{name}", "pg").replace("{domain}", "corp.example")
            self.assertEqual(self.call(method, concrete[len("/api/v1"):], key=None)[0], 401, name)
            self.clock.advance(1 / AUTH_FAILURE_RATE)  # not rate-limited for these failures


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
SERVED = [o for o in OPERATIONS if o.api is not None]


@st.composite
def requests(draw) -> tuple[str, str, Any]:
    """One request to a served operation: its path's parameters and its fields anything at all."""
    operation = draw(st.sampled_from(SERVED))
    method, path = operation.api
    for name in operation.path_params():
        segment = draw(st.sampled_from(["web1", "db1", "nobody", "k1", "10.99.0.1"]) | st.text("abc.-:%é", min_size=1, max_size=12))
        path = path.replace("{" + name + "}", quote(segment, safe=""))
    names = [p.name for p in operation.params] + ["junk"]
    fields = draw(st.dictionaries(st.sampled_from(names), JSON_VALUES, max_size=4))
    if method in ("GET", "DELETE"):
        query = "&".join(f"{quote(k)}={quote(json.dumps(v) if not isinstance(v, str) else v)}" for k, v in fields.items())
        return method, path + (f"?{query}" if query else ""), None
    return method, path, fields


class AnyInputTests(ApiCase):
    @given(requests())
    @settings(max_examples=300)
    def test_any_input_gets_an_answer_or_a_clear_refusal_never_an_internal_error(self, request):
        method, path, body = request
        code, answer, _ = self.call(method, path, body)
        self.assertIn(code, (200, 400, 404, 409), (method, path, body, answer))
        if code != 200:
            self.assertIsInstance(answer["error"], str)
            self.assertNotIn("Traceback", answer["error"])
