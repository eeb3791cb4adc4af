"""What nodes say about their paths (``POST /report``, wire.protocol.report),
for the admin's view of the mesh: the latest report of each node.

A node may report only about its own peers: entries about a node that does
not exist, or that the access policy does not let it see, are dropped (and
counted), so a hostile node can neither invent edges between others nor
learn who exists by probing. Reports are bounded three ways: per body
(wire.protocol.report), per node (one accepted every MIN_GAP seconds; the
latest replaces the one before) and in all (MAX_ENTRIES peer entries kept
across the mesh; past it, a report keeps its most recently active peers).

Reports are written to the database in batches every few seconds, like
heartbeats, so replicas on one database show one mesh: the view reads the
rows every replica wrote, with this replica's newer ones over them. Losing
a few seconds of reports in a crash loses nothing a node will not send
again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wire.protocol.report import NodeReport, PeerReport, parse_peers_and_version
from wire.server.store import IStore, StoreError, Writes, upsert

# One accepted report per node this often (a node reports on change, and
# now and then while its counters move: wire.node.report).
MIN_GAP = 2.0
# Peer entries kept across the mesh (each a small tuple; about 100 MB at most).
MAX_ENTRIES = 1_000_000
FLUSH_INTERVAL = 5.0
_UPSERT_REPORT = upsert("node_reports", ("node_id", "reported_at", "peers"), ("node_id",))
_READ_REPORTS = "SELECT node_id, reported_at, peers FROM node_reports"


class ReportTooSoon(Exception):
    """A node reported again within MIN_GAP seconds (HTTP 429)."""

    def __init__(self, wait: float):
        self.wait = wait
        super().__init__(f"a report was accepted {MIN_GAP - wait:.1f} s ago; send the next in {wait:.1f} s")


@dataclass(frozen=True)
class StoredReport:
    reported_at: float
    peers: tuple[PeerReport, ...]
    version: str = ""


class ReportBook:
    log = Logger()

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        exists: Callable[[str], bool],
        may_see: Callable[[str, str], bool],
        accepted: Callable[[], None] = lambda: None,
    ):
        self._store = store
        self._accepted = accepted  # the admin's view moved (wire.server.meshview)
        self._clock = clock
        self._exists = exists
        self._may_see = may_see
        self._latest: dict[str, StoredReport] = {}
        self._entries = 0
        self._unwritten: set[str] = set()
        # Rows read back, by node: parsed again only when they changed.
        self._read: dict[str, tuple[float, str, StoredReport]] = {}
        self.dropped = 0  # entries about peers a node may not report on

    def accept(self, report: NodeReport) -> int:
        """Keep ``report`` as its node's latest; returns how many peer entries were kept."""
        now = self._clock.seconds()
        node_id = report.node_id
        before = self._latest.get(node_id)
        if before is not None and now - before.reported_at < MIN_GAP:
            raise ReportTooSoon(MIN_GAP - (now - before.reported_at))
        allowed = [p for p in report.peers if p.peer_node_id != node_id and self._exists(p.peer_node_id) and self._may_see(node_id, p.peer_node_id)]
        self.dropped += len(report.peers) - len(allowed)
        room = MAX_ENTRIES - self._entries + (len(before.peers) if before is not None else 0)
        if len(allowed) > room:
            # The most recently active first; a peer with no handshake last.
            allowed.sort(key=lambda p: float("inf") if p.handshake_age is None else p.handshake_age)
            allowed = allowed[: max(0, room)]
        self._entries += len(allowed) - (len(before.peers) if before is not None else 0)
        self._latest[node_id] = StoredReport(now, tuple(allowed), report.version)
        self._unwritten.add(node_id)
        if before is None or _shape(before.peers) != _shape(allowed) or before.version != report.version:
            self._accepted()  # a path changed: dashboards hear it now (counters show at their next answer)
        return len(allowed)

    def forget(self, node_id: str) -> None:
        """The node left the mesh (its row goes with its removal: wire.server.store.Writes.remove_node)."""
        gone = self._latest.pop(node_id, None)
        if gone is not None:
            self._entries -= len(gone.peers)
        self._unwritten.discard(node_id)

    def flush(self) -> Deferred:
        """Write the reports accepted since the last flush; on failure they wait for the next."""
        if not self._unwritten:
            return succeed(None)
        names, self._unwritten = self._unwritten, set()
        writes = Writes()
        rows = [
            (node_id, self._latest[node_id].reported_at, _stored_json(self._latest[node_id]))
            for node_id in sorted(names)
            if node_id in self._latest
        ]
        writes.statements.append((_UPSERT_REPORT, rows))

        def failed(failure: Failure) -> None:
            failure.trap(StoreError)
            self.log.warn("saving node reports failed (kept for the next try): {error}", error=failure.value)
            self._unwritten |= {n for n in names if n in self._latest}

        return self._store.transaction(writes).addErrback(failed)

    async def all(self) -> dict[str, StoredReport]:
        """Every node's latest report: the database's rows (every replica's),
        with this replica's newer ones over them."""
        found: dict[str, StoredReport] = {}
        try:
            rows = await self._store.query(_READ_REPORTS)
        except StoreError as e:
            self.log.warn("reading node reports failed; showing this replica's own: {error}", error=e)
            rows = None
        read: dict[str, tuple[float, str, StoredReport]] = {}
        for node_id, reported_at, text in rows or ():
            before = self._read.get(node_id)
            if before is not None and before[:2] == (reported_at, text):
                parsed: StoredReport | None = before[2]
            else:
                parsed = _read_stored(float(reported_at), text)
            if parsed is None:
                self.log.warn("the stored report of {node} is unreadable; not shown", node=node_id)
                continue
            read[node_id] = (reported_at, text, parsed)
            found[node_id] = parsed
        if rows is not None:
            self._read = read
        for node_id, report in self._latest.items():
            kept = found.get(node_id)
            if kept is None or kept.reported_at <= report.reported_at:
                found[node_id] = report
        for node_id in [n for n in self._latest if not self._exists(n)]:
            self.forget(node_id)  # removed through another replica
        return {node_id: report for node_id, report in found.items() if self._exists(node_id)}


