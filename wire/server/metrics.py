"""Prometheus metrics for the coordination server (``GET /metrics``).

Each server gets its own CollectorRegistry, so several can live in one
process (tests) without clashing in the library's global registry.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    generate_latest,
)
from twisted.web import server

from wire.protocol import PathFailure, PathMode
from wire.server.relay import OUTCOMES as RELAY_OUTCOMES
from wire.stun import OUTCOMES as STUN_OUTCOMES
from wire.web import JsonResource


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.nodes_total = Gauge("wire_nodes", "Nodes in the registry", registry=self.registry)
        self.nodes_online = Gauge("wire_nodes_online", "Nodes that heartbeat recently", registry=self.registry)
        self.longpolls_open = Gauge("wire_longpolls_open", "Netmap long-polls waiting", registry=self.registry)
        self.netmap_serial = Gauge("wire_netmap_serial", "Current netmap serial", registry=self.registry)
        self.cluster_applied = Gauge(
            "wire_cluster_serial_applied", "The cluster's change serial this replica has applied", registry=self.registry
        )
        self.cluster_lag = Gauge(
            "wire_cluster_lag", "Changes committed to the database this replica has not applied yet", registry=self.registry
        )
        self.reactor_lateness = Gauge(
            "wire_reactor_lateness_seconds",
            "How late the reactor ran its last watch timer (wire.stallwatch): what every answer waited too",
            registry=self.registry,
        )
        self.reactor_stalls = Counter(
            "wire_reactor_stalls", "Watch timers the reactor ran a second or more late", registry=self.registry
        )
        self.replica = Info("wire_replica", "Which replica this is (--replica-name)", registry=self.registry)
        self.relay_sessions = Gauge("wire_relay_sessions", "Relay sessions in use", registry=self.registry)
        self.relay_streams = Gauge(
            "wire_relay_streams", "Relay streams open over TCP (nodes whose networks block UDP)", registry=self.registry
        )
        self.relay_stream_drops = Gauge(
            "wire_relay_stream_dropped_frames", "Relayed frames dropped because a stream's reader was slow", registry=self.registry
        )
        self.relay_fastpath = Gauge(
            "wire_relay_fastpath",
            "The relay's kernel fast path: 1 for the state it is in (on, off, unavailable)",
            ["state"],
            registry=self.registry,
        )
        self.relay_fastpath_direct_sessions = Gauge(
            "wire_relay_fastpath_direct_sessions",
            "Relay sessions whose WireGuard packets the kernel forwards from the sides' own ports (no shim on either node)",
            registry=self.registry,
        )
        self.relay_fastpath_sessions = Gauge(
            "wire_relay_fastpath_sessions", "Relay sessions the kernel forwards (the fast path)", registry=self.registry
        )
        # Relaying across replicas (wire.server.replicas): where grants were made, and who relays.
        self.relay_grants = Counter(
            "wire_relay_grants",
            "Relay grants given, by where the pair's session is (here, forwarded: at its home replica, failed: the home gave none)",
            ["where"],
            registry=self.registry,
        )
        for where in ("here", "forwarded", "failed"):
            self.relay_grants.labels(where)
        self.relay_replicas_live = Gauge(
            "wire_relay_replicas_live", "Replicas live now, which relay the pairs homed at them", registry=self.registry
        )
        self.registrations = Counter(
            "wire_registrations",
            "POST /register answered, by outcome (new, changed, heartbeat)",
            ["outcome"],
            registry=self.registry,
        )
        self.stun_datagrams = Counter(
            "wire_stun_datagrams",
            "Datagrams on the STUN/relay ports, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        # Every outcome shows from the start, at 0, so rates work from the first scrape.
        # labels() costs three times the increment: each relayed frame uses the kept child.
        self._datagram_outcomes = {outcome: self.stun_datagrams.labels(outcome) for outcome in STUN_OUTCOMES + RELAY_OUTCOMES}
        for outcome in ("new", "changed", "heartbeat"):
            self.registrations.labels(outcome)
        self.http_errors = Counter(
            "wire_http_errors",
            "HTTP answers with a 4xx or 5xx status, by status",
            ["status"],
            registry=self.registry,
        )

        self.pair_paths = Gauge(
            "wire_pair_paths", "Pairs the server has a word on, by path mode", ["mode"], registry=self.registry
        )
        self.path_reports = Counter(
            "wire_path_reports",
            "POST /path reports, by failure (no-proof, stopped) and outcome (accepted, refused)",
            ["failure", "outcome"],
            registry=self.registry,
        )
        for failure in PathFailure:
            for outcome in ("accepted", "refused"):
                self.path_reports.labels(str(failure), outcome)

    def count_datagram(self, outcome: str) -> None:
        """One datagram (or relay stream frame) on the STUN/relay ports, by outcome."""
        child = self._datagram_outcomes.get(outcome)
        if child is None:
            child = self._datagram_outcomes[outcome] = self.stun_datagrams.labels(outcome)
        child.inc()

    def track_paths(self, count: Callable[[PathMode], int]) -> None:
        """Pair words by mode, read at scrape time."""
        for mode in (PathMode.RELAY, PathMode.DIRECT, PathMode.LAN):
            self.pair_paths.labels(str(mode)).set_function(partial(count, mode))

    def track_fastpath(
        self, state: Callable[[], str], sessions: Callable[[], float], direct: Callable[[], float] = lambda: 0
    ) -> None:
        """The fast path's state and sessions (all, and those without shims), read at scrape time."""
        for name in ("on", "off", "unavailable"):
            self.relay_fastpath.labels(name).set_function(partial(_is_state, state, name))
        self.relay_fastpath_sessions.set_function(sessions)
        self.relay_fastpath_direct_sessions.set_function(direct)

    def track_cluster(self, applied: Callable[[], float], lag: Callable[[], float]) -> None:
        """The cluster's stream (wire.server.cluster), read at scrape time."""
        self.cluster_applied.set_function(applied)
        self.cluster_lag.set_function(lag)

    def set_replica(self, name: str) -> None:
        self.replica.info({"name": name})

    def track(
        self,
        nodes_total: Callable[[], float],
        nodes_online: Callable[[], float],
        longpolls_open: Callable[[], float],
        netmap_serial: Callable[[], float],
        relay_sessions: Callable[[], float],
        relay_streams: Callable[[], float] = lambda: 0,
        relay_stream_drops: Callable[[], float] = lambda: 0,
    ) -> None:
        """Read live values at scrape time instead of updating them on every change."""
        self.nodes_total.set_function(nodes_total)
        self.nodes_online.set_function(nodes_online)
        self.longpolls_open.set_function(longpolls_open)
        self.netmap_serial.set_function(netmap_serial)
        self.relay_sessions.set_function(relay_sessions)
        self.relay_streams.set_function(relay_streams)
        self.relay_stream_drops.set_function(relay_stream_drops)


class _WithoutCreated:
    """A registry's metrics without their "_created" timestamp series, which
    only add noise to every scrape. (prometheus_client's own switch,
    disable_created_metrics(), is process-wide.)"""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def collect(self):
        for metric in self._registry.collect():
            # collect() builds new Metric objects on every call: ours to trim.
            metric.samples = [sample for sample in metric.samples if not sample.name.endswith("_created")]
            yield metric


def exposition(metrics: ServerMetrics) -> bytes:
    """The text a scrape gets."""
    return generate_latest(_WithoutCreated(metrics.registry))


class MetricsResource(JsonResource):
    methods = ("GET",)

    def __init__(self, metrics: ServerMetrics):
        super().__init__()
        self._metrics = metrics

    def get(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return exposition(self._metrics)


def _is_state(state: Callable[[], str], name: str) -> float:
    return float(state() == name)
