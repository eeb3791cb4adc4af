"""The values that reach resolvectl's command line or resolv.conf, checked
before anything runs or is written."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from wire.node.ifname import parse_interface_name
from wire.protocol import ProtocolError

from .errors import OsDnsError

MAX_DOMAIN = 253
# A DNS name as resolv.conf and resolvectl take it: letters, digits, hyphens
# and underscores (service labels), labels of 1-63, no trailing dot.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def check_interface(value: object) -> str:
    """An interface name for resolvectl; one starting with '-' would read as an option."""
    try:
        name = parse_interface_name(value)
    except ProtocolError as e:
        raise OsDnsError(str(e)) from None
    if name.startswith("-"):
        raise OsDnsError(f"interface: {name!r} starts with '-', which resolvectl would take for an option")
    return name


def check_domain(value: object, field: str = "domain") -> str:
    """A DNS domain, lower-cased, without a trailing dot."""
    if isinstance(value, str):
        name = value.lower().removesuffix(".")
        if 0 < len(name) <= MAX_DOMAIN and all(_LABEL.match(label) for label in name.split(".")):
            return name
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise OsDnsError(f"{field}: {shown} is not a DNS domain (labels of letters, digits and '-', at most {MAX_DOMAIN} characters)")


def check_domains(values: Iterable[object], field: str = "search") -> tuple[str, ...]:
    checked: list[str] = []
    for value in values:
        name = check_domain(value, field)
        if name not in checked:
            checked.append(name)
    return tuple(checked)


def check_address(value: object) -> str:
    """The mesh resolver's address: an IP address, as its canonical text."""
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise OsDnsError(f"nameserver: {value!r} is not an IP address") from None


def reverse_zone(value: object) -> str:
    """The reverse-lookup zone that holds a mesh network's PTR names
    (``10.99.0.0/16`` -> ``99.10.in-addr.arpa``), widened to a whole octet
    (nibble for IPv6) as zones are; a network wider than /8 (/4) has none."""
    try:
        network = ipaddress.ip_network(value if isinstance(value, str) else "", strict=False)
    except ValueError:
        raise OsDnsError(f"networks: {value!r} is not a network like 10.99.0.0/16") from None
    step = 8 if network.version == 4 else 4
    labels = network.network_address.reverse_pointer.split(".")
    kept = network.prefixlen // step
    if kept == 0:
        raise OsDnsError(f"networks: {network} is too wide for a reverse zone")
    # The address's pointer name has a label per octet (nibble), lowest
    # first, then in-addr.arpa (ip6.arpa): keep the network's own labels.
    suffix = labels[-2:]
    address_labels = labels[:-2]
    return ".".join(address_labels[len(address_labels) - kept :] + suffix)


@dataclass(frozen=True)
class Wanted:
    """What apply was asked for, checked: the same in every mode."""

    nameserver: str
    domain: str
    search: tuple[str, ...]
    reverse_zones: tuple[str, ...]

    def shown(self) -> dict[str, object]:
        return {
            "nameserver": self.nameserver,
            "domain": self.domain,
            "search": list(self.search),
            "reverse_zones": list(self.reverse_zones),
        }


NOTHING_WANTED: dict[str, object] = {"nameserver": None, "domain": None, "search": [], "reverse_zones": []}


def wanted(vpn_address: object, domain: object, search: Sequence[object] | None, networks: Sequence[object]) -> Wanted:
    """apply's arguments checked (OsDnsError); search None means the domain alone."""
    name = check_domain(domain)
    return Wanted(
        check_address(vpn_address),
        name,
        check_domains((name,) if search is None else search),
        _outermost(reverse_zone(network) for network in networks),
    )


def _outermost(zones: Iterable[str]) -> tuple[str, ...]:
    """The zones without repeats or zones inside another (it routes them already)."""
    unique = list(dict.fromkeys(zones))
    return tuple(zone for zone in unique if not any(zone.endswith("." + other) for other in unique))
