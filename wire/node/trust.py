"""How far a node trusts its coordination server: the checks on what it assigns.

A hostile or broken server must not route foreign traffic through a node,
stop it, or confuse it. Everything the server says that would reach the
interface or WireGuard's AllowedIPs passes here first; the daemon, the
netmap and the reconciler call these checks and nothing else decides.

The mesh subnet
    Fixed at enrollment: the first accepted answer's ``vpn_subnet`` (or the
    one already in config.json) is kept there, and a later answer naming
    another is refused. A server that names none (the seed's) is taken to
    use the seed's :data:`SEED_SUBNET`, 10.99.0.0/16. A subnet is accepted
    only if it is

    - IPv4 inside one private-use or shared (CGNAT) block: 10.0.0.0/8,
      172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10, with a prefix of
      /8../30; or IPv6 inside the ULA block fd00::/8, with a prefix of
      /48../120. Loopback, link-local, multicast and every public range are
      outside these blocks, so they never reach the interface;
    - free of this node's LAN address and the server's address (when known):
      a mesh holding either would route them into the tunnel.

The mesh's IPv6 subnet (``vpn_subnet6``)
    Fixed at enrollment like the IPv4 one: the first accepted answer's (or
    the one in config.json) is kept, a later answer naming another is
    refused. A ULA prefix (fc00::/7) of /48../64, free of this node's LAN
    and the server's address. A server that names none (the seed's, an
    older one) gives the mesh no IPv6: the node runs IPv4 only. A refused
    IPv6 part never stops the IPv4 one.

An address in the mesh (this node's ``vpn_ip``, each peer's)
    Inside the mesh subnet, and neither its network address nor (IPv4) its
    broadcast address. A peer's address is also not ours and not another
    peer's, and its public key is not ours and not another peer's: the
    earlier holder keeps an address or key, the later claimant is skipped.
    At most ``max_peers`` peers are held (default 10,000).

A peer's IPv6 mesh address (``vpn_ip6``)
    Inside the mesh's IPv6 subnet, not ours and not another peer's. One
    that fails is dropped and the peer kept with its IPv4 address alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Iterable, Union

from wire.addressing import outside_mesh_blocks
from wire.protocol import PeerView, ProtocolError

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

SEED_SUBNET = "10.99.0.0/16"
DEFAULT_MAX_PEERS = 10_000
MAX_PEERS_LIMIT = 1_000_000

PREFIX_V4 = (8, 30)
PREFIX_V6 = (48, 120)
# The IPv6 subnet beside the IPv4 one: a ULA prefix, wide enough for SLAAC-like /64s at most.
ULA_BLOCK = ipaddress.IPv6Network("fc00::/7")
PREFIX_V6_MESH = (48, 64)


class Untrusted(ProtocolError):
    """What the server said fails a trust check; names the field and why."""


@lru_cache(maxsize=64)
def _network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=True)


def mesh_subnet(text: str, field: str = "vpn_subnet", avoid: Iterable[str] = ()) -> IPNetwork:
    """``text`` as a mesh subnet this node accepts (see the module's rule).

    ``avoid`` are addresses the mesh must not hold (the LAN's, the server's);
    empty strings are ignored.
    """
    if not isinstance(text, str):
        raise Untrusted(field, "must be a string like 10.99.0.0/16")
    try:
        network = _network(text.strip())
    except ValueError:
        raise Untrusted(field, f"{text[:50]!r} is not a network (ADDRESS/PREFIX)")
    problem = outside_mesh_blocks(network)
    if problem:
        raise Untrusted(field, problem)
    low, high = PREFIX_V4 if network.version == 4 else PREFIX_V6
    if not low <= network.prefixlen <= high:
        raise Untrusted(field, f"{network}: a prefix of /{network.prefixlen} is outside /{low}../{high}")
    for address in avoid:
        if address and _in(address, network):
            raise Untrusted(field, f"{network} holds {address}, this node's LAN or the server's address")
    return network


def _in(address: str, network: IPNetwork) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


def mesh_problem(address: str, network: IPNetwork | None) -> str:
    """Why ``address`` cannot be a node's address in ``network`` ("" if it can)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address[:50]!r} is not an IP address"
    if ip.is_multicast or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return f"{ip} is not a unicast address"
    if network is None:
        return ""
    if ip not in network:
        return f"{ip} is outside the mesh subnet {network}"
    if ip == network.network_address:
        return f"{ip} is the network address of {network}"
    if network.version == 4 and ip == network.broadcast_address:
        return f"{ip} is the broadcast address of {network}"
    return ""


def own_address(address: str, network: IPNetwork, field: str = "vpn_ip") -> str:
    """This node's ``vpn_ip``, checked against its mesh subnet."""
    problem = mesh_problem(address, network)
    if problem:
        raise Untrusted(field, problem)
    return str(ipaddress.ip_address(address))


def assignment(
    saved_subnet: str, answered_subnet: str, vpn_ip: str, avoid: Iterable[str] = ()
) -> tuple[str, str]:
    """The (subnet, vpn_ip) a register or enroll answer assigns, checked.

    ``saved_subnet`` is the one fixed at enrollment ("" before it): an
    answer naming another is refused.
    """
    if saved_subnet and answered_subnet and _network(answered_subnet) != _network(saved_subnet):
        raise Untrusted("vpn_subnet", f"{answered_subnet} is not this node's mesh subnet {saved_subnet} (fixed at enrollment)")
    network = mesh_subnet(saved_subnet or answered_subnet or SEED_SUBNET, avoid=avoid)
    return str(network), own_address(vpn_ip, network)


def mesh_subnet6(text: str, field: str = "vpn_subnet6", avoid: Iterable[str] = ()) -> ipaddress.IPv6Network:
    """``text`` as the mesh's IPv6 subnet this node accepts: a ULA prefix of /48../64
    holding neither ``avoid`` address (this node's LAN, the server)."""
    if not isinstance(text, str):
        raise Untrusted(field, "must be a string like fd7a:115c:a1e0::/48")
    try:
        network = _network(text.strip())
    except ValueError:
        raise Untrusted(field, f"{text[:50]!r} is not a network (ADDRESS/PREFIX)")
    if not isinstance(network, ipaddress.IPv6Network):
        raise Untrusted(field, f"{network} is not an IPv6 network")
    if not network.subnet_of(ULA_BLOCK):
        raise Untrusted(field, f"{network} is not inside the ULA block fc00::/7")
    low, high = PREFIX_V6_MESH
    if not low <= network.prefixlen <= high:
        raise Untrusted(field, f"{network}: a prefix of /{network.prefixlen} is outside /{low}../{high}")
    for address in avoid:
        if address and _in(address, network):
            raise Untrusted(field, f"{network} holds {address}, this node's LAN or the server's address")
    return network


def assignment6(
    saved_subnet6: str, answered_subnet6: str, vpn_ip6: str, avoid: Iterable[str] = ()
) -> tuple[str, str]:
    """The (subnet6, vpn_ip6) a register or enroll answer assigns, checked.

    ``saved_subnet6`` is the one fixed at enrollment ("" before it): an
    answer naming another is refused. An answer with no IPv6 address (a
    seed or older server) assigns none: ("" or the saved subnet, "").
    """
    if saved_subnet6 and answered_subnet6 and _network(answered_subnet6) != _network(saved_subnet6):
        raise Untrusted(
            "vpn_subnet6", f"{answered_subnet6} is not this node's IPv6 mesh subnet {saved_subnet6} (fixed at enrollment)"
        )
    chosen = saved_subnet6 or answered_subnet6
    if not vpn_ip6:
        return (str(mesh_subnet6(chosen, avoid=avoid)) if chosen else ""), ""
    if not chosen:
        raise Untrusted("vpn_subnet6", f"the IPv6 address {vpn_ip6} comes without the mesh's IPv6 subnet")
    network = mesh_subnet6(chosen, avoid=avoid)
    return str(network), own_address(vpn_ip6, network, "vpn_ip6")


def parse_max_peers(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PEERS_LIMIT:
        raise ProtocolError("max_peers", f"must be a whole number 1..{MAX_PEERS_LIMIT}")
    return value


@dataclass(frozen=True)
class Mesh:
    """What a peer is checked against: the mesh subnet and this node's own address and key."""

    subnet: IPNetwork | None  # None: not known yet (only what needs no subnet is checked)
    own_ip: str = ""
    own_key: str = ""
    max_peers: int = DEFAULT_MAX_PEERS
    # The mesh's IPv6 subnet beside an IPv4 one (None: the mesh has no IPv6), and our address in it.
    subnet6: ipaddress.IPv6Network | None = None
    own_ip6: str = ""

    def holds(self, allowed_ip: str) -> bool:
        """Whether an AllowedIPs entry (ADDRESS/32 or /128) lies inside the mesh
        (its IPv4 subnet, or its IPv6 one for an IPv6 entry)."""
        if self.subnet is None:
            return True
        try:
            entry = ipaddress.ip_network(allowed_ip, strict=True)
        except (ValueError, TypeError):
            return False
        for subnet in (self.subnet, self.subnet6):
            if subnet is not None and subnet.version == entry.version:
                return entry.subnet_of(subnet)  # type: ignore[arg-type]
        return False


def _who(peer: PeerView) -> str:
    return f"peer {peer.node_name or '?'} ({peer.node_id[:8]})"


class PeerScreen:
    """Checks the netmap's peers before any of them can reach the reconciler."""

    def __init__(self, mesh: Callable[[], Mesh] = lambda: Mesh(None)):
        self.mesh = mesh

    def screen(self, order: Iterable[tuple[str, list[PeerView]]]) -> tuple[dict[str, PeerView], list[str]]:
        """The peers to hold, and a problem for each one skipped.

        ``order`` lists each node id with its candidate records, best first
        (the answer's, then the one held before): the first that passes is
        kept. Node ids come earlier holders first, so a later claimant of
        an address or key is the one skipped.
        """
        mesh = self.mesh()
        kept: dict[str, PeerView] = {}
        addresses: dict[str, str] = {}
        addresses6: dict[str, str] = {}
        keys: dict[str, str] = {}
        problems: list[str] = []
        beyond = 0
        for node_id, candidates in order:
            if len(kept) >= mesh.max_peers:
                beyond += 1
                continue
            for peer in candidates:
                problem = self._problem(peer, mesh, addresses, keys)
                if not problem:
                    problem6 = self._problem6(peer, mesh, addresses6)
                    if problem6:
                        # Its IPv6 address only: the peer stays reachable over IPv4.
                        problems.append(f"{_who(peer)}: vpn_ip6 dropped (IPv4 kept): {problem6}")
                        peer = replace(peer, vpn_ip6="")
                    kept[node_id] = peer
                    addresses[peer.vpn_ip] = node_id
                    if peer.vpn_ip6:
                        addresses6[peer.vpn_ip6] = node_id
                    keys[peer.wg_public_key] = node_id
                    break
                problems.append(f"{_who(peer)} skipped: {problem}")
        if beyond:
            problems.append(f"{beyond} peer(s) beyond max_peers={mesh.max_peers} skipped")
        return kept, problems

    @staticmethod
    def _problem(peer: PeerView, mesh: Mesh, addresses: dict[str, str], keys: dict[str, str]) -> str:
        problem = mesh_problem(peer.vpn_ip, mesh.subnet)
        if problem:
            return f"vpn_ip {problem}"
        if peer.vpn_ip == mesh.own_ip:
            return f"vpn_ip {peer.vpn_ip} is this node's own address"
        if peer.vpn_ip in addresses:
            return f"vpn_ip {peer.vpn_ip} is already held by {addresses[peer.vpn_ip][:8]}"
        if peer.wg_public_key == mesh.own_key:
            return "wg_public_key is this node's own key"
        if peer.wg_public_key in keys:
            return f"wg_public_key is already held by {keys[peer.wg_public_key][:8]}"
        return ""

    @staticmethod
    def _problem6(peer: PeerView, mesh: Mesh, addresses6: dict[str, str]) -> str:
        """Why the peer's IPv6 address cannot be held ("" if it can, or it has none)."""
        if not peer.vpn_ip6:
            return ""
        if mesh.subnet is not None and mesh.subnet6 is None:
            return f"{peer.vpn_ip6}: this node's mesh has no IPv6 subnet"
        problem = mesh_problem(peer.vpn_ip6, mesh.subnet6)
        if problem:
            return problem
        if ipaddress.ip_address(peer.vpn_ip6).version != 6:
            return f"{peer.vpn_ip6} is not an IPv6 address"
        if peer.vpn_ip6 == mesh.own_ip6:
            return f"{peer.vpn_ip6} is this node's own address"
        if peer.vpn_ip6 in addresses6:
            return f"{peer.vpn_ip6} is already held by {addresses6[peer.vpn_ip6][:8]}"
        return ""
