"""The relay: frame codec, the server's session table, the node's shim."""

from __future__ import annotations

import base64
import errno
import os
import socket
import threading


from hypothesis import given, strategies as st
from twisted.internet import reactor
from twisted.internet._resolver import GAIResolver
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import FakeDatagramTransport
from twisted.trial import unittest

from tests.fakes import UDPClock
from wire.node.lan import LanAddress, detect_lan_ip
from wire.node.relay import RelayShim
from wire.node.wireguard import MTU
from wire.relayproto import (
    MAX_FRAME,
    MAX_PAYLOAD,
    OVERHEAD,
    TO_NODE,
    TO_SERVER,
    FrameError,
    DatagramBatcher,
    FrameKey,
    ReplayWindow,
    payload_view,
    read_header,
    socket_of,
    udp_gso_supported,
)
from wire.protocol import RelayGrant
from wire.server.relay import RelayTable
from wire.stun import StunServerProtocol

KEY = bytes(range(32))
TOKEN = b"T" * 8


def encode_frame(token: bytes, key: bytes, direction: int, counter: int, payload: bytes) -> bytes:
    return FrameKey(key).seal(token, direction, counter, payload)


def opened(frame: bytes, key: bytes) -> tuple[bytes, int, int, bytes]:
    """(token, direction, counter, payload) of a frame that must verify under key."""
    if not FrameKey(key).authentic(frame):
        raise AssertionError("frame does not verify")
    return (*read_header(frame), bytes(payload_view(frame)))


class FrameTests(unittest.TestCase):
    @given(st.binary(max_size=MAX_PAYLOAD), st.integers(0, 2**64 - 1), st.sampled_from([TO_SERVER, TO_NODE]))
    def test_round_trip(self, payload, counter, direction):
        frame = encode_frame(TOKEN, KEY, direction, counter, payload)
        self.assertEqual(len(frame), OVERHEAD + len(payload))
        self.assertEqual(opened(frame, KEY), (TOKEN, direction, counter, payload))
        self.assertFalse(FrameKey(bytes(32)).authentic(frame))

    @given(st.binary(max_size=2000))
    def test_garbage_raises_only_frame_error(self, data):
        try:
            read_header(data)
        except FrameError:
            return
        self.assertLessEqual(len(data), MAX_FRAME)
        self.assertFalse(FrameKey(KEY).authentic(data))

    def test_any_changed_byte_breaks_the_mac(self):
        data = bytearray(encode_frame(TOKEN, KEY, TO_SERVER, 7, b"payload"))
        for i in range(len(data)):
            tampered = bytearray(data)
            tampered[i] ^= 1
            self.assertFalse(FrameKey(KEY).authentic(bytes(tampered)), f"byte {i}")
        self.assertFalse(FrameKey(KEY).authentic(bytes(data[:-1])), "truncated")

    def test_a_memoryview_payload_seals_like_bytes(self):
        frame = encode_frame(TOKEN, KEY, TO_SERVER, 7, b"payload")
        self.assertEqual(FrameKey(KEY).seal(TOKEN, TO_SERVER, 7, payload_view(frame)), frame)

    def test_a_relayed_full_size_packet_needs_no_fragmenting(self):
        # tunnel MTU + WireGuard's data header and tag + the relay frame +
        # IPv6 and UDP headers: within a 1500-byte path.
        self.assertLessEqual(MTU + 32 + OVERHEAD + 48, 1500)
        self.assertLessEqual(OVERHEAD + MAX_PAYLOAD, MAX_FRAME)
        self.assertGreaterEqual(MAX_PAYLOAD, MTU + 32)

    def test_oversize_and_bad_keys_refused(self):
        self.assertRaises(FrameError, encode_frame, TOKEN, KEY, TO_SERVER, 1, b"x" * (MAX_PAYLOAD + 1))
        self.assertRaises(FrameError, FrameKey, b"short")
        self.assertRaises(FrameError, read_header, encode_frame(TOKEN, KEY, TO_SERVER, 1, b"x" * MAX_PAYLOAD) + b"x")


