"""What the access policy lets reach a node: the packet-filter rules the server
sends each node about traffic *to* it, which the node enforces in its own
nftables table (wire.node.firewall).

A rule accepts new connections from ``sources`` (addresses or networks) to
this node, for one protocol (or all) and some destination ports (or all).
Replies to accepted connections always pass (the filter is stateful); what
no rule accepts is dropped. The server computes the rules from the policy
(wire.policy); a node validates them here before anything reaches ``nft``.
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

PROTOCOLS = ("tcp", "udp", "icmp")
MAX_RULES = 10_000
MAX_SOURCES = 10_000
MAX_PORT_RANGES = 100


@dataclass(frozen=True, order=True)
class PortRange:
    """Ports ``first``..``last`` inclusive; 0..65535 is every port."""

    first: int
    last: int

    def to_json(self) -> list[int]:
        return [self.first, self.last]

    @classmethod
    def from_json(cls, value: Any) -> PortRange:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in value)
            or not 0 <= value[0] <= value[1] <= 65535
        ):
            raise ProtocolError("ports", "each entry must be [FIRST, LAST] with 0 <= FIRST <= LAST <= 65535")
        return cls(value[0], value[1])


ALL_PORTS = (PortRange(0, 65535),)


@dataclass(frozen=True)
class FilterRule:
    """Accept from ``sources`` over ``proto`` (None: any) to ``ports`` (empty: any port).

    With ports and no proto, the rule is for tcp and udp to those ports (as in
    Tailscale: ports mean nothing to icmp)."""

    sources: tuple[str, ...]  # normalised networks ("10.99.0.7/32", "fd7a::/48")
    proto: str | None = None
    ports: tuple[PortRange, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"sources": list(self.sources)}
        if self.proto is not None:
            body["proto"] = self.proto
        if self.ports:
            body["ports"] = [p.to_json() for p in self.ports]
        return body

    @classmethod
    def from_json(cls, value: Any) -> FilterRule:
        body = parse_object(value, "filter rule")
        raw_sources = parse_list(body.get("sources"), "sources")
        if not raw_sources or len(raw_sources) > MAX_SOURCES:
            raise ProtocolError("sources", f"must list 1..{MAX_SOURCES} addresses or networks")
        sources = []
        for source in raw_sources:
            if not isinstance(source, str):
                raise ProtocolError("sources", "each entry must be an address or network as a string")
            try:
                sources.append(str(ipaddress.ip_network(source, strict=False)))
            except ValueError:
                raise ProtocolError("sources", f"{source[:60]!r} is not an address or network") from None
        proto = body.get("proto")
        if proto is not None and proto not in PROTOCOLS:
            raise ProtocolError("proto", f"must be one of {', '.join(PROTOCOLS)} (or absent: any)")
        raw_ports = parse_list(body.get("ports", []), "ports")
        if len(raw_ports) > MAX_PORT_RANGES:
            raise ProtocolError("ports", f"at most {MAX_PORT_RANGES} ranges")
        ports = tuple(PortRange.from_json(p) for p in raw_ports)
        if ports and proto == "icmp":
            raise ProtocolError("ports", "icmp has no ports")
        return cls(sources=tuple(sources), proto=proto, ports=ports)


def parse_filter_rules(value: Any) -> tuple[FilterRule, ...]:
    """A node's whole filter, as the netmap carries it; all or nothing."""
    rules = parse_list(value, "filter")
    if len(rules) > MAX_RULES:
        raise ProtocolError("filter", f"at most {MAX_RULES} rules")
    return tuple(FilterRule.from_json(rule) for rule in rules)


# What a node says it holds, in ``GET /peers?filter=``: a digest, or "none".
NO_FILTER = "none"
_DIGEST = re.compile(r"[0-9a-f]{16}|none")


def filter_json(rules: tuple[FilterRule, ...]) -> list[dict[str, Any]]:
    return [rule.to_json() for rule in rules]


def filter_digest(rules_json: list[dict[str, Any]] | None) -> str:
    """A short name for a filter, the same on the server and the node: the
    server sends the filter only to a node whose digest differs."""
    if rules_json is None:
        return NO_FILTER
    canonical = json.dumps(rules_json, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def parse_filter_digest(value: str) -> str:
    if not _DIGEST.fullmatch(value):
        raise ProtocolError("filter", "must be the digest of the filter this node holds (16 hex digits) or none")
    return value
