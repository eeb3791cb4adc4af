"""The node's reports of its paths to the server (``POST /report``), for the
admin's view of the mesh (wire.server.reports, the dashboard).

Cheap by design: every CHECK_EVERY seconds the reporter reads what the
reconciler last saw of WireGuard (no extra ``wg`` call) and builds the
report ``wire status`` would show. It sends at once when a peer's path,
endpoint kind or endpoint changed (or a peer came or went), else only
every REPORT_EVERY seconds and only while counters moved. A refused or
failed send waits for the next check (a 429 for the server's own gap); it
never retries in a loop. Only peers WireGuard shook hands with are told,
the most recently active first, at most MAX_REPORTED_PEERS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wire.protocol import PathMode
from wire.protocol.report import ENDPOINT_KINDS, MAX_REPORTED_PEERS, NodeReport, PeerReport

CHECK_EVERY = 5.0
REPORT_EVERY = 60.0


def peer_reports(entries: Iterable[dict]) -> tuple[PeerReport, ...]:
    """The report's peers from ``wire status``'s entries (wire.node.control.peer_entries)."""
    reports = []
    for entry in entries:
        age = entry.get("handshake_age")
        if age is None:
            continue  # never shook hands: no edge to draw
        kind = entry["endpoint_kind"] if entry["endpoint_kind"] in ENDPOINT_KINDS else "none"
        # A shim's loopback address means nothing off this machine.
        endpoint = None if kind in ("none", "relay-shim") else entry.get("endpoint")
        reports.append(
            PeerReport(
                peer_node_id=entry["node_id"],
                path=PathMode(entry["path"]),
                endpoint_kind=kind,
                endpoint=endpoint,
                handshake_age=round(max(0.0, float(age)), 1),
                rx_bytes=int(entry.get("rx_bytes") or 0),
                tx_bytes=int(entry.get("tx_bytes") or 0),
            )
        )
    reports.sort(key=lambda p: (p.handshake_age, p.peer_node_id))
    return tuple(reports[:MAX_REPORTED_PEERS])


class PathReporter:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        build: Callable[[], NodeReport | None],
        send: Callable[[NodeReport], Awaitable[int]],
    ):
        self._clock = clock
        self._build = build  # None: nothing to report yet (not registered, interface down)
        self._send = send
        self._loop = LoopingCall(self._check_guarded)
        self._loop.clock = clock
        self._sent_shape: frozenset | None = None
        self._sent_counters: tuple[int, int] | None = None
        self._sent_at = float("-inf")
        self._sending = False
        self.failing: str | None = None  # why the last send failed, until one works
        self.sent = 0

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(CHECK_EVERY, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def moved(self) -> None:
        """The node moved to another server (a replica): it hears the next report at once."""
        self._sent_shape = None

    def _check_guarded(self):
        try:
            return self.check()
        except Exception:
            self.log.failure("building the path report failed")
            return None

    def check(self):
        """One check: send if due. Returns the send's Deferred (or None)."""
        if self._sending:
            return None
        report = self._build()
        if report is None:
            return None
        shape = frozenset(p.shape for p in report.peers)
        counters = (sum(p.rx_bytes for p in report.peers), sum(p.tx_bytes for p in report.peers))
        now = self._clock.seconds()
        changed = shape != self._sent_shape
        due = now - self._sent_at >= REPORT_EVERY and counters != self._sent_counters
        if not (changed or due):
            return None
        self._sending = True
        return Deferred.fromCoroutine(self._deliver(report, shape, counters, now))

    async def _deliver(self, report: NodeReport, shape: frozenset, counters: tuple[int, int], now: float) -> None:
        try:
            await self._send(report)
        except CancelledError:
            pass  # the daemon stops
        except Exception as e:
            if self.failing is None:
                self.log.info("path report not delivered (tried again later): {error}", error=e)
            self.failing = str(e)
        else:
            if self.failing is not None:
                self.log.info("path reports delivered again")
            self.failing = None
            self._sent_shape, self._sent_counters, self._sent_at = shape, counters, now
            self.sent += 1
        finally:
            self._sending = False
