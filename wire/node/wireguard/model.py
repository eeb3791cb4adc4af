"""What a WireGuard interface is told and what it reports, checked once.

PeerConfig (a peer as the interface should have it), PeerStatus and
InterfaceStatus (what ``wg`` says), the errors the driver raises, and the
validation every value from the network passes before it reaches an argv.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from wire.node.ifname import parse_interface_name
from wire.protocol import ProtocolError, parse_wg_public_key
from wire.protocol.fields import parse_udp_endpoint


# The tunnel MTU. WireGuard's usual 1420 fills a 1500-byte path exactly
# (IPv6 + UDP 48, WireGuard 32); a relayed packet also carries a relay
# frame's 37 bytes, and at 1420 it would be IP-fragmented on the way to and
# from the relay (measured in the lab: every full-size packet, twice), which
# costs every hop and which many NATs and firewalls drop. Like Tailscale
# (1280), one MTU that fits every path: 1500 - 48 - 32 - 37 = 1383, rounded.
MTU = 1380


INSTALL_ADVICE = (
    "install WireGuard's tools: on Debian/Ubuntu `apt-get install wireguard-tools wireguard-go` "
    "(wireguard-go is only needed when the kernel has no WireGuard module), "
    "on Fedora `dnf install wireguard-tools wireguard-go`, "
    "on macOS `brew install wireguard-tools wireguard-go`"
)


_NETWORK_TEXT = re.compile(r"[0-9A-Fa-f:./]{1,49}\Z")
_MAX_KEEPALIVE = 65535


class WireGuardError(Exception):
    """The interface could not be brought to the state asked for; says why."""


class WireGuardUnavailable(WireGuardError):
    """This machine lacks what WireGuard needs; the message says how to install it."""

    def __init__(self, missing: str) -> None:
        super().__init__(f"WireGuard is not available: {missing}; {INSTALL_ADVICE}")
        self.missing = missing


class InvalidWireGuardConfig(ProtocolError):
    """A key, address, endpoint or network is not acceptable for WireGuard."""


# -- values ------------------------------------------------------------------


@dataclass(frozen=True)
class PeerConfig:
    """
    One peer as the interface should have it.

    Validated and normalised on construction, since it usually comes from
    the network: allowed_ips become sorted, de-duplicated networks with host
    bits cleared (as WireGuard stores them), an IPv6 endpoint is written
    compressed.  endpoint None means "not known": a roamed endpoint is left
    alone.  persistent_keepalive 0 turns keepalives off.
    """

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    persistent_keepalive: int = 25

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_key", _check_public_key(self.public_key, "public_key"))
        object.__setattr__(self, "allowed_ips", parse_allowed_ips(self.allowed_ips))
        if self.endpoint is not None:
            object.__setattr__(self, "endpoint", parse_endpoint(self.endpoint))
        object.__setattr__(self, "persistent_keepalive", _check_keepalive(self.persistent_keepalive))


@dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: float  # unix seconds; 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int  # 0 = off


@dataclass(frozen=True)
class InterfaceStatus:
    name: str  # the device `wg` knows (utunN on macOS)
    public_key: str  # "" while no private key is set
    listen_port: int
    peers: tuple[PeerStatus, ...]
    backend: str


# -- validation --------------------------------------------------------------


def invalid_config(field: str, problem: str) -> InvalidWireGuardConfig:
    return InvalidWireGuardConfig(field, problem)


def shown_value(value: Any, limit: int = 50) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_public_key(value: Any, field: str) -> str:
    try:
        return parse_wg_public_key(value, field=field)
    except ProtocolError as e:
        raise invalid_config(field, e.problem) from None


def check_private_key(value: Any) -> str:
    # Same shape as a public key; the message never quotes the value.
    return _check_public_key(value, "private_key")


def _check_keepalive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_KEEPALIVE:
        raise invalid_config("persistent_keepalive", f"{shown_value(value)} is not a number of seconds from 0 (off) to 65535")
    return value


def check_listen_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise invalid_config("listen_port", f"{shown_value(value)} is not a UDP port (0 for any, or 1-65535)")
    return value


def parse_endpoint(value: Any) -> str:
    """ "ip:port" or "[ipv6]:port", normalised; hostnames and anything odd refused."""
    try:
        return parse_udp_endpoint(value, "endpoint")
    except ProtocolError as e:
        raise invalid_config("endpoint", e.problem) from None


def parse_network(value: Any, field: str = "allowed_ips") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One network ("10.99.0.2/32", "fd00::/64"; a bare address is a host route)."""
    if not isinstance(value, str) or not _NETWORK_TEXT.match(value):
        raise invalid_config(field, f"{shown_value(value)} is not an IPv4 or IPv6 network")
    try:
        # strict=False: WireGuard clears host bits too ("10.99.0.5/24" is 10.99.0.0/24).
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise invalid_config(field, f"{shown_value(value)} is not an IPv4 or IPv6 network") from None


def parse_allowed_ips(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, frozenset, set)):
        raise invalid_config("allowed_ips", f"must be a sequence of networks, not {type(value).__name__}")
    networks = {parse_network(item) for item in value}
    ordered = sorted(networks, key=lambda n: (n.version, n.network_address, n.prefixlen))
    return tuple(str(n) for n in ordered)


def check_interface_name(value: Any) -> str:
    try:
        return parse_interface_name(value)
    except ProtocolError as e:
        raise invalid_config("interface", e.problem) from None


def check_address(address: Any, prefixlen: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if not isinstance(address, str) or not _NETWORK_TEXT.match(address) or "/" in address:
        raise invalid_config("address", f"{shown_value(address)} is not an IP address")
    if isinstance(prefixlen, bool) or not isinstance(prefixlen, int):
        raise invalid_config("prefixlen", f"{shown_value(prefixlen)} is not a prefix length")
    try:
        return ipaddress.ip_interface(f"{address}/{prefixlen}")
    except ValueError:
        raise invalid_config("address", f"{shown_value(address)}/{shown_value(prefixlen)} is not an address with a prefix length") from None


def check_address6(address: Any, prefixlen: Any) -> ipaddress.IPv6Interface | None:
    """The IPv6 mesh address beside the IPv4 one, or None when there is none ("")."""
    if address == "":
        return None
    interface = check_address(address, prefixlen)
    if not isinstance(interface, ipaddress.IPv6Interface):
        raise invalid_config("address6", f"{shown_value(address)} is not an IPv6 address")
    return interface
