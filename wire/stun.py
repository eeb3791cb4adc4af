"""STUN (RFC 5389): the codec, the server's UDP protocol and the node's probe.

The coordination server answers on its UDP port (HTTP port + 1):

- an RFC 5389 Binding request with XOR-MAPPED-ADDRESS (plus MAPPED-ADDRESS
  over IPv4, for clients that only read that), and an RFC 3489 "classic"
  Binding request with MAPPED-ADDRESS, so any standard STUN client works;
- any other datagram with the seed project's JSON ``{"ip": ..., "port": ...}``,
  so seed clients keep working.

The port is public, so every reply is bounded (see :func:`reply_limit`):
a minimal 20-byte Binding request gets a 44-byte answer (2.2x), a 1-byte
legacy probe at most 64 bytes of JSON, and nothing is ever sent to a third
party (RESPONSE-ADDRESS and CHANGE-REQUEST are refused with 420).

A node probes from its WireGuard port before WireGuard binds it:
:func:`probe_mapped_address` for its public endpoint, :func:`detect_nat` to
tell an easy NAT from a hard (symmetric) one using two server ports.
"""

from __future__ import annotations

import binascii
import ipaddress
import json
import secrets
import struct
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from wire.relayproto import DatagramBatcher, enlarge_socket_buffers, is_relay_frame
from wire.sourceaddress import unmapped

log = Logger()

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER_BYTES = 20
TRANSACTION_ID_BYTES = 12
CLASSIC_TRANSACTION_ID_BYTES = 16  # RFC 3489: no cookie, the id fills bytes 4-20
FINGERPRINT_XOR = 0x5354554E

# Methods and classes (RFC 5389 section 6).
BINDING = 0x001
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3

BINDING_REQUEST = 0x0001
BINDING_INDICATION = 0x0011
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

# Attributes (RFC 5389 section 18.2).
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028

# The comprehension-required attributes RFC 5389 defines. A basic server
# uses no credentials (section 13), so USERNAME and friends are understood
# and ignored; anything else below 0x8000 earns a 420.
UNDERSTOOD_ATTRIBUTES = frozenset(
    {
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        REALM,
        NONCE,
        XOR_MAPPED_ADDRESS,
    }
)

_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02

# Outcome labels of handle_datagram, fixed so a metrics counter can show
# every label from the start.
OUTCOME_BINDING = "binding"
OUTCOME_UNKNOWN_ATTRIBUTE = "unknown_attribute"
OUTCOME_LEGACY_JSON = "legacy_json"
OUTCOME_MALFORMED = "malformed"
OUTCOME_IGNORED = "ignored"
OUTCOME_RATE_LIMITED = "rate_limited"
OUTCOME_ERROR = "error"
OUTCOMES = (
    OUTCOME_BINDING,
    OUTCOME_UNKNOWN_ATTRIBUTE,
    OUTCOME_LEGACY_JSON,
    OUTCOME_MALFORMED,
    OUTCOME_IGNORED,
    OUTCOME_RATE_LIMITED,
    OUTCOME_ERROR,
)

# Anti-amplification: a reply is at most max(64, 3 x request) bytes. The
# 64-byte floor lets a 1-byte seed probe get its JSON (longest: a full IPv6
# address and port 65535, exactly 64 bytes); with the 28 bytes of IP and
# UDP headers that is 29 bytes in, 92 out. STUN replies stay far below:
# 44 bytes for any minimal 20-byte Binding request (2.2x).
SMALL_REPLY_BYTES = 64
AMPLIFICATION_FACTOR = 3

# Reflection loops: a spoofed datagram can point our reply at a service that
# answers anything (echo 7, chargen 19, another wire server...), which would
# answer us back. STUN replies are never answered, so only the legacy path
# needs guarding: it skips privileged source ports and our own JSON.
_LOWEST_LEGACY_PORT = 1024
_LEGACY_REPLY_PREFIX = b'{"ip"'


class StunError(ValueError):
    """A STUN message or exchange is not acceptable; ``str()`` says why."""


class StunTimeout(TimeoutError):
    """A STUN server did not answer in time."""


class MappedAddress(NamedTuple):
    """A transport address as a STUN server saw it."""

    ip: str
    port: int


