"""The mesh's DNS configuration, as the server pushes it with the netmap.

The admin keeps records and split-DNS zones on the server; a node gets them
here and validates everything (sizes, counts, every label of every name)
before its resolver (wire.node.dns) serves a byte of it.

Names, as this module decides them:

- A record's ``name`` is *relative to the mesh domain*: ``db`` is
  ``db.wire.internal``, ``_acme-challenge.web`` is
  ``_acme-challenge.web.wire.internal``. An admin record can therefore never
  speak for a name outside the mesh domain (no hijacking ``example.com`` on
  every node). A trailing dot or the domain itself in a name is refused, so
  nobody writes ``db.wire.internal`` and gets ``db.wire.internal.wire.internal``.
- A CNAME's ``value`` is an *absolute* name (a trailing dot is optional and
  dropped): ``web1.wire.internal`` points inside the mesh, ``example.com`` out.
- Every name is lower-cased (DNS is case-blind); each label is 1-63 letters,
  digits or inner hyphens (RFC 1035/1123), and a record's labels may start
  with ``_`` (RFC 8552 service labels, for TXT and CNAME targets of ACME).
  A whole name is at most 253 characters.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from wire.protocol.errors import ProtocolError
from wire.protocol.fields import parse_list, parse_object

DEFAULT_DOMAIN = "wire.internal"
RECORD_TYPES = ("A", "AAAA", "CNAME", "TXT")
MAX_NAME = 253
MAX_RECORDS = 1_000
MAX_ZONES = 100
MAX_RESOLVERS = 8
MAX_NAMESERVERS = 8
# A TXT value is split into character-strings of 255 bytes (RFC 1035 3.3.14);
# four of them are enough for an SPF or DKIM value, and keep an answer small.
TXT_STRING_BYTES = 255
MAX_TXT_BYTES = 4 * TXT_STRING_BYTES

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SERVICE_LABEL = re.compile(r"_?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# TXT text is printable ASCII: it reaches logs and terminals (dig output) as it is.
_TXT = re.compile(r"[\x20-\x7e]*")
_BRACKETED = re.compile(r"\[([0-9a-fA-F:.]+)\]:([0-9]{1,5})")


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(field, f"must be a string, not {type(value).__name__}")
    return value


def _labels(text: str, field: str, *, service_labels: bool) -> str:
    """``text`` lower-cased, every label checked; a trailing dot is the caller's business."""
    if not text.isascii():
        # Letters like U+212A (Kelvin) lower-case to ASCII: refuse before, not after.
        raise ProtocolError(field, f"{_shown(text)} is not ASCII (write an international name as xn--...)")
    name = text.lower()
    if not name:
        raise ProtocolError(field, "is empty; expected a DNS name")
    if len(name) > MAX_NAME:
        raise ProtocolError(field, f"{_shown(text)} is {len(name)} characters; a DNS name is at most {MAX_NAME}")
    pattern = _SERVICE_LABEL if service_labels else _LABEL
    for label in name.split("."):
        if not pattern.fullmatch(label):
            raise ProtocolError(
                field,
                f"{_shown(text)}: label {_shown(label, 70)} is not a DNS label "
                "(1-63 letters, digits or inner hyphens)",
            )
    return name


def parse_dns_name(value: Any, field: str = "name") -> str:
    """An absolute domain name, lower-case, without its trailing dot."""
    text = _text(value, field)
    return _labels(text[:-1] if text.endswith(".") else text, field, service_labels=True)


def parse_mesh_domain(value: Any, field: str = "domain") -> str:
    """The mesh's own domain (``wire.internal``): plain LDH labels, not a reverse zone."""
    text = _text(value, field)
    domain = _labels(text[:-1] if text.endswith(".") else text, field, service_labels=False)
    if domain == "arpa" or domain.endswith(".arpa"):
        raise ProtocolError(field, f"{_shown(text)} is under arpa (the reverse zones); choose a name like {DEFAULT_DOMAIN}")
    return domain


def is_under(name: str, domain: str) -> bool:
    """``name`` is ``domain`` or a name beneath it (both lower-case, no trailing dot)."""
    return name == domain or name.endswith("." + domain)


