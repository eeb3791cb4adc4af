"""The dashboard's server side in memory: login links, sessions, CSRF,
security headers and assets (wire.server.dashboard), and the mesh view it
draws (wire.server.meshview)."""

from __future__ import annotations

import json
import os
import re

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource

from tests.helpers import key_for, make_coordinator, registration_for, settled
from wire.protocol import PathMode
from wire.protocol.report import NodeReport, PeerReport
from wire.server import dashboard
from wire.server.auth import ACTOR, AuthError, Caller, Forbidden
from wire.server.store import StoreError
from wire.server.dashboard import ASSETS, COOKIE, CSP, LINK_LIFETIME, SESSION_LIFETIME, DashboardSessions, login_url
from wire.server import reports as server_reports
from wire.server.meshview import COALESCE, MAX_WAIT, mesh_view


JSON = {b"content-type": [b"application/json"]}


class DashboardTestCase(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.sessions = DashboardSessions(self.clock)
        self.audited: list[tuple[str, str, str]] = []
        self.audit_fails = False
        root = Resource()
        root.putChild(b"ui", dashboard.dashboard(self.sessions, self.note))
        self.http = StubTreq(root)

    async def note(self, event, detail):
        if self.audit_fails:
            raise StoreError("the database is away")
        self.audited.append((event, detail, ACTOR.get()))

    async def get(self, path, cookie=None):
        headers = {b"cookie": [cookie.encode()]} if cookie else {}
        response = await self.http.get(f"https://wire.test{path}", headers=headers)
        return response, await response.content()

    async def log_in(self, token=None):
        token = token or self.sessions.make_link()[0]
        response = await self.http.post("https://wire.test/ui/session", data=json.dumps({"token": token}).encode(), headers=JSON)
        return response, json.loads(await response.content())

    async def cookie(self):
        response, answer = await self.log_in()
        self.assertEqual(response.code, 200, answer)
        (set_cookie,) = response.headers.getRawHeaders(b"set-cookie")
        return set_cookie.decode().split(";")[0]


class LoginTests(DashboardTestCase):
    async def test_a_link_works_once_and_sets_a_strict_cookie(self):
        token, expires = self.sessions.make_link()
        self.assertEqual(expires, self.clock.seconds() + LINK_LIFETIME)
        response, answer = await self.log_in(token)
        self.assertEqual(response.code, 200, answer)
        (set_cookie,) = response.headers.getRawHeaders(b"set-cookie")
        flags = {part.strip().lower() for part in set_cookie.decode().split(";")}
        self.assertTrue(any(f.startswith(COOKIE.lower() + "=") for f in flags), flags)
        self.assertTrue({"httponly", "secure", "samesite=strict", f"max-age={int(SESSION_LIFETIME)}"} <= flags, flags)
        again, answer = await self.log_in(token)
        self.assertEqual(again.code, 403)
        self.assertIn("used already, expired, or mistyped", answer["error"])
        ((event, detail, actor),) = self.audited
        self.assertEqual((event, actor), ("dashboard.login", "dashboard:" + detail.split()[1].rstrip(",")))

    async def test_a_login_that_cannot_be_audited_is_refused(self):
        token, _ = self.sessions.make_link()
        self.audit_fails = True
        response, answer = await self.log_in(token)
        self.assertEqual(response.code, 503, answer)
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        self.assertEqual(self.sessions._sessions, {})

    async def test_a_link_expires_after_ten_minutes(self):
        token, _ = self.sessions.make_link()
        self.clock.advance(LINK_LIFETIME + 1)
        response, _ = await self.log_in(token)
        self.assertEqual(response.code, 403)

    async def test_bad_tokens_are_clear_errors(self):
        for body in (b"", b"[1]", b'{"token": 5}', b'{"token": "short"}', json.dumps({"token": "x" * 500}).encode()):
            response = await self.http.post("https://wire.test/ui/session", data=body, headers=JSON)
            self.assertIn(response.code, (400, 403), body)
            self.assertIn("error", json.loads(await response.content()))

    async def test_no_session_is_the_login_page_with_no_data(self):
        response, page = await self.get("/ui/")
        self.assertEqual(response.code, 200)
        self.assertIn(b"wire admin dashboard", page)
        self.assertNotIn(b"wire-csrf", page)
        response, page = await self.get("/ui/", cookie=f"{COOKIE}=forged-value")
        self.assertNotIn(b"wire-csrf", page)

    async def test_a_session_gets_the_page_with_its_csrf_token_and_expires(self):
        cookie = await self.cookie()
        response, page = await self.get("/ui/", cookie=cookie)
        (csrf,) = re.findall(rb'name="wire-csrf" content="([^"]+)"', page)
        session = self.sessions.session_of(_FakeRequest(cookie))
        self.assertEqual(csrf.decode(), session.csrf)
        self.assertTrue(session.actor.startswith("dashboard:"))
        self.clock.advance(SESSION_LIFETIME + 1)
        response, page = await self.get("/ui/", cookie=cookie)
        self.assertNotIn(b"wire-csrf", page)

    async def test_logging_out_needs_the_csrf_token(self):
        cookie = await self.cookie()
        session = self.sessions.session_of(_FakeRequest(cookie))
        response = await self.http.delete("https://wire.test/ui/session", headers={b"cookie": [cookie.encode()]})
        self.assertEqual(response.code, 403)
        self.assertIsNotNone(self.sessions.session_of(_FakeRequest(cookie)))
        response = await self.http.delete(
            "https://wire.test/ui/session", headers={b"cookie": [cookie.encode()], b"x-csrf-token": [session.csrf.encode()]}
        )
        self.assertEqual(response.code, 200)
        self.assertIsNone(self.sessions.session_of(_FakeRequest(cookie)))

    async def test_the_admin_api_caller_of_a_session(self):
        self.assertIsNone(self.sessions.caller_of(_FakeRequest(None)))
        with self.assertRaises(AuthError):
            self.sessions.caller_of(_FakeRequest(f"{COOKIE}=forged"))
        cookie = await self.cookie()
        session = self.sessions.session_of(_FakeRequest(cookie))
        self.assertEqual(self.sessions.caller_of(_FakeRequest(cookie)), Caller(session.actor, False))
        with self.assertRaises(Forbidden):
            self.sessions.caller_of(_FakeRequest(cookie, method=b"POST"))
        with self.assertRaises(Forbidden):
            self.sessions.caller_of(_FakeRequest(cookie, method=b"DELETE", csrf=b"x" * 32))
        self.assertEqual(self.sessions.caller_of(_FakeRequest(cookie, method=b"PUT", csrf=session.csrf.encode())).actor, session.actor)

    async def test_a_login_needs_https_and_json(self):
        token, _ = self.sessions.make_link()
        response = await self.http.post("http://wire.test/ui/session", data=json.dumps({"token": token}).encode(), headers=JSON)
        self.assertEqual(response.code, 400)
        self.assertIn("needs HTTPS", json.loads(await response.content())["error"])
        # Another site's form can post text/plain, never JSON without asking first.
        response = await self.http.post("https://wire.test/ui/session", data=json.dumps({"token": token}).encode(),
                                        headers={b"content-type": [b"text/plain"]})
        self.assertEqual(response.code, 415)
        response, _ = await self.log_in(token)  # the link was not spent by either
        self.assertEqual(response.code, 200)

    async def test_other_cookies_and_crafted_headers(self):
        cookie = await self.cookie()
        session = self.sessions.session_of(_FakeRequest(cookie))
        # Another site's cookies around ours (JSON, spaces, backslashes) hide nothing.
        around = f'pref={{"a": 1}}; x="a\\b c"; {cookie}; theme=dark'
        self.assertIs(self.sessions.session_of(_FakeRequest(around)), session)
        # A planted second session beside ours: neither is trusted.
        self.assertIsNone(self.sessions.session_of(_FakeRequest(f"{cookie}; {COOKIE}=planted")))
        # A huge crafted header is not parsed at all (the standard parser is quadratic on it).
        self.assertIsNone(self.sessions.session_of(_FakeRequest(cookie + "; a=\"" + "\\" * 8000 + "\"")))

    def test_the_cookie_is_the_origins_own(self):
        self.assertTrue(COOKIE.startswith("__Host-"))

    def test_links_and_sessions_are_bounded(self):
        self.patch(dashboard, "MAX_LINKS", 3)
        tokens = [self.sessions.make_link()[0] for _ in range(5)]
        self.assertIsNone(self.sessions.redeem(tokens[0]))
        self.assertIsNotNone(self.sessions.redeem(tokens[4]))

    def test_the_login_url_carries_the_token_in_its_fragment(self):
        self.assertEqual(login_url("https://wire.example:8443/", "abc"), "https://wire.example:8443/ui/login#abc")


class HeadersAndAssetsTests(DashboardTestCase):
    async def test_every_page_has_the_security_headers(self):
        cookie = await self.cookie()
        for path, with_cookie in (("/ui/", None), ("/ui/", cookie), ("/ui/login", None), ("/ui/static/app.js", None)):
            response, _ = await self.get(path, cookie=with_cookie)
            headers = response.headers
            self.assertEqual(headers.getRawHeaders(b"content-security-policy"), [CSP.encode()], path)
            self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
            self.assertEqual(headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
            self.assertEqual(headers.getRawHeaders(b"x-frame-options"), [b"DENY"])

    def test_the_policy_allows_only_this_server(self):
        self.assertIn("script-src 'self';", CSP)
        self.assertIn("connect-src 'self';", CSP)
        self.assertNotIn("unsafe", CSP)
        self.assertIn("default-src 'none'", CSP)

    async def test_every_asset_is_served_with_its_type_and_nothing_else(self):
        for name, kind in ASSETS.items():
            response, body = await self.get(f"/ui/static/{name}")
            self.assertEqual((response.code, response.headers.getRawHeaders(b"content-type")), (200, [kind]), name)
            self.assertTrue(body)
        for bad in ("../dashboard.py", "index.html", "missing.js", "app.js/x", "%2e%2e%2fdashboard.py"):
            response, _ = await self.get(f"/ui/static/{bad}")
            self.assertEqual(response.code, 404, bad)

    def test_the_pages_load_nothing_from_elsewhere_and_have_no_inline_script_or_style(self):
        ui = dashboard.UI_DIR
        for name in os.listdir(ui):
            text = open(os.path.join(ui, name), encoding="utf-8").read()
            self.assertNotRegex(text, r"(src|href)=\"(https?:)?//", name)
            if name.endswith(".html"):
                self.assertNotRegex(text, r"<script(?![^>]*\bsrc=)", name)
                self.assertNotIn("<style", text, name)
                self.assertNotRegex(text, r"\sstyle=", name)
                self.assertNotRegex(text, r"\son[a-z]+=", name)
        listed = {name for name in os.listdir(ui) if not name.endswith(".html")}
        self.assertEqual(listed, set(ASSETS))


class _FakeRequest:
    def __init__(self, cookie, method=b"GET", csrf=None):
        self._headers = {b"cookie": cookie.encode() if cookie else None, b"x-csrf-token": csrf}
        self.method = method

    def getHeader(self, name):
        return self._headers.get(name)


class MeshViewTests(unittest.TestCase):
    def setUp(self):
        self.coordinator = make_coordinator(self)
        self.clock = self.coordinator.clock
        for name in ("web1", "db1"):
            self.coordinator.registry.register(registration_for(name, node_id=name), "203.0.113.9", self.clock.seconds())

    def view(self, since=None, wait=0.0):
        return Deferred.fromCoroutine(mesh_view(self.coordinator, since, wait))

    def test_nodes_and_reported_edges(self):
        self.coordinator.reports.accept(
            NodeReport("web1", key_for("web1"), (PeerReport("db1", PathMode.RELAY, "relay-kernel", "198.51.100.1:3481", 2.0, 1, 2),), "0.1.0")
        )
        view = settled(self.view())
        self.assertEqual({n["node_name"]: n["version"] for n in view["nodes"]}, {"db1": "", "web1": "0.1.0"})
        self.assertEqual({n["node_name"]: n["dns_name"] for n in view["nodes"]}, {"db1": "db1.wire.internal", "web1": "web1.wire.internal"})
        (edge,) = view["edges"]
        self.assertEqual((edge["a"], edge["b"], edge["kind"]), ("db1", "web1", "relay"))

    def test_a_waiting_view_answers_when_the_mesh_changes(self):
        version = settled(self.view())["version"]
        d = self.view(since=version, wait=25)
        self.assertNoResult(d)
        self.coordinator.registry.mark_offline("db1")
        self.assertNoResult(d)  # changes come in bursts: one answer for all of them
        self.clock.advance(COALESCE)
        view = self.successResultOf(d)
        self.assertGreater(view["version"], version)
        self.assertEqual({n["node_name"]: n["online"] for n in view["nodes"]}["db1"], False)

    def test_a_report_moves_the_version_and_a_quiet_mesh_answers_after_max_wait(self):
        version = settled(self.view())["version"]
        d = self.view(since=version, wait=25)
        self.coordinator.reports.accept(NodeReport("web1", key_for("web1"), ()))
        self.clock.advance(COALESCE)
        self.assertGreater(self.successResultOf(d)["version"], version)
        version = settled(self.view())["version"]
        d = self.view(since=version, wait=25)
        self.clock.advance(MAX_WAIT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(d)["version"], version)

    def test_counters_alone_move_no_version_and_one_view_serves_a_version(self):
        report = lambda rx: NodeReport("web1", key_for("web1"), (PeerReport("db1", PathMode.DIRECT, "public", "198.51.100.1:51820", 2.0, rx, 2),))
        self.coordinator.reports.accept(report(1))
        first = settled(self.view())
        self.assertIs(settled(self.view()), first, "one view per version (and second)")
        self.clock.advance(server_reports.MIN_GAP)
        self.coordinator.reports.accept(report(5000))
        fresh = settled(self.view())
        self.assertEqual(fresh["version"], first["version"], "only counters changed")
        self.assertEqual(fresh["edges"][0]["sides"]["web1"]["rx_bytes"], 5000)

    def test_past_the_waiter_cap_a_clear_503(self):
        from wire.server import meshview

        self.patch(meshview, "MAX_WAITERS", 1)
        version = settled(self.view())["version"]
        self.view(since=version, wait=25)
        self.assertIsInstance(self.failureResultOf(self.view(since=version, wait=25)).value, meshview.TooManyWaiters)

    def test_a_cancelled_wait_leaves_no_timer(self):
        version = settled(self.view())["version"]
        d = self.coordinator.mesh_version.wait(version, 25)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [c for c in self.clock.getDelayedCalls() if "timed_out" not in repr(c)])
