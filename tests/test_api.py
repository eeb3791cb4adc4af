"""The HTTP API in memory, through treq's StubTreq."""

import json
import socket
from ipaddress import ip_network

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.helpers import body_for, key_for, make_coordinator, settled
from wire.server.api import ClientRules, build_root, build_site
from wire.server.auth import Authority


class ApiTestCase(unittest.TestCase):
    def setUp(self):
        self.coordinator = make_coordinator(self)
        self.clock = self.coordinator.clock
        self.http = StubTreq(build_root(self.coordinator))

    async def call(self, method, path, body=None, raw=None, headers=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        response = await getattr(self.http, method.lower())(f"http://wire.test{path}", data=data, headers=headers)
        content = await response.content()
        return response.code, content

    async def json_call(self, method, path, body=None, **kwargs):
        code, content = await self.call(method, path, body, **kwargs)
        return code, json.loads(content)

    def register(self, name, **fields):
        return self.run_async(self.json_call("POST", "/register", body_for(name, **fields)))

    def run_async(self, coroutine):
        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(coroutine)
        self.clock.advance(0)  # the store's group commit
        self.http.flush()
        return self.successResultOf(d)


class SeedEndpointTests(ApiTestCase):
    def test_register_answers_like_the_seed(self):
        code, body = self.register("web1", lan_ip="192.168.1.4")
        self.assertEqual(code, 200)
        self.assertTrue(body["ok"])
        self.assertRegex(body["vpn_ip"], r"^10\.99\.\d+\.\d+$")
        self.assertEqual(body["your_ip"], "127.0.0.1")

    def test_status_health_peers_ip(self):
        self.register("web1")
        self.register("db1")
        code, status = self.run_async(self.json_call("GET", "/status"))
        self.assertEqual((code, status["total"], status["online"], status["offline"]), (200, 2, 2, 0))
        self.assertEqual([n["node_name"] for n in status["nodes"]], ["db1", "web1"])
        for field in ("node_name", "node_id", "vpn_ip", "public_ip", "lan_ip", "port", "nat_port", "wg_public_key", "status", "last_seen", "last_seen_ago", "registered"):
            self.assertIn(field, status["nodes"][0])
        code, health = self.run_async(self.json_call("GET", "/health"))
        self.assertEqual((health["ok"], health["total"], health["online"]), (True, 2, 2))
        code, peers = self.run_async(self.json_call("GET", "/peers"))
        self.assertEqual((peers["count"], len(peers["peers"])), (2, 2))
        code, ip = self.run_async(self.json_call("GET", "/ip"))
        self.assertEqual(ip, {"ip": "127.0.0.1"})

    def test_peers_lists_online_nodes_only(self):
        self.register("web1")
        self.clock.advance(91)
        self.coordinator.sweep()
        self.register("db1")
        code, peers = self.run_async(self.json_call("GET", "/peers"))
        self.assertEqual([p["node_name"] for p in peers["peers"]], ["db1"])
        code, status = self.run_async(self.json_call("GET", "/status"))
        self.assertEqual(status["offline"], 1)

    def test_punch_seed_semantics(self):
        a = self.register("a")[1]["vpn_ip"]
        b = self.register("b")[1]["vpn_ip"]
        answers = []
        for _ in range(5):
            code, answer = self.run_async(self.json_call("POST", "/punch", {"from_vpn_ip": a, "to_vpn_ip": b}))
            answers.append((answer["attempts"], answer["use_relay"]))
            self.clock.advance(11)
        self.assertEqual(answers, [(0, False), (1, False), (2, False), (3, True), (4, True)])
        code, answer = self.run_async(self.json_call("POST", "/punch", {"from_vpn_ip": a, "to_vpn_ip": "10.99.1.1"}))
        self.assertEqual(code, 404)
        self.assertIn("10.99.1.1", answer["error"])


class LeaveTests(ApiTestCase):
    def test_leave_marks_offline_at_once(self):
        self.register("web1")
        body = body_for("web1")
        code, answer = self.run_async(self.json_call("POST", "/leave", {"node_id": body["node_id"], "wg_public_key": body["wg_public_key"]}))
        self.assertEqual((code, answer["was_online"]), (200, True))
        code, status = self.run_async(self.json_call("GET", "/status"))
        self.assertEqual(status["nodes"][0]["status"], "offline")

    def test_leave_needs_the_nodes_key(self):
        self.register("web1")
        body = body_for("web1")
        code, answer = self.run_async(self.json_call("POST", "/leave", {"node_id": body["node_id"], "wg_public_key": key_for("other")}))
        self.assertEqual(code, 404)
        code, answer = self.run_async(self.json_call("POST", "/leave", {"node_id": "x y"}))
        self.assertEqual(code, 400)


class LongPollTests(ApiTestCase):
    def test_snapshot_then_delta_pushed_on_change(self):
        self.register("web1")
        code, snap = self.run_async(self.json_call("GET", "/peers?since=0"))
        self.assertTrue(snap["full"])
        self.assertEqual([p["node_name"] for p in snap["upserts"]], ["web1"])
        d = __import__("twisted.internet.defer", fromlist=["Deferred"]).Deferred.fromCoroutine(
            self.json_call("GET", f"/peers?since={snap['cursor']}&wait=30")
        )
        self.http.flush()
        self.assertNoResult(d)
        self.register("db1")
        self.clock.advance(0)
        self.http.flush()
        code, delta = self.successResultOf(d)
        self.assertFalse(delta["full"])
        self.assertEqual([p["node_name"] for p in delta["upserts"]], ["db1"])
        self.assertEqual(delta["removals"], [])

    def test_wait_expires_with_empty_delta(self):
        code, snap = self.run_async(self.json_call("GET", "/peers?since=0"))
        d = __import__("twisted.internet.defer", fromlist=["Deferred"]).Deferred.fromCoroutine(
            self.json_call("GET", f"/peers?since={snap['cursor']}&wait=20")
        )
        self.http.flush()
        self.clock.advance(20)
        self.http.flush()
        code, delta = self.successResultOf(d)
        self.assertEqual((code, delta["upserts"], delta["cursor"]), (200, [], snap["cursor"]))

    def test_bad_longpoll_arguments(self):
        for query, words in [
            ("since=x:y", "since"),
            ("since=0&wait=abc", "wait"),
            ("since=0&wait=500", "wait"),
            ("since=0&since=1", "once"),
            ("wait=5", "since"),
        ]:
            code, body = self.run_async(self.json_call("GET", f"/peers?{query}"))
            self.assertEqual(code, 400, query)
            self.assertIn(words, body["error"])


class BadInputTests(ApiTestCase):
    def assert_refused(self, code, body, status, words):
        self.assertEqual(code, status, body)
        self.assertIn(words, body["error"])
        self.assertEqual(len(self.coordinator.registry), 0, "nothing may be stored")

    def test_malformed_bodies(self):
        for raw, words in [
            (b"{not json", "not valid JSON"),
            (b"[1, 2]", "JSON object"),
            (b"", "empty"),
            (b"\xff\xff", "UTF-8"),
        ]:
            code, body = self.run_async(self.json_call("POST", "/register", raw=raw))
            self.assert_refused(code, body, 400, words)

    def test_bad_fields(self):
        for fields, words in [
            ({"wg_public_key": "short"}, "wg_public_key"),
            ({"node_name": "bad name!"}, "node_name"),
            ({"port": "51820"}, "port"),
            ({"lan_ip": "10.0.0.0/24"}, "lan_ip"),
            ({"node_id": "$(id)"}, "node_id"),
        ]:
            code, body = self.run_async(self.json_call("POST", "/register", body_for("web1", **fields)))
            self.assert_refused(code, body, 400, words)

    def test_oversize_body(self):
        raw = json.dumps(body_for("web1", pad="x" * 70000)).encode()
        code, body = self.run_async(self.json_call("POST", "/register", raw=raw))
        self.assert_refused(code, body, 413, "65536")

    def test_key_of_another_node_is_refused(self):
        self.register("web1")
        code, body = self.register("web2", wg_public_key=key_for("web1"))
        self.assertEqual(code, 409)
        self.assertIn("wg_public_key", body["error"])

    def test_unknown_paths_and_wrong_methods(self):
        for method, path, status in [
            ("GET", "/nope", 404),
            ("GET", "/", 404),
            ("GET", "/status/extra", 404),
            ("GET", "/register", 405),
            ("POST", "/status", 405),
            ("DELETE", "/peers", 405),
        ]:
            code, body = self.run_async(self.json_call(method, path, raw=b"{}" if method == "POST" else None))
            self.assertEqual(code, status, path)
            self.assertIn("error", body)

    def test_metrics(self):
        self.register("web1")
        code, text = self.run_async(self.call("GET", "/metrics"))
        self.assertEqual(code, 200)
        text = text.decode()
        self.assertIn("wire_nodes 1.0", text)
        self.assertIn('wire_registrations_total{outcome="new"} 1.0', text)


class AuthenticatedTestCase(ApiTestCase):
    """A server with authentication, and helpers to enroll and poll."""

    def setUp(self):
        super().setUp()
        self.coordinator.authority = Authority(self.coordinator.store, self.clock)
        self.coordinator.registry.unique_names = True
        _, self.join_key = settled(self.coordinator.authority.create_key(reusable=True))
        # Trusting StubTreq's own address lets a test pick the client's.
        self.http = StubTreq(build_root(self.coordinator, ClientRules(trusted_proxies=(ip_network("127.0.0.1/32"),))))

    def enroll(self, name):
        code, answer = self.run_async(self.json_call("POST", "/enroll", {**body_for(name), "join_key": self.join_key}))
        self.assertEqual(code, 200, answer)
        return answer

    def poll(self, credential, since, wait=25, client="127.0.0.1"):
        """Send a long-poll; returns its (not yet fired) Deferred."""
        headers = {b"x-forwarded-for": [client.encode()]}
        if credential is not None:
            headers[b"authorization"] = [b"Bearer " + credential.encode()]
        d = Deferred.fromCoroutine(self.json_call("GET", f"/peers?since={since}&wait={wait}", headers=headers))
        self.http.flush()
        return d

    def answer_of(self, d, advance=25):
        self.clock.advance(advance)
        self.http.flush()
        return self.successResultOf(d)


class LongPollHeartbeatTests(AuthenticatedTestCase):
    """With authentication, a node's long-poll is its heartbeat."""

    def test_register_and_enroll_answers_say_so(self):
        enrolled = self.enroll("web1")
        self.assertEqual(enrolled["heartbeat"], "longpoll")
        headers = {b"authorization": [b"Bearer " + enrolled["credential"].encode()]}
        code, registered = self.run_async(self.json_call("POST", "/register", body_for("web1"), headers=headers))
        self.assertEqual((code, registered["heartbeat"]), (200, "longpoll"))

    def test_longpoll_refreshes_last_seen_without_moving_the_netmap(self):
        web1 = self.enroll("web1")
        record = self.coordinator.registry.get(web1["node_id"])
        cursor = web1["cursor"]
        self.clock.advance(60)
        d = self.poll(web1["credential"], cursor)
        self.assertEqual(record.last_seen, self.clock.seconds(), "the poll counts when it arrives")
        code, answer = self.answer_of(d)
        self.assertEqual((code, answer["cursor"], answer["upserts"]), (200, cursor, []))
        self.assertNotIn("register", answer)
        # 60 + 25 + 25 s after enrolling, with no POST /register: still online.
        d = self.poll(web1["credential"], cursor)
        self.answer_of(d)
        self.coordinator.sweep()
        self.assertTrue(self.coordinator.registry.is_online(web1["node_id"]))
        # Without polls it goes offline as it always did.
        self.clock.advance(91)
        self.coordinator.sweep()
        self.assertFalse(self.coordinator.registry.is_online(web1["node_id"]))

    def test_longpoll_brings_an_offline_node_back_with_a_netmap_change(self):
        web1 = self.enroll("web1")
        db1 = self.enroll("db1")
        self.clock.advance(91)
        self.coordinator.sweep()
        self.assertEqual(self.coordinator.registry.online_count, 0)
        code, snapshot = self.run_async(
            self.json_call("GET", "/peers?since=0", headers={b"authorization": [b"Bearer " + db1["credential"].encode()]})
        )
        watching = self.poll(db1["credential"], snapshot["cursor"])
        code, answer = self.answer_of(self.poll(web1["credential"], snapshot["cursor"]), advance=0)
        self.assertEqual([(p["node_name"], p["online"]) for p in answer["upserts"]], [("web1", True)])
        code, seen_by_db1 = self.answer_of(watching, advance=0)
        self.assertEqual([(p["node_name"], p["online"]) for p in seen_by_db1["upserts"]], [("web1", True)])

    def test_a_poll_from_a_new_address_counts_and_asks_for_a_registration(self):
        web1 = self.enroll("web1")
        record = self.coordinator.registry.get(web1["node_id"])
        self.clock.advance(60)
        code, answer = self.answer_of(self.poll(web1["credential"], web1["cursor"], client="203.0.113.9"))
        self.assertEqual(record.last_seen, self.clock.seconds() - 25)
        self.assertIs(answer["register"], True, "only a registration tells the server the node's new endpoint")
        self.assertEqual(record.public_ip, "127.0.0.1", "a poll changes nothing but last_seen")

    def test_a_refused_poll_counts_for_nothing(self):
        web1 = self.enroll("web1")
        record = self.coordinator.registry.get(web1["node_id"])
        enrolled_at = record.last_seen
        self.clock.advance(60)
        for credential, since in ((None, web1["cursor"]), ("made-up", web1["cursor"]), (web1["credential"], "x:y")):
            code, answer = self.answer_of(self.poll(credential, since), advance=0)
            self.assertIn(code, (400, 401))
        self.assertEqual(record.last_seen, enrolled_at)


class OpenModeLongPollTests(ApiTestCase):
    """An open server cannot tell who polls: only POST /register keeps a node online."""

    def test_register_answer_has_no_heartbeat_field(self):
        code, answer = self.register("web1")
        self.assertNotIn("heartbeat", answer)

    def test_longpoll_is_no_heartbeat(self):
        code, answer = self.register("web1")
        record = self.coordinator.registry.get(answer["node_id"])
        registered_at = record.last_seen
        self.clock.advance(60)
        d = Deferred.fromCoroutine(self.json_call("GET", f"/peers?since={answer['cursor']}&wait=25"))
        self.http.flush()
        self.clock.advance(25)
        self.http.flush()
        code, delta = self.successResultOf(d)
        self.assertEqual((code, record.last_seen), (200, registered_at))
        self.clock.advance(6)
        self.coordinator.sweep()
        self.assertFalse(self.coordinator.registry.is_online(answer["node_id"]))


class LongPollOverTcpTests(unittest.TestCase):
    """The site as served (make_site) on a real 127.0.0.1 socket."""

    def setUp(self):
        self.coordinator = coordinator = make_coordinator(self)
        port = reactor.listenTCP(0, build_site(coordinator), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(self.client.close)
        cursor = str(coordinator.registry.changes.cursor)
        self.poll = f"GET /peers?since={cursor}&wait=30 HTTP/1.1\r\nHost: wire.test\r\n\r\n".encode()

    @inlineCallbacks
    def test_a_client_that_goes_away_stops_waiting(self):
        self.client.sendall(self.poll)
        yield until(lambda: self.coordinator.longpolls.open_count == 1)
        self.client.close()
        yield until(lambda: self.coordinator.longpolls.open_count == 0)

    @inlineCallbacks
    def test_a_kept_connection_long_polls_again(self):
        coordinator, client = self.coordinator, self.client
        client.setblocking(False)
        for _ in range(2):
            client.sendall(self.poll)
            yield until(lambda: coordinator.longpolls.open_count == 1)
            coordinator.clock.advance(31)  # the wait ends
            received = []
            yield until(lambda: _read_into(client, received) and b'"upserts":[]' in b"".join(received))
            head = b"".join(received)
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head[:80])
            self.assertNotIn(b"connection: close", head.lower())


def _read_into(client: socket.socket, chunks: list) -> bool:
    try:
        chunks.append(client.recv(65536))
    except BlockingIOError:
        pass
    return True


@inlineCallbacks
def until(condition, timeout: float = 10.0):
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("timed out")
        yield deferLater(reactor, 0.01, lambda: None)


class PathApiTests(ApiTestCase):
    """``POST /path``, and long-polls that carry the words on their node's pairs."""

    def setUp(self):
        super().setUp()
        self.web = self.register("web1", nat_type="easy")[1]
        self.db = self.register("db1", nat_type="easy")[1]
        self.app = self.register("app1", nat_type="easy")[1]

    def report(self, reporter="web1", peer=None, failure="stopped", **fields):
        body = {
            "node_id": body_for(reporter)["node_id"],
            "wg_public_key": key_for(reporter),
            "peer_node_id": peer or self.db["node_id"],
            "failure": failure,
        }
        body.update(fields)
        return self.run_async(self.json_call("POST", "/path", body))

    def poll(self, since, node_id=None, wait=25):
        query = f"/peers?since={since}&wait={wait}" + (f"&node_id={node_id}" if node_id else "")
        d = Deferred.fromCoroutine(self.json_call("GET", query))
        self.http.flush()
        return d

    def test_a_report_relays_the_pair_and_tells_both_nodes_only(self):
        cursor = str(self.coordinator.registry.changes.cursor)
        polls = {n["node_id"]: self.poll(cursor, n["node_id"]) for n in (self.web, self.db, self.app)}
        code, answer = self.report()
        self.assertEqual(code, 200, answer)
        self.assertEqual((answer["ok"], answer["accepted"]), (True, True))
        self.assertEqual(
            {k: answer["path"][k] for k in ("peer", "mode", "reason", "tries")},
            {"peer": self.db["node_id"], "mode": "relay", "reason": "the direct path stopped working", "tries": 1},
        )
        self.clock.advance(0)
        self.http.flush()
        for viewer, peer in ((self.web, self.db), (self.db, self.web)):
            code, delta = self.successResultOf(polls[viewer["node_id"]])
            self.assertEqual((delta["upserts"], delta["paths_full"]), ([], False))
            self.assertEqual([(p["peer"], p["mode"]) for p in delta["paths"]], [(peer["node_id"], "relay")])
        self.assertNoResult(polls[self.app["node_id"]])
        self.clock.advance(25)
        self.http.flush()
        code, delta = self.successResultOf(polls[self.app["node_id"]])
        self.assertNotIn("paths", delta)

    def test_a_second_report_is_answered_with_the_word_not_accepted(self):
        self.report()
        code, answer = self.report("db1", peer=self.web["node_id"], failure="no-proof")
        self.assertEqual((code, answer["accepted"], answer["path"]["mode"]), (200, False, "relay"))

    def test_a_snapshot_carries_every_word(self):
        self.report()
        self.report(peer=self.app["node_id"])
        code, snapshot = self.successResultOf(self.poll("0", self.web["node_id"], wait=0))
        self.assertEqual((snapshot["full"], snapshot["paths_full"]), (True, True))
        self.assertEqual(sorted(p["peer"] for p in snapshot["paths"]), sorted([self.db["node_id"], self.app["node_id"]]))

    def test_bad_reports_get_clear_errors(self):
        web_id, db_id = self.web["node_id"], self.db["node_id"]
        for fields, status, words in [
            ({"node_id": 5}, 400, "node_id"),
            ({"node_id": "$(reboot)"}, 400, "node_id"),
            ({"wg_public_key": "short"}, 400, "wg_public_key"),
            ({"peer_node_id": ["x"]}, 400, "peer_node_id"),
            ({"failure": "sideways"}, 400, "failure: 'sideways' is not no-proof or stopped"),
            ({"failure": None}, 400, "failure"),
            ({"failure": 1}, 400, "failure"),
            ({"peer_node_id": "nobody"}, 404, "no node nobody"),
            ({"peer_node_id": web_id}, 400, "peer_node_id: is the reporting node itself"),
            ({"wg_public_key": key_for("db1")}, 404, f"no node {web_id} with that key"),
        ]:
            code, body = self.report(**fields)
            self.assertEqual(code, status, (fields, body))
            self.assertIn(words, body["error"])
            self.assertNotIn("Traceback", body["error"])
        code, body = self.run_async(self.json_call("POST", "/path", raw=b"[1]"))
        self.assertEqual((code, "JSON object" in body["error"]), (400, True))
        code, body = self.run_async(self.json_call("GET", "/path"))
        self.assertEqual(code, 405)
        self.assertEqual(len(self.coordinator.paths), 0, "nothing was decided")
        self.assertIsNone(self.coordinator.paths.word(web_id, db_id))

    def test_a_bad_node_id_on_a_poll_is_refused(self):
        code, body = self.successResultOf(self.poll("0", "a b"))
        self.assertEqual(code, 400)
        self.assertIn("node_id", body["error"])

    def test_punch_decides_no_pair_path(self):
        for _ in range(5):
            code, answer = self.run_async(
                self.json_call("POST", "/punch", {"from_vpn_ip": self.web["vpn_ip"], "to_vpn_ip": self.db["vpn_ip"]})
            )
            self.clock.advance(11)
        self.assertEqual((code, answer["use_relay"]), (200, True))
        self.assertEqual(len(self.coordinator.paths), 0)

    def test_reports_are_rate_limited(self):
        from wire.server.ratelimit import RateLimiter

        self.http = StubTreq(build_root(self.coordinator, ClientRules(path_limit=RateLimiter(1.0, 2.0, self.clock))))
        codes = [self.report()[0] for _ in range(3)]
        self.assertEqual(codes, [200, 200, 429])


class AuthenticatedPathTests(AuthenticatedTestCase):
    """With credentials, a node reports only for itself and is known by its credential."""

    def test_a_node_reports_only_for_itself(self):
        web, db = self.enroll("web1"), self.enroll("db1")
        headers = {b"authorization": [b"Bearer " + db["credential"].encode()]}
        body = {"node_id": web["node_id"], "wg_public_key": key_for("web1"), "peer_node_id": db["node_id"], "failure": "stopped"}
        code, answer = self.run_async(self.json_call("POST", "/path", body, headers=headers))
        self.assertEqual(code, 403, answer)
        code, answer = self.run_async(self.json_call("POST", "/path", body))
        self.assertEqual(code, 401, answer)
        headers = {b"authorization": [b"Bearer " + web["credential"].encode()]}
        code, answer = self.run_async(self.json_call("POST", "/path", body, headers=headers))
        self.assertEqual((code, answer["accepted"]), (200, True))

    def test_a_poll_may_not_name_another_node(self):
        web, db = self.enroll("web1"), self.enroll("db1")
        d = self.poll(web["credential"], f"0&node_id={db['node_id']}", wait=0)
        code, answer = self.successResultOf(d)
        self.assertEqual(code, 403, answer)


class PathOverTcpTests(unittest.TestCase):
    """``POST /path`` through the real client, to the site as served on 127.0.0.1."""

    def setUp(self):
        from wire.client import CoordinationClient, make_http_client

        self.coordinator = coordinator = make_coordinator(self, clock=reactor)
        port = reactor.listenTCP(0, build_site(coordinator), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.client = CoordinationClient(
            make_http_client(reactor, persistent=False), f"http://127.0.0.1:{port.getHost().port}"
        )

    async def test_report_and_refusals(self):
        from tests.helpers import registration_for
        from wire.client import ServerError
        from wire.protocol import PathFailure, PathMode

        web = await self.client.register(registration_for("web1", nat_type="easy"))
        db = await self.client.register(registration_for("db1", nat_type="easy"))
        answer = await self.client.report_path(web.node_id, key_for("web1"), db.node_id, PathFailure.STOPPED)
        self.assertEqual((answer.accepted, answer.path.peer, answer.path.mode), (True, db.node_id, PathMode.RELAY))
        again = await self.client.report_path(db.node_id, key_for("db1"), web.node_id, "stopped")
        self.assertEqual((again.accepted, again.path.peer, again.path.since), (False, web.node_id, answer.path.since))
        # The client said who it is (open mode): its long-poll carries the word.
        netmap = await self.client.netmap("0", 0)
        self.assertEqual([(p.peer, p.mode) for p in netmap.paths], [(web.node_id, PathMode.RELAY)])
        for args, status, words in [
            ((web.node_id, key_for("web1"), "nobody", "stopped"), 404, "no node nobody"),
            ((web.node_id, key_for("web1"), web.node_id, "stopped"), 400, "itself"),
            ((web.node_id, key_for("db1"), db.node_id, "stopped"), 404, "with that key"),
        ]:
            with self.assertRaises(ServerError) as caught:
                await self.client.report_path(*args)
            self.assertEqual(caught.exception.status, status)
            self.assertIn(words, caught.exception.message)
        for body, words in [
            ({"node_id": web.node_id, "wg_public_key": key_for("web1"), "peer_node_id": db.node_id, "failure": "late"}, "failure"),
            ({"node_id": web.node_id, "wg_public_key": 7, "peer_node_id": db.node_id, "failure": "stopped"}, "wg_public_key"),
            ({"node_id": web.node_id, "wg_public_key": key_for("web1"), "failure": "stopped"}, "peer_node_id"),
        ]:
            with self.assertRaises(ServerError) as caught:
                await self.client._request("POST", "/path", body)
            self.assertEqual(caught.exception.status, 400)
            self.assertIn(words, caught.exception.message)
