"""Judging one connection against the policy rule by rule: for ``explain``
and the policy's ``tests``, where one answer (and which rule gave it) is
wanted. The server's per-node work goes through wire.policy.index instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire.policy.directory import Endpoint
from wire.policy.model import ANY, GROUP, NETWORK, NODE, TAG, Destination, Policy, Principal, Rule


@dataclass(frozen=True)
class Decision:
    """Whether a connection is allowed, and by which rule (None: no rule, or no policy)."""

    allowed: bool
    rule_index: int | None = None
    rule_text: str = ""
    reason: str = ""


def matches(principal: Principal, endpoint: Endpoint, policy: Policy) -> bool:
    if principal.kind == ANY:
        return True
    if principal.kind == TAG:
        return principal.name in endpoint.tags
    if principal.kind == NODE:
        return principal.name == endpoint.name
    if principal.kind == NETWORK:
        network = principal.network
        return network is not None and any(a in network for a in endpoint.addresses)
    assert principal.kind == GROUP
    return any(matches(member, endpoint, policy) for member in policy.groups[principal.name])


def admits(proto: str | None, destination: Destination, port: int | None, asked: str) -> bool:
    """Does a rule for ``proto`` (None: any) to ``destination``'s ports admit ``asked``/``port``?
    As in Tailscale, ports without a protocol mean tcp and udp; ``*`` without one means everything."""
    if proto is None:
        if not destination.ports:
            return True
        return asked in ("tcp", "udp") and destination.admits_port(port)
    return proto == asked and (asked == "icmp" or destination.admits_port(port))


def rule_accepts(rule: Rule, src: Endpoint, dst: Endpoint, port: int | None, proto: str, policy: Policy) -> bool:
    if not any(matches(p, src, policy) for p in rule.sources):
        return False
    return any(admits(rule.proto, d, port, proto) and matches(d.principal, dst, policy) for d in rule.destinations)


def decide(policy: Policy, src: Endpoint, dst: Endpoint, port: int | None, proto: str) -> Decision:
    """The first rule that accepts, or a denial."""
    for rule in policy.rules:
        if rule_accepts(rule, src, dst, port, proto, policy):
            return Decision(True, rule.index, rule.text, f"accepted by {rule.where}")
    return Decision(False, None, "", "no rule accepts it")


def describe(src: Endpoint, dst: Endpoint, port: int | None, proto: str) -> str:
    """``web1 -> db1:22/tcp`` (``web1 -> db1/icmp``)."""
    where = dst.label if proto == "icmp" or port is None else f"{dst.label}:{port}"
    return f"{src.label} -> {where}/{proto}"
