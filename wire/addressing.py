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
from typing import Container, Iterator

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
