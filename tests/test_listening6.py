"""The server on IPv6 beside IPv4, with real sockets on ::1: the API's port
and the STUN ports, each an IPv6-only socket (IPv4 keeps its own), and a
host without IPv6 told once instead of failing."""

from __future__ import annotations

import errno
import socket

from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from wire.server import listening
from wire.server.listening import AlsoOnIPv6, AlsoOnIPv6UDP, TCP6OnlyServerEndpoint, ipv6_only_socket
from wire.stun import StunServerProtocol
from wire.stun.codec import encode_binding_request, parse_mapped_address, parse_message


def ipv6_loopback_missing() -> str | None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return f"this host has no IPv6 loopback ({e})"
    return None


class Hello(Protocol):
    def connectionMade(self):
        self.transport.write(b"hello over IPv6")
        self.transport.loseConnection()


class Collect(DatagramProtocol):
    def __init__(self):
        self.received: Deferred = Deferred()

    def datagramReceived(self, data, addr):
        if not self.received.called:
            self.received.callback((data, addr))


class IPv6ListenerTests(unittest.TestCase):
    skip = ipv6_loopback_missing()

    def free_port(self) -> int:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]

    async def test_the_api_port_answers_over_ipv6_beside_an_ipv4_socket_on_the_same_port(self):
        port = self.free_port()
        ipv4 = reactor.listenTCP(port, Factory.forProtocol(Hello), interface="127.0.0.1")
        self.addCleanup(ipv4.stopListening)
        service = AlsoOnIPv6(TCP6OnlyServerEndpoint(reactor, port), Factory.forProtocol(Hello), f"TCP port {port}")
        parent = MultiService()
        service.setServiceParent(parent)
        parent.privilegedStartService()
        parent.startService()
        self.addCleanup(parent.stopService)
        self.assertIsNotNone(service._waitingForPort, "bound beside the IPv4 socket: IPv6 only")
        with socket.create_connection(("::1", port), timeout=5) as client:
            client.setblocking(True)
            received = b""

            def read():
                nonlocal received
                received = client.recv(100)

            await Deferred.fromCoroutine(_in_thread(read))
        self.assertEqual(received, b"hello over IPv6")

    async def test_stun_answers_over_ipv6_with_the_ipv6_source(self):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
        service = AlsoOnIPv6UDP(port, StunServerProtocol(reactor), reactor, f"UDP port {port} (STUN)")
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertIsNotNone(service.listening)
        client = Collect()
        listening_client = reactor.listenUDP(0, client, interface="::1")
        self.addCleanup(listening_client.stopListening)
        request, _ = encode_binding_request()
        listening_client.write(request, ("::1", port))
        data, _ = await client.received
        mapped = parse_mapped_address(parse_message(data))
        self.assertEqual((str(mapped.ip), mapped.port), ("::1", listening_client.getHost().port))

    def test_a_host_without_ipv6_is_told_once_and_the_server_goes_on(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)

        def no_ipv6(*args, **kwargs):
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

        self.patch(listening, "ipv6_only_socket", no_ipv6)
        service = AlsoOnIPv6UDP(3479, StunServerProtocol(reactor), reactor, "UDP port 3479 (STUN)")
        service.privilegedStartService()
        service.startService()
        service.stopService()
        self.assertIsNone(service.listening)
        tcp = AlsoOnIPv6(TCP6OnlyServerEndpoint(reactor, 3478), Factory.forProtocol(Hello), "TCP port 3478")
        tcp.privilegedStartService()
        tcp.startService()  # as twistd does next: not tried (and told) again
        tcp.stopService()
        said = [e["log_format"].format(**e) for e in logged if "IPv6" in e.get("log_format", "")]
        self.assertEqual(
            said,
            [
                "wire-server: no IPv6 on this host: {what} over IPv4 only".format(what="UDP port 3479 (STUN)"),
                "wire-server: no IPv6 on this host: {what} over IPv4 only".format(what="TCP port 3478"),
            ],
        )

    def test_the_socket_is_for_ipv6_alone(self):
        with ipv6_only_socket(socket.SOCK_DGRAM, 0) as s:
            self.assertEqual(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), 1)


async def _in_thread(work):
    from twisted.internet.threads import deferToThread

    await deferToThread(work)
