"""A parsed access policy: plain frozen dataclasses, no behaviour beyond
describing themselves. wire.policy.parse builds them from text; the
evaluator (wire.policy.evaluate) and the index (wire.policy.index) read them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from wire.protocol.filter import PortRange

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS = ("tcp", "udp", "icmp")

# Principal kinds. A host name from ``hosts`` is resolved to NETWORK at parse
# time (keeping the name in ``text``), so the evaluator knows four kinds plus
# groups, which the index expands.
ANY = "any"
NODE = "node"
TAG = "tag"
GROUP = "group"
NETWORK = "network"


@dataclass(frozen=True)
class Principal:
    """Who a rule is about: ``*``, a node name, ``tag:x``, ``group:x``, or a network
    (an address is a /32 or /128 network; a host name stands for its network)."""

    kind: str
    name: str  # the node name, "tag:x", "group:x"; "" for ANY and NETWORK
    network: Network | None = None
    text: str = field(default="", compare=False)  # as the policy wrote it
    where: str = field(default="", compare=False)  # "acls[0].src[1]", for messages


@dataclass(frozen=True)
class Destination:
    """A ``dst`` entry: a principal and its ports (empty: every port)."""

    principal: Principal
    ports: tuple[PortRange, ...] = ()

    def admits_port(self, port: int | None) -> bool:
        if not self.ports:
            return True
        return port is not None and any(r.first <= port <= r.last for r in self.ports)


@dataclass(frozen=True)
class Rule:
    """One ``acls`` entry (``"action": "accept"``, the only action)."""

    index: int
    sources: tuple[Principal, ...]
    destinations: tuple[Destination, ...]
    proto: str | None = None  # None: any protocol (ports then mean tcp and udp)
    text: str = field(default="", compare=False)  # compact JSON of the entry, for explain

    @property
    def where(self) -> str:
        return f"acls[{self.index}]"


@dataclass(frozen=True)
class PolicyTest:
    """One ``tests`` entry: from ``source``, each of ``accept`` must be reachable
    and each of ``deny`` must not be, over ``proto``."""

    index: int
    source: Principal
    proto: str
    accept: tuple[Destination, ...]
    deny: tuple[Destination, ...]

    @property
    def where(self) -> str:
        return f"tests[{self.index}]"


@dataclass(frozen=True)
class AutoApprovers:
    """``autoApprovers`` (Tailscale's shape): who may have which advertised
    routes approved without the admin. A route is approved for a node that
    an approver of a network *containing* it matches; exit routes
    (0.0.0.0/0, ::/0) only under ``exit_node``."""

    routes: tuple[tuple[Network, tuple[Principal, ...]], ...] = ()
    exit_node: tuple[Principal, ...] = ()

    def principals(self) -> list[Principal]:
        return [p for _, approvers in self.routes for p in approvers] + list(self.exit_node)


@dataclass(frozen=True)
class Policy:
    """A whole policy, self-consistent: every group and host it names exists,
    ports and protocols are valid, groups do not nest."""

    groups: dict[str, tuple[Principal, ...]]  # "group:ops" -> node names and tags
    hosts: dict[str, Network]
    tag_owners: frozenset[str]  # the tags declared in tagOwners
    rules: tuple[Rule, ...]
    tests: tuple[PolicyTest, ...] = ()
    auto_approvers: AutoApprovers = AutoApprovers()

    def principals(self) -> list[Principal]:
        """Every principal the policy names, groups' members included (for checks)."""
        found = [member for members in self.groups.values() for member in members]
        found.extend(self.auto_approvers.principals())
        for rule in self.rules:
            found.extend(rule.sources)
            found.extend(d.principal for d in rule.destinations)
        for test in self.tests:
            found.append(test.source)
            found.extend(d.principal for d in test.accept + test.deny)
        return found
