"""TLS contexts: idle connections keep no OpenSSL buffers."""

from __future__ import annotations

import os

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from wire.server.api import build_site
from wire.tls import PinnedPolicy, ensure_self_signed, read_fingerprint, server_context
from tests.helpers import make_coordinator


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