def dns_name_of(node_name: Any, domain: str) -> str | None:
    """A peer's DNS name (``web1.wire.internal``), or None when its node name is
    not a DNS label: the name is only shown text, and a seed server may have
    stored anything (spaces, dots, escapes)."""
    if not isinstance(node_name, str):
        return None
    if not node_name.isascii():
        return None
    label = node_name.lower()
    if not _LABEL.fullmatch(label):
        return None
    name = f"{label}.{domain}"
    return name if len(name) <= MAX_NAME else None


def parse_resolver(value: Any, field: str = "resolvers") -> str:
    """A resolver as ``IP``, ``IP:PORT`` or ``[IPv6]:PORT``, normalised
    (``10.0.0.53``, ``10.0.0.53:5353``, ``fd00::53``, ``[fd00::53]:5353``)."""
    host, port = resolver_address(value, field)
    if port == 53:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolver_address(value: Any, field: str = "resolvers") -> tuple[str, int]:
    """``(host, port)`` of a resolver written as :func:`parse_resolver` accepts."""
    text = _text(value, field)
    bracketed = _BRACKETED.fullmatch(text)
    if bracketed:
        host_text, port_text = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        host_text, port_text = text.split(":")
    else:
        host_text, port_text = text, "53"
    try:
        host = ipaddress.ip_address(host_text)
    except ValueError:
        raise ProtocolError(field, f"{_shown(text)} is not IP, IP:PORT or [IPv6]:PORT") from None
    if bracketed and host.version != 6:
        raise ProtocolError(field, f"{_shown(text)}: brackets are for IPv6 addresses")
    if host_text != host_text.strip() or getattr(host, "scope_id", None):
        raise ProtocolError(field, f"{_shown(text)}: give the address alone (no spaces, no %zone)")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ProtocolError(field, f"{_shown(text)}: the port must be 1-65535")
    return str(host), int(port_text)


def _resolvers(value: Any, field: str, limit: int) -> tuple[str, ...]:
    raw = parse_list(value, field)
    if len(raw) > limit:
        raise ProtocolError(field, f"at most {limit} resolvers, not {len(raw)}")
    resolvers = tuple(dict.fromkeys(parse_resolver(item, field) for item in raw))
    return resolvers


@dataclass(frozen=True)
class DnsRecord:
    """An admin record: ``name`` relative to the mesh domain (see the module's doc).

    ``value``: an address of the type's family (A, AAAA), an absolute name
    (CNAME), or printable text up to MAX_TXT_BYTES (TXT; served as 255-byte strings)."""

    name: str
    type: str
    value: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type, "value": self.value}

    @classmethod
    def from_json(cls, value: Any) -> DnsRecord:
        body = parse_object(value, "record")
        raw_name = _text(body.get("name"), "name")
        if raw_name.endswith(".") or raw_name == "@":
            raise ProtocolError("name", f"{_shown(raw_name)}: a record's name is relative to the mesh domain (e.g. db)")
        name = _labels(raw_name, "name", service_labels=True)
        kind = body.get("type")
        if not isinstance(kind, str) or kind.upper() not in RECORD_TYPES:
            raise ProtocolError("type", f"{_shown(kind)} is not one of {', '.join(RECORD_TYPES)}")
        kind = kind.upper()
        return cls(name, kind, _record_value(kind, body.get("value")))

    def txt_strings(self) -> tuple[bytes, ...]:
        """A TXT value as the character-strings DNS carries."""
        data = self.value.encode("ascii")
        return tuple(data[i : i + TXT_STRING_BYTES] for i in range(0, len(data), TXT_STRING_BYTES)) or (b"",)


def _record_value(kind: str, value: Any) -> str:
    text = _text(value, "value")
    if kind in ("A", "AAAA"):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ProtocolError("value", f"{_shown(text)} is not an IP address") from None
        if address.version != (4 if kind == "A" else 6):
            raise ProtocolError("value", f"{_shown(text)} is not an IPv{4 if kind == 'A' else 6} address ({kind} record)")
        return str(address)
    if kind == "CNAME":
        return parse_dns_name(text, "value")
    if not _TXT.fullmatch(text):
        raise ProtocolError("value", "TXT text must be printable ASCII (no control characters)")
    if len(text) > MAX_TXT_BYTES:
        raise ProtocolError("value", f"TXT text is {len(text)} bytes; at most {MAX_TXT_BYTES}")
    return text


