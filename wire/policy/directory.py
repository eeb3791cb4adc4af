"""What the policy is evaluated against: the nodes the server knows.

The server's registry turns its records into :class:`DirectoryNode`; the
policy library never reads the registry itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DirectoryNode:
    """A node as the policy sees it. ``vpn_ip`` is one address or several
    (IPv4 now, IPv6 later); names and tags are matched in lower case, as
    node names are stored."""

    node_id: str
    name: str
    vpn_ip: str | tuple[str, ...]
    tags: frozenset[str] = frozenset()
    # The routes it serves for the mesh (advertised and approved; exit routes too).
    routes: tuple[str, ...] = ()
    addresses: tuple[Address, ...] = field(init=False, compare=False, repr=False)
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        raw = (self.vpn_ip,) if isinstance(self.vpn_ip, str) else tuple(self.vpn_ip)
        object.__setattr__(self, "addresses", tuple(ipaddress.ip_address(a) for a in raw))
        object.__setattr__(self, "name", self.name.lower())
        object.__setattr__(self, "tags", frozenset(t.lower() for t in self.tags))
        object.__setattr__(self, "networks", tuple(ipaddress.ip_network(r) for r in self.routes))


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection being judged: a node, a bare address, or (in a
    policy's tests) a tag's identity before any node carries it."""

    label: str  # for messages: the node's name or the address
    name: str | None = None
    tags: frozenset[str] = frozenset()
    addresses: tuple[Address, ...] = ()

    @classmethod
    def of_node(cls, node: DirectoryNode) -> Endpoint:
        return cls(node.name, node.name, node.tags, node.addresses)

    @classmethod
    def of_address(cls, address: Address) -> Endpoint:
        return cls(str(address), None, frozenset(), (address,))
