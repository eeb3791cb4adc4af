"""Coordination-server URLs: parsed and checked once, for server and node alike."""

from __future__ import annotations

import ipaddress
from typing import Any, Sequence
from urllib.parse import urlsplit

from wire.protocol import ProtocolError


def parse_server_url(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError("server_url", "is required (for example http://HOST:8787)")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProtocolError("server_url", f"{value!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment or (parts.path not in ("", "/")):
        raise ProtocolError("server_url", f"{value!r} must be just scheme://host:port")
    try:
        parts.port
    except ValueError:
        raise ProtocolError("server_url", f"{value!r} has an invalid port")
    return f"{parts.scheme}://{parts.netloc}"


MAX_SERVER_URLS = 16


def parse_server_urls(value: Any, field: str = "server_urls") -> tuple[str, ...]:
    """A list of the URLs of one mesh's server replicas: each checked like
    one URL, in order, without repeats; at most MAX_SERVER_URLS."""
    if not isinstance(value, (list, tuple)):
        raise ProtocolError(field, "must be a list of server URLs")
    if len(value) > MAX_SERVER_URLS:
        raise ProtocolError(field, f"lists {len(value)} servers; at most {MAX_SERVER_URLS}")
    urls: list[str] = []
    for item in value:
        try:
            url = parse_server_url(item)
        except ProtocolError as e:
            raise ProtocolError(field, e.problem)
        if url not in urls:
            urls.append(url)
    return tuple(urls)


def check_one_scheme(urls: Sequence[str], field: str) -> None:
    """Replicas of one mesh speak one scheme: a node moving from an https
    replica to an http one would send its credential in the clear."""
    schemes = {urlsplit(url).scheme for url in urls}
    if len(schemes) > 1:
        raise ProtocolError(field, "the replicas' URLs mix http:// and https://; give them all one scheme")


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address means "this machine" wherever it is
    used: a URL holding it reaches no other machine."""
    host = host.strip("[]").rstrip(".").lower()
    if host in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")