class ReplayWindowTests(unittest.TestCase):
    def test_each_counter_once_with_reordering(self):
        window = ReplayWindow()
        for counter in (1, 2, 5, 3, 4, 10, 6):
            self.assertTrue(window.check_and_mark(counter), counter)
        for counter in (1, 2, 3, 4, 5, 6, 10):
            self.assertFalse(window.check_and_mark(counter), counter)
        self.assertTrue(window.check_and_mark(1000))
        self.assertFalse(window.check_and_mark(1000 - ReplayWindow.SIZE), "too old")
        self.assertTrue(window.check_and_mark(999))

    @given(st.lists(st.integers(0, 600), max_size=200))
    def test_never_accepts_twice(self, counters):
        window = ReplayWindow()
        accepted = [c for c in counters if window.check_and_mark(c)]
        self.assertEqual(len(accepted), len(set(accepted)))


class RelayTableTests(unittest.TestCase):
    A, B = ("10.0.0.1", 4000), ("10.0.0.2", 5000)

    def setUp(self):
        self.clock = Clock()
        self.table = RelayTable(self.clock, rate=10_000, burst=10_000)
        self.ga = self.table.grant("node-a", "node-b")
        self.gb = self.table.grant("node-b", "node-a")
        self.counters = {"a": 0, "b": 0}

    def frame(self, side, payload, counter=None, key=None, direction=TO_SERVER):
        grant = self.ga if side == "a" else self.gb
        if counter is None:
            self.counters[side] += 1
            counter = self.counters[side]
        return encode_frame(grant.token, key or grant.key, direction, counter, payload)

    def test_both_sides_share_a_session_with_their_own_keys(self):
        self.assertEqual(self.ga.session_id, self.gb.session_id)
        self.assertNotEqual(self.ga.key, self.gb.key)
        self.assertEqual(self.table.grant("node-a", "node-b"), self.ga, "asking again gives the same grant")
        self.assertRaises(ValueError, self.table.grant, "node-a", "node-a")

    def test_a_fresh_grant_gives_a_new_side_whose_counter_may_start_again(self):
        """A node that comes back to the relay (from a direct path, or a
        restarted daemon) counts its frames from 1 again: on its old side the
        window would call them replays, so its grant is a new side, and the
        peer's side goes on."""
        self.table.handle(self.frame("a", b""), self.A)
        self.table.handle(self.frame("b", b""), self.B)
        self.assertEqual(self.table.handle(self.frame("a", b"one"), self.A)[0], "relay_forwarded")
        old = self.ga
        self.ga = self.table.grant("node-a", "node-b", fresh=True)
        self.assertEqual(self.ga.session_id, old.session_id)
        self.assertNotEqual((self.ga.token, self.ga.key), (old.token, old.key))
        self.assertEqual(self.table.handle(encode_frame(old.token, old.key, TO_SERVER, 99, b"x"), self.A)[0], "relay_unknown", "the old side ended")
        self.counters["a"] = 0
        self.assertEqual(self.table.handle(self.frame("a", b""), self.A)[0], "relay_keepalive", "counter 1 again")
        outcome, data, destination = self.table.handle(self.frame("a", b"two"), self.A)
        self.assertEqual((outcome, destination), ("relay_forwarded", self.B))
        outcome, data, destination = self.table.handle(self.frame("b", b"back"), self.B)
        self.assertEqual((outcome, destination), ("relay_forwarded", self.A), "the peer reaches the new side")
        self.assertEqual(opened(data, self.ga.key)[3], b"back")

    def test_forwards_between_the_two_holders_only(self):
        self.assertEqual(self.table.handle(self.frame("a", b""), self.A)[0], "relay_keepalive")
        self.assertEqual(self.table.handle(self.frame("a", b"hello"), self.A)[0], "relay_no_peer")
        self.table.handle(self.frame("b", b""), self.B)
        outcome, data, destination = self.table.handle(self.frame("a", b"hello"), self.A)
        self.assertEqual(outcome, "relay_forwarded")
        self.assertEqual(destination, self.B)
        token, direction, _, payload = opened(data, self.gb.key)
        self.assertEqual((token, direction, payload), (self.gb.token, TO_NODE, b"hello"))
        self.assertFalse(FrameKey(self.ga.key).authentic(data), "sealed for B only")
        self.assertEqual(len(data), OVERHEAD + 5, "no amplification")

    def test_forged_replayed_reflected_and_unknown_frames_are_dropped(self):
        self.table.handle(self.frame("a", b""), self.A)
        self.table.handle(self.frame("b", b""), self.B)
        captured = self.frame("a", b"secret")
        self.assertEqual(self.table.handle(captured, self.A)[0], "relay_forwarded")
        attacker = ("192.0.2.66", 6666)
        self.assertEqual(self.table.handle(captured, attacker), ("relay_replay", None, None))
        self.assertEqual(self.table.handle(self.frame("a", b"x", key=bytes(32)), attacker), ("relay_forged", None, None))
        self.assertEqual(self.table.handle(encode_frame(b"Z" * 8, KEY, TO_SERVER, 1, b"x"), attacker), ("relay_unknown", None, None))
        self.assertEqual(self.table.handle(b"WRL2garbage", attacker), ("relay_malformed", None, None))
        # A server-to-node frame sent back to the server is not taken as the node's.
        _, to_b, _ = self.table.handle(self.frame("a", b"y"), self.A)
        self.assertEqual(self.table.handle(to_b, attacker)[0], "relay_unknown")
        # The attacker never became anyone's address.
        _, _, destination = self.table.handle(self.frame("b", b"reply"), self.B)
        self.assertEqual(destination, self.A)

    def test_rate_limited_per_side(self):
        self.table.handle(self.frame("a", b""), self.A)
        self.table.handle(self.frame("b", b""), self.B)
        outcomes = [self.table.handle(self.frame("a", b"x" * 1000), self.A)[0] for _ in range(12)]
        self.assertEqual(outcomes.count("relay_forwarded"), 10)
        self.assertEqual(outcomes[-1], "relay_rate_limited")
        self.clock.advance(0.5)
        self.assertEqual(self.table.handle(self.frame("a", b"x" * 1000), self.A)[0], "relay_forwarded")

    def test_a_clock_stepping_back_neither_refills_nor_locks_out(self):
        self.table.handle(self.frame("a", b""), self.A)
        self.table.handle(self.frame("b", b""), self.B)
        outcomes = [self.table.handle(self.frame("a", b"x" * 1000), self.A)[0] for _ in range(11)]
        self.assertEqual(outcomes[-1], "relay_rate_limited")
        self.clock.rightNow -= 3600
        self.assertEqual(self.table.handle(self.frame("a", b"x" * 1000), self.A)[0], "relay_rate_limited")
        # The time that really passed refills, from the new reading on.
        self.clock.advance(0.15)
        self.assertEqual(self.table.handle(self.frame("a", b"x" * 1000), self.A)[0], "relay_forwarded")
        self.assertEqual(self.table.handle(self.frame("a", b"x" * 1000), self.A)[0], "relay_rate_limited")

    def test_unused_sessions_end(self):
        self.clock.advance(self.table.idle_timeout + 1)
        self.assertEqual(self.table.expire(), 1)
        self.assertEqual(self.table.handle(self.frame("a", b""), self.A)[0], "relay_unknown")

    def test_end_sessions_of_a_node(self):
        self.assertEqual(self.table.end_sessions_of("node-b"), 1)
        self.assertEqual(len(self.table), 0)


