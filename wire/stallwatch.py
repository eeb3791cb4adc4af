"""Reactor stalls: how late the reactor runs a timer, watched all the time.

Everything a server does (HTTP, STUN, relay frames) waits while one piece
of Python holds the reactor thread, and from outside a stall looks like a
slow network. A timer every INTERVAL seconds measures how late it runs:
the lateness goes to a callback (a metric), and a stall of WARN_AFTER or
more is logged, at most once every LOG_EVERY seconds (with how many more
there were), so "nothing was answered for 4 s" has a line in the log.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

INTERVAL = 0.25
WARN_AFTER = 1.0
LOG_EVERY = 60.0


class StallWatch(Service):
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        on_lateness: Callable[[float], None] | None = None,
        on_stall: Callable[[float], None] | None = None,
    ):
        self._clock = clock
        self._on_lateness = on_lateness
        self._on_stall = on_stall
        self._due = 0.0
        self._call: IDelayedCall | None = None
        self._logged_at: float | None = None
        self._unlogged = 0  # stalls since the last line
        self.worst = 0.0  # the longest stall seen

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return super().stopService()

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + INTERVAL
        self._call = self._clock.callLater(INTERVAL, self._tick)

    def _tick(self) -> None:
        now = self._clock.seconds()
        late = max(0.0, now - self._due)
        self._schedule()
        if self._on_lateness is not None:
            self._on_lateness(late)
        if late < WARN_AFTER:
            return
        self.worst = max(self.worst, late)
        if self._on_stall is not None:
            self._on_stall(late)
        if self._logged_at is not None and now - self._logged_at < LOG_EVERY:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last such line)" if self._unlogged else ""
        self.log.warn(
            "the reactor ran a timer {late:.2f} s late (busy or blocked): answers and relayed frames waited as long{more}",
            late=late, more=more,
        )
        self._logged_at, self._unlogged = now, 0
