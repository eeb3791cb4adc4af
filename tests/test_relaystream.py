"""The relay over TCP: records, the Upgrade beside the API on one port, the
bridge between a stream side and a UDP side, backpressure, and the shim's
move to the stream (and back) when UDP to the server is blocked."""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactor
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial import unittest
from twisted.web import resource, server

from wire.node.relay import UDP_FALLBACK_AFTER, UDP_PROBE_GRACE, RelayShim
from wire.node.relaystream import RelayStreamClient
from wire.protocol import RelayGrant
from wire.relayproto import MAX_FRAME, OVERHEAD, TO_NODE, TO_SERVER, FrameKey, read_header
from wire.relaystream import STREAM_BUFFER, STREAM_HOST, RecordReader, RecordWriter, StreamError, record, request_head
from wire.server.auth import AuthError
from wire.server.relay import RelayTable
from wire.server.relaystream import MAX_REFUSED_IN_A_ROW, RelayStream, RelayStreams, UpgradeSnifferFactory
from wire.stun import StunServerProtocol
from wire.tlsserver import BULK_PIECE, TLSServerProtocol


class RecordTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(min_size=OVERHEAD, max_size=MAX_FRAME), max_size=8), st.data())
    def test_records_come_out_whole_however_the_stream_is_cut(self, frames, data):
        stream = b"".join(record(f) for f in frames)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        reader = RecordReader()
        out = []
        last = 0
        for cut in cuts + [len(stream)]:
            out += reader.feed(stream[last:cut])
            last = cut
        self.assertEqual(out, frames)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=4000))
    def test_garbage_is_a_stream_error_or_frames_never_anything_else(self, garbage):
        reader = RecordReader()
        try:
            for frame in reader.feed(garbage):
                self.assertTrue(OVERHEAD <= len(frame) <= MAX_FRAME)
        except StreamError:
            pass

    def test_an_oversize_or_undersize_record_ends_it(self):
        for length in (0, OVERHEAD - 1, MAX_FRAME + 1, 65535):
            with self.assertRaises(StreamError) as caught:
                RecordReader().feed(struct.pack("!H", length))
            self.assertIn(f"a record of {length} bytes", str(caught.exception))


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return json.dumps({"ok": True, "path": request.path.decode()}).encode()


class Sides:
    """A relay session's two sides, as the nodes hold them."""

    def __init__(self, table: RelayTable, a: str = "node-a", b: str = "node-b"):
        self.a = table.grant(a, b)
        self.b = table.grant(b, a)
        self.key_a, self.key_b = FrameKey(self.a.key), FrameKey(self.b.key)
        self.count = 0

    def from_a(self, payload: bytes) -> bytes:
        self.count += 1
        return self.key_a.seal(self.a.token, TO_SERVER, self.count, payload)

    def from_b(self, payload: bytes) -> bytes:
        self.count += 1
        return self.key_b.seal(self.b.token, TO_SERVER, self.count, payload)


class Collect(DatagramProtocol):
    def __init__(self):
        self.got: list[bytes] = []

    def datagramReceived(self, data, addr):
        self.got.append(data)


class RawStream(Protocol):
    """A test client speaking the stream by hand."""

    def __init__(self):
        self.data = b""

    def dataReceived(self, data):
        self.data += data


def authenticate(credential, node_id):
    if credential != "good-" + node_id:
        raise AuthError("unknown or revoked node credential")
    return node_id