class SocketOfTests(unittest.TestCase):
    def test_a_real_port_hands_out_its_socket_through_get_handle(self):
        port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertIs(socket_of(port), port.getHandle())
        self.assertEqual(socket_of(port).getsockname()[1], port.getHost().port)

    def test_an_in_memory_transport_has_none(self):
        self.assertIsNone(socket_of(FakeDatagramTransport()))


class DatagramBatcherTests(unittest.TestCase):
    """The relay's sends leave after the reactor turn that made them, runs of
    equal-size datagrams as one GSO send where the kernel has it, and every
    datagram arrives whole, in order."""

    def setUp(self):
        self.receiver = FakeWireGuardSocket()
        self.receiving = reactor.listenUDP(0, self.receiver, interface="127.0.0.1")
        self.addCleanup(self.receiving.stopListening)
        self.sending = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(self.sending.stopListening)
        self.to = ("127.0.0.1", self.receiving.getHost().port)

    async def received(self, count: int) -> list[bytes]:
        for _ in range(200):
            if len(self.receiver.received) >= count:
                break
            await deferLater(reactor, 0.01, lambda: None)
        return [data for data, _ in self.receiver.received]

    async def test_a_burst_arrives_datagram_by_datagram_in_order(self):
        batcher = DatagramBatcher(reactor, self.sending)
        frames = [encode_frame(TOKEN, KEY, TO_NODE, i, bytes([i]) * 1400) for i in range(40)]
        frames += [encode_frame(TOKEN, KEY, TO_NODE, 99, b"short tail"), b"x" * 1500, b"y" * 1500]
        for frame in frames:
            batcher.send(payload_view(frame), self.to)
        self.assertEqual(batcher.sent, 0, "nothing leaves before the turn ends")
        self.assertEqual(await self.received(len(frames)), [bytes(payload_view(f)) for f in frames])
        self.assertEqual((batcher.sent, batcher.dropped), (len(frames), 0))
        if udp_gso_supported(self.sending.getHandle()):
            # 40 full + the short tail in one send; the two over GSO_MAX_SEGMENT alone.
            self.assertEqual(batcher.sends, 3)
        else:
            self.assertEqual(batcher.sends, len(frames))

    async def test_runs_break_at_a_new_destination_or_a_larger_datagram(self):
        other = FakeWireGuardSocket()
        other_port = reactor.listenUDP(0, other, interface="127.0.0.1")
        self.addCleanup(other_port.stopListening)
        batcher = DatagramBatcher(reactor, self.sending)
        to_other = ("127.0.0.1", other_port.getHost().port)
        sends = [(b"a" * 100, self.to), (b"b" * 100, to_other), (b"c" * 50, self.to), (b"d" * 100, self.to)]
        for data, destination in sends:
            batcher.send(data, destination)
        self.assertEqual(await self.received(3), [b"a" * 100, b"c" * 50, b"d" * 100])
        self.assertEqual([data for data, _ in other.received], [b"b" * 100])

    def test_a_run_the_link_refuses_goes_datagram_by_datagram(self):
        """A host link under 1500 bytes refuses GSO segments as large as ours
        (EMSGSIZE): that run, and later ones of its size, go one by one."""
        sock = RefusingSocket(errno.EMSGSIZE)
        batcher = DatagramBatcher(Clock(), FakePort(sock))
        self.assertTrue(batcher.gso)
        for i in range(4):
            batcher.send(b"%d" % i * 700, ("192.0.2.1", 9))
        batcher.flush()
        self.assertEqual(sock.sent, [b"%d" % i * 700 for i in range(4)])
        self.assertEqual((batcher.sent, batcher.dropped, batcher.max_segment), (4, 0, 699))
        for i in range(3):
            batcher.send(b"x" * 600, ("192.0.2.1", 9))
        batcher.flush()
        self.assertEqual(sock.gso_runs, 1, "smaller segments still go as one run")
        self.assertEqual(len(sock.sent), 7)

    def test_a_kernel_refusing_gso_turns_it_off(self):
        sock = RefusingSocket(errno.EIO)
        batcher = DatagramBatcher(Clock(), FakePort(sock))
        for i in range(3):
            batcher.send(b"y" * 100, ("192.0.2.1", 9))
        batcher.flush()
        self.assertEqual((len(sock.sent), batcher.gso), (3, False))

    async def test_without_gso_each_goes_alone(self):
        batcher = DatagramBatcher(reactor, self.sending, gso=False)
        for i in range(5):
            batcher.send(b"%d" % i * 10, self.to)
        self.assertEqual(await self.received(5), [b"%d" % i * 10 for i in range(5)])
        self.assertEqual(batcher.sends, 5)

    async def test_cancel_drops_what_is_queued(self):
        batcher = DatagramBatcher(reactor, self.sending)
        batcher.send(b"never", self.to)
        batcher.cancel()
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual((batcher.sent, self.receiver.received), (0, []))

    def test_an_unsendable_datagram_is_dropped_not_raised(self):
        batcher = DatagramBatcher(reactor, self.sending)
        batcher.send(b"x" * 70000, self.to)  # larger than UDP allows
        batcher.flush()
        self.assertEqual((batcher.sent, batcher.dropped), (0, 1))


