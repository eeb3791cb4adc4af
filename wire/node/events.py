"""The daemon's recent events, for ``wire up`` to wait on (``GET /events``).

A bounded ring: each event has a sequence number, so a reader asks for
what came after the last one it saw, and waits (a long-poll) when there is
nothing new. Events are for people and for the CLI's waiting; they carry
no secrets (never a token, never a credential).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

EVENTS_KEPT = 200
MAX_WAIT = 25.0  # below the control site's 30 s idle timeout


class EventLog:
    def __init__(self, clock: IReactorTime, size: int = EVENTS_KEPT):
        self._clock = clock
        self._events: deque[dict[str, Any]] = deque(maxlen=size)
        self.last = 0
        self._waiters: list[Deferred] = []

    def emit(self, kind: str, message: str, **fields: Any) -> dict[str, Any]:
        self.last += 1
        event = {"seq": self.last, "at": self._clock.seconds(), "kind": kind, "message": message, **fields}
        self._events.append(event)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        return event

    def since(self, after: int) -> list[dict[str, Any]]:
        return [e for e in self._events if e["seq"] > after]

    async def wait(self, after: int, timeout: float) -> list[dict[str, Any]]:
        """The events after ``after``; if none yet, waits up to ``timeout`` for one."""
        if not self.since(after) and timeout > 0:
            d: Deferred = Deferred(lambda _: self._discard(d))
            self._waiters.append(d)
            timer = self._clock.callLater(min(timeout, MAX_WAIT), self._expire, d)
            try:
                await d
            finally:
                if timer.active():
                    timer.cancel()
        return self.since(after)

    def _expire(self, d: Deferred) -> None:
        self._discard(d)
        d.callback(None)

    def _discard(self, d: Deferred) -> None:
        if d in self._waiters:
            self._waiters.remove(d)
