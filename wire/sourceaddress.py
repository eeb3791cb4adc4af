"""The address a datagram or a request came from, as its sender is known.

A dual-stack socket shows an IPv4 sender as ``::ffff:a.b.c.d``. Everything
that answers, records or rate-limits by source address unmaps it here, so an
IPv4 node is one address whichever socket it reached.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def unmapped(address: IPAddress) -> IPAddress:
    """The IPv4 address behind an IPv4-mapped IPv6 one; any other as it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_client_ip(host: str) -> str:
    """A client's address in text, unmapped; text that is no address, unchanged."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return str(unmapped(address))
