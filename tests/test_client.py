"""CoordinationClient: every answer the node acts on is parsed once, and a bad one is a ServerError."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web import resource, server

from tests.helpers import key_for, registration_for
from wire.client import BadAnswer, CoordinationClient, ServerError, make_http_client
from wire.protocol import NetmapAnswer, PairPath, PathFailure, PathMode, PathReportAnswer, RelayGrant, error_body


class Canned(resource.Resource):
    """Answers every request with one status and JSON body, and keeps what it was sent."""

    isLeaf = True

    def __init__(self, status: int, body):
        super().__init__()
        self.status = status
        self.body = body
        self.requests: list[tuple[bytes, bytes, dict | None]] = []

    def render(self, request):
        sent = request.content.read()
        self.requests.append((request.method, request.uri, json.loads(sent) if sent else None))
        request.setResponseCode(self.status)
        return json.dumps(self.body).encode()


class ClientTests(unittest.TestCase):
    def serve(self, status: int, body) -> tuple[Canned, CoordinationClient]:
        canned = Canned(status, body)
        port = reactor.listenTCP(0, server.Site(canned), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        return canned, CoordinationClient(make_http_client(reactor, persistent=False), url)

    async def test_relay_grant_is_parsed(self):
        grant = RelayGrant("s1", "db1", b"T" * 8, b"K" * 32, 8788)
        canned, client = self.serve(200, {"ok": True, **grant.to_json()})
        self.assertEqual(await client.relay("web1", key_for("web1"), "db1"), grant)
        self.assertEqual(canned.requests[0][2], {"node_id": "web1", "wg_public_key": key_for("web1"), "peer_node_id": "db1"})

    async def test_a_bad_grant_is_a_bad_answer(self):
        _, client = self.serve(200, {"session_id": "s1", "peer_node_id": "db1", "token": "abcd", "key": "x"})
        with self.assertRaises(BadAnswer) as caught:
            await client.relay("web1", key_for("web1"), "db1")
        self.assertIsInstance(caught.exception, ServerError, "callers handle it as any refusal")
        self.assertEqual(caught.exception.error.field, "token")
        self.assertIn("bad answer to POST /relay: token:", str(caught.exception))

    async def test_register_sends_the_registration_body(self):
        canned, client = self.serve(200, {"ok": True, "vpn_ip": "10.99.0.7", "your_ip": "127.0.0.1"})
        registration = registration_for("web1", lan_ip="192.168.1.5")
        answer = await client.register(registration)
        self.assertEqual((answer.vpn_ip, answer.your_ip), ("10.99.0.7", "127.0.0.1"))
        self.assertEqual(canned.requests[0][2], registration.as_body())

    async def test_netmap(self):
        canned, client = self.serve(200, {"cursor": "e1:3", "full": True, "upserts": [], "removals": []})
        # A full answer holds every word on the node's pairs: paths_full.
        self.assertEqual(await client.netmap("e1:2", 5), NetmapAnswer("e1:3", True, (), (), paths_full=True))
        self.assertEqual(canned.requests[0][1], b"/peers?since=e1:2&wait=5")

    async def test_an_open_mode_netmap_names_the_registered_node(self):
        canned, client = self.serve(200, {"ok": True, "vpn_ip": "10.99.0.7", "node_id": "web1"})
        await client.register(registration_for("web1"))
        await client.netmap("e1:2", 5)
        self.assertEqual(canned.requests[1][1], b"/peers?since=e1:2&wait=5&node_id=web1")
        client.use_credential("secret")
        await client.netmap("e1:2", 5)
        self.assertEqual(canned.requests[2][1], b"/peers?since=e1:2&wait=5", "a credential says who we are")

    async def test_path_report_is_sent_and_its_answer_parsed(self):
        path = PairPath("db1", PathMode.RELAY, "no direct handshake within 15s", 100.0, 1, 160.0)
        canned, client = self.serve(200, PathReportAnswer(True, path).to_json())
        answer = await client.report_path("web1", key_for("web1"), "db1", PathFailure.NO_PROOF)
        self.assertEqual(answer, PathReportAnswer(True, path))
        self.assertEqual(
            canned.requests[0][:3:2],
            (b"POST", {"node_id": "web1", "wg_public_key": key_for("web1"), "peer_node_id": "db1", "failure": "no-proof"}),
        )

    async def test_a_bad_path_answer_is_a_bad_answer(self):
        for body in ({"ok": True, "accepted": "yes", "path": {"peer": "db1", "mode": None}},
                     {"ok": True, "accepted": True, "path": {"peer": "db1", "mode": "sideways"}},
                     {"ok": True, "accepted": True}):
            _, client = self.serve(200, body)
            with self.assertRaises(BadAnswer) as caught:
                await client.report_path("web1", key_for("web1"), "db1", "stopped")
            self.assertIn("POST /path", str(caught.exception))

    async def test_a_refused_path_report_is_a_server_error(self):
        _, client = self.serve(404, error_body("no node db1"))
        with self.assertRaises(ServerError) as caught:
            await client.report_path("web1", key_for("web1"), "db1", "stopped")
        self.assertEqual((caught.exception.status, caught.exception.message), (404, "no node db1"))

    async def test_errors_are_read_from_the_one_shape(self):
        _, client = self.serve(409, error_body("wg_public_key is taken"))
        with self.assertRaises(ServerError) as caught:
            await client.register(registration_for("web1"))
        self.assertEqual((caught.exception.status, caught.exception.message), (409, "wg_public_key is taken"))