class ServerTests(unittest.TestCase):
    """A real API port on 127.0.0.1 with the relay stream beside it, and a real relay UDP port."""

    def setUp(self):
        self.table = RelayTable(reactor)
        self.outcomes: list[str] = []
        self.streams = RelayStreams(reactor, self.table.handle, self.outcomes.append)
        site = server.Site(Hello())
        self.port = reactor.listenTCP(0, UpgradeSnifferFactory(site, self.streams, authenticate, reactor), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.udp = reactor.listenUDP(0, StunServerProtocol(reactor, relay=self.table.handle, streams=self.streams), interface="127.0.0.1")
        self.addCleanup(self.udp.stopListening)

    async def connect(self, head: bytes) -> RawStream:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = await endpoint.connect(Factory.forProtocol(RawStream))
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(head)
        return client

    async def wait_for(self, check, what: str):
        for _ in range(200):
            if check():
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"never: {what}")

    async def test_plain_http_on_the_same_port_is_untouched(self):
        client = await self.connect(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await self.wait_for(lambda: b'"path": "/health"' in client.data, "the site's answer")
        self.assertTrue(client.data.startswith(b"HTTP/1.1 200"))

    async def test_a_request_for_the_stream_path_that_is_no_upgrade_is_refused(self):
        client = await self.connect(b"GET /relay/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await self.wait_for(lambda: b"\n" in client.data.partition(b"\r\n\r\n")[2], "the refusal")
        self.assertTrue(client.data.startswith(b"HTTP/1.1 426"), client.data)

    async def test_a_bad_credential_is_refused_and_the_stream_never_opens(self):
        client = await self.connect(request_head("x", "node-b", "forged"))
        await self.wait_for(lambda: client.data.endswith(b"\n") and b"\r\n\r\n" in client.data, "the refusal")
        self.assertTrue(client.data.startswith(b"HTTP/1.1 401"), client.data)
        self.assertIn(b"unknown or revoked node credential", client.data)
        self.assertEqual(len(self.streams), 0)

    async def test_an_oversize_head_in_one_write_is_refused(self):
        head = request_head("x", "node-b", "good-node-b")
        client = await self.connect(head[:-2] + b"X-Filler: " + b"a" * 30_000 + b"\r\n\r\n")
        await self.wait_for(lambda: b"\r\n\r\n" in client.data, "the refusal")
        self.assertTrue(client.data.startswith(b"HTTP/1.1 431"), client.data[:40])
        self.assertEqual(len(self.streams), 0)

    async def test_a_tcp_side_and_a_udp_side_reach_each_other(self):
        sides = Sides(self.table)
        stream = await self.connect(request_head("x", "node-b", "good-node-b"))
        await self.wait_for(lambda: b"101 Switching Protocols" in stream.data, "the upgrade")
        stream.data = stream.data.partition(b"\r\n\r\n")[2]
        udp_a = Collect()
        port_a = reactor.listenUDP(0, udp_a, interface="127.0.0.1")
        self.addCleanup(port_a.stopListening)
        relay = ("127.0.0.1", self.udp.getHost().port)
        # Both sides say where they are.
        port_a.write(sides.from_a(b""), relay)
        stream.transport.write(record(sides.from_b(b"")))
        await self.wait_for(lambda: len(udp_a.got) == 1 and len(stream.data) >= 2 + OVERHEAD, "both keepalives answered")
        stream.data = b""
        # A over UDP to B on the stream, re-sealed for B.
        port_a.write(sides.from_a(b"wireguard packet from a"), relay)
        await self.wait_for(lambda: len(stream.data) >= 2 + OVERHEAD + 23, "a's packet at b")
        (frame,) = RecordReader().feed(stream.data)
        token, direction, _ = read_header(frame)
        self.assertEqual((token, direction), (sides.b.token, TO_NODE))
        self.assertTrue(sides.key_b.authentic(frame))
        self.assertEqual(frame[21:-16], b"wireguard packet from a")
        # B on the stream to A over UDP.
        stream.transport.write(record(sides.from_b(b"and back from b")))
        await self.wait_for(lambda: len(udp_a.got) == 2, "b's packet at a")
        self.assertEqual(udp_a.got[1][21:-16], b"and back from b")
        self.assertIn("relay_forwarded", self.outcomes)

    async def test_a_stream_carries_only_its_own_nodes_sides(self):
        sides = Sides(self.table)
        stream = await self.connect(request_head("x", "node-b", "good-node-b"))
        await self.wait_for(lambda: b"101" in stream.data, "the upgrade")
        # node-b's stream sends a frame sealed with a's own key (stolen): refused.
        stream.transport.write(record(sides.from_a(b"")))
        await self.wait_for(lambda: "relay_forged" in self.outcomes, "the refusal")
        self.assertIsNone(self.table._by_token[sides.a.token][1].address, "a's address never moved to b's stream")

    async def test_junk_ends_the_stream(self):
        sides = Sides(self.table)
        stream = await self.connect(request_head("x", "node-b", "good-node-b"))
        await self.wait_for(lambda: b"101" in stream.data, "the upgrade")
        junk = sides.from_b(b"x")[:-1] + b"\x00"  # a wrong MAC
        stream.transport.write(record(junk) * (MAX_REFUSED_IN_A_ROW + 2))
        await self.wait_for(lambda: len(self.streams) == 0, "the stream ended")
        stream.transport.write(b"\x00\x05")  # a record too small: ended already; nothing breaks


class BackpressureTests(unittest.TestCase):
    def test_a_slow_reader_drops_frames_instead_of_buffering_them(self):
        clock = Clock()
        table = RelayTable(clock)
        streams = RelayStreams(clock, table.handle)

        class Transport:
            def __init__(self):
                self.written = []

            def write(self, data):
                self.written.append(data)

            def registerProducer(self, producer, streaming):
                self.producer = producer

            def loseConnection(self):
                pass

        transport = Transport()
        stream = RelayStream(streams, "node-b")
        stream.start(transport, b"")
        address = (STREAM_HOST, stream.number)
        streams.send(b"f" * OVERHEAD, address)
        streams.send(b"g" * OVERHEAD, address)
        clock.advance(0)
        self.assertEqual(transport.written, [record(b"f" * OVERHEAD) + record(b"g" * OVERHEAD)], "one write a turn")
        transport.producer.pauseProducing()
        for _ in range(1000):
            streams.send(b"f" * OVERHEAD, address)
        clock.advance(0)
        self.assertEqual((len(transport.written), streams.dropped), (1, 1000))
        transport.producer.resumeProducing()
        streams.send(b"f" * OVERHEAD, address)
        clock.advance(0)
        self.assertEqual(len(transport.written), 2)
        stream.connectionLost(None)

    def test_a_turn_of_frames_does_not_pause_the_stream_and_a_slow_reader_still_drops(self):
        tcp = SlowTCP()
        clock = Clock()
        writer = RecordWriter(clock, wrapped_over(tcp))  # found under the TLS or guard wrapper
        self.assertEqual((tcp.bufferSize, tcp.no_delay), (STREAM_BUFFER, True))
        frame = b"f" * MAX_FRAME
        per_turn = 256 * 1024 // MAX_FRAME  # what one read of a relay socket brings at most
        accepted, turns = 0, 0
        while turns < 10 and all(writer.add(frame) for _ in range(per_turn)):
            accepted, turns = accepted + per_turn, turns + 1
            clock.advance(0)
        self.assertGreaterEqual(turns, 2, "whole turns go to TCP, however fast they come")
        self.assertTrue(tcp.producerPaused)
        self.assertFalse(writer.add(frame), "the reader takes nothing: frames drop")
        self.assertLessEqual(accepted * (2 + MAX_FRAME), STREAM_BUFFER + per_turn * (2 + MAX_FRAME), "memory stays bounded")
        writer.cancel()

    def test_an_upgraded_stream_takes_whole_tls_records(self):
        clock = Clock()
        streams = RelayStreams(clock, RelayTable(clock).handle)
        tls = TLSServerProtocol(WrappingFactory(Factory()), Protocol())
        tls.makeConnection = None  # not connected: only its record sizes are looked at
        tls.transport = SlowTCP()
        stream = RelayStream(streams, "node-b")
        stream.start(wrapped_over(tls), b"")
        self.assertEqual((tls._record_data, tls._receive_piece), (BULK_PIECE, BULK_PIECE))
        stream.connectionLost(None)

    def test_a_node_has_at_most_two_streams_and_its_removal_ends_them(self):
        clock = Clock()
        streams = RelayStreams(clock, RelayTable(clock).handle)
        ended = []

        class Transport:
            def write(self, data):
                pass

            def registerProducer(self, producer, streaming):
                pass

            def loseConnection(self):
                ended.append(self)

        made = []
        for _ in range(3):
            stream = RelayStream(streams, "node-b")
            stream.start(Transport(), b"")
            made.append(stream)
        # Named, not proven: on an open server anyone may name a node, so
        # streams that carried none of its frames end none of its streams.
        self.assertEqual((len(streams), len(ended)), (3, 0))
        for stream in made:
            streams.claim(stream)  # each carried an authentic frame of the node's
        self.assertEqual(len(streams), 2)
        self.assertEqual(len(ended), 1, "the oldest ended")
        unclaimed = RelayStream(streams, "node-b")
        unclaimed.start(Transport(), b"")
        self.assertEqual(streams.end_node("node-b"), 3, "removal ends them all, proven or not")
        self.assertEqual(len(streams), 0)
        clock.advance(1000)  # no idle timers left behind


class SlowTCP(FileDescriptor):
    """A TCP connection whose reader takes nothing."""

    def __init__(self):
        super().__init__(MemoryReactor())
        self.connected = True
        self.no_delay = False

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled

    def writeSomeData(self, data):
        return 0


def wrapped_over(transport) -> ProtocolWrapper:
    """A protocol wrapper (as TLS and the connection guard are) over ``transport``."""
    wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
    wrapper.makeConnection(transport)
    return wrapper


class FakeStream:
    def __init__(self):
        self.wanted = False
        self.sent: list[bytes] = []
        self.is_up = True
        self.problem = None
        self.dropped = 0

    def want(self, wanted):
        self.wanted = wanted

    def send(self, frame):
        self.sent.append(frame)
        return True


class FakeUdpPort:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((bytes(data), addr))

    def getHost(self):
        class Host:
            port = 40000

        return Host()

    def stopListening(self):
        from twisted.internet.defer import succeed

        return succeed(None)


class FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.ports = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        udp = FakeUdpPort()
        protocol.transport = udp
        protocol.startProtocol()
        self.ports.append(udp)
        return udp


class ShimFallbackTests(unittest.TestCase):
    def setUp(self):
        self.reactor = FakeReactor()
        self.shim = RelayShim(self.reactor, "198.51.100.1", 8788, 51820)
        self.stream = FakeStream()
        self.shim.stream = self.stream
        self.table = RelayTable(Clock())
        self.grant = self.table.grant("me", "peer", 8788)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.shim.stop()))

    def add(self):
        d = Deferred.fromCoroutine(self.shim.add(self.grant))
        self.reactor.advance(0)
        return self.successResultOf(d)

    def answer(self, counter: int = 1) -> bytes:
        side = self.table._by_token[self.grant.token][1]
        side.sent = counter - 1
        return side.wrap(b"")

    def test_no_udp_answer_moves_the_frames_to_the_stream(self):
        self.add()
        self.assertEqual(self.shim.transport, "udp")
        self.reactor.advance(UDP_FALLBACK_AFTER)
        self.assertEqual(self.shim.transport, "tcp")
        self.assertTrue(self.stream.wanted)
        self.assertIn("UDP to the server blocked", self.shim.tcp_reason)
        self.assertEqual(len(self.stream.sent), 1, "each side says at once it is on the stream")
        # A WireGuard packet goes over the stream now.
        session = self.shim.sessions()["peer"]
        self.shim.send_upstream(session, b"packet")
        self.assertEqual(len(self.stream.sent), 2)
        # An answer over the stream reaches WireGuard and keeps the session alive.
        self.shim.from_stream(self.answer(1))
        self.assertTrue(self.shim.is_alive("peer"))

    def test_an_answer_over_udp_keeps_udp(self):
        self.add()
        self.shim.from_server(self.answer(1), self.shim.server)
        self.reactor.advance(UDP_FALLBACK_AFTER * 2)
        self.assertEqual((self.shim.transport, self.stream.wanted), ("udp", False))

    def test_udp_that_works_again_takes_the_frames_back(self):
        self.add()
        self.reactor.advance(UDP_FALLBACK_AFTER)
        self.assertEqual(self.shim.transport, "tcp")
        udp_before = len(self.reactor.ports[0].sent)
        # A keepalive round on the stream probes UDP first, then the stream.
        self.reactor.advance(10 - UDP_FALLBACK_AFTER)
        self.assertEqual(len(self.reactor.ports[0].sent), udp_before + 1, "a UDP probe")
        streamed = len(self.stream.sent)
        self.reactor.advance(UDP_PROBE_GRACE)
        self.assertEqual(len(self.stream.sent), streamed + 1, "no UDP answer: the stream's own keepalive")
        # The next probe is answered over UDP: back to UDP, the stream closed.
        self.reactor.advance(10 - UDP_PROBE_GRACE)
        self.shim.from_server(self.answer(5), self.shim.server)
        self.assertEqual((self.shim.transport, self.stream.wanted), ("udp", False))
        streamed = len(self.stream.sent)
        self.reactor.advance(UDP_PROBE_GRACE)
        self.assertEqual(len(self.stream.sent), streamed, "no stream keepalive once back on UDP")

    def test_udp_that_stops_answering_later_moves_to_the_stream(self):
        self.add()
        self.shim.from_server(self.answer(1), self.shim.server)
        for _ in range(3):
            self.reactor.advance(10)
        self.assertEqual(self.shim.transport, "tcp")
        self.assertIn("stopped answering over UDP", self.shim.tcp_reason)

    def test_a_session_gone_before_the_check_leaves_the_next_one_checked(self):
        self.add()
        d = Deferred.fromCoroutine(self.shim.remove("peer"))
        self.reactor.advance(0)
        self.successResultOf(d)
        self.reactor.advance(UDP_FALLBACK_AFTER)
        self.assertEqual(self.shim.transport, "udp")
        self.add()
        self.reactor.advance(UDP_FALLBACK_AFTER)
        self.assertEqual(self.shim.transport, "tcp", "the fallback is armed again")

    def test_the_stream_coming_up_says_where_each_side_is_at_once(self):
        self.add()
        self.reactor.advance(UDP_FALLBACK_AFTER)
        before = len(self.stream.sent)
        self.shim.stream_up()
        self.assertEqual(len(self.stream.sent), before + 1)
        # No session left: the stream is given up, and wanted again with the next one.
        d = Deferred.fromCoroutine(self.shim.remove("peer"))
        self.reactor.advance(0)
        self.successResultOf(d)
        self.assertFalse(self.stream.wanted)
        self.add()
        self.assertTrue(self.stream.wanted)

    def test_without_a_stream_the_shim_stays_on_udp(self):
        self.shim.stream = None
        self.add()
        self.reactor.advance(60)
        self.assertEqual(self.shim.transport, "udp")


