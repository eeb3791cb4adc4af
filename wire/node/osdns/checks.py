"""The values that reach resolvectl's command line or resolv.conf, checked
before anything runs or is written."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

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
