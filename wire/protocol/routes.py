"""Routes beyond the mesh: the networks a node offers to carry (a subnet
router's LAN, an exit node's ``0.0.0.0/0`` and ``::/0``), as a node
advertises them and as the netmap hands the approved ones to its peers.

- A node advertises in its registration: ``"advertise_routes": [CIDR, ...]``.
- The server records them; an admin (or the policy's ``autoApprovers``)
  approves them. Only approved routes reach other nodes.
- A peer's view says ``"routes": [CIDR, ...]``, the subnet routes it is the
  *primary* router for (one per prefix: WireGuard cannot give one network to
  two peers), and ``"exit_node": true`` when it offers an approved exit.

Everything is validated on both ends: networks in canonical form, no host
bits, bounded in number; a node decides for itself which to install.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Union

from wire.protocol.errors import ProtocolError
from wire.protocol.fields import parse_list

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

MAX_ROUTES = 64
EXIT_ROUTES = ("0.0.0.0/0", "::/0")


def parse_route(value: Any, field: str = "advertise_routes") -> str:
    """One network, canonical (``192.168.1.0/24``); host bits set is refused, not masked."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ProtocolError(field, f"each entry must be a network like 192.168.1.0/24, not {str(value)[:40]!r}")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise ProtocolError(field, f"{value[:64]!r} is not a network ({e})") from None
    if "/" not in value:
        raise ProtocolError(field, f"{value!r} needs a prefix length (e.g. {value}/32)")
    if network.is_multicast or network.is_link_local or network.is_loopback:
        raise ProtocolError(field, f"{value} is a multicast, link-local or loopback network: never routed through the mesh")
    return str(network)


def parse_routes(value: Any, field: str = "advertise_routes") -> tuple[str, ...]:
    """A set of networks, canonical, sorted, without repeats; at most MAX_ROUTES."""
    routes = parse_list(value, field)
    if len(routes) > MAX_ROUTES:
        raise ProtocolError(field, f"at most {MAX_ROUTES} networks")
    return tuple(sorted({parse_route(route, field) for route in routes}, key=route_order))


def route_order(route: str) -> tuple:
    network = ipaddress.ip_network(route)
    return (network.version, int(network.network_address), network.prefixlen)


def is_exit_route(route: str) -> bool:
    return route in EXIT_ROUTES