class StreamClientTests(unittest.TestCase):
    """The node's client against a real API port with the stream."""

    def setUp(self):
        self.table = RelayTable(reactor)
        self.streams = RelayStreams(reactor, self.table.handle)
        self.factory = UpgradeSnifferFactory(server.Site(Hello()), self.streams, authenticate, reactor)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.frames: list[bytes] = []

    def client(self, credential: str) -> RelayStreamClient:
        client = RelayStreamClient(
            reactor,
            lambda: TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port),
            "127.0.0.1",
            "node-b",
            lambda: credential,
            lambda frame: self.frames.append(frame) or True,
        )
        self.addCleanup(client.want, False)
        return client

    async def wait_for(self, check, what: str):
        for _ in range(300):
            if check():
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"never: {what}")

    async def test_it_opens_carries_frames_and_opens_again_when_lost(self):
        sides = Sides(self.table)
        client = self.client("good-node-b")
        client.want(True)
        await self.wait_for(lambda: client.is_up, "the stream up")
        self.assertTrue(client.send(sides.from_b(b"")))
        await self.wait_for(lambda: len(self.frames) == 1, "the keepalive's answer")
        self.assertTrue(sides.key_b.authentic(self.frames[0]))
        # The server drops it: the client opens it again by itself.
        self.streams.end_node("node-b")
        await self.wait_for(lambda: not client.is_up, "the stream lost")
        await self.wait_for(lambda: client.is_up, "the stream open again")
        self.assertIsNone(client.problem)

    async def test_a_server_that_never_answers_the_upgrade_is_left_and_tried_again(self):
        from wire.node import relaystream

        self.patch(relaystream, "HEAD_TIMEOUT", 0.2)
        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        client = RelayStreamClient(
            reactor, lambda: TCP4ClientEndpoint(reactor, "127.0.0.1", silent.getHost().port), "127.0.0.1", "node-b",
            lambda: None, self.frames.append,
        )
        self.addCleanup(client.want, False)
        client.want(True)
        await self.wait_for(lambda: client.problem is not None, "the timeout")
        self.assertIn("no answer to the relay stream's upgrade within 0s", client.problem)
        await self.wait_for(lambda: client._retry is not None or client._connecting is not None, "another try")

    async def test_a_stream_ended_at_once_is_opened_again_with_backoff(self):
        ups = []
        client = self.client("good-node-b")
        client.on_up = lambda: ups.append(reactor.seconds())
        client.want(True)
        await self.wait_for(lambda: client.is_up, "the stream up")
        for _ in range(3):
            self.streams.end_node("node-b")  # the server ends it: it never carried an authentic frame
            await self.wait_for(lambda: not client.is_up, "lost")
            await self.wait_for(lambda: client.is_up, "up again")
        gaps = [b - a for a, b in zip(ups, ups[1:])]
        self.assertEqual(len(ups), 4, "told each time it came up")
        self.assertGreater(gaps[-1], gaps[0] * 1.5, f"the waits grow: {gaps}")

    async def test_a_refusal_is_told_and_tried_again_later(self):
        client = self.client("wrong")
        client.want(True)
        await self.wait_for(lambda: client.problem is not None, "the refusal")
        self.assertIn("the server refused the relay stream: 401", client.problem)
        self.assertIn("unknown or revoked node credential", client.problem)
        self.assertFalse(client.send(b"x" * OVERHEAD))
        self.assertEqual(client.dropped, 1)
