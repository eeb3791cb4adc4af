"""The API port's connection guard: a cap per address, a reserve kept, the idlest closed at the limit."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from wire.server.connguard import ConnectionGuard, connection_limit


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class GuardTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def connect(self, guard: ConnectionGuard, host: str):
        protocol = guard.buildProtocol(IPv4Address("TCP", host, 40000))
        if protocol is None:
            return None, None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_one_address_gets_its_share_and_no_more(self):
        guard = ConnectionGuard(Factory.forProtocol(Echo), self.clock, limit=100, per_address=2)
        self.assertIsNotNone(self.connect(guard, "198.51.100.1")[0])
        self.assertIsNotNone(self.connect(guard, "198.51.100.1")[0])
        self.assertIsNone(self.connect(guard, "198.51.100.1")[0], "the third from one address is refused")
        self.assertIsNotNone(self.connect(guard, "198.51.100.2")[0], "another address is not")

    def test_a_trusted_proxy_is_not_capped(self):
        guard = ConnectionGuard(Factory.forProtocol(Echo), self.clock, limit=100, per_address=1, uncapped=lambda h: h == "10.0.0.1")
        for _ in range(5):
            self.assertIsNotNone(self.connect(guard, "10.0.0.1")[0])

    def test_at_the_limit_the_idlest_is_closed_for_the_newcomer(self):
        guard = ConnectionGuard(Factory.forProtocol(Echo), self.clock, limit=3)
        (p1, t1), (p2, t2), (p3, t3) = [self.connect(guard, f"198.51.100.{i}") for i in (1, 2, 3)]
        p1.dataReceived(b"busy")  # p2 is now the idlest
        p4, t4 = self.connect(guard, "198.51.100.4")
        self.assertIsNotNone(p4)
        self.assertTrue(t2.disconnecting, "the idlest made room")
        self.assertFalse(t1.disconnecting or t3.disconnecting)
        self.assertEqual(guard.open_count, 3)

    def test_the_condition_is_logged_once_an_interval_with_counts(self):
        guard = ConnectionGuard(Factory.forProtocol(Echo), self.clock, limit=100, per_address=1)
        self.connect(guard, "198.51.100.1")
        for _ in range(50):
            self.connect(guard, "198.51.100.1")
        self.assertEqual(len([e for e in self.logged if "API connections at their limit" in e["log_format"]]), 1)
        self.clock.advance(61)
        self.connect(guard, "198.51.100.1")
        lines = [e for e in self.logged if "API connections at their limit" in e["log_format"]]
        self.assertEqual((len(lines), lines[-1]["refused"]), (2, 50), "the 49 held back, told with the next")

    def test_closed_connections_give_their_place_back(self):
        guard = ConnectionGuard(Factory.forProtocol(Echo), self.clock, limit=100, per_address=1)
        protocol, transport = self.connect(guard, "198.51.100.1")
        protocol.connectionLost(None)
        self.assertIsNotNone(self.connect(guard, "198.51.100.1")[0])
        self.assertEqual(guard.open_count, 1)

    def test_a_reserve_is_kept_below_the_open_files_limit(self):
        self.assertEqual(connection_limit(1024), 768)
        self.assertEqual(connection_limit(100), 16)


class RealSocketGuardTests(unittest.TestCase):
    async def test_over_tcp_the_third_connection_from_one_address_is_closed(self):
        guard = ConnectionGuard(Factory.forProtocol(Echo), reactor, limit=100, per_address=2)
        port = reactor.listenTCP(0, guard, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        class Client(Protocol):
            def __init__(self):
                self.lost: Deferred = Deferred()
                self.got = b""

            def dataReceived(self, data):
                self.got += data

            def connectionLost(self, reason):
                self.lost.callback(None)

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        clients = [Client() for _ in range(3)]
        for client in clients:
            await connectProtocol(endpoint, client)
        await clients[2].lost  # closed by the server at once
        for client in clients[:2]:
            client.transport.write(b"hi")
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([c.got for c in clients[:2]], [b"hi", b"hi"])
        for client in clients[:2]:
            client.transport.loseConnection()
            await client.lost
