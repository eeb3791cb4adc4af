"""VPN address derivation and collision-free allocation.

A node's preferred address is derived from its id exactly as the seed did
(``sha256(node_id)``: for ``10.99.0.0/16`` the first two digest bytes are the
last two octets), so a seed client that computes its own address locally
agrees with the server. The server, unlike the seed, guarantees uniqueness:
when that address is taken it walks a deterministic sequence of further
candidates, and finally scans the pool, so allocation only fails when the
pool is truly full.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import os
from typing import Callable, Container, Iterator

from wire.protocol import ProtocolError

# How many hashed candidates to try before scanning the pool in order.
HASHED_CANDIDATES = 32


class PoolExhausted(Exception):
    """Every assignable address of the VPN subnet is in use."""


# Where a mesh may live: private-use and shared (CGNAT) IPv4 blocks, and IPv6
# ULA. Nodes refuse any other subnet (wire.node.trust), so the server does too.
MESH_BLOCKS_V4 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
MESH_BLOCK_V6 = ipaddress.IPv6Network("fd00::/8")


def outside_mesh_blocks(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
    """Why ``network`` cannot be a mesh subnet (not in a private block), or None."""
    if network.version == 4:
        if not any(network.subnet_of(block) for block in MESH_BLOCKS_V4):
            return f"{network} is not inside 10/8, 172.16/12, 192.168/16 or 100.64/10"
    elif not network.subnet_of(MESH_BLOCK_V6):
        return f"{network} is not inside the ULA block fd00::/8"
    return None


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """Accept ``10.99.0.0/16`` or the seed's prefix form ``10.99`` (= /16)."""
    text = text.strip()
    if "/" not in text:
        octets = text.split(".")
        if not 1 <= len(octets) <= 3 or not all(o.isdigit() for o in octets):
            raise ProtocolError("subnet", f"{text!r} is neither a CIDR like 10.99.0.0/16 nor a prefix like 10.99")
        text = ".".join(octets + ["0"] * (4 - len(octets))) + f"/{8 * len(octets)}"
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise ProtocolError("subnet", f"{text!r} is not an IPv4 network ({e})")
    if not 8 <= network.prefixlen <= 28:
        raise ProtocolError("subnet", f"/{network.prefixlen} is outside /8../28")
    problem = outside_mesh_blocks(network)
    if problem:
        raise ProtocolError("subnet", f"{problem}: nodes accept only a private mesh subnet")
    return network


class AddressPool:
    """Which addresses of the VPN subnet may be handed out, and to whom."""

    def __init__(self, network: ipaddress.IPv4Network):
        self.network = network
        self._host_bits = 32 - network.prefixlen
        self._base = int(network.network_address)

    def is_assignable(self, address: ipaddress.IPv4Address) -> bool:
        """Inside the subnet and not reserved.

        Reserved: the network and broadcast addresses, the first host (kept
        for the coordination server itself), and any address ending in .0 or
        .255, which some stacks and firewalls still treat as special.
        """
        if address not in self.network:
            return False
        offset = int(address) - self._base
        if offset <= 1 or offset == self.network.num_addresses - 1:
            return False
        return address.packed[-1] not in (0, 255)

    def candidates(self, node_id: str) -> Iterator[ipaddress.IPv4Address]:
        """The deterministic sequence of preferred addresses for ``node_id``."""
        for attempt in range(HASHED_CANDIDATES):
            salt = "" if attempt == 0 else f"#{attempt}"
            digest = hashlib.sha256((node_id + salt).encode()).digest()
            # The top host_bits of the digest: for a /16 that is digest[0],
            # digest[1], the seed's "10.99.{h[0]}.{h[1]}".
            offset = int.from_bytes(digest[:4], "big") >> (32 - self._host_bits)
            yield ipaddress.IPv4Address(self._base + offset)

    def allocate(
        self,
        node_id: str,
        taken: Container[str],
        requested: str | None = None,
    ) -> str:
        """Pick a free address: the requested one if free, else the first free candidate."""
        if requested is not None:
            try:
                wanted = ipaddress.IPv4Address(requested)
            except ValueError:
                wanted = None
            if wanted is not None and self.is_assignable(wanted) and str(wanted) not in taken:
                return str(wanted)
        candidates = self.candidates(node_id)
        # The first hashed candidate is where the linear scan starts.
        first = next(candidates)
        for candidate in itertools.chain([first], candidates):
            if self.is_assignable(candidate) and str(candidate) not in taken:
                return str(candidate)
        return self._scan_from(first, taken)

    def _scan_from(self, start: ipaddress.IPv4Address, taken: Container[str]) -> str:
        size = self.network.num_addresses
        start_offset = int(start) - self._base
        for step in range(size):
            candidate = ipaddress.IPv4Address(self._base + (start_offset + step) % size)
            if self.is_assignable(candidate) and str(candidate) not in taken:
                return str(candidate)
        raise PoolExhausted(f"every address of {self.network} is in use")


