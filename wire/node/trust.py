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

An address in the mesh (this node's ``vpn_ip``, each peer's)
    Inside the mesh subnet, and neither its network address nor (IPv4) its
    broadcast address. A peer's address is also not ours and not another
    peer's, and its public key is not ours and not another peer's: the
    earlier holder keeps an address or key, the later claimant is skipped.
    At most ``max_peers`` peers are held (default 10,000).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
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

    def holds(self, allowed_ip: str) -> bool:
        """Whether an AllowedIPs entry (ADDRESS/32 or /128) lies inside the mesh."""
        if self.subnet is None:
            return True
        try:
            return ipaddress.ip_network(allowed_ip, strict=True).subnet_of(self.subnet)  # type: ignore[arg-type]
        except (ValueError, TypeError):
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
                    kept[node_id] = peer
                    addresses[peer.vpn_ip] = node_id
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
