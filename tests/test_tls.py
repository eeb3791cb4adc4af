"""TLS on the server (wire/tlsserver.py) and the node (wire/tls.py)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile

from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from wire.client import CoordinationClient, ServerError, make_http_client
from wire.server.options import Options
from wire.server.tap import _api_endpoint
from wire.tls import PinnedPolicy, ensure_self_signed, read_fingerprint
from wire.tlsserver import (
    BULK_PIECE,
    PLAIN_HTTP_MESSAGE,
    TLS_RECORD_DATA,
    TLSConfigError,
    TLSServerEndpoint,
    server_context,
)


def mode_of(context: SSL.Context) -> int:
    # SSL_CTX_set_mode adds bits and returns the mode: adding none reads it.
    # (pyOpenSSL refuses it once a connection was made from the context.)
    return context.set_mode(0)


class ReleaseBuffersTests(unittest.TestCase):
    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        self.cert_path, self.key_path = ensure_self_signed(data_dir)

    # The server's connections (wire/tlsserver.py): Python's ssl module
    # offers no such setting, and needs none: its connections hold no read
    # buffer between reads (an idle connection that has read a request costs
    # no more than one that has not: bench/tls_idle_memory.py).

    def test_pinned_client_connections_release_idle_buffers(self):
        creator = PinnedPolicy(read_fingerprint(self.cert_path)).creatorForNetloc(b"127.0.0.1", 8787)
        context = creator._context
        self.assertTrue(mode_of(context) & SSL.MODE_RELEASE_BUFFERS)
        self.assertIs(creator.clientConnectionForTLS(object()).get_context(), context)


class ServerConnection:
    """A server TLS connection in memory: the server side over a
    StringTransport, a stdlib client on memory BIOs, and a recording app."""

    def __init__(self, test, client_context: ssl.SSLContext | None = None):
        data_dir = os.path.abspath(test.mktemp())
        os.makedirs(data_dir)
        reactor = MemoryReactorClock()
        self.app = RecordingProtocol()
        context = server_context(*ensure_self_signed(data_dir))
        TLSServerEndpoint(TCP4ServerEndpoint(reactor, 8787), context).listen(Factory.forProtocol(lambda: self.app))
        ((_, factory, _, _),) = reactor.tcpServers
        self.tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.wire = StringTransport()
        self.tls.makeConnection(self.wire)
        if client_context is None:
            client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client_context.check_hostname = False
            client_context.verify_mode = ssl.CERT_NONE
        self.client_in, self.client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_context.wrap_bio(self.client_in, self.client_out)

    def handshake(self) -> None:
        for _ in range(5):
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                self.to_server()
                self.to_client()
                continue
            self.to_server()  # the client's Finished
            self.to_client()  # what the server answers to it
            self.after_handshake = self.received()
            return
        raise AssertionError("no handshake")

    def to_server(self) -> None:
        data = self.client_out.read()
        if data:
            self.tls.dataReceived(data)

    def to_client(self) -> list[int]:
        """Hand the server's output to the client; the lengths of its records."""
        data = self.wire.value()
        self.wire.clear()
        lengths, at = [], 0
        while at < len(data):
            lengths.append(int.from_bytes(data[at + 3 : at + 5], "big"))
            at += 5 + lengths[-1]
        self.client_in.write(data)
        return lengths

    def received(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.client.read(1 << 20)
            except ssl.SSLWantReadError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


class RecordingProtocol(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason


class ServerTransportTests(unittest.TestCase):
    """The server's TLS transport (wire/tlsserver.py), in memory."""

    def setUp(self):
        self.conn = ServerConnection(self)

    def test_request_and_answer(self):
        conn = self.conn
        conn.handshake()
        self.assertIsNotNone(conn.app.transport)
        conn.client.write(b"GET /health HTTP/1.1\r\n\r\n")
        conn.to_server()
        self.assertEqual(conn.app.data, b"GET /health HTTP/1.1\r\n\r\n")
        conn.app.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        conn.to_client()
        self.assertEqual(conn.received(), b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertTrue(ISSLTransport.providedBy(conn.app.transport))
        self.assertEqual(conn.app.transport.getPeer(), conn.wire.getPeer())

    def test_a_large_answer_goes_out_in_small_records(self):
        self.conn.handshake()
        self.assert_a_large_answer_goes_out_in_records_of(TLS_RECORD_DATA)

    def test_a_bulk_connection_writes_whole_records(self):
        # What the relay stream asks for once upgraded (wire.server.relaystream).
        self.conn.handshake()
        self.conn.tls.carry_bulk()
        self.assert_a_large_answer_goes_out_in_records_of(BULK_PIECE)

    def assert_a_large_answer_goes_out_in_records_of(self, size: int) -> None:
        conn = self.conn
        answer = os.urandom(300_000)
        conn.app.transport.write(answer)
        lengths = conn.to_client()
        # Each record: the data, its content type and a 16-byte tag.
        self.assertLessEqual(max(lengths), size + 17)
        self.assertGreaterEqual(len(lengths), 300_000 // size)
        self.assertLessEqual(len(lengths), -(-300_000 // size), "full records")
        self.assertEqual(conn.received(), answer)

    def test_a_bulk_connection_reads_whole_records(self):
        conn = self.conn
        conn.handshake()
        conn.tls.carry_bulk()
        # Records of 16 KiB and pieces of 16 KiB: every piece ends inside one.
        request = os.urandom(100_000)
        conn.client.write(request)
        conn.to_server()
        self.assertEqual(conn.app.data, request)

    def test_a_written_sequence_is_one_record(self):
        conn = self.conn
        conn.handshake()
        conn.app.transport.writeSequence([b"HTTP/1.1 200 OK\r\n", b"Content-Length: 2\r\n\r\n", b"{}"])
        self.assertEqual(len(conn.to_client()), 1)
        self.assertEqual(conn.received(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    def test_writes_before_the_handshake_wait_for_it(self):
        conn = self.conn
        conn.app.transport.write(b"early ")
        conn.app.transport.writeSequence([b"and ", b"in order"])
        conn.handshake()
        self.assertEqual(conn.after_handshake, b"early and in order")

    def test_lose_connection_says_close_notify_then_closes(self):
        conn = self.conn
        conn.handshake()
        conn.app.transport.write(b"last words")
        conn.app.transport.loseConnection()
        self.assertTrue(conn.wire.disconnecting)
        conn.to_client()
        self.assertEqual(conn.received(), b"last words")
        self.assertEqual(conn.client.read(1), b"", "close_notify came")
        conn.app.transport.write(b"too late")
        self.assertEqual(conn.wire.value(), b"")
        conn.tls.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(conn.app.lost.check(ConnectionDone))

    def test_lose_connection_before_any_handshake_closes_at_once(self):
        conn = self.conn
        conn.app.transport.loseConnection()
        self.assertTrue(conn.wire.disconnecting)
        self.assertEqual(conn.wire.value(), b"")

    def test_the_peers_close_notify_closes_cleanly(self):
        conn = self.conn
        conn.handshake()
        try:
            conn.client.unwrap()
        except ssl.SSLWantReadError:
            pass
        conn.to_server()
        self.assertTrue(conn.wire.disconnecting)
        conn.tls.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(conn.app.lost.check(ConnectionDone))

    def test_a_tcp_close_without_close_notify_is_a_lost_connection(self):
        conn = self.conn
        conn.handshake()
        conn.tls.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(conn.app.lost.check(ConnectionLost))

    def test_garbage_ends_the_connection_with_the_tls_error(self):
        conn = self.conn
        conn.tls.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(conn.wire.disconnecting)
        self.assertEqual(conn.app.data, b"")
        conn.tls.dataReceived(b"more garbage")  # ignored, no exception
        conn.tls.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(conn.app.lost.check(ssl.SSLError))

    def test_plain_http_gets_an_http_answer_saying_https(self):
        conn = self.conn
        conn.tls.dataReceived(b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        self.assertTrue(conn.wire.disconnecting)
        self.assertEqual(conn.app.data, b"", "nothing reaches the application")
        head, _, body = conn.wire.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), head)
        self.assertIn(b"Content-Length: %d" % len(body), head)
        self.assertEqual(json.loads(body), {"error": PLAIN_HTTP_MESSAGE})

    def test_garbage_after_the_handshake_ends_the_connection(self):
        conn = self.conn
        conn.handshake()
        conn.tls.dataReceived(b"\x17\x03\x03\x00\x20" + os.urandom(32))  # a record no key made
        self.assertTrue(conn.wire.disconnecting)
        conn.tls.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(conn.app.lost.check(ssl.SSLError))


class ServerContextTests(unittest.TestCase):
    def test_tls_1_1_is_refused(self):
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        # Security level 0: this OpenSSL offers TLS 1.1 only if told to.
        client.set_ciphers("DEFAULT:@SECLEVEL=0")
        client.minimum_version = ssl.TLSVersion.TLSv1_1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
        conn = ServerConnection(self, client)
        with self.assertRaises(ssl.SSLError) as caught:
            conn.handshake()
        self.assertIn("ALERT_PROTOCOL_VERSION", str(caught.exception), "the server's alert")
        self.assertTrue(conn.wire.disconnecting)
        conn.tls.connectionLost(Failure(ConnectionDone()))
        self.assertIn("unsupported protocol", str(conn.app.lost.value))

    def test_a_missing_or_corrupt_certificate_is_named(self):
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        cert_path, key_path = ensure_self_signed(data_dir)
        with self.assertRaises(TLSConfigError) as caught:
            server_context(cert_path + ".missing", key_path)
        self.assertIn(cert_path + ".missing", str(caught.exception))
        with open(key_path, "w") as f:
            f.write("not a key")
        with self.assertRaises(TLSConfigError) as caught:
            server_context(cert_path, key_path)
        self.assertIn(key_path, str(caught.exception))


class RealSocketTests(unittest.TestCase):
    """The node's real HTTPS client (pinned) against the server's TLS on 127.0.0.1."""

    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        cert_path, key_path = ensure_self_signed(data_dir)
        self.fingerprint = read_fingerprint(cert_path)
        self.body = os.urandom(200_000).hex().encode()
        resource = Resource()
        resource.putChild(b"big", Data(self.body, "text/plain"))
        endpoint = TLSServerEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), server_context(cert_path, key_path))
        d = endpoint.listen(Site(resource))

        def listening(port):
            self.port = port
            self.addCleanup(port.stopListening)

        return d.addCallback(listening)

    def agent(self, fingerprint):
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return Agent(reactor, contextFactory=PinnedPolicy(fingerprint), pool=pool)

    @defer.inlineCallbacks
    def test_the_pinned_client_gets_a_large_answer(self):
        url = f"https://127.0.0.1:{self.port.getHost().port}/big".encode()
        response = yield self.agent(self.fingerprint).request(b"GET", url)
        body = yield readBody(response)
        self.assertEqual((response.code, body), (200, self.body))

    @defer.inlineCallbacks
    def test_another_fingerprint_is_refused(self):
        url = f"https://127.0.0.1:{self.port.getHost().port}/big".encode()
        with self.assertRaises(ResponseNeverReceived):
            yield self.agent("0" * 64).request(b"GET", url)


class PlainHttpClientTests(unittest.TestCase):
    """A plain-HTTP client (http:// for this https:// server) over a real
    socket: the node's own client reads a 400 that says what to do."""

    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        cert_path, key_path = ensure_self_signed(data_dir)
        endpoint = TLSServerEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), server_context(cert_path, key_path))
        return endpoint.listen(Site(Resource())).addCallback(self._listening)

    def _listening(self, port):
        self.port = port
        self.addCleanup(port.stopListening)

    async def test_the_nodes_client_is_told_to_use_https_and_a_join_token(self):
        url = f"http://127.0.0.1:{self.port.getHost().port}"
        client = CoordinationClient(make_http_client(reactor, persistent=False), url)
        with self.assertRaises(ServerError) as caught:
            await client.health()
        self.assertEqual((caught.exception.status, caught.exception.message), (400, PLAIN_HTTP_MESSAGE))


class EndpointTests(unittest.TestCase):
    def endpoint(self, *args):
        # UNIX socket paths are short (108 bytes): a short data dir.
        data_dir = tempfile.mkdtemp(prefix="wire-tls-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        options = Options()
        options.parseOptions(["--interface", "127.0.0.1", "--port", "18787", "--data-dir", data_dir, *args])
        return _api_endpoint(options, MemoryReactorClock())

    def test_the_api_listens_through_tls(self):
        endpoint, endpoint6, fingerprint = self.endpoint()
        self.assertIsInstance(endpoint, TLSServerEndpoint)
        self.assertIsNone(endpoint6, "an --interface is the one address listened on")
        self.assertEqual(len(fingerprint), 64)
        endpoint, endpoint6, fingerprint = self.endpoint("--plain-http")
        self.assertIsInstance(endpoint, TCP4ServerEndpoint)
        self.assertEqual(fingerprint, "")

    def test_on_every_address_the_api_listens_on_ipv6_too_through_the_same_tls(self):
        from wire.server.listening import TCP6OnlyServerEndpoint

        data_dir = tempfile.mkdtemp(prefix="wire-tls-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        options = Options()
        options.parseOptions(["--port", "18787", "--data-dir", data_dir, "--public-url", "https://198.51.100.1:18787"])
        endpoint, endpoint6, fingerprint = _api_endpoint(options, MemoryReactorClock())
        self.assertIsInstance(endpoint6, TLSServerEndpoint)
        self.assertIsInstance(endpoint6._endpoint, TCP6OnlyServerEndpoint)
        self.assertIs(endpoint6._context, endpoint._context, "one certificate for both")
        options = Options()
        options.parseOptions(["--port", "18787", "--data-dir", data_dir, "--plain-http", "--public-url", "http://198.51.100.1:18787"])
        self.assertIsInstance(_api_endpoint(options, MemoryReactorClock())[1], TCP6OnlyServerEndpoint)
