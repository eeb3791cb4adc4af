"""The STUN message codec (RFC 5389, and RFC 3489's classic Binding).

Pure: bytes in, messages out, and back; no sockets, no clock. Both the
server (wire.stun.server) and the node's probe (wire.stun.client) speak
through it.
"""

from __future__ import annotations

import binascii
import ipaddress
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from wire.sourceaddress import unmapped

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


class StunError(ValueError):
    """A STUN message or exchange is not acceptable; ``str()`` says why."""


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
    address = public_address(ip)
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


def public_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address as its owner should see it: an IPv4 client of a
    dual-stack socket appears as ``::ffff:a.b.c.d``, and a link-local one
    carries a ``%zone`` that means nothing to anyone else."""
    address = unmapped(ipaddress.ip_address(ip))
    if address.version == 6:
        return ipaddress.IPv6Address(address.packed)
    return address
