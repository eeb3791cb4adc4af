"""Tests for wire.stun: codec properties, RFC 5769 vectors, the server
protocol in memory, the probe client on a fake clock, real sockets on
127.0.0.1, and two independent STUN implementations (aioice, pystun3).

No test sends a datagram anywhere but 127.0.0.1.
"""

from __future__ import annotations

import binascii
import ipaddress
import json
import os
import socket
import struct
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, FakeDatagramTransport
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from wire import stun
from wire.stun import rawport
from wire.stun.rawport import raw_udp_supported
from wire.stun import (
    BINDING_ERROR,
    BINDING_REQUEST,
    BINDING_SUCCESS,
    FINGERPRINT,
    MAGIC_COOKIE,
    MAPPED_ADDRESS,
    OUTCOMES,
    XOR_MAPPED_ADDRESS,
    MappedAddress,
    StunError,
    StunMessage,
    StunServerProtocol,
    StunTimeout,
    detect_nat,
    encode_binding_request,
    encode_binding_success,
    encode_error_response,
    handle_datagram,
    is_stun,
    parse_error_code,
    parse_mapped_address,
    parse_message,
    probe_mapped_address,
    reply_limit,
)

try:
    import aioice.stun as aioice_stun
except ImportError:
    aioice_stun = None

try:
    import stun as pystun3
except ImportError:
    pystun3 = None

COOKIE = struct.pack("!I", MAGIC_COOKIE)


def _hex(text: str) -> bytes:
    return bytes.fromhex(" ".join(text.split()))


# RFC 5769 section 2.1-2.3 (password "VOkJxbRl1RmTxUk/WvJxBt"; the
# MESSAGE-INTEGRITY values are not checked here, the FINGERPRINTs are).
RFC5769_REQUEST = _hex(
    """
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf
    """
)
RFC5769_IPV4_RESPONSE = _hex(
    """
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96
    """
)
RFC5769_IPV6_RESPONSE = _hex(
    """
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c
    """
)
RFC5769_TRANSACTION_ID = _hex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")


