"""wire.labforward, the demo's window into its server's namespace, as a real
process on 127.0.0.1: handed a listening socket as fd 3, it carries each
connection to its target both ways; bad arguments are told, not raised.
(tests.test_demo_lab runs it across namespaces, in the kept demo.)"""

from __future__ import annotations

import argparse
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from wire.labforward import main, parse_target
from wire.twistd import wire_environment


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"echo:" + data)


class Collect(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.got: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.endswith(b"!") and not self.got.called:
            self.got.callback(self.received)


class Ended(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


class ForwarderProcessTests(unittest.TestCase):
    timeout = 30

    async def test_connections_are_carried_to_the_target_both_ways(self):
        target = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Echo))
        self.addCleanup(target.stopListening)
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        port = listening.getsockname()[1]
        ended = Ended()
        process = reactor.spawnProcess(
            ended, sys.executable, [sys.executable, "-m", "wire.labforward", "--to", f"127.0.0.1:{target.getHost().port}"],
            env=wire_environment(), childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()},
        )
        listening.close()

        async def stop() -> None:
            process.signalProcess("KILL")
            await ended.ended

        self.addCleanup(stop)
        for attempt in range(2):  # two connections, one after the other
            collect = Collect()
            client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), collect)
            client.transport.write(f"hello {attempt}!".encode())
            got = await collect.got
            self.assertEqual(got, f"echo:hello {attempt}!".encode())
            client.transport.loseConnection()
            await deferLater(reactor, 0.05, lambda: None)


class ArgumentTests(unittest.TestCase):
    def test_targets_are_addresses_with_ports(self):
        self.assertEqual(parse_target("198.18.0.3:8787"), ("198.18.0.3", 8787))
        self.assertEqual(parse_target("[::1]:8787"), ("::1", 8787))
        for bad in ("server:8787", "198.18.0.3", "198.18.0.3:0", "198.18.0.3:99999", "1.2.3.4:80; rm -rf /"):
            self.assertRaises(argparse.ArgumentTypeError, parse_target, bad)

    def test_a_descriptor_that_is_no_listening_socket_is_told(self):
        with socket.socket() as unbound, open(__file__) as not_a_socket:
            self.assertEqual(main(["--to", "127.0.0.1:1", "--fd", str(not_a_socket.fileno())]), 2)
            self.assertEqual(main(["--to", "127.0.0.1:1", "--fd", str(unbound.fileno())]), 2)
