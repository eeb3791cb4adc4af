"""What the access policy lets a subnet router forward from the mesh: the
forwarding rules the server sends a node about traffic *through* it, to the
routes it serves, which it enforces in its router table (wire.node.router).

A :class:`ForwardRule` is a :class:`~wire.protocol.filter.FilterRule`
(sources, peers, proto, ports) plus ``destinations``: the networks, inside
the routes the node serves, that those sources may open connections to.

They travel under their own answer key, ``"route_filter"`` (never inside
``"filter"``): a node that does not know the key ignores it and keeps
forwarding as before, and no parser can take them for rules about traffic to
the node itself. ``"route_filter": [...]`` replaces the rules in force (an
empty list: forward nothing from the mesh); ``null``: no policy, forward
everything to the routed prefixes; absent: unchanged. The node says the
digest of what it holds in ``GET /peers?route_filter=``, as it does for its
filter. A node checks every destination against the routes it advertises
(:func:`check_destinations`): the server cannot open a network the node
never offered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wire.protocol.errors import ProtocolError
from wire.protocol.fields import parse_list, parse_object
from wire.protocol.routes import is_exit_route
from wire.protocol.filter import MAX_RULES, FilterRule, PortRange, filter_digest, peer_addresses, resolved_sources

MAX_DESTINATIONS = 1_000
ANSWER_KEY = "route_filter"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ForwardRule:
    """Accept from ``sources`` and ``peers`` to ``destinations`` over ``proto`` (None: any) to ``ports``."""

    destinations: tuple[str, ...]  # normalised networks inside the node's routes
    sources: tuple[str, ...] = ()
    proto: str | None = None
    ports: tuple = ()  # PortRange
    peers: tuple[str, ...] = ()
    rules: tuple[int, ...] = ()

    def as_filter(self) -> FilterRule:
        return FilterRule(sources=self.sources, proto=self.proto, ports=self.ports, peers=self.peers, rules=self.rules)

    def to_json(self) -> dict[str, Any]:
        return {"destinations": list(self.destinations), **self.as_filter().to_json()}

    @classmethod
    def from_json(cls, value: Any) -> ForwardRule:
        body = dict(parse_object(value, "forwarding rule"))
        raw = parse_list(body.pop("destinations", None) or [], "destinations")
        if not raw:
            raise ProtocolError("destinations", "a forwarding rule must name the networks it lets through")
        if len(raw) > MAX_DESTINATIONS:
            raise ProtocolError("destinations", f"at most {MAX_DESTINATIONS} networks")
        destinations = []
        for entry in raw:
            if not isinstance(entry, str):
                raise ProtocolError("destinations", "each entry must be a network as a string")
            try:
                destinations.append(str(ipaddress.ip_network(entry, strict=True)))
            except ValueError:
                raise ProtocolError("destinations", f"{entry[:60]!r} is not a network (host bits clear)") from None
        rule = FilterRule.from_json(body)
        return cls(tuple(destinations), rule.sources, rule.proto, rule.ports, rule.peers, rule.rules)


def parse_route_filter(value: Any) -> tuple[ForwardRule, ...]:
    """A node's whole forwarding filter, as the answer carries it; all or nothing."""
    rules = parse_list(value, ANSWER_KEY)
    if len(rules) > MAX_RULES:
        raise ProtocolError(ANSWER_KEY, f"at most {MAX_RULES} rules")
    return tuple(ForwardRule.from_json(rule) for rule in rules)


def check_destinations(rules: Iterable[ForwardRule], advertised: Iterable[str]) -> None:
    """Every destination lies inside a route this node advertises, or ProtocolError naming it."""
    offered = [ipaddress.ip_network(route) for route in advertised]
    for index, rule in enumerate(rules):
        for destination in rule.destinations:
            network = ipaddress.ip_network(destination)
            if not any(network.version == o.version and network.subnet_of(o) for o in offered):  # type: ignore[arg-type]
                shown = ", ".join(str(o) for o in offered) or "none"
                raise ProtocolError(
                    f"{ANSWER_KEY}[{index}].destinations",
                    f"{destination} is outside the routes this node advertises ({shown}); refusing the whole forwarding filter",
                )


def resolve_forward_peers(
    rules: tuple[ForwardRule, ...], peers: Iterable[tuple[str, Iterable[str], Iterable[str]]]
) -> tuple[ForwardRule, ...]:
    """The rules with their ``peers`` replaced by those peers' mesh addresses
    (as :func:`wire.protocol.filter.resolve_peers`); a rule left with no source is left out."""
    by_selector = peer_addresses(peers)
    resolved = []
    for rule in rules:
        sources = resolved_sources(rule.as_filter(), by_selector) if rule.peers else rule.sources
        if sources:
            resolved.append(ForwardRule(rule.destinations, sources, rule.proto, rule.ports, (), rule.rules))
    return tuple(resolved)


def route_filter_json(rules: tuple[ForwardRule, ...]) -> list[dict[str, Any]]:
    return [rule.to_json() for rule in rules]


def route_filter_digest(rules: tuple[ForwardRule, ...] | None) -> str:
    """The digest a node names in ``?route_filter=`` ("none": it holds none)."""
    return filter_digest(None if rules is None else route_filter_json(rules))


def exit_dns_rules(rules: tuple[ForwardRule, ...] | None) -> tuple[FilterRule, ...]:
    """What an exit node's own filter adds for the peers it carries to the
    internet: its mesh DNS (udp and tcp 53), which their nodes ask for names
    beyond the mesh while they use the exit (wire.node.dns). Those peers may
    already send anything through the exit; without this a policy such as
    ``"dst": ["*:443"]`` would leave them an exit without names."""
    if not rules:
        return ()
    dns_port = (PortRange(53, 53),)
    found = []
    for rule in rules:
        if any(is_exit_route(d) for d in rule.destinations):
            for proto in ("udp", "tcp"):
                found.append(FilterRule(sources=rule.sources, proto=proto, ports=dns_port, peers=rule.peers, rules=rule.rules))
    return tuple(found)