@dataclass(frozen=True)
class StunMessage:
    """A parsed STUN message.

    ``classic`` marks an RFC 3489 message (no magic cookie): its
    ``transaction_id`` is then the 16 bytes after the length field, so a
    reply echoing it also echoes what stood in place of the cookie, as
    RFC 5389 section 12.2 asks.
    """

    msg_type: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...] = ()
    classic: bool = False

    @property
    def method(self) -> int:
        t = self.msg_type
        return (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)

    @property
    def message_class(self) -> int:
        return ((self.msg_type >> 4) & 0x1) | ((self.msg_type >> 7) & 0x2)

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of this type (later ones are ignored)."""
        for found_type, value in self.attributes:
            if found_type == attr_type:
                return value
        return None


# -- codec ---------------------------------------------------------------


def message_type(method: int, message_class: int) -> int:
    """Interleave a method and a class into the 14-bit message type."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0x1) << 4)
        | ((message_class & 0x2) << 7)
    )


def is_stun(data: bytes) -> bool:
    """Cheap test: does this datagram claim to be STUN?

    RFC 5389 messages are told apart by the first two bits, a length that is
    a multiple of 4 and the magic cookie. RFC 3489 has no cookie, so a
    classic message counts only as a Binding request whose length matches
    the datagram exactly, the one classic message a server must answer.
    Anything whose first byte is 0x40 or above is never STUN.
    """
    if len(data) < HEADER_BYTES or data[0] & 0xC0:
        return False
    msg_type, length, cookie = struct.unpack_from("!HHI", data)
    if length % 4:
        return False
    if cookie == MAGIC_COOKIE:
        return True
    return msg_type == BINDING_REQUEST and length == len(data) - HEADER_BYTES


def parse_message(data: bytes) -> StunMessage:
    """Parse and validate one STUN message; raise only :class:`StunError`."""
    if len(data) < HEADER_BYTES:
        raise StunError(f"datagram is {len(data)} bytes; a STUN header needs {HEADER_BYTES}")
    msg_type, length, cookie = struct.unpack_from("!HHI", data)
    if msg_type & 0xC000:
        raise StunError("the first two bits of a STUN message must be zero")
    if length % 4:
        raise StunError(f"message length {length} is not a multiple of 4")
    if length != len(data) - HEADER_BYTES:
        raise StunError(
            f"message length {length} does not match the {len(data) - HEADER_BYTES} bytes after the header"
        )
    classic = cookie != MAGIC_COOKIE
    transaction_id = data[4:HEADER_BYTES] if classic else data[8:HEADER_BYTES]
    return StunMessage(msg_type, transaction_id, _parse_attributes(data), classic)


def _parse_attributes(data: bytes) -> tuple[tuple[int, bytes], ...]:
    attributes = []
    position = HEADER_BYTES
    while position < len(data):
        attr_type, attr_length = struct.unpack_from("!HH", data, position)
        value_start = position + 4
        next_position = value_start + _padded(attr_length)
        if next_position > len(data):
            raise StunError(f"attribute 0x{attr_type:04x} of {attr_length} bytes overruns the message")
        if attr_type == FINGERPRINT:
            _check_fingerprint(data, position, attr_length, is_last=next_position == len(data))
        attributes.append((attr_type, data[value_start : value_start + attr_length]))
        position = next_position
    return tuple(attributes)


def _check_fingerprint(data: bytes, position: int, attr_length: int, *, is_last: bool) -> None:
    # Section 15.5: FINGERPRINT is last, so the header's length already
    # covers it and the CRC runs over everything before it as received.
    if not is_last:
        raise StunError("FINGERPRINT is not the last attribute")
    if attr_length != 4:
        raise StunError(f"FINGERPRINT is {attr_length} bytes, not 4")
    (claimed,) = struct.unpack_from("!I", data, position + 4)
    if claimed != _fingerprint(data[:position]):
        raise StunError("FINGERPRINT does not match the message")


def _fingerprint(data: bytes) -> int:
    return binascii.crc32(data) ^ FINGERPRINT_XOR


def _padded(length: int) -> int:
    return (length + 3) & ~3


def _encode(
    msg_type: int, transaction_id: bytes, attributes: Iterable[tuple[int, bytes]], *, classic: bool = False
) -> bytes:
    body = b"".join(
        struct.pack("!HH", attr_type, len(value)) + value + bytes(_padded(len(value)) - len(value))
        for attr_type, value in attributes
    )
    cookie = b"" if classic else _COOKIE_BYTES
    return struct.pack("!HH", msg_type, len(body)) + cookie + transaction_id + body


