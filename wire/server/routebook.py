"""Which node is the primary router for each subnet route (HA subnet routers).

WireGuard gives a network to one peer only, so when several nodes serve the
same approved prefix, exactly one of them is its primary and only its view
carries the prefix. The choice is stable, as in Tailscale: the primary stays
while it is online, so traffic does not flap between routers; when it goes
offline (or stops serving the prefix) the first other online server of the
prefix takes over at once. With no online server, the last primary keeps the
prefix (there is nowhere better to send it, and a router that is only
restarting changes nothing for its peers).

Pure: no clock, no I/O. The registry tells it each node's served prefixes
(advertised and approved, exit routes aside) and liveness, and learns whose
primary prefixes changed: those nodes' views changed.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from wire.protocol.routes import is_exit_route, route_order


class RouteBook:
    def __init__(self) -> None:
        # prefix -> the nodes serving it, in the order they started to (the
        # order in which a standby takes over)
        self._servers: dict[str, dict[str, None]] = {}
        self._served_by: dict[str, tuple[str, ...]] = {}
        self._online: set[str] = set()
        self._primary: dict[str, str] = {}
        self._primary_of: dict[str, set[str]] = {}

    # -- reading ------------------------------------------------------------

    def primary(self, prefix: str) -> str | None:
        return self._primary.get(prefix)

    def primary_routes(self, node_id: str) -> tuple[str, ...]:
        """The prefixes ``node_id`` is primary for, in route order (what its view carries)."""
        prefixes = self._primary_of.get(node_id)
        return tuple(sorted(prefixes, key=route_order)) if prefixes else ()

    def servers(self, prefix: str) -> tuple[str, ...]:
        return tuple(self._servers.get(prefix, ()))

    # -- changing -----------------------------------------------------------

    def update(self, node_id: str, prefixes: Iterable[str], online: bool) -> set[str]:
        """``node_id`` now serves ``prefixes`` (none: it stopped, or is gone)
        and is online or not. Returns the nodes whose primary prefixes changed."""
        served = tuple(p for p in prefixes if not is_exit_route(p))
        before = self._served_by.get(node_id, ())
        was_online = node_id in self._online
        if served == before and online == was_online:
            return set()
        for prefix in before:
            if prefix not in served:
                servers = self._servers[prefix]
                del servers[node_id]
                if not servers:
                    del self._servers[prefix]
        for prefix in served:
            self._servers.setdefault(prefix, {})[node_id] = None
        if served:
            self._served_by[node_id] = served
        else:
            self._served_by.pop(node_id, None)
        if online:
            self._online.add(node_id)
        else:
            self._online.discard(node_id)
        changed: set[str] = set()
        for prefix in set(before) | set(served):
            self._elect(prefix, changed)
        return changed

    def _elect(self, prefix: str, changed: set[str]) -> None:
        servers = self._servers.get(prefix, {})
        current = self._primary.get(prefix)
        if current is not None and current in servers and current in self._online:
            return  # stable: an online primary stays
        chosen = next((n for n in servers if n in self._online), None)
        if chosen is None and current in servers:
            chosen = current  # nobody better: the last primary keeps it
        if chosen is None and servers:
            chosen = next(iter(servers))
        if chosen == current:
            return
        if current is not None:
            self._primary_of[current].discard(prefix)
            if not self._primary_of[current]:
                del self._primary_of[current]
            changed.add(current)
        if chosen is None:
            del self._primary[prefix]
        else:
            self._primary[prefix] = chosen
            self._primary_of.setdefault(chosen, set()).add(prefix)
            changed.add(chosen)


def overlapping(routes: Iterable[str], network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    """The subnet routes among ``routes`` that overlap ``network`` (the mesh's
    own subnet: routing it elsewhere would take the mesh's addresses away).
    Exit routes hold every network, the mesh's included, and are meant to:
    a node using an exit keeps the mesh outside it."""
    found = []
    for route in routes:
        if is_exit_route(route):
            continue
        candidate = ipaddress.ip_network(route)
        if candidate.version == network.version and candidate.overlaps(network):
            found.append(route)
    return found
