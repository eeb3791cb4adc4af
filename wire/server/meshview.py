"""The mesh as the admin sees it (``GET /api/v1/mesh``, the dashboard's
topology): every node, and every pair some node reported a path for
(wire.server.reports), with a version to wait on.

The version moves when the registry changes (a node joined, left, went
offline, was renamed or tagged) or a report was accepted here. A caller
that gives the version it holds (``since``) waits until it moves, at most
``wait`` seconds, so a dashboard hears a change within COALESCE seconds and
costs nothing while the mesh is quiet. Reports another replica accepted
move no version here: they show at the next answer, which MAX_WAIT keeps
within a few seconds.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from wire.protocol.dns import dns_name_of
from wire.server.reports import mesh_edges

MAX_WAIT = 5.0
COALESCE = 0.25
# One view serves every request for its version this long (counters and ages move without one).
SHARED_FOR = 1.0
# Waiting dashboards at most (each holds a connection; past this, answers come at once).
MAX_WAITERS = 100


class TooManyWaiters(Exception):
    """MAX_WAITERS views wait already (HTTP 503)."""


class MeshVersion:
    """A counter that moves on every change the view shows, and its waiters.

    Waiters are woken at most once per COALESCE seconds: a burst of changes
    (a hundred nodes coming online) costs each dashboard one new view, not
    a hundred."""

    def __init__(self, clock: IReactorTime):
        self._clock = clock
        self.value = 0
        self._waiters: list[tuple[Deferred, IDelayedCall]] = []
        self._wake: IDelayedCall | None = None
        # The latest view built (wire.server.meshview.mesh_view): its version, when, and it.
        self.view: tuple[int, float, dict] | None = None

    def moved(self, *_: object) -> None:
        self.value += 1
        if self._waiters and self._wake is None:
            self._wake = self._clock.callLater(COALESCE, self._wake_all)

    def _wake_all(self) -> None:
        self._wake = None
        waiters, self._waiters = self._waiters, []
        for d, call in waiters:
            if call.active():
                call.cancel()
            if not d.called:
                d.callback(None)

    def wait(self, since: int | None, wait: float) -> Deferred:
        """Fires when the version is past ``since``, or after ``wait`` seconds
        (at most MAX_WAIT); TooManyWaiters past MAX_WAITERS of them."""
        if since is None or since != self.value or wait <= 0:
            return succeed(None)
        if len(self._waiters) >= MAX_WAITERS:
            # Answering at once would have every dashboard past the cap ask again at once, in a loop.
            raise TooManyWaiters(f"{MAX_WAITERS} mesh views are waiting already; ask again in a few seconds")

        def timed_out() -> None:
            self._waiters = [(w, c) for w, c in self._waiters if w is not d]
            if not d.called:
                d.callback(None)

        def cancelled(_: Deferred) -> None:
            self._waiters = [(w, c) for w, c in self._waiters if w is not d]
            if call.active():
                call.cancel()

        d: Deferred = Deferred(cancelled)
        call = self._clock.callLater(min(wait, MAX_WAIT), timed_out)
        self._waiters.append((d, call))
        return d


async def mesh_view(coordinator, since: int | None = None, wait: float = 0.0) -> dict:
    """Every node (as ``/status`` shows it) and every reported pair, once the
    version is past ``since`` (or ``wait`` seconds passed). Built once per
    version and second: every dashboard woken by one change shares it."""
    await coordinator.mesh_version.wait(since, wait)
    version = coordinator.mesh_version.value
    now = coordinator.now()
    shared = coordinator.mesh_version
    cached = shared.view
    if cached is not None and cached[0] == version and now - cached[1] < SHARED_FOR:
        return cached[2]
    status = coordinator.status()
    reports = await coordinator.reports.all()
    known = {node["node_id"] for node in status["nodes"]}
    domain = coordinator.dns.domain  # None: no mesh DNS
    for node in status["nodes"]:
        report = reports.get(node["node_id"])
        node["version"] = report.version if report is not None else ""
        if domain is not None:
            node["dns_name"] = dns_name_of(node["node_name"], domain)
    view = {
        "version": version,
        "timestamp": now,
        "total": status["total"],
        "online": status["online"],
        "nodes": status["nodes"],
        "edges": mesh_edges(reports, known, now),
    }
    shared.view = (version, now, view)
    return view
