"""The coordination servers a node may use: one mesh's replicas, in order.

A node talks to one of them at a time (``config.server_url``); the join
token lists them all (``config.server_urls``). Replicas share the mesh's
database and certificate, so the node's credential, address and pinned
fingerprint hold at every one of them: moving is only a new base URL. The
daemon moves on when the one in use stops answering (no connection, a
timeout, or 502/503/504: a replica that lost its database), and keeps the
one that answers, saved in its config, so a restart starts there.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from wire.node.config import NodeConfig

# Answers that say "this replica cannot serve you now; another may".
FAIL_OVER_STATUSES = frozenset({502, 503, 504})


def servers_of(config: NodeConfig) -> tuple[str, ...]:
    """Every server URL of the mesh, the one in use among them."""
    if config.server_url in config.server_urls:
        return config.server_urls
    return (config.server_url, *config.server_urls)


def next_server(config: NodeConfig) -> str | None:
    """The replica to try after the one in use (round-robin), or None
    when there is no other."""
    servers = servers_of(config)
    if len(servers) < 2:
        return None
    return servers[(servers.index(config.server_url) + 1) % len(servers)]


def server_hosts(config: NodeConfig) -> tuple[str, ...]:
    """The host of every replica (for routes that must not go through an exit)."""
    hosts: list[str] = []
    for url in servers_of(config):
        host = urlsplit(url).hostname or ""
        if host and host not in hosts:
            hosts.append(host)
    return tuple(hosts)
