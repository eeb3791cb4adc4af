"""TLS on the server and the node: what each connection costs in memory."""

from __future__ import annotations

import os
import shutil
import tempfile

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from tests.helpers import make_coordinator
from wire.server.api import build_site
from wire.server.tap import Options, _api_endpoint
from wire.tls import (
    TLS_RECORD_DATA,
    PinnedPolicy,
    SmallRecordTLS,
    TLSServerEndpoint,
    ensure_self_signed,
    read_fingerprint,
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

    def test_server_connections_release_idle_buffers(self):
        options = server_context(self.cert_path, self.key_path)
        context = options.getContext()
        self.assertTrue(mode_of(context) & SSL.MODE_RELEASE_BUFFERS)
        # Each connection is made from that same context.
        factory = TLSMemoryBIOFactory(options, False, build_site(make_coordinator(self)))
        for _ in range(2):
            protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            self.assertIs(options.serverConnectionForTLS(protocol).get_context(), context)

    def test_pinned_client_connections_release_idle_buffers(self):
        creator = PinnedPolicy(read_fingerprint(self.cert_path)).creatorForNetloc(b"127.0.0.1", 8787)
        context = creator._context
        self.assertTrue(mode_of(context) & SSL.MODE_RELEASE_BUFFERS)
        self.assertIs(creator.clientConnectionForTLS(object()).get_context(), context)


class SmallRecordTests(unittest.TestCase):
    """Server connections write TLS records of at most TLS_RECORD_DATA bytes."""

    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        options = server_context(*ensure_self_signed(data_dir))
        reactor = MemoryReactorClock()
        self.app = Protocol()
        TLSServerEndpoint(TCP4ServerEndpoint(reactor, 8787), options).listen(Factory.forProtocol(lambda: self.app))
        ((_, factory, _, _),) = reactor.tcpServers
        self.tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertIsInstance(self.tls, SmallRecordTLS)
        self.wire = StringTransport()
        self.tls.makeConnection(self.wire)
        self.client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        self.client.set_connect_state()
        for _ in range(5):
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            self.to_server()
            self.to_client()
        self.assertTrue(self.tls._handshakeDone)

    def to_server(self):
        try:
            self.tls.dataReceived(self.client.bio_read(1 << 20))
        except SSL.WantReadError:
            pass

    def to_client(self) -> list[int]:
        """Hand the server's output to the client; the lengths of its records."""
        data = self.wire.value()
        self.wire.clear()
        lengths, at = [], 0
        while at < len(data):
            lengths.append(int.from_bytes(data[at + 3 : at + 5], "big"))
            at += 5 + lengths[-1]
        if data:
            self.client.bio_write(data)
        return lengths

    def received(self) -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(self.client.recv(1 << 20))
            except SSL.WantReadError:
                return b"".join(chunks)

    def test_a_large_answer_goes_out_in_small_records(self):
        answer = os.urandom(300_000)
        self.app.transport.write(answer)
        lengths = self.to_client()
        # Each record: the data, its content type and a 16-byte tag.
        self.assertLessEqual(max(lengths), TLS_RECORD_DATA + 17)
        self.assertGreaterEqual(len(lengths), 300_000 // TLS_RECORD_DATA)
        self.assertEqual(self.received(), answer)

    def test_what_openssl_cannot_send_yet_waits_in_order(self):
        real = self.tls._tlsConnection
        sends = []

        class Refusing:
            """Refuses the second write, as during a renegotiation."""

            def send(self, data):
                sends.append(len(data))
                if len(sends) == 2:
                    raise SSL.WantReadError()
                return real.send(data)

            def __getattr__(self, name):
                return getattr(real, name)

        answer = os.urandom(100_000)
        self.tls._tlsConnection = Refusing()
        self.app.transport.write(answer)
        self.assertEqual(sends, [TLS_RECORD_DATA, TLS_RECORD_DATA], "nothing is written past a refusal")
        self.tls._tlsConnection = real
        self.tls._unbufferPendingWrites()
        self.to_client()
        self.assertEqual(self.received(), answer)


class EndpointTests(unittest.TestCase):
    def endpoint(self, *args):
        # UNIX socket paths are short (108 bytes): a short data dir.
        data_dir = tempfile.mkdtemp(prefix="wire-tls-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        options = Options()
        options.parseOptions(["--interface", "127.0.0.1", "--port", "18787", "--data-dir", data_dir, *args])
        return _api_endpoint(options, MemoryReactorClock())

    def test_the_api_listens_through_small_record_tls(self):
        endpoint, fingerprint = self.endpoint()
        self.assertIsInstance(endpoint, TLSServerEndpoint)
        self.assertEqual(len(fingerprint), 64)
        endpoint, fingerprint = self.endpoint("--plain-http")
        self.assertIsInstance(endpoint, TCP4ServerEndpoint)
        self.assertEqual(fingerprint, "")
