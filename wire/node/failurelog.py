"""Failures of the daemon's loops, told once per cause.

A loop that fails the same way every second (a `wg set` WireGuard refuses,
a server that keeps answering garbage) must not write the same traceback
every second: the first failure of a cause is logged in full, repeats are
counted and told once a minute in one line, and the loop's recovery is
told with how many failures it took.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

REPEAT_EVERY = 60.0
MAX_MESSAGE = 300


@dataclass
class _Failing:
    cause: tuple
    told_at: float
    repeats: int = 0  # since told_at
    total: int = 1
    since: float = 0.0  # the first failure of this run of them


class FailureLog:
    def __init__(self, log: Logger, clock: IReactorTime):
        self._log = log
        self._clock = clock
        self._failing: dict[str, _Failing] = {}

    def failed(self, what: str, failure: Failure | None = None) -> None:
        """``what`` failed (with the current exception, or ``failure``)."""
        failure = failure or Failure()
        message = str(failure.value)[:MAX_MESSAGE]
        cause = (failure.type, message)
        now = self._clock.seconds()
        state = self._failing.get(what)
        if state is None or state.cause != cause:
            self._failing[what] = _Failing(
                cause, now, total=(state.total + 1 if state else 1), since=(state.since if state else now)
            )
            self._log.failure("{what} failed; the loop goes on", failure, what=what)
            return
        state.repeats += 1
        state.total += 1
        if now - state.told_at >= REPEAT_EVERY:
            self._log.warn(
                "{what} failed {count} more time(s) in {seconds:.0f}s, the same way: {error}",
                what=what,
                count=state.repeats,
                seconds=now - state.told_at,
                error=message,
            )
            state.told_at, state.repeats = now, 0

    def worked(self, what: str) -> None:
        state = self._failing.pop(what, None)
        if state is not None:
            self._log.info("{what} works again, after {count} failure(s)", what=what, count=state.total)

    def failing(self) -> list[dict]:
        """What fails now: how many times in a row, since when, the last cause."""
        now = self._clock.seconds()
        return [
            {"what": what, "count": state.total, "since_ago": now - state.since, "error": state.cause[1]}
            for what, state in sorted(self._failing.items())
        ]


class BadAnswers:
    """Entries of the server's answers this node refused (bad peers, bad
    assignments): how many, the latest, and when, for ``wire diagnose``."""

    def __init__(self) -> None:
        self.count = 0
        self.latest = ""
        self.at: float | None = None

    def note(self, problem: str, now: float) -> None:
        self.count += 1
        self.latest = problem[:MAX_MESSAGE]
        self.at = now

    def view(self, now: float) -> dict:
        return {"count": self.count, "latest": self.latest, "ago": None if self.at is None else now - self.at}
