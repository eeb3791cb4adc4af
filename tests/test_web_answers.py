"""How wire.web writes an answer that was waited for (a long-poll's), and
the per-connection parts of who a client is (wire.server.api), in memory."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from wire.server.api import ClientRules, answering_errors, client_ip
from wire.server.auth import AuthError
from wire.server.coordinator import UnknownNode
from wire.web import ApiError, JsonResource, JsonRoot, make_site


class CountingTransport(StringTransport):
    """Remembers each write: over TLS each is a record of its own."""

    def __init__(self):
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.writes: list[bytes] = []

    def write(self, data):
        self.writes.append(bytes(data))
        super().write(data)

    def writeSequence(self, iovec):
        self.write(b"".join(iovec))


class Later(JsonResource):
    """Answers when the test fires the Deferred, as a long-poll does."""

    methods = ("GET",)

    def __init__(self):
        super().__init__()
        self.waiting: list[Deferred] = []

    def get(self, request):
        d: Deferred = Deferred()
        self.waiting.append(d)
        return d


class WaitedAnswerTests(unittest.TestCase):
    def setUp(self):
        self.later = Later()
        root = JsonRoot()
        root.putChild(b"later", self.later)
        self.site = make_site(root, reactor=Clock())
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        self.transport = CountingTransport()
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.channel.connectionLost, None)

    def ask(self, method: bytes) -> Deferred:
        written = len(self.transport.writes)
        self.channel.dataReceived(method + b" /later HTTP/1.1\r\nHost: wire.test\r\n\r\n")
        self.assertEqual(len(self.transport.writes), written, "nothing before the answer")
        return self.later.waiting.pop()

    def test_head_and_body_go_out_in_one_write(self):
        self.ask(b"GET").callback({"now": "e:1"})
        self.assertEqual(len(self.transport.writes), 1)
        head, _, body = self.transport.writes[0].partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertIn(b"Content-Length: %d" % len(body), head)
        self.assertEqual(json.loads(body), {"now": "e:1"})

    def test_the_connection_serves_the_next_request_as_before(self):
        self.ask(b"GET").callback({"n": 1})
        self.ask(b"GET").callback({"n": 2})
        self.assertEqual([json.loads(w.partition(b"\r\n\r\n")[2]) for w in self.transport.writes], [{"n": 1}, {"n": 2}])

    def test_a_head_request_gets_its_head_and_no_body(self):
        self.ask(b"HEAD").callback({"now": "e:1"})
        self.assertEqual(len(self.transport.writes), 1)
        head, _, body = self.transport.writes[0].partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertEqual(body, b"")

    def test_an_error_answer_too(self):
        self.ask(b"GET").errback(ApiError(409, "taken"))
        self.assertEqual(len(self.transport.writes), 1)
        head, _, body = self.transport.writes[0].partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 409 "), head)
        self.assertEqual(json.loads(body), {"error": "taken"})

    def test_a_client_gone_before_the_answer_gets_nothing(self):
        waiting = self.ask(b"GET")
        self.channel.connectionLost(None)
        self.assertEqual(self.transport.writes, [])
        self.assertTrue(waiting.called, "its wait was cancelled")


class FakeChannel:
    pass


class FakeRequest:
    def __init__(self, channel, host):
        self.channel = channel
        self._address = IPv4Address("TCP", host, 1)

    def getClientAddress(self):
        return self._address


class PeerAddressTests(unittest.TestCase):
    def test_kept_per_connection_and_only_for_its_peer(self):
        channel = FakeChannel()
        self.assertEqual(client_ip(FakeRequest(channel, "::ffff:192.0.2.1")), "192.0.2.1")
        self.assertEqual(client_ip(FakeRequest(channel, "::ffff:192.0.2.1")), "192.0.2.1")
        # A channel handed another peer's request is told that peer.
        self.assertEqual(client_ip(FakeRequest(channel, "198.51.100.9")), "198.51.100.9")
        self.assertEqual(ClientRules().client_ip(FakeRequest(channel, "::ffff:192.0.2.1")), "192.0.2.1")

    def test_a_channel_that_takes_no_attributes(self):
        self.assertEqual(client_ip(FakeRequest(object(), "::ffff:192.0.2.1")), "192.0.2.1")


class AnsweringErrorsTests(unittest.TestCase):
    def test_refusals_become_their_statuses(self):
        for error, status in [(AuthError("no"), 401), (UnknownNode("gone"), 404)]:
            with self.assertRaises(ApiError) as raised:
                with answering_errors():
                    raise error
            self.assertEqual((raised.exception.status, raised.exception.message), (status, str(error)))

    def test_anything_else_passes_through(self):
        with self.assertRaises(KeyError):
            with answering_errors():
                raise KeyError("x")
        with answering_errors():
            pass
