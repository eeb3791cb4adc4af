"""Validators for the fields of every message, and for the body that carries them.

Every value that arrives from the network passes through one of the
``parse_*`` functions here (directly, or through a message type's
``from_json``) before anything else looks at it. Each raises
:class:`ProtocolError` naming the offending field, so an API can answer with
a precise 400 and a CLI with a precise message; none of them ever lets a
value through that could mean something to a shell or a WireGuard config
line (no spaces, no newlines, no metacharacters survive validation).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from typing import Any

from wire.protocol.enums import NatType
from wire.protocol.errors import BodyTooLarge, ProtocolError

MAX_BODY_BYTES = 64 * 1024
WG_KEY_BYTES = 32

NAT_TYPES = tuple(NatType)

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A DNS label (RFC 1123): letters, digits and inner hyphens, 1-63 characters.
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_BASE64_KEY = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
_IPV4_ENDPOINT = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,3}){3}):([0-9]{1,5})\Z")
_IPV6_ENDPOINT = re.compile(r"\[([0-9A-Fa-f:.]{2,45})\]:([0-9]{1,5})\Z")


def parse_json_object(body: bytes, *, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """Decode a request body that must be one JSON object."""
    if len(body) > limit:
        raise BodyTooLarge(None, f"body is {len(body)} bytes; the limit is {limit}")
    if not body.strip():
        raise ProtocolError(None, "body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(None, "body is not UTF-8 text")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(None, f"body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})")
    except RecursionError:
        raise ProtocolError(None, "body is nested too deeply")
    except ValueError:
        # e.g. an integer of more digits than Python will convert.
        raise ProtocolError(None, "body is not valid JSON (a number is too long)")
    if not isinstance(value, dict):
        raise ProtocolError(None, f"body must be a JSON object, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _require_str(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError(field, f"must be a string, not {_json_type(value)}")
    return value


def parse_node_id(value: Any, field: str = "node_id") -> str:
    text = _require_str(field, value)
    if not _NODE_ID.fullmatch(text):
        raise ProtocolError(
            field, "must be 1-64 characters of letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return text


def parse_node_name(value: Any, field: str = "node_name") -> str:
    """A node name is a DNS label; it is stored lower-case (DNS is case-blind)."""
    text = _require_str(field, value)
    # ASCII first: str.lower() maps some non-ASCII letters (the Kelvin sign) to ASCII ones.
    if not text.isascii() or not _DNS_LABEL.fullmatch(text.lower()):
        raise ProtocolError(
            field,
            f"{_shown(value)} is not a DNS label (1-63 letters, digits or inner hyphens)",
        )
    return text.lower()


MAX_TAGS = 32


def parse_tag(value: Any, field: str = "tags") -> str:
    """A tag is ``tag:NAME``, NAME a DNS label (lower-case); a bare NAME is taken as ``tag:NAME``."""
    text = _require_str(field, value)
    if not text.isascii():
        raise ProtocolError(field, f"{_shown(value)} is not a tag (tag:NAME, NAME 1-63 letters, digits or inner hyphens)")
    text = text.lower()
    name = text[4:] if text.startswith("tag:") else text
    if not _DNS_LABEL.fullmatch(name):
        raise ProtocolError(field, f"{_shown(value)} is not a tag (tag:NAME, NAME 1-63 letters, digits or inner hyphens)")
    return "tag:" + name


def parse_tags(value: Any, field: str = "tags") -> tuple[str, ...]:
    """A set of tags, as a sorted tuple without repeats; at most MAX_TAGS."""
    tags = sorted({parse_tag(tag, field) for tag in parse_list(value, field)})
    if len(tags) > MAX_TAGS:
        raise ProtocolError(field, f"at most {MAX_TAGS} tags")
    return tuple(tags)


def parse_wg_public_key(value: Any, field: str = "wg_public_key") -> str:
    """A WireGuard public key: standard base64 of exactly 32 bytes."""
    text = _require_str(field, value)
    if not _BASE64_KEY.fullmatch(text):
        raise ProtocolError(field, "must be the base64 form of a 32-byte WireGuard key (44 characters)")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ProtocolError(field, "is not valid base64")
    if len(raw) != WG_KEY_BYTES:
        raise ProtocolError(field, f"decodes to {len(raw)} bytes; a WireGuard key is 32")
    return text


def parse_port(value: Any, field: str) -> int:
    # bool is an int subclass in Python; JSON true is not a port.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(field, f"must be an integer from 1 to 65535, not {_json_type(value)}")
    if not 1 <= value <= 65535:
        raise ProtocolError(field, f"{value} is not a UDP port (1-65535)")
    return value


def parse_udp_endpoint(value: Any, field: str) -> str:
    """ "ip:port" or "[ipv6]:port", normalised; hostnames and anything odd refused."""
    if not isinstance(value, str):
        raise ProtocolError(field, f"must be a string, not {_json_type(value)}")
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    if match := _IPV4_ENDPOINT.match(value):
        host, port = match.groups()
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise ProtocolError(field, f"{_shown(value)} does not hold a valid IPv4 address") from None
        shown = str(address)
    elif match := _IPV6_ENDPOINT.match(value):
        host, port = match.groups()
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ProtocolError(field, f"{_shown(value)} does not hold a valid IPv6 address") from None
        shown = f"[{address.compressed}]"
    else:
        raise ProtocolError(field, f"{_shown(value)} is not IPV4:PORT or [IPV6]:PORT")
    if not 1 <= int(port) <= 65535:
        raise ProtocolError(field, f"{_shown(value)} has no valid UDP port (1-65535)")
    return f"{shown}:{int(port)}"


def parse_ip_address(value: Any, field: str) -> str:
    """One IPv4 or IPv6 host address (not a network, not a hostname)."""
    text = _require_str(field, value)
    if "/" in text:
        raise ProtocolError(field, f"{_shown(text)} is a network (CIDR); expected one address")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProtocolError(field, f"{_shown(text)} is not an IP address")
    if getattr(address, "scope_id", None):
        # A zone ("%eth0") means nothing to another host, and is free text.
        raise ProtocolError(field, f"{_shown(text)} has a zone (%...); give the address alone")
    return str(address)


def parse_underlay_ipv6(value: Any, field: str) -> str:
    """A node's own IPv6 address on the underlay, where peers may send to it
    directly: a unicast address another host can reach (not loopback,
    link-local, site-local, multicast, unspecified or IPv4-mapped)."""
    text = parse_ip_address(value, field)
    address = ipaddress.ip_address(text)
    if address.version != 6:
        raise ProtocolError(field, f"{text} is not an IPv6 address")
    problem = underlay_ipv6_problem(address)
    if problem:
        raise ProtocolError(field, f"{text} {problem}")
    return text


def underlay_ipv6_problem(address: ipaddress.IPv6Address) -> str:
    """Why ``address`` cannot be a node's IPv6 underlay address ("" if it can)."""
    if address.is_unspecified:
        return "is the unspecified address"
    if address.is_loopback:
        return "is a loopback address"
    if address.is_link_local:
        return "is link-local (it means nothing off its link)"
    if address.is_site_local:
        return "is site-local (deprecated, not routed)"
    if address.is_multicast:
        return "is a multicast address"
    if address.ipv4_mapped is not None:
        return "is an IPv4-mapped address"
    return ""