def _attribute(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def _message(msg_type: int, transaction_id: bytes, body: bytes = b"", *, cookie: bytes = COOKIE) -> bytes:
    return struct.pack("!HH", msg_type, len(body)) + cookie + transaction_id + body


def _with_fingerprint(data: bytes) -> bytes:
    """Append FINGERPRINT by the RFC's recipe, independently of wire.stun."""
    grown = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
    crc = binascii.crc32(grown) ^ 0x5354554E
    return grown + _attribute(FINGERPRINT, struct.pack("!I", crc))


def _classic_request(transaction_id: bytes, body: bytes = b"") -> bytes:
    return struct.pack("!HH", BINDING_REQUEST, len(body)) + transaction_id + body


transaction_ids = st.binary(min_size=12, max_size=12)
ports = st.integers(min_value=0, max_value=65535)
# An IPv4-mapped IPv6 address is answered as IPv4 (tested on its own below).
addresses = st.ip_addresses().filter(lambda a: a.version == 4 or a.ipv4_mapped is None).map(str)


@st.composite
def stun_like(draw: Any) -> bytes:
    """Datagrams that get past the header checks often enough to exercise
    the attribute walk, FINGERPRINT and the 420 path."""
    attributes = draw(
        st.lists(
            st.tuples(
                st.one_of(
                    st.sampled_from([MAPPED_ADDRESS, XOR_MAPPED_ADDRESS, 0x0003, 0x0024, 0x8022, FINGERPRINT]),
                    st.integers(0, 0xFFFF),
                ),
                st.binary(max_size=24),
            ),
            max_size=6,
        )
    )
    body = b"".join(_attribute(t, v) for t, v in attributes)
    cookie = draw(st.one_of(st.just(COOKIE), st.binary(min_size=4, max_size=4)))
    data = _message(draw(st.integers(0, 0x3FFF)), draw(transaction_ids), body, cookie=cookie)
    if draw(st.booleans()):
        data = _with_fingerprint(data)
    cut = draw(st.integers(0, 3))
    return data[: len(data) - cut] if cut else data


class CodecPropertyTests(unittest.TestCase):
    @settings(deadline=None)
    @given(transaction_ids)
    def test_request_round_trip(self, transaction_id: bytes) -> None:
        data, tid = encode_binding_request(transaction_id)
        self.assertEqual(tid, transaction_id)
        self.assertEqual(len(data), 20)
        self.assertTrue(is_stun(data))
        self.assertEqual(parse_message(data), StunMessage(BINDING_REQUEST, transaction_id, ()))

    @settings(deadline=None)
    @given(transaction_ids, addresses, ports)
    def test_success_round_trip(self, transaction_id: bytes, ip: str, port: int) -> None:
        request = parse_message(encode_binding_request(transaction_id)[0])
        response = parse_message(encode_binding_success(request, ip, port))
        self.assertEqual(response.msg_type, BINDING_SUCCESS)
        self.assertEqual(response.transaction_id, transaction_id)
        self.assertEqual(parse_mapped_address(response), (ip, port))
        # RFC 3489-era readers of MAPPED-ADDRESS only exist for IPv4.
        self.assertEqual(response.get(MAPPED_ADDRESS) is not None, ipaddress.ip_address(ip).version == 4)

    @settings(deadline=None)
    @given(st.binary(min_size=16, max_size=16), addresses, ports)
    def test_classic_round_trip(self, transaction_id: bytes, ip: str, port: int) -> None:
        assume(transaction_id[:4] != COOKIE)
        request = parse_message(_classic_request(transaction_id))
        self.assertTrue(request.classic)
        response = parse_message(encode_binding_success(request, ip, port))
        self.assertEqual(response.transaction_id, transaction_id)
        self.assertEqual([t for t, _ in response.attributes], [MAPPED_ADDRESS])
        self.assertEqual(parse_mapped_address(response), (ip, port))

    @settings(deadline=None)
    @given(transaction_ids, st.data())
    def test_any_flipped_bit_breaks_the_fingerprint(self, transaction_id: bytes, data: Any) -> None:
        message = _with_fingerprint(encode_binding_request(transaction_id)[0])
        self.assertEqual(parse_message(message).get(FINGERPRINT), message[-4:])
        bit = data.draw(st.integers(0, len(message) * 8 - 1))
        # Flipping the FINGERPRINT type itself just makes it another attribute.
        assume(not len(message) - 8 <= bit // 8 < len(message) - 6)
        damaged = bytearray(message)
        damaged[bit // 8] ^= 1 << (bit % 8)
        self.assertRaises(StunError, parse_message, bytes(damaged))

    @settings(deadline=None, max_examples=500)
    @given(st.one_of(st.binary(max_size=120), stun_like()))
    def test_parse_raises_only_stun_error(self, data: bytes) -> None:
        try:
            parse_message(data)
        except StunError as e:
            self.assertTrue(str(e))

    @settings(deadline=None, max_examples=500)
    @given(st.one_of(st.binary(max_size=120), stun_like()), addresses, ports)
    def test_handle_datagram_is_total_and_bounded(self, data: bytes, ip: str, port: int) -> None:
        outcome, reply = handle_datagram(data, ip, port)
        self.assertIn(outcome, OUTCOMES)
        self.assertNotEqual(outcome, "error")
        if reply is not None:
            self.assertLessEqual(len(reply), reply_limit(len(data)))
        # The bound never has to swallow an answer: every Binding request
        # and every eligible legacy probe is answered.
        if data and port:
            expected = _expected_outcome(data, port)
            if expected is not None:
                self.assertEqual(outcome, expected)


def _expected_outcome(data: bytes, port: int) -> str | None:
    if not is_stun(data):
        return None if port < 1024 or data.startswith(b'{"ip"') else "legacy_json"
    try:
        message = parse_message(data)
    except StunError:
        return "malformed"
    return "binding" if message.msg_type == BINDING_REQUEST and not message.attributes else None


class Rfc5769Tests(unittest.TestCase):
    def test_ipv4_response(self) -> None:
        message = parse_message(RFC5769_IPV4_RESPONSE)
        self.assertEqual(message.msg_type, BINDING_SUCCESS)
        self.assertEqual(message.transaction_id, RFC5769_TRANSACTION_ID)
        self.assertEqual(message.get(0x8022), b"test vector")
        self.assertEqual(parse_mapped_address(message), ("192.0.2.1", 32853))

    def test_ipv6_response(self) -> None:
        message = parse_message(RFC5769_IPV6_RESPONSE)
        self.assertEqual(message.transaction_id, RFC5769_TRANSACTION_ID)
        self.assertEqual(parse_mapped_address(message), ("2001:db8:1234:5678:11:2233:4455:6677", 32853))

    def test_tampered_vectors_fail_their_fingerprint(self) -> None:
        for vector in (RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE):
            damaged = bytearray(vector)
            damaged[45] ^= 0x01
            with self.assertRaisesRegex(StunError, "FINGERPRINT does not match"):
                parse_message(bytes(damaged))

    def test_sample_request_gets_420_for_priority(self) -> None:
        """The ICE request carries PRIORITY (0x0024), comprehension-required
        and unknown to a plain STUN server; USERNAME and MESSAGE-INTEGRITY
        are understood and ignored, ICE-CONTROLLED is optional."""
        self.assertEqual(parse_message(RFC5769_REQUEST).get(0x0006), b"evtj:h6vY")
        outcome, reply = handle_datagram(RFC5769_REQUEST, "192.0.2.1", 32853)
        self.assertEqual(outcome, "unknown_attribute")
        response = parse_message(reply)
        self.assertEqual(response.msg_type, BINDING_ERROR)
        self.assertEqual(response.transaction_id, RFC5769_TRANSACTION_ID)
        self.assertEqual(parse_error_code(response), (420, "Unknown Attribute"))
        self.assertEqual(response.get(0x000A), b"\x00\x24")


class CodecTests(unittest.TestCase):
    def test_is_stun(self) -> None:
        request, _ = encode_binding_request()
        self.assertTrue(is_stun(request))
        self.assertTrue(is_stun(_classic_request(bytes(16))))
        for other in (b"", b"x", b"ping", b"{}", b'{"ip": "1.2.3.4", "port": 5}', b"\xffWRL" + bytes(40)):
            self.assertFalse(is_stun(other), other)
        # A cookie-less message counts only as a classic Binding request.
        self.assertFalse(is_stun(struct.pack("!HH", BINDING_SUCCESS, 0) + bytes(16)))
        self.assertFalse(is_stun(_classic_request(bytes(16)) + b"\x00"))

    def test_parse_errors_say_what_is_wrong(self) -> None:
        request, tid = encode_binding_request()
        cases = {
            request[:19]: "needs 20",
            b"\x40" + request[1:]: "first two bits",
            request[:2] + b"\x00\x02" + request[4:] + b"\x00\x00": "multiple of 4",
            request[:2] + b"\x00\x04" + request[4:]: "does not match",
            _message(BINDING_REQUEST, tid, struct.pack("!HH", 0x8022, 9) + bytes(4)): "overruns",
            _message(BINDING_REQUEST, tid, _attribute(FINGERPRINT, bytes(4)) + _attribute(0x8022, b"x")): "last",
            _message(BINDING_REQUEST, tid, _attribute(FINGERPRINT, bytes(8))): "not 4",
        }
        for data, problem in cases.items():
            with self.assertRaisesRegex(StunError, problem):
                parse_message(data)

    def test_parse_mapped_address_errors(self) -> None:
        request = parse_message(encode_binding_request()[0])
        with self.assertRaisesRegex(StunError, "only a success response"):
            parse_mapped_address(request)
        tid = request.transaction_id
        cases = {
            b"": "neither",
            _attribute(MAPPED_ADDRESS, b"\x00\x01"): "too short",
            _attribute(MAPPED_ADDRESS, b"\x00\x03" + bytes(6)): "unknown address family",
            _attribute(MAPPED_ADDRESS, b"\x00\x02" + bytes(6)): "cannot be 8 bytes",
        }
        for body, problem in cases.items():
            with self.assertRaisesRegex(StunError, problem):
                parse_mapped_address(parse_message(_message(BINDING_SUCCESS, tid, body)))

    def test_ipv4_client_of_a_dual_stack_socket_is_answered_as_ipv4(self) -> None:
        request = parse_message(encode_binding_request()[0])
        response = parse_message(encode_binding_success(request, "::ffff:203.0.113.9", 4500))
        self.assertEqual(parse_mapped_address(response), ("203.0.113.9", 4500))
        self.assertEqual(
            handle_datagram(b"ping", "::ffff:203.0.113.9", 4500),
            ("legacy_json", b'{"ip": "203.0.113.9", "port": 4500}'),
        )

    def test_minimal_request_gets_44_bytes(self) -> None:
        request, _ = encode_binding_request()
        for ip in ("255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"):
            self.assertEqual(len(handle_datagram(request, ip, 65535)[1]), 44)
        self.assertEqual(len(handle_datagram(_classic_request(bytes(16)), "192.0.2.1", 65535)[1]), 32)

    def test_error_response(self) -> None:
        request = parse_message(encode_binding_request()[0])
        response = parse_message(encode_error_response(request, 420, "Unknown Attribute", [0x0003, 0x0024]))
        self.assertEqual(response.msg_type, BINDING_ERROR)
        self.assertEqual(parse_error_code(response), (420, "Unknown Attribute"))
        self.assertEqual(response.get(0x000A), b"\x00\x03\x00\x24")
        self.assertRaises(ValueError, encode_error_response, request, 200, "OK")

    def test_unknown_attributes_listed_once(self) -> None:
        request, tid = encode_binding_request()
        body = _attribute(0x0003, bytes(4)) * 3 + _attribute(0x0002, bytes(8)) + _attribute(0xC001, b"opt")
        outcome, reply = handle_datagram(_message(BINDING_REQUEST, tid, body), "192.0.2.1", 40000)
        self.assertEqual(outcome, "unknown_attribute")
        self.assertEqual(parse_message(reply).get(0x000A), b"\x00\x03\x00\x02")

    def test_classic_change_request_refused(self) -> None:
        tid = b"\x01" * 16
        outcome, reply = handle_datagram(_classic_request(tid, _attribute(0x0003, bytes(4))), "192.0.2.1", 40000)
        self.assertEqual(outcome, "unknown_attribute")
        response = parse_message(reply)
        self.assertTrue(response.classic)
        self.assertEqual(response.transaction_id, tid)

    def test_only_binding_requests_are_answered(self) -> None:
        _, tid = encode_binding_request()
        for msg_type in (0x0011, BINDING_SUCCESS, BINDING_ERROR, 0x0003, 0x0002):
            self.assertEqual(handle_datagram(_message(msg_type, tid), "192.0.2.1", 40000), ("ignored", None))

    def test_malformed_and_empty(self) -> None:
        request, _ = encode_binding_request()
        self.assertEqual(handle_datagram(request + b"\x00" * 4, "192.0.2.1", 40000), ("malformed", None))
        self.assertEqual(handle_datagram(b"", "192.0.2.1", 40000), ("ignored", None))
        self.assertEqual(handle_datagram(request, "192.0.2.1", 0), ("ignored", None))

    def test_legacy_json_matches_the_seed(self) -> None:
        for probe in (b"x", b"ping", b"{}"):
            outcome, reply = handle_datagram(probe, "198.51.100.20", 51820)
            self.assertEqual(outcome, "legacy_json")
            self.assertEqual(reply, b'{"ip": "198.51.100.20", "port": 51820}')
        outcome, reply = handle_datagram(b"x", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
        self.assertEqual(json.loads(reply), {"ip": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "port": 65535})
        self.assertEqual(len(reply), 64)

    def test_legacy_path_cannot_loop(self) -> None:
        self.assertEqual(handle_datagram(b"x", "198.51.100.20", 19), ("ignored", None))
        own_reply = handle_datagram(b"x", "198.51.100.20", 51820)[1]
        self.assertEqual(handle_datagram(own_reply, "198.51.100.21", 8788), ("ignored", None))


class RelayJunkTests(unittest.TestCase):
    """Relay-magic junk spends its source's budget; other sources still get STUN answers."""

    def setUp(self) -> None:
        from wire.relayproto import MAGIC
        from wire.server.ratelimit import TokenBucket

        self.magic = MAGIC
        self.clock = Clock()
        self.clock.advance(1000)
        self.outcomes: list[str] = []
        self.relayed: list[str] = []
        buckets: dict[str, TokenBucket] = {}

        def admit(host: str) -> bool:
            bucket = buckets.setdefault(host, TokenBucket(20, 40, self.clock.seconds()))
            return bucket.spend(1, self.clock.seconds())

        def relay(datagram: bytes, addr: Any):
            self.relayed.append(addr[0])
            return "relay_unknown", None, None

        self.protocol = StunServerProtocol(self.clock, observe=self.outcomes.append, relay=relay, admit=admit)
        self.transport = FakeDatagramTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol._send_relayed = lambda data, addr: None

    def test_a_junk_flood_is_cut_off_and_stun_still_answers_others(self) -> None:
        junk = self.magic + bytes(60)
        for _ in range(1000):
            self.protocol.datagramReceived(junk, ("198.51.100.66", 4000))
        self.assertLessEqual(self.relayed.count("198.51.100.66"), 41, "read only while it had budget")
        self.assertGreater(self.outcomes.count("rate_limited"), 900)
        request, tid = encode_binding_request()
        self.protocol.datagramReceived(request, ("203.0.113.4", 41641))
        [(reply, addr)] = self.transport.written
        self.assertEqual((addr, parse_message(reply).transaction_id), (("203.0.113.4", 41641), tid))
        # A second later the source is read again (and cut off again if it goes on).
        self.clock.advance(1.5)
        before = len(self.relayed)
        self.protocol.datagramReceived(junk, ("198.51.100.66", 4000))
        self.assertEqual(len(self.relayed), before + 1)


class _FailingTransport:
    def write(self, packet: bytes, addr: Any) -> None:
        raise OSError(1, "Operation not permitted")


class ServerProtocolTests(unittest.TestCase):
    def setUp(self) -> None:
        self.outcomes: list[str] = []
        self.protocol = StunServerProtocol(Clock(), observe=self.outcomes.append)
        self.transport = FakeDatagramTransport()
        self.protocol.makeConnection(self.transport)

    def test_binding(self) -> None:
        request, tid = encode_binding_request()
        self.protocol.datagramReceived(request, ("203.0.113.4", 41641))
        [(reply, addr)] = self.transport.written
        self.assertEqual(addr, ("203.0.113.4", 41641))
        self.assertEqual(parse_message(reply).transaction_id, tid)
        self.assertEqual(parse_mapped_address(parse_message(reply)), ("203.0.113.4", 41641))
        self.assertEqual(self.outcomes, ["binding"])

    def test_ipv6_reply_goes_to_the_full_address(self) -> None:
        request, _ = encode_binding_request()
        addr = ("fe80::1%eth0", 41641, 0, 2)
        self.protocol.datagramReceived(request, addr)
        [(reply, to)] = self.transport.written
        self.assertEqual(to, addr)
        self.assertEqual(parse_mapped_address(parse_message(reply)), ("fe80::1", 41641))

    def test_each_path(self) -> None:
        request, tid = encode_binding_request()
        datagrams = [
            (b"ping", "legacy_json"),
            (_message(BINDING_REQUEST, tid, _attribute(0x0003, bytes(4))), "unknown_attribute"),
            (request[:-1] + b"\x00" * 5, "malformed"),
            (bytes(3) + b"\x08" + COOKIE + bytes(12), "malformed"),
            (_message(BINDING_SUCCESS, tid), "ignored"),
            (b"", "ignored"),
        ]
        for datagram, _ in datagrams:
            self.protocol.datagramReceived(datagram, ("203.0.113.4", 41641))
        self.assertEqual(self.outcomes, [outcome for _, outcome in datagrams])
        self.assertEqual(
            [packet for packet, _ in self.transport.written][0], b'{"ip": "203.0.113.4", "port": 41641}'
        )
        self.assertEqual(len(self.transport.written), 2)

    def test_no_log_per_datagram(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for datagram in (encode_binding_request()[0], b"ping", b"\x00" * 24):
            self.protocol.datagramReceived(datagram, ("203.0.113.4", 41641))
        self.assertEqual(len(events), 0)

    def test_exception_never_escapes(self) -> None:
        self.protocol.transport = _FailingTransport()
        for _ in range(5):
            self.protocol.datagramReceived(encode_binding_request()[0], ("203.0.113.4", 41641))
        self.assertEqual(self.outcomes, ["error"] * 5)
        # Logged sparsely: the 1st, 2nd and 4th failure.
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 3)

    def test_observer_failure_never_escapes(self) -> None:
        def observe(outcome: str) -> None:
            raise RuntimeError(outcome)

        protocol = StunServerProtocol(Clock(), observe=observe)
        protocol.makeConnection(FakeDatagramTransport())
        protocol.datagramReceived(b"ping", ("203.0.113.4", 41641))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_without_observer(self) -> None:
        protocol = StunServerProtocol(Clock())
        protocol.makeConnection(self.transport)
        protocol.datagramReceived(b"ping", ("203.0.113.4", 41641))
        self.assertEqual(len(self.transport.written), 1)


class _FakePort:
    def __init__(self, protocol: DatagramProtocol, port: int, interface: str):
        self.protocol = protocol
        self.transport = protocol.transport
        self.port = port
        self.interface = interface
        self.listening = True

    @property
    def written(self) -> list[tuple[bytes, Any]]:
        return self.transport.written

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self) -> None:
        self.listening = False
        self.protocol.doStop()


class _FakeUDPReactor(Clock):
    """A clock whose listenUDP hands out in-memory sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[_FakePort] = []

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> _FakePort:
        protocol.makeConnection(FakeDatagramTransport())
        fake = _FakePort(protocol, port or 40000, interface)
        self.ports.append(fake)
        return fake


SERVER = "192.0.2.10"


def _answer(port: _FakePort, index: int, mapped: tuple[str, int], source: tuple[str, int] | None = None) -> None:
    """Answer the index-th request the fake socket sent, as its server would."""
    packet, server = port.written[index]
    response = encode_binding_success(parse_message(packet), *mapped)
    port.protocol.datagramReceived(response, source or server)


class ProbeClientTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = _FakeUDPReactor()

    def probe(self, **kwargs: Any) -> Deferred[MappedAddress]:
        return Deferred.fromCoroutine(probe_mapped_address(self.reactor, SERVER, 3478, **kwargs))

    def test_a_probe_logs_no_starting_and_stopping_protocol_lines(self) -> None:
        d = self.probe(local_port=51820, timeout=0.5, attempts=1)
        [port] = self.reactor.ports
        self.assertFalse(port.protocol.noisy)
        self.reactor.advance(0.5)
        self.failureResultOf(d, StunTimeout)

    def test_retransmits_then_times_out_and_releases_the_port(self) -> None:
        d = self.probe(local_port=51820, timeout=0.5, attempts=3)
        [port] = self.reactor.ports
        self.assertEqual(port.port, 51820)
        for sent in (1, 2, 3):
            self.assertEqual(len(port.written), sent)
            self.assertNoResult(d)
            self.reactor.advance(0.5)
        failure = self.failureResultOf(d, StunTimeout)
        self.assertIn("192.0.2.10:3478", str(failure.value))
        self.assertFalse(port.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        # Every request is a fresh minimal Binding request to the server.
        self.assertEqual({len(p) for p, _ in port.written}, {20})
        self.assertEqual({addr for _, addr in port.written}, {(SERVER, 3478)})
        self.assertEqual(len({p[8:20] for p, _ in port.written}), 3)

    def test_answer_to_an_earlier_attempt_counts(self) -> None:
        d = self.probe()
        [port] = self.reactor.ports
        self.reactor.advance(1)
        _answer(port, 0, ("198.51.100.7", 61000))
        self.assertEqual(self.successResultOf(d), ("198.51.100.7", 61000))
        self.assertFalse(port.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_ignores_strangers(self) -> None:
        d = self.probe()
        [port] = self.reactor.ports
        _answer(port, 0, ("198.51.100.66", 1), source=("192.0.2.66", 3478))
        _answer(port, 0, ("198.51.100.66", 2), source=(SERVER, 9999))
        wrong_tid = encode_binding_success(parse_message(encode_binding_request()[0]), "198.51.100.66", 3)
        port.protocol.datagramReceived(wrong_tid, (SERVER, 3478))
        port.protocol.datagramReceived(b'{"ip": "198.51.100.66", "port": 4}', (SERVER, 3478))
        port.protocol.datagramReceived(port.written[0][0], (SERVER, 3478))  # a request, not an answer
        self.assertNoResult(d)
        _answer(port, 0, ("198.51.100.7", 61000))
        self.assertEqual(self.successResultOf(d), ("198.51.100.7", 61000))

    def test_error_response(self) -> None:
        d = self.probe()
        [port] = self.reactor.ports
        request = parse_message(port.written[0][0])
        port.protocol.datagramReceived(encode_error_response(request, 500, "Server Error"), (SERVER, 3478))
        failure = self.failureResultOf(d, StunError)
        self.assertEqual(str(failure.value), "the STUN server answered 500 Server Error")
        self.assertFalse(port.listening)

    def test_success_without_address_is_an_error(self) -> None:
        d = self.probe()
        [port] = self.reactor.ports
        tid = port.written[0][0][8:20]
        port.protocol.datagramReceived(_message(BINDING_SUCCESS, tid), (SERVER, 3478))
        self.failureResultOf(d, StunError)

    def test_send_failure(self) -> None:
        reactor = _FakeUDPReactor()
        listen = reactor.listenUDP

        def failing_listen(*args: Any, **kwargs: Any) -> _FakePort:
            port = listen(*args, **kwargs)
            port.protocol.transport = _FailingTransport()
            return port

        reactor.listenUDP = failing_listen
        d = Deferred.fromCoroutine(probe_mapped_address(reactor, SERVER, 3478))
        self.assertIn("cannot send", str(self.failureResultOf(d, StunError).value))
        self.assertFalse(reactor.ports[0].listening)

    def test_ipv6_server_binds_ipv6(self) -> None:
        d = Deferred.fromCoroutine(probe_mapped_address(self.reactor, "2001:db8::10", 3478))
        [port] = self.reactor.ports
        self.assertEqual(port.interface, "::")
        _answer(port, 0, ("2001:db8::99", 51820))
        self.assertEqual(self.successResultOf(d), ("2001:db8::99", 51820))

    def nat(self, **kwargs: Any) -> tuple[Deferred[stun.NatReport], _FakePort]:
        d = Deferred.fromCoroutine(detect_nat(self.reactor, SERVER, 3478, 3479, local_port=51820, **kwargs))
        [port] = self.reactor.ports
        self.assertEqual([addr for _, addr in port.written], [(SERVER, 3478), (SERVER, 3479)])
        return d, port

    def test_easy_nat(self) -> None:
        d, port = self.nat()
        self.reactor.advance(0.025)
        _answer(port, 0, ("198.51.100.7", 61000))
        self.reactor.advance(0.010)
        _answer(port, 1, ("198.51.100.7", 61000))
        report = self.successResultOf(d)
        self.assertEqual(report.nat_type, "easy")
        self.assertEqual(report.mapped, ("198.51.100.7", 61000))
        self.assertAlmostEqual(report.latency_ms, 25.0)
        self.assertEqual(report.local_port, 51820)
        self.assertFalse(port.listening)

    def test_hard_nat(self) -> None:
        d, port = self.nat()
        _answer(port, 0, ("198.51.100.7", 61000))
        _answer(port, 1, ("198.51.100.7", 61001))
        report = self.successResultOf(d)
        self.assertEqual(report.nat_type, "hard")
        self.assertEqual((report.mapped_a.port, report.mapped_b.port), (61000, 61001))

    def test_no_nat_needs_local_ips(self) -> None:
        for local_ips, expected in ((["198.51.100.7"], "none"), ([], "easy"), (["10.0.0.2"], "easy")):
            self.reactor = _FakeUDPReactor()
            d, port = self.nat(local_ips=local_ips)
            _answer(port, 0, ("198.51.100.7", 51820))
            _answer(port, 1, ("198.51.100.7", 51820))
            self.assertEqual(self.successResultOf(d).nat_type, expected)

    def test_one_port_silent(self) -> None:
        d, port = self.nat(timeout=0.2, attempts=2)
        _answer(port, 1, ("198.51.100.7", 61000))
        self.assertNoResult(d)
        self.reactor.advance(0.4)
        report = self.successResultOf(d)
        self.assertEqual(report.nat_type, "unknown")
        self.assertEqual((report.mapped_a, report.mapped), (None, ("198.51.100.7", 61000)))
        self.assertFalse(port.listening)

    def test_both_silent(self) -> None:
        d, port = self.nat(timeout=0.2, attempts=2)
        self.reactor.advance(0.4)
        self.failureResultOf(d, StunTimeout)
        self.assertFalse(port.listening)


class _Receiver(DatagramProtocol):
    def __init__(self) -> None:
        self.queue: DeferredQueue[tuple[bytes, Any]] = DeferredQueue()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.queue.put((datagram, addr))

    def next(self) -> Deferred[tuple[bytes, Any]]:
        return self.queue.get().addTimeout(5, reactor)


class _RealSocketCase(unittest.TestCase):
    def listen(self, protocol: DatagramProtocol, port: int = 0) -> int:
        listening = reactor.listenUDP(port, protocol, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        return listening.getHost().port

    def stun_server(self) -> tuple[int, list[str]]:
        outcomes: list[str] = []
        return self.listen(StunServerProtocol(reactor, observe=outcomes.append)), outcomes

    async def free_port(self) -> int:
        """A port nothing listens on (bound and released at once)."""
        listening = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        port = listening.getHost().port
        await listening.stopListening()
        return port


class RealSocketTests(_RealSocketCase):
    async def test_probe(self) -> None:
        server_port, outcomes = self.stun_server()
        local_port = await self.free_port()
        mapped = await Deferred.fromCoroutine(
            probe_mapped_address(reactor, "127.0.0.1", server_port, local_port=local_port, interface="127.0.0.1")
        )
        self.assertEqual(mapped, ("127.0.0.1", local_port))
        self.assertEqual(outcomes, ["binding"])
        # Released before returning: WireGuard can take the port now.
        self.listen(DatagramProtocol(), local_port)

    async def test_detect_nat(self) -> None:
        port_a, _ = self.stun_server()
        port_b, _ = self.stun_server()
        report = await Deferred.fromCoroutine(
            detect_nat(reactor, "127.0.0.1", port_a, port_b, interface="127.0.0.1", local_ips=["127.0.0.1"])
        )
        self.assertEqual(report.nat_type, "none")
        self.assertEqual(report.mapped_a, ("127.0.0.1", report.local_port))
        self.assertEqual(report.mapped_b, report.mapped_a)
        self.assertGreaterEqual(report.latency_ms, 0)
        self.listen(DatagramProtocol(), report.local_port)

    async def test_timeout_against_silence(self) -> None:
        silent_port = await self.free_port()
        started = reactor.seconds()
        with self.assertRaises(StunTimeout):
            await Deferred.fromCoroutine(
                probe_mapped_address(
                    reactor, "127.0.0.1", silent_port, interface="127.0.0.1", timeout=0.05, attempts=2
                )
            )
        self.assertLess(reactor.seconds() - started, 2)

    async def test_relayed_sends_are_paced_by_the_reactor_it_was_given(self) -> None:
        """No fallback to the global reactor: the relay's batched sends wait
        for a turn of the clock handed to the protocol."""
        clock = Clock()
        destination = _Receiver()
        destination_port = self.listen(destination)
        arrived: Deferred[None] = Deferred()

        def relay(data: bytes, addr: Any) -> tuple[str, bytes | None, Any]:
            reactor.callLater(0, arrived.callback, None)  # once the datagram is handled
            return "relay_forwarded", b"relayed", ("127.0.0.1", destination_port)

        server_port = self.listen(StunServerProtocol(clock, relay=relay))
        sender = _Receiver()
        self.listen(sender)
        sender.transport.write(b"WRL2 a relay frame", ("127.0.0.1", server_port))
        await arrived.addTimeout(5, reactor)
        self.assertEqual(len(clock.getDelayedCalls()), 1, "the flush waits on the given clock")
        clock.advance(0)
        reply, _ = await destination.next()
        self.assertEqual(reply, b"relayed")

    async def test_seed_style_probe(self) -> None:
        server_port, _ = self.stun_server()
        receiver = _Receiver()
        client_port = self.listen(receiver)
        receiver.transport.write(b"ping", ("127.0.0.1", server_port))
        reply, _ = await receiver.next()
        self.assertEqual(json.loads(reply), {"ip": "127.0.0.1", "port": client_port})


class RawPortTests(_RealSocketCase):
    """detect_nat(raw=True): the probe from a port another socket holds (WireGuard's)."""

    skip = None if os.geteuid() == 0 and raw_udp_supported() else "a raw socket needs root on Linux"

    async def test_detect_nat_from_a_port_another_socket_holds(self) -> None:
        port_a, outcomes = self.stun_server()
        port_b, _ = self.stun_server()
        holder = _Receiver()
        held_port = self.listen(holder)  # what WireGuard would be
        report = await Deferred.fromCoroutine(
            detect_nat(reactor, "127.0.0.1", port_a, port_b, local_port=held_port, local_ips=["127.0.0.1"], raw=True)
        )
        self.assertEqual((report.nat_type, report.mapped_a, report.mapped_b), ("none", ("127.0.0.1", held_port), ("127.0.0.1", held_port)))
        self.assertEqual(outcomes, ["binding"], "one request answered by each port")
        # The holder got the answers too (WireGuard drops them), and keeps its port.
        for _ in range(2):
            datagram, addr = await holder.next()
            self.assertEqual(addr[0], "127.0.0.1")

    def test_the_filter_lets_in_only_the_servers_ports(self) -> None:
        program = rawport._bpf("198.51.100.2", (8788, 8789))
        # Every jump lands inside the program, the last two are drop and accept.
        for index, (code, jt, jf, _) in enumerate(program):
            if code == 0x15:
                self.assertLess(index + 1 + max(jt, jf), len(program))
        self.assertEqual(program[-2:], [(0x06, 0, 0, 0), (0x06, 0, 0, 65535)])

    def test_garbage_never_reaches_the_protocol(self) -> None:
        got = _Receiver()
        port = rawport.RawUDPPort(reactor, 40000, got, "127.0.0.1", (3478,))
        self.addCleanup(port.stopListening)
        for packet in (b"", b"\x45" * 10, b"\x60" + b"\x00" * 40, b"\x45" + b"\x00" * 27):
            self.assertIsNone(port._parse(packet))
        self.assertEqual(got.queue.pending, [])


class AioiceInteropTests(_RealSocketCase):
    """aioice.stun is an independent RFC 5389 codec (aioice on PyPI)."""

    if aioice_stun is None:
        skip = "aioice is not installed (pip install aioice)"

    async def exchange(self, request: Any) -> tuple[Any, int]:
        server_port, _ = self.stun_server()
        receiver = _Receiver()
        client_port = self.listen(receiver)
        receiver.transport.write(bytes(request), ("127.0.0.1", server_port))
        reply, _ = await receiver.next()
        return aioice_stun.parse_message(reply), client_port

    def request(self) -> Any:
        return aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)

    async def test_binding(self) -> None:
        request = self.request()
        request.add_fingerprint()
        response, client_port = await self.exchange(request)
        self.assertEqual(response.message_class, aioice_stun.Class.RESPONSE)
        self.assertEqual(response.transaction_id, request.transaction_id)
        self.assertEqual(response.attributes["XOR-MAPPED-ADDRESS"], ("127.0.0.1", client_port))
        self.assertEqual(response.attributes["MAPPED-ADDRESS"], ("127.0.0.1", client_port))

    async def test_credentials_are_ignored(self) -> None:
        request = self.request()
        request.attributes["USERNAME"] = "alice:bob"
        request.add_message_integrity(b"secret")
        response, client_port = await self.exchange(request)
        self.assertEqual(response.attributes["XOR-MAPPED-ADDRESS"], ("127.0.0.1", client_port))

    async def test_unknown_attribute(self) -> None:
        request = self.request()
        request.attributes["PRIORITY"] = 1
        response, _ = await self.exchange(request)
        self.assertEqual(response.message_class, aioice_stun.Class.ERROR)
        self.assertEqual(response.error_code, 420)

    def test_we_read_its_responses(self) -> None:
        request = parse_message(encode_binding_request()[0])
        for ip in ("192.0.2.1", "2001:db8::1"):
            response = aioice_stun.Message(
                aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, request.transaction_id
            )
            response.attributes["XOR-MAPPED-ADDRESS"] = (ip, 32853)
            response.add_fingerprint()
            self.assertEqual(parse_mapped_address(parse_message(bytes(response))), (ip, 32853))


class _SendLimit:
    """pystun3 retries forever while replies do not match; cap its sends so
    a broken server fails this test instead of hanging it."""

    def __init__(self, sock: socket.socket, limit: int):
        self._sock = sock
        self._left = limit

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        if not self._left:
            raise socket.gaierror("send limit reached")
        self._left -= 1
        return self._sock.sendto(data, addr)

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        return self._sock.recvfrom(size)


def _pystun3_probe(server_port: int) -> tuple[int, dict[str, Any]]:
    """One RFC 3489 Binding request from pystun3, in a thread (it blocks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.bind(("127.0.0.1", 0))
        local_port = sock.getsockname()[1]
        pystun3._initialize()  # stun_test needs the tables get_nat_type builds first
        result = pystun3.stun_test(_SendLimit(sock, 4), "127.0.0.1", server_port, "127.0.0.1", local_port)
        return local_port, result


class Pystun3InteropTests(_RealSocketCase):
    """pystun3 is an RFC 3489 client: no magic cookie, 16-byte transaction
    ids, reads MAPPED-ADDRESS only. Only its single-request stun_test is
    used; get_nat_type would need CHANGE-REQUEST, which we refuse."""

    if pystun3 is None:
        skip = "pystun3 is not installed (pip install pystun3)"

    async def test_classic_binding(self) -> None:
        server_port, outcomes = self.stun_server()
        local_port, result = await deferToThread(_pystun3_probe, server_port)
        self.assertTrue(result["Resp"])
        self.assertEqual((result["ExternalIP"], result["ExternalPort"]), ("127.0.0.1", local_port))
        self.assertEqual(outcomes, ["binding"])