class RefusingSocket:
    """A UDP socket whose GSO sends fail with ``error`` while segments are
    larger than 650 bytes (EMSGSIZE), or always (other errors)."""

    def __init__(self, error: int):
        self.error = error
        self.sent: list[bytes] = []
        self.gso_runs = 0

    def getsockopt(self, level, option):
        return 0

    def sendto(self, data, address):
        self.sent.append(bytes(data))

    def sendmsg(self, buffers, ancillary, flags, address):
        if self.error != errno.EMSGSIZE or len(buffers[0]) > 650:
            raise OSError(self.error, os.strerror(self.error))
        self.gso_runs += 1
        self.sent.extend(bytes(b) for b in buffers)


class FakePort:
    def __init__(self, sock):
        self._socket = sock

    def getHandle(self):
        return self._socket


class FakeWireGuardSocket(DatagramProtocol):
    def __init__(self):
        self.received: list[tuple[bytes, tuple]] = []
        self.waiting: Deferred | None = None

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))
        if self.waiting is not None and not self.waiting.called:
            self.waiting.callback(None)


class ResolvingClock(UDPClock):
    """Resolves names when the test says so (``answer``)."""

    def __init__(self):
        super().__init__()
        self.lookups: list[Deferred] = []

    def resolve(self, name: str, timeout=(1, 3, 11, 45)) -> Deferred:
        d: Deferred = Deferred()
        self.lookups.append(d)
        return d