@dataclass(frozen=True)
class ForwardZone:
    """Split DNS: queries for ``domain`` and beneath go to ``resolvers``, in order."""

    domain: str
    resolvers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "resolvers": list(self.resolvers)}

    @classmethod
    def from_json(cls, value: Any) -> ForwardZone:
        body = parse_object(value, "forward zone")
        domain = parse_dns_name(body.get("domain"), "domain")
        resolvers = _resolvers(body.get("resolvers"), "resolvers", MAX_RESOLVERS)
        if not resolvers:
            raise ProtocolError("resolvers", f"{domain}: at least one resolver")
        return cls(domain, resolvers)


@dataclass(frozen=True)
class DnsConfig:
    """What the server tells a node about DNS, all of it validated.

    ``nameservers`` empty: the node forwards to the resolvers its machine had."""

    domain: str = DEFAULT_DOMAIN
    records: tuple[DnsRecord, ...] = ()
    forward: tuple[ForwardZone, ...] = ()
    nameservers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "records": [record.to_json() for record in self.records],
            "forward": [zone.to_json() for zone in self.forward],
            "nameservers": list(self.nameservers),
        }

    @classmethod
    def from_json(cls, value: Any) -> DnsConfig:
        body = parse_object(value, "dns")
        domain = parse_mesh_domain(body.get("domain", DEFAULT_DOMAIN), "domain")
        raw_records = parse_list(body.get("records", []), "records")
        if len(raw_records) > MAX_RECORDS:
            raise ProtocolError("records", f"at most {MAX_RECORDS} records, not {len(raw_records)}")
        records = tuple(DnsRecord.from_json(item) for item in raw_records)
        _check_records(records, domain)
        raw_zones = parse_list(body.get("forward", []), "forward")
        if len(raw_zones) > MAX_ZONES:
            raise ProtocolError("forward", f"at most {MAX_ZONES} forwarded zones, not {len(raw_zones)}")
        forward = tuple(ForwardZone.from_json(item) for item in raw_zones)
        seen: set[str] = set()
        for zone in forward:
            if zone.domain in seen:
                raise ProtocolError("forward", f"{zone.domain} is forwarded twice")
            if is_under(zone.domain, domain) or is_under(domain, zone.domain):
                raise ProtocolError("forward", f"{zone.domain} overlaps the mesh domain {domain}, which this node answers itself")
            seen.add(zone.domain)
        nameservers = _resolvers(body.get("nameservers", []), "nameservers", MAX_NAMESERVERS)
        return cls(domain, records, forward, nameservers)


def _check_records(records: tuple[DnsRecord, ...], domain: str) -> None:
    names: dict[str, set[str]] = {}
    seen: set[DnsRecord] = set()
    for record in records:
        if len(record.name) + 1 + len(domain) > MAX_NAME:
            raise ProtocolError("name", f"{record.name}.{domain} is longer than {MAX_NAME} characters")
        if record in seen:
            raise ProtocolError("records", f"{record.name} {record.type} {_shown(record.value)} is listed twice")
        seen.add(record)
        types = names.setdefault(record.name, set())
        # RFC 1034 3.6.2: a CNAME is the only record its name has.
        if types and ("CNAME" in types or record.type == "CNAME"):
            raise ProtocolError("records", f"{record.name} has a CNAME and other records; a CNAME must stand alone")
        types.add(record.type)


# What a node says it holds, as for the filter: a digest, or "none".
NO_DNS = "none"
_DIGEST = re.compile(r"[0-9a-f]{16}|none")


def dns_digest(config_json: dict[str, Any] | None) -> str:
    """A short name for a DNS configuration, the same on the server and the
    node: the server sends the configuration only to a node whose digest differs."""
    if config_json is None:
        return NO_DNS
    canonical = json.dumps(config_json, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def parse_dns_digest(value: Any, field: str = "dns") -> str:
    """The digest a node sends back (16 hex digits, or none)."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise ProtocolError(field, "must be the digest of the DNS configuration this node holds (16 hex digits) or none")
    return value
