"""Which replicas live, and which of them relays a pair (issue 19).

Each replica on one PostgreSQL keeps a row in ``replicas`` (its name, API
URL and relay endpoint, upserted when its cluster session connects) and
holds an advisory lock of its own on that session (the two-key form:
``REPLICA_LOCK_CLASS`` and a 32-bit hash of its name). The live replicas
are those whose lock PostgreSQL shows granted in ``pg_locks``: a replica
killed -9 is gone from there as soon as the database sees its connection
close, which no heartbeat timeout would match. Every replica reads that set
about once a second on its cluster session's thread (wire.server.cluster).

A pair's relay session lives at one replica, its *home*: the live replica
with the highest rendezvous weight for the pair (highest-random-weight
hashing). Every replica reading the same live set computes the same home,
and a replica's death moves only the pairs homed there.

One server alone (SQLite) is its own only replica, always live and home.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

# pg_advisory_lock's first key for replicas' liveness locks ("wrp1").
REPLICA_LOCK_CLASS = 0x77727031


@dataclass(frozen=True)
class Replica:
    """One replica as the others reach it: its API and its relay."""

    name: str
    api_url: str
    relay_host: str
    relay_port: int

    def to_json(self) -> dict:
        return {"replica": self.name, "host": self.relay_host, "port": self.relay_port}


def replica_for(name: str, api_url: str, port: int) -> Replica:
    """This replica, from its name, public URL and API port: it relays on
    the URL's host, at port + 1 (the seed's STUN and relay port)."""
    host = urlsplit(api_url).hostname or ""
    return Replica(name, api_url, host, port + 1)


def lock_key(name: str) -> int:
    """The second key of ``name``'s liveness lock: 32 bits of its hash, as
    PostgreSQL's signed int4 (pg_locks shows it as the unsigned ``objid``)."""
    value = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return value - (1 << 32) if value >= 1 << 31 else value


def live_from(rows: Iterable[tuple], granted: Iterable[int]) -> dict[str, Replica]:
    """The live replicas: the ``replicas`` rows (name, api_url, relay_host,
    relay_port) whose lock is among the ``granted`` objids of pg_locks."""
    held = {int(objid) & 0xFFFFFFFF for objid in granted}
    live = {}
    for name, api_url, relay_host, relay_port in rows:
        if lock_key(name) & 0xFFFFFFFF in held:
            live[name] = Replica(name, api_url, relay_host, int(relay_port))
    return live


def weight(lo: str, hi: str, name: str) -> bytes:
    return hashlib.sha256(f"{lo}\0{hi}\0{name}".encode()).digest()


def home_of(node_a: str, node_b: str, names: Iterable[str]) -> str | None:
    """The pair's home among ``names`` (None: none live): the same for
    either order of the pair, and on every replica with the same set."""
    lo, hi = sorted((node_a, node_b))
    best: tuple[bytes, str] | None = None
    for name in names:
        candidate = (weight(lo, hi, name), name)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


class ReplicaSet:
    """This replica, and the live ones as last read (itself among them
    while its lock is held; a database outage keeps the last set read)."""

    def __init__(self, me: Replica):
        self.me = me
        self.live: dict[str, Replica] = {me.name: me}
        # Whether the live set was read (one server alone: nothing to read).
        self.ready = True
        # Called with no arguments after the live set changed.
        self.listeners: list[Callable[[], None]] = []

    @property
    def shared(self) -> bool:
        """Whether other replicas may relay (a cluster): grants then name their relay."""
        return False

    def home_of(self, node_a: str, node_b: str) -> Replica:
        """The replica that relays this pair: this one when no other lives."""
        name = home_of(node_a, node_b, self.live)
        return self.live.get(name, self.me) if name is not None else self.me

    def update(self, live: dict[str, Replica]) -> bool:
        """The live set read now; True (and listeners told) if it changed."""
        self.ready = True
        if live == self.live:
            return False
        self.live = dict(live)
        for listener in list(self.listeners):
            listener()
        return True

    def relays_json(self) -> list[dict]:
        """The live relays as nodes are told them (sorted by name)."""
        return [self.live[name].to_json() for name in sorted(self.live)]


class ClusterReplicas(ReplicaSet):
    """The replica set of a replica on PostgreSQL (its live set read by the
    cluster): not ready until first read, so that no grant is made here for
    a pair homed at another replica in the second after a start."""

    def __init__(self, me: Replica):
        super().__init__(me)
        self.ready = False

    @property
    def shared(self) -> bool:
        return True