def parse_nat_type(value: Any, field: str = "nat_type") -> NatType:
    text = _require_str(field, value)
    try:
        return NatType(text)
    except ValueError:
        raise ProtocolError(field, f"must be one of {', '.join(NAT_TYPES)}")


def parse_str(value: Any, field: str, *, limit: int = 200) -> str:
    """Any string, bounded (for text that is only shown, never acted on)."""
    text = _require_str(field, value)
    if len(text) > limit:
        raise ProtocolError(field, f"is {len(text)} characters; at most {limit}")
    return text


def parse_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(field, f"must be true or false, not {_json_type(value)}")
    return value


def parse_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(field, f"must be a number, not {_json_type(value)}")
    return value


def parse_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(field, f"must be an object, not {_json_type(value)}")
    return value


def parse_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError(field, f"must be a list, not {_json_type(value)}")
    return value


def optional(body: dict[str, Any], field: str) -> Any:
    """A field's value, or None when it is absent, null or "" (the seed's ways of leaving one out)."""
    value = body.get(field)
    return None if value is None or value == "" else value


def required(body: dict[str, Any], field: str) -> Any:
    value = optional(body, field)
    if value is None:
        raise ProtocolError(field, "is required")
    return value


def _shown(value: Any, limit: int = 40) -> str:
    """A short, printable rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


