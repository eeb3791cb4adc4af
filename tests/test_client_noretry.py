"""A request whose kept-alive connection dies under it fails to its caller,
over real sockets on 127.0.0.1.

Twisted's connection pool would otherwise send a GET again on a new
connection, unseen: when the server's machine vanished (TCP keepalive ended
the long-poll's connection, wire.tcpkeepalive) that new connection waits its
whole connect timeout, and the node learns of the loss 10 s late, too late to
be on another replica within 10 s (seen in tests.test_replicas_lab). The
daemon's loops own retry, backoff and failover (wire.node.servers).
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from wire.client import CoordinationClient, ServerUnreachable, make_http_client


class _DyingConnection(Protocol):
    """Answers the first request of its connection and kept alive; a second
    request on the same connection gets the connection cut, unanswered. A
    new connection's requests are answered (as a retry would be)."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""
        self.answered = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.factory.requests += 1
            if self.answered and self.factory.connections == 1:
                self.transport.abortConnection()
                return
            body = json.dumps({"nodes": [], "total": 0}).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.answered += 1


class NoHiddenRetryTests(unittest.TestCase):
    async def test_a_get_whose_kept_alive_connection_dies_fails_and_is_not_sent_again(self):
        factory = Factory.forProtocol(_DyingConnection)
        factory.connections = factory.requests = 0
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        http = make_http_client(reactor, persistent=True)
        self.addCleanup(http._agent._pool.closeCachedConnections)
        client = CoordinationClient(http, f"http://127.0.0.1:{port.getHost().port}")

        self.assertEqual((await client.status())["total"], 0)
        with self.assertRaises(ServerUnreachable):
            await client.status()  # on the kept-alive connection, which dies
        self.assertEqual((factory.connections, factory.requests), (1, 2), "sent once, on one connection")
        # The caller's own retry opens a new connection.
        self.assertEqual((await client.status())["total"], 0)
        self.assertEqual(factory.connections, 2)