def grant(peer: str) -> RelayGrant:
    token = os.urandom(8).hex()
    return RelayGrant.from_json({"session_id": "s-" + peer, "peer_node_id": peer, "token": token, "key": base64.b64encode(KEY).decode()})


class ShimInMemoryTests(unittest.TestCase):
    def test_grants_arriving_together_start_the_shim_once(self):
        clock = ResolvingClock()
        shim = RelayShim(clock, "relay.wire.test", 3479, 51820)
        first = Deferred.fromCoroutine(shim.add(grant("a")))
        second = Deferred.fromCoroutine(shim.add(grant("b")))
        self.assertEqual(len(clock.lookups), 1, "one lookup of the server's name")
        clock.lookups[0].callback("192.0.2.1")
        self.assertTrue(self.successResultOf(first).startswith("127.0.0.1:"))
        self.assertTrue(self.successResultOf(second).startswith("127.0.0.1:"))
        upstream = [p for p in clock.listening() if p.host != "127.0.0.1"]
        self.assertEqual(len(upstream), 1, "one upstream socket")
        self.assertEqual(sorted(shim.sessions()), ["a", "b"])
        self.assertEqual([addr for _, addr in upstream[0].written], [("192.0.2.1", 3479)] * 2)
        self.successResultOf(Deferred.fromCoroutine(shim.stop()))
        self.assertEqual(clock.listening(), [])