def encode_binding_request(transaction_id: bytes | None = None) -> tuple[bytes, bytes]:
    """A minimal (20-byte) RFC 5389 Binding request and its transaction id."""
    if transaction_id is None:
        transaction_id = secrets.token_bytes(TRANSACTION_ID_BYTES)
    if len(transaction_id) != TRANSACTION_ID_BYTES:
        raise ValueError(f"a transaction id is {TRANSACTION_ID_BYTES} bytes, not {len(transaction_id)}")
    return _encode(BINDING_REQUEST, transaction_id, ()), transaction_id


def encode_binding_success(message: StunMessage, ip: str, port: int) -> bytes:
    """The success response to a Binding request from ``ip``:``port``.

    RFC 5389 clients get XOR-MAPPED-ADDRESS, and over IPv4 also
    MAPPED-ADDRESS (RFC 3489 knew only IPv4, so IPv6 gains nothing from it);
    classic clients get MAPPED-ADDRESS alone (section 12.2). Either way the
    reply to a minimal request is 44 bytes at most.
    """
    address = _public_address(ip)
    mapped = (MAPPED_ADDRESS, _address_value(address, port))
    if message.classic:
        attributes = [mapped]
    else:
        attributes = [(XOR_MAPPED_ADDRESS, _address_value(address, port, _xor_key(message.transaction_id)))]
        if address.version == 4:
            attributes.append(mapped)
    return _reply(message, SUCCESS, attributes)


