"""What the access policy lets reach a node: the packet-filter rules the server
sends each node about traffic *to* it, which the node enforces in its own
nftables table (wire.node.firewall).

A rule accepts new connections to this node from ``sources`` (addresses or
networks) and from ``peers`` (the peers of this node's netmap that carry a
tag or a name), for one protocol (or all) and some destination ports (or
all). Peers are named, not listed by address, so that a filter depends on
the policy alone: a node joining or leaving changes no other node's filter,
and the node resolves the names against the netmap it holds
(:func:`resolve_peers`) before anything reaches nftables.
Replies to accepted connections always pass (the filter is stateful); what
no rule accepts is dropped. The server computes the rules from the policy
(wire.policy); a node validates them here before anything reaches ``nft``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wire.protocol.errors import ProtocolError
from wire.protocol.fields import parse_list, parse_node_name, parse_object, parse_tag

PROTOCOLS = ("tcp", "udp", "icmp")
MAX_RULES = 10_000
MAX_SOURCES = 10_000
MAX_PORT_RANGES = 100
MAX_PEER_NAMES = 10_000
MAX_RULE_REFS = 1_000


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
    """Accept from ``sources`` and ``peers`` over ``proto`` (None: any) to ``ports`` (empty: any port).

    With ports and no proto, the rule is for tcp and udp to those ports (as in
    Tailscale: ports mean nothing to icmp). ``peers`` are ``tag:NAME`` (every
    peer carrying the tag) or node names; ``rules`` are the indexes of the
    policy's ``acls`` entries the rule comes from (for ``wire explain``)."""

    sources: tuple[str, ...] = ()  # normalised networks ("10.99.0.7/32", "fd7a::/48")
    proto: str | None = None
    ports: tuple[PortRange, ...] = ()
    peers: tuple[str, ...] = ()  # "tag:web", "alice-laptop"
    rules: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.sources:
            body["sources"] = list(self.sources)
        if self.peers:
            body["peers"] = list(self.peers)
        if self.proto is not None:
            body["proto"] = self.proto
        if self.ports:
            body["ports"] = [p.to_json() for p in self.ports]
        if self.rules:
            body["rules"] = list(self.rules)
        return body

    @classmethod
    def from_json(cls, value: Any) -> FilterRule:
        body = parse_object(value, "filter rule")
        raw_sources = parse_list(body.get("sources", []), "sources")
        raw_peers = parse_list(body.get("peers", []), "peers")
        if not raw_sources and not raw_peers:
            raise ProtocolError("sources", "a rule must name sources (addresses or networks) or peers (tags or node names)")
        if len(raw_sources) > MAX_SOURCES:
            raise ProtocolError("sources", f"at most {MAX_SOURCES} addresses or networks")
        if len(raw_peers) > MAX_PEER_NAMES:
            raise ProtocolError("peers", f"at most {MAX_PEER_NAMES} tags or node names")
        sources = []
        for source in raw_sources:
            if not isinstance(source, str):
                raise ProtocolError("sources", "each entry must be an address or network as a string")
            try:
                sources.append(str(ipaddress.ip_network(source, strict=False)))
            except ValueError:
                raise ProtocolError("sources", f"{source[:60]!r} is not an address or network") from None
        peers = tuple(sorted({_peer_selector(p) for p in raw_peers}))
        proto = body.get("proto")
        if proto is not None and proto not in PROTOCOLS:
            raise ProtocolError("proto", f"must be one of {', '.join(PROTOCOLS)} (or absent: any)")
        raw_ports = parse_list(body.get("ports", []), "ports")
        if len(raw_ports) > MAX_PORT_RANGES:
            raise ProtocolError("ports", f"at most {MAX_PORT_RANGES} ranges")
        ports = tuple(PortRange.from_json(p) for p in raw_ports)
        if ports and proto == "icmp":
            raise ProtocolError("ports", "icmp has no ports")
        raw_rules = parse_list(body.get("rules", []), "rules")
        if len(raw_rules) > MAX_RULE_REFS or not all(
            isinstance(r, int) and not isinstance(r, bool) and 0 <= r < 1_000_000 for r in raw_rules
        ):
            raise ProtocolError("rules", f"must list at most {MAX_RULE_REFS} policy rule numbers (0 and up)")
        return cls(sources=tuple(sources), proto=proto, ports=ports, peers=peers, rules=tuple(raw_rules))


def _peer_selector(value: Any) -> str:
    if isinstance(value, str) and value.lower().startswith("tag:"):
        return parse_tag(value, "peers")
    return parse_node_name(value, "peers")


def resolve_peers(rules: tuple[FilterRule, ...], peers: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> tuple[FilterRule, ...]:
    """The rules with their ``peers`` replaced by those peers' addresses.

    ``peers`` are (node name, tags, addresses) of the peers this node holds:
    a peer's record is what the server says of it, and the addresses are the
    ones WireGuard ties to its key, so a rule admits exactly the tunnels of the
    peers it names. A rule whose names match no peer and that has no
    sources of its own admits nothing and is left out."""
    by_selector = peer_addresses(peers)
    resolved = []
    for rule in rules:
        if not rule.peers:
            resolved.append(rule)
            continue
        sources = resolved_sources(rule, by_selector)
        if sources:
            resolved.append(FilterRule(sources=sources, proto=rule.proto, ports=rule.ports, rules=rule.rules))
    return tuple(resolved)


def peer_addresses(peers: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> dict[str, list[str]]:
    """Each selector (``tag:x``, a node name) the peers answer to, with their addresses."""
    by_selector: dict[str, list[str]] = {}
    for name, tags, addresses in peers:
        held = [str(ipaddress.ip_network(a)) for a in addresses]
        # A name that is no DNS label (a seed server stores any) names nothing.
        selectors = (*tags, name.lower()) if ":" not in name else tuple(tags)
        for selector in selectors:
            by_selector.setdefault(selector, []).extend(held)
    return by_selector


def resolved_sources(rule: FilterRule, by_selector: dict[str, list[str]]) -> tuple[str, ...]:
    """A rule's sources with the peers it names as their addresses, sorted."""
    found = {a for selector in rule.peers for a in by_selector.get(selector, ())}
    return tuple(sorted(found.union(rule.sources)))


def parse_filter_rules(value: Any) -> tuple[FilterRule, ...]:
    """A node's whole filter, as the netmap carries it; all or nothing."""
    rules = parse_list(value, "filter")
    if len(rules) > MAX_RULES:
        raise ProtocolError("filter", f"at most {MAX_RULES} rules")
    return tuple(FilterRule.from_json(rule) for rule in rules)


def admitted(rules: Iterable[FilterRule], address: str) -> list[str]:
    """What resolved ``rules`` let ``address`` open, one line per rule that
    admits it, with the policy rules it comes from: ``tcp 22,80-89 (acls[1])``."""
    found = []
    host = ipaddress.ip_address(address)
    for rule in rules:
        if not any(host in ipaddress.ip_network(source) for source in rule.sources):
            continue
        ports = ",".join(str(p.first) if p.first == p.last else f"{p.first}-{p.last}" for p in rule.ports)
        if rule.proto is None:
            what = f"tcp and udp {ports}" if ports else "everything"
        else:
            what = f"{rule.proto} {ports}" if ports else rule.proto
        where = ", ".join(f"acls[{r}]" for r in rule.rules)
        found.append(f"{what} ({where})" if where else what)
    return found


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