def _shape(peers) -> frozenset:
    return frozenset(p.shape for p in peers)


def _stored_json(report: StoredReport) -> str:
    return json.dumps({"version": report.version, "peers": [p.to_json() for p in report.peers]}, separators=(",", ":"))


def _read_stored(reported_at: float, text: str) -> StoredReport | None:
    """A stored row, checked again as it is read (the database is not trusted more than the node was)."""
    try:
        stored = json.loads(text)
        if not isinstance(stored, dict) or not isinstance(stored.get("peers"), list):
            return None
        peers, version = parse_peers_and_version(stored)
    except ValueError:  # not JSON, or a ProtocolError
        return None
    return StoredReport(reported_at, peers, version)


# An edge's kind when its two sides say different things: the one that says
# most about what the traffic crosses (a relayed side relays the pair).
_KIND_ORDER = ("relay-tcp", "relay", "direct", "lan", "connecting", "none")


def mesh_edges(reports: dict[str, StoredReport], known: Collection[str], now: float) -> list[dict]:
    """The pairs of ``known`` nodes some node reported about, each with both
    sides' words: ``{"a", "b", "kind", "sides": {node_id: {...}}}``, ``a`` < ``b``."""
    pairs: dict[tuple[str, str], dict[str, dict]] = {}
    for node_id, report in reports.items():
        for peer in report.peers:
            if node_id not in known or peer.peer_node_id not in known:
                continue  # a node removed since
            a, b = sorted((node_id, peer.peer_node_id))
            side = peer.to_json()
            del side["peer_node_id"]
            side["reported_ago"] = max(0.0, now - report.reported_at)
            pairs.setdefault((a, b), {})[node_id] = side
    edges = []
    for (a, b), sides in sorted(pairs.items()):
        said = {side["path"] for side in sides.values()}
        kind = next((k for k in _KIND_ORDER if k in said), "none")
        edges.append({"a": a, "b": b, "kind": kind, "sides": sides})
    return edges