def encode_error_response(
    message: StunMessage, code: int, reason: str, unknown_attributes: Iterable[int] = ()
) -> bytes:
    """An error response to ``message`` (section 15.6), with UNKNOWN-ATTRIBUTES when given."""
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error codes run from 300 to 699, not {code}")
    attributes = [(ERROR_CODE, struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8"))]
    unknown = list(unknown_attributes)
    if unknown:
        attributes.append((UNKNOWN_ATTRIBUTES, struct.pack(f"!{len(unknown)}H", *unknown)))
    return _reply(message, ERROR, attributes)


def _reply(message: StunMessage, message_class: int, attributes: Iterable[tuple[int, bytes]]) -> bytes:
    msg_type = message_type(message.method, message_class)
    return _encode(msg_type, message.transaction_id, attributes, classic=message.classic)


def parse_mapped_address(message: StunMessage) -> MappedAddress:
    """The mapped address in a success response: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS."""
    if message.message_class != SUCCESS:
        raise StunError("only a success response carries a mapped address")
    xor_mapped = None if message.classic else message.get(XOR_MAPPED_ADDRESS)
    if xor_mapped is not None:
        return _parse_address(xor_mapped, _xor_key(message.transaction_id))
    mapped = message.get(MAPPED_ADDRESS)
    if mapped is not None:
        return _parse_address(mapped)
    raise StunError("the response carries neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS")


def parse_error_code(message: StunMessage) -> tuple[int, str]:
    """The code and reason phrase of an error response."""
    value = message.get(ERROR_CODE)
    if value is None or len(value) < 4:
        raise StunError("the error response carries no valid ERROR-CODE")
    return (value[2] & 0x7) * 100 + value[3], value[4:].decode("utf-8", "replace")


def _xor_key(transaction_id: bytes) -> bytes:
    # The port is xor'd with the cookie's top half, the address with the
    # cookie and (IPv6) the transaction id: one key covers both (section 15.2).
    return _COOKIE_BYTES[:2] + _COOKIE_BYTES + transaction_id


def _xor(data: bytes, key: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, key))


def _address_value(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, xor_key: bytes | None = None
) -> bytes:
    family = _FAMILY_IPV4 if address.version == 4 else _FAMILY_IPV6
    port_and_address = struct.pack("!H", port) + address.packed
    if xor_key is not None:
        port_and_address = _xor(port_and_address, xor_key)
    return struct.pack("!BB", 0, family) + port_and_address


def _parse_address(value: bytes, xor_key: bytes | None = None) -> MappedAddress:
    if len(value) < 4:
        raise StunError(f"an address attribute of {len(value)} bytes is too short")
    family = value[1]
    sizes = {_FAMILY_IPV4: 4, _FAMILY_IPV6: 16}
    if family not in sizes:
        raise StunError(f"unknown address family 0x{family:02x}")
    if len(value) != 4 + sizes[family]:
        raise StunError(f"an address attribute of family 0x{family:02x} cannot be {len(value)} bytes")
    port_and_address = value[2:]
    if xor_key is not None:
        port_and_address = _xor(port_and_address, xor_key)
    (port,) = struct.unpack_from("!H", port_and_address)
    return MappedAddress(str(ipaddress.ip_address(port_and_address[2:])), port)


def _public_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address as its owner should see it: an IPv4 client of a
    dual-stack socket appears as ``::ffff:a.b.c.d``, and a link-local one
    carries a ``%zone`` that means nothing to anyone else."""
    address = unmapped(ipaddress.ip_address(ip))
    if address.version == 6:
        return ipaddress.IPv6Address(address.packed)
    return address


# -- server --------------------------------------------------------------


def reply_limit(request_bytes: int) -> int:
    """The most a reply to a datagram of ``request_bytes`` may carry."""
    return max(SMALL_REPLY_BYTES, AMPLIFICATION_FACTOR * request_bytes)


def unknown_required_attributes(message: StunMessage) -> list[int]:
    """Comprehension-required attributes (0x0000-0x7FFF) we do not understand, each once."""
    unknown: list[int] = []
    for attr_type, _ in message.attributes:
        if attr_type < 0x8000 and attr_type not in UNDERSTOOD_ATTRIBUTES and attr_type not in unknown:
            unknown.append(attr_type)
    return unknown


def handle_datagram(data: bytes, source_ip: str, source_port: int) -> tuple[str, bytes | None]:
    """Decide what to answer a datagram from ``source_ip``:``source_port``.

    Returns one of :data:`OUTCOMES` (except "rate_limited" and "error",
    which only the server protocol decides) and the reply, or None
    for no reply. Pure: no I/O, no clock, no logging.
    """
    if not data or source_port == 0:
        return OUTCOME_IGNORED, None
    if is_stun(data):
        outcome, reply = _answer_stun(data, source_ip, source_port)
    else:
        outcome, reply = _answer_legacy(data, source_ip, source_port)
    # The one place the amplification bound is enforced, whatever the
    # encoders above produce.
    if reply is not None and len(reply) > reply_limit(len(data)):
        return OUTCOME_IGNORED, None
    return outcome, reply


def _answer_stun(data: bytes, source_ip: str, source_port: int) -> tuple[str, bytes | None]:
    try:
        message = parse_message(data)
    except StunError:
        return OUTCOME_MALFORMED, None
    # Indications and responses never get an answer from a server, and
    # RFC 5389 section 7.3 says a message whose method is not supported "is
    # silently discarded" (no 400): that also keeps us from answering junk.
    if message.message_class != REQUEST or message.method != BINDING:
        return OUTCOME_IGNORED, None
    unknown = unknown_required_attributes(message)
    if unknown:
        # Section 7.3.1. This is also how RESPONSE-ADDRESS and CHANGE-REQUEST
        # (RFC 3489) are refused: we never send to a third party.
        return OUTCOME_UNKNOWN_ATTRIBUTE, encode_error_response(message, 420, "Unknown Attribute", unknown)
    return OUTCOME_BINDING, encode_binding_success(message, source_ip, source_port)


def _answer_legacy(data: bytes, source_ip: str, source_port: int) -> tuple[str, bytes | None]:
    """The seed's reply to any non-STUN datagram, unless it could start a loop."""
    if source_port < _LOWEST_LEGACY_PORT or data.startswith(_LEGACY_REPLY_PREFIX):
        return OUTCOME_IGNORED, None
    reply = json.dumps({"ip": str(_public_address(source_ip)), "port": source_port})
    return OUTCOME_LEGACY_JSON, reply.encode("ascii")


class StunServerProtocol(DatagramProtocol):
    """The server's STUN port: answers each datagram by :func:`handle_datagram`,
    and hands relay frames to ``relay`` (see wire.server.relay).

    ``observe(outcome)`` is called once per datagram (for metrics). Nothing
    here raises into the reactor, and nothing is logged per datagram except
    failures, and those sparsely.

    ``admit(source_host)``, when given, is asked before any other datagram
    is answered; False drops it unanswered ("rate_limited"), so one source
    cannot use the port's whole capacity. Relay frames are not asked: the
    relay limits each session itself.
    """

    def __init__(
        self,
        observe: Callable[[str], None] | None = None,
        relay: Callable[[bytes, Any], tuple[str, bytes | None, Any]] | None = None,
        admit: Callable[[str], bool] | None = None,
        reactor: Any = None,
    ):
        self._reactor = reactor
        self._observe = observe
        self._relay = relay
        self._admit = admit
        self._failures = 0
        self._send_relayed = None

    def startProtocol(self) -> None:
        # Both ports, relay or not: Binding requests from thousands of nodes
        # arrive in bursts, and while the reactor drains one socket (up to
        # 256 KiB of datagrams per read) the other's default ~200 KiB buffer
        # (a few hundred small datagrams) overflows.
        enlarge_socket_buffers(self.transport)
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        self._send_relayed = DatagramBatcher(self._reactor, self.transport).send

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            if self._relay is not None and is_relay_frame(datagram):
                # Relay frames share this port; they are checked before the
                # seed's catch-all JSON answer could see them.
                outcome, data, destination = self._relay(datagram, addr)
                if data is not None:
                    self._send_relayed(data, destination)
            elif self._admit is not None and not self._admit(addr[0]):
                outcome = OUTCOME_RATE_LIMITED
            else:
                outcome, reply = handle_datagram(datagram, addr[0], addr[1])
                if reply is not None:
                    # addr as received: an IPv6 socket needs its scope id back.
                    self.transport.write(reply, addr)
        except Exception:
            outcome = OUTCOME_ERROR
            self._log_failure("STUN datagram from {host}:{port} could not be handled", addr)
        if self._observe is not None:
            try:
                self._observe(outcome)
            except Exception:
                self._log_failure("STUN outcome observer failed on a datagram from {host}:{port}", addr)

    def _log_failure(self, message: str, addr: Any) -> None:
        # A datagram that breaks us can be replayed at line rate; logging the
        # 1st, 2nd, 4th, 8th... failure keeps the evidence without the flood.
        self._failures += 1
        if self._failures & (self._failures - 1) == 0:
            log.failure(message + " (failure {count})", host=addr[0], port=addr[1], count=self._failures)


# -- probe client ----------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    mapped: MappedAddress
    rtt_seconds: float


@dataclass(frozen=True)
class _Transaction:
    server: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
    sent_at: float
    answer: Deferred[_Answer]


class _BindingClient(DatagramProtocol):
    """Runs Binding transactions from one UDP socket, several at once."""

    def __init__(self, clock: Any):
        self._clock = clock
        self._transactions: dict[bytes, _Transaction] = {}

    async def binding(self, server_ip: str, server_port: int, *, timeout: float, attempts: int) -> _Answer:
        """Send up to ``attempts`` requests ``timeout`` seconds apart; the
        first valid answer to any of them wins. Each attempt has its own
        transaction id, so the round-trip time is measured from the send it
        answers."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        server = (ipaddress.ip_address(server_ip), server_port)
        answer: Deferred[_Answer] = Deferred()
        sent: list[bytes] = []

        def send() -> None:
            request, transaction_id = encode_binding_request()
            self._transactions[transaction_id] = _Transaction(server, self._clock.seconds(), answer)
            sent.append(transaction_id)
            try:
                self.transport.write(request, (server_ip, server_port))
            except Exception as e:
                if not answer.called:
                    answer.errback(StunError(f"cannot send to {server_ip}:{server_port}: {e}"))

        def give_up() -> None:
            if not answer.called:
                answer.errback(
                    StunTimeout(
                        f"no STUN answer from {server_ip}:{server_port}"
                        f" to {attempts} requests in {attempts * timeout:g}s"
                    )
                )

        calls = [self._clock.callLater(i * timeout, send) for i in range(1, attempts)]
        calls.append(self._clock.callLater(attempts * timeout, give_up))
        send()
        try:
            return await answer
        finally:
            for call in calls:
                if call.active():
                    call.cancel()
            for transaction_id in sent:
                del self._transactions[transaction_id]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            message = parse_message(datagram)
        except StunError:
            return  # not STUN, or damaged: the retransmissions cover it
        transaction = self._transactions.get(message.transaction_id)
        if transaction is None or transaction.answer.called:
            return
        if (ipaddress.ip_address(addr[0]), addr[1]) != transaction.server or message.method != BINDING:
            return
        if message.message_class == SUCCESS:
            self._succeed(transaction, message)
        elif message.message_class == ERROR:
            self._fail(transaction, message)

    def _succeed(self, transaction: _Transaction, message: StunMessage) -> None:
        try:
            mapped = parse_mapped_address(message)
        except StunError as e:
            transaction.answer.errback(e)
            return
        transaction.answer.callback(_Answer(mapped, self._clock.seconds() - transaction.sent_at))

    def _fail(self, transaction: _Transaction, message: StunMessage) -> None:
        try:
            code, reason = parse_error_code(message)
        except StunError as e:
            transaction.answer.errback(e)
            return
        transaction.answer.errback(StunError(f"the STUN server answered {code} {reason}"))


async def _server_ip(reactor: Any, server_host: str) -> str:
    try:
        return str(ipaddress.ip_address(server_host))
    except ValueError:
        return await reactor.resolve(server_host)  # IPv4 only, by design of reactor.resolve


def _listen(reactor: Any, local_port: int, interface: str, server_ip: str, client: _BindingClient) -> Any:
    if not interface and ipaddress.ip_address(server_ip).version == 6:
        interface = "::"
    return reactor.listenUDP(local_port, client, interface=interface)


async def probe_mapped_address(
    reactor: Any,
    server_host: str,
    server_port: int,
    *,
    local_port: int = 0,
    interface: str = "",
    timeout: float = 1.0,
    attempts: int = 3,
) -> MappedAddress:
    """Our address and port as the STUN server at ``server_host``:``server_port`` sees them.

    ``reactor`` provides IReactorUDP and IReactorTime (and ``resolve`` for a
    host name). Binds UDP ``local_port`` (the WireGuard port, before
    WireGuard takes it) and always releases it before returning. Raises
    :class:`StunTimeout` when no answer comes within ``attempts * timeout``
    seconds, :class:`StunError` on an error response, and
    ``CannotListenError`` when the port is taken.
    """
    server_ip = await _server_ip(reactor, server_host)
    client = _BindingClient(reactor)
    port = _listen(reactor, local_port, interface, server_ip, client)
    try:
        answer = await client.binding(server_ip, server_port, timeout=timeout, attempts=attempts)
    finally:
        await maybeDeferred(port.stopListening)
    return answer.mapped


@dataclass(frozen=True)
class NatReport:
    """What two STUN server ports saw of one local socket.

    ``nat_type`` is one of wire.protocol.NAT_TYPES: "none" (mapped to one
    of our own addresses, same port), "easy" (both ports saw the same
    mapping), "hard" (a new mapping per destination: symmetric NAT, needs
    the relay), "unknown" (only one port answered).
    """

    nat_type: str
    mapped_a: MappedAddress | None
    mapped_b: MappedAddress | None
    latency_ms: float
    local_port: int

    @property
    def mapped(self) -> MappedAddress:
        """The endpoint to publish: what port A saw, else port B."""
        mapped = self.mapped_a or self.mapped_b
        assert mapped is not None  # detect_nat raises when neither answered
        return mapped


async def detect_nat(
    reactor: Any,
    server_host: str,
    port_a: int,
    port_b: int,
    *,
    local_port: int = 0,
    interface: str = "",
    timeout: float = 1.0,
    attempts: int = 3,
    local_ips: Collection[str] = (),
) -> NatReport:
    """Probe two server ports at once from one local socket and classify the NAT.

    "none" needs ``local_ips``, the node's own interface addresses: a
    socket bound to the wildcard address cannot tell which one it sent
    from. Without them an unNATed node is reported "easy", which is as good
    for hole punching. ``latency_ms`` is the fastest round trip seen.
    Raises like :func:`probe_mapped_address` when neither port answers.
    """
    server_ip = await _server_ip(reactor, server_host)
    client = _BindingClient(reactor)
    port = _listen(reactor, local_port, interface, server_ip, client)
    try:
        bound_port = port.getHost().port
        results = await DeferredList(
            [
                Deferred.fromCoroutine(client.binding(server_ip, p, timeout=timeout, attempts=attempts))
                for p in (port_a, port_b)
            ],
            consumeErrors=True,
        )
    finally:
        await maybeDeferred(port.stopListening)
    answers = [result if ok else None for ok, result in results]
    if answers == [None, None]:
        results[0][1].raiseException()
    return _nat_report(answers[0], answers[1], bound_port, local_ips)


def _nat_report(
    a: _Answer | None, b: _Answer | None, local_port: int, local_ips: Collection[str]
) -> NatReport:
    mapped_a = a.mapped if a is not None else None
    mapped_b = b.mapped if b is not None else None
    latency_ms = min(answer.rtt_seconds for answer in (a, b) if answer is not None) * 1000
    if mapped_a is None or mapped_b is None:
        nat_type = "unknown"
    elif mapped_a != mapped_b:
        nat_type = "hard"
    elif mapped_a.port == local_port and _is_own(mapped_a.ip, local_ips):
        nat_type = "none"
    else:
        nat_type = "easy"
    return NatReport(nat_type, mapped_a, mapped_b, latency_ms, local_port)


def _is_own(ip: str, local_ips: Collection[str]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address == ipaddress.ip_address(own) for own in local_ips)