class ShimOverRealSocketsTests(unittest.TestCase):
    """Two shims and the server's relay on 127.0.0.1 carry packets both ways."""

    async def setUp(self):
        self.table = RelayTable(reactor)
        server = reactor.listenUDP(0, StunServerProtocol(reactor, relay=self.table.handle), interface="127.0.0.1")
        self.addCleanup(server.stopListening)
        self.relay_port = server.getHost().port
        self.wg_a, self.wg_b = FakeWireGuardSocket(), FakeWireGuardSocket()
        self.ports = {}
        for name, proto in (("a", self.wg_a), ("b", self.wg_b)):
            port = reactor.listenUDP(0, proto, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.ports[name] = port
        self.shim_a = RelayShim(reactor, "127.0.0.1", self.relay_port, self.ports["a"].getHost().port)
        self.shim_b = RelayShim(reactor, "127.0.0.1", self.relay_port, self.ports["b"].getHost().port)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.shim_a.stop()))
        self.addCleanup(lambda: Deferred.fromCoroutine(self.shim_b.stop()))
        self.endpoint_b_on_a = await self.shim_a.add(RelayGrant.from_json(self.table.grant("a", "b").to_json()))
        self.endpoint_a_on_b = await self.shim_b.add(RelayGrant.from_json(self.table.grant("b", "a").to_json()))

    async def receive(self, proto, timeout=2.0):
        proto.waiting = Deferred()
        timer = reactor.callLater(timeout, lambda: proto.waiting.called or proto.waiting.callback(None))
        await proto.waiting
        if timer.active():
            timer.cancel()

    async def test_packets_cross_both_ways_from_loopback_endpoints(self):
        await self.wait_for_keepalives()
        host, port = self.endpoint_b_on_a.split(":")
        self.ports["a"].write(b"handshake-initiation", (host, int(port)))
        await self.receive(self.wg_b)
        self.assertEqual(self.wg_b.received[-1][0], b"handshake-initiation")
        # B's WireGuard sees it coming from its local endpoint for A.
        self.assertEqual("%s:%d" % self.wg_b.received[-1][1], self.endpoint_a_on_b)
        host, port = self.endpoint_a_on_b.split(":")
        self.ports["b"].write(b"handshake-response", (host, int(port)))
        await self.receive(self.wg_a)
        self.assertEqual(self.wg_a.received[-1], (b"handshake-response", (host_of(self.endpoint_b_on_a), port_of(self.endpoint_b_on_a))))
        self.assertTrue(self.shim_a.is_alive("b"))

    async def test_strangers_cannot_use_a_shim_endpoint(self):
        await self.wait_for_keepalives()
        stranger = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(stranger.stopListening)
        stranger.write(b"not from wireguard", (host_of(self.endpoint_b_on_a), port_of(self.endpoint_b_on_a)))
        await self.receive(self.wg_b, timeout=0.3)
        self.assertEqual(self.wg_b.received, [])

    async def test_frames_keep_flowing_while_name_resolution_hangs(self):
        """A dead DNS server (getaddrinfo blocking for good, as libc's does
        when no resolver answers) stalls only a pool thread: the reactor
        goes on carrying relay frames, and the LAN address lookups the daemon
        makes neither wait nor stop it."""
        release = threading.Event()
        asked_from = []

        def dead_getaddrinfo(*args, **kwargs):
            asked_from.append(threading.current_thread())
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

        def unblock():
            release.set()

        self.addCleanup(unblock)
        resolver = GAIResolver(reactor, getaddrinfo=dead_getaddrinfo)
        lan_ip = LanAddress(reactor, "https://wire.invalid:8443", resolver=resolver, timeout=25)
        refreshing = Deferred.fromCoroutine(lan_ip.refresh())
        detecting = Deferred.fromCoroutine(detect_lan_ip(reactor, "https://wire.invalid", resolver=resolver, timeout=25))
        self.assertEqual(lan_ip(), "", "a registration body never waits for the name")
        await self.wait_for_keepalives()
        host, port = host_of(self.endpoint_b_on_a), port_of(self.endpoint_b_on_a)
        packets = [b"packet %d" % i for i in range(50)]
        for packet in packets:
            self.ports["a"].write(packet, (host, port))
        for _ in range(200):
            if len(self.wg_b.received) >= len(packets):
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual([data for data, _ in self.wg_b.received], packets)
        self.assertTrue(asked_from, "the lookups did start")
        self.assertNotIn(threading.main_thread(), asked_from, "getaddrinfo ran in the reactor thread")
        self.assertNoResult(refreshing)
        self.assertNoResult(detecting)
        release.set()  # the resolver gives up: both end with "unknown"
        self.assertEqual(await refreshing, "")
        self.assertEqual(await detecting, "")

    async def wait_for_keepalives(self):
        for _ in range(100):
            if self.shim_a.is_alive("b") and self.shim_b.is_alive("a"):
                return
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("keepalives were not answered")


def host_of(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0]


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