# -- IPv6 -------------------------------------------------------------------

# What --subnet6 may be: a ULA prefix (RFC 4193) of /48 (the size RFC 4193
# gives one site) to /64 (the smallest a prefix of interfaces may be).
SUBNET6_LENGTHS = range(48, 65)
ULA_BLOCK = ipaddress.IPv6Network("fc00::/7")


def parse_subnet6(text: str) -> ipaddress.IPv6Network:
    """An IPv6 mesh prefix: inside fd00::/8, /48 to /64, no host bits."""
    text = text.strip()
    try:
        network = ipaddress.IPv6Network(text, strict=True)
    except ValueError as e:
        raise ProtocolError("subnet6", f"{text!r} is not an IPv6 network like fd7a:115c:a1e0::/48 ({e})")
    if network.prefixlen not in SUBNET6_LENGTHS:
        raise ProtocolError("subnet6", f"/{network.prefixlen} is outside /48../64")
    if not network.subnet_of(ULA_BLOCK):
        raise ProtocolError("subnet6", f"{network} is not a unique local prefix (inside fc00::/7): nodes accept only a private mesh prefix")
    if outside_mesh_blocks(network):
        raise ProtocolError(
            "subnet6", f"{network} is in fc00::/8, which RFC 4193 leaves undefined (L=0): nodes accept only fd00::/8"
        )
    return network


def random_ula_prefix(random_bytes: Callable[[int], bytes] = os.urandom) -> ipaddress.IPv6Network:
    """A new /48 as RFC 4193 gives a site: ``fd`` and a random 40-bit global
    ID, so two meshes (or a mesh and a site) are unlikely ever to collide."""
    global_id = random_bytes(5)
    return ipaddress.IPv6Network((b"\xfd" + global_id + bytes(10), 48))


# Interface identifiers no node gets, per /64 (RFC 5453's registry): the
# subnet-router anycast (all zeros, RFC 4291), the reserved subnet anycast
# addresses (the top 128, RFC 2526) and the IANA Ethernet block
# (0200:5EFF:FE00:0000 to 0200:5EFF:FEFF:FFFF, proxy mobile IPv6 and more).
_RESERVED_IIDS = (
    (0, 0),
    (0xFDFF_FFFF_FFFF_FF80, 0xFDFF_FFFF_FFFF_FFFF),
    (0x0200_5EFF_FE00_0000, 0x0200_5EFF_FEFF_FFFF),
)
_IID_MASK = (1 << 64) - 1


class Ipv6Pool:
    """Which IPv6 mesh addresses may be handed out, and to whom.

    A node's address is its id's hash in the prefix's host bits (all of
    them: for a /48 the subnet ID too, as Tailscale spreads its addresses),
    so it is the same on every server of the mesh's prefix and needs no
    counter. There are 2**64 or more of them: a collision is so rare that
    the next hashed candidate settles it, and a scan from the first one is
    there only so that allocation cannot fail while an address is free.
    """

    def __init__(self, network: ipaddress.IPv6Network):
        if network.prefixlen not in SUBNET6_LENGTHS:
            raise ValueError(f"an IPv6 mesh prefix is /48../64, not /{network.prefixlen}")
        self.network = network
        self._host_bits = 128 - network.prefixlen
        self._base = int(network.network_address)

    def is_assignable(self, address: ipaddress.IPv6Address) -> bool:
        """Inside the prefix, not ``::1`` of it (kept for the server, as the
        IPv4 pool keeps its first host), and not a reserved interface identifier."""
        if address not in self.network:
            return False
        if int(address) - self._base == 1:
            return False
        iid = int(address) & _IID_MASK
        return not any(low <= iid <= high for low, high in _RESERVED_IIDS)

    def candidates(self, node_id: str) -> Iterator[ipaddress.IPv6Address]:
        """The deterministic sequence of preferred addresses for ``node_id``."""
        for attempt in range(HASHED_CANDIDATES):
            salt = "" if attempt == 0 else f"#{attempt}"
            # Salted apart from the IPv4 hash: one address does not give the other away.
            digest = hashlib.sha256(("v6:" + node_id + salt).encode()).digest()
            offset = int.from_bytes(digest[:16], "big") >> (128 - self._host_bits)
            yield ipaddress.IPv6Address(self._base + offset)

    def allocate(self, node_id: str, taken: Container[str]) -> str:
        """The first free candidate (``taken``: addresses in use, compressed text)."""
        candidates = self.candidates(node_id)
        first = next(candidates)
        for candidate in itertools.chain([first], candidates):
            if self.is_assignable(candidate) and str(candidate) not in taken:
                return str(candidate)
        size = self.network.num_addresses
        start = int(first) - self._base
        for step in range(size):
            candidate = ipaddress.IPv6Address(self._base + (start + step) % size)
            if self.is_assignable(candidate) and str(candidate) not in taken:
                return str(candidate)
        raise PoolExhausted(f"every address of {self.network} is in use")  # pragma: no cover (2**64 of them)
