"""The netmap's change log and the long-polls waiting on it.

Every change to what peers must know (a node added, changed, gone offline or
online, removed) gets the next serial. A node holds a cursor
``EPOCH:SERIAL``; asked what changed since it, the server answers with just
the nodes changed after it (upserts) and those removed, found by a binary
search in the log: O(changes), never O(nodes). A cursor from another server
run (another epoch) or older than the log gets a full snapshot instead.

Long-polls wait for the serial to move. All changes made in one reactor
turn wake the waiters once, and waiters holding the same cursor share one
computed answer, so a change costs O(waiters) writes and not O(waiters x
nodes) work.
"""

from __future__ import annotations

import bisect
import math
import secrets
from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from wire.protocol import Cursor
from wire.web import SharedJson

MAX_WAIT_SECONDS = 120.0
# Long-polls a change answers per reactor turn (see LongPollHub._answer_all).
WAKE_BATCH = 500


class ChangeLog:
    """Serial numbers and which node changed at each."""

    def __init__(self, max_entries: int = 50_000, epoch: str | None = None):
        self.epoch = epoch or secrets.token_hex(6)
        self.serial = 0
        self._max_entries = max_entries
        self._serials: list[int] = []
        self._node_ids: list[str] = []
        # The oldest serial whose successors are all still in the log.
        self._complete_after = 0

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.epoch, self.serial)

    def record(self, node_id: str) -> int:
        self.serial += 1
        self._serials.append(self.serial)
        self._node_ids.append(node_id)
        if len(self._serials) > self._max_entries:
            # Trim half at once so trimming stays amortised O(1) per change.
            cut = len(self._serials) // 2
            self._complete_after = self._serials[cut - 1]
            del self._serials[:cut]
            del self._node_ids[:cut]
        return self.serial

    def changed_since(self, cursor: Cursor) -> set[str] | None:
        """The nodes changed after ``cursor``, or None if only a snapshot will do."""
        # Serial 0 means "I have nothing yet": a snapshot, not a delta.
        if (
            cursor.serial == 0
            or cursor.epoch != self.epoch
            or cursor.serial > self.serial
            or cursor.serial < self._complete_after
        ):
            return None
        start = bisect.bisect_right(self._serials, cursor.serial)
        return set(self._node_ids[start:])


class LongPollHub:
    """Long-polls waiting for the netmap to move past their cursor.

    Every node keeps one open, so at 10,000 nodes 10,000 wait at any time,
    and what each costs counts: a waiter is a Deferred and two references.
    Their waits end on one shared timer, in buckets of whole seconds (a
    wait ends up to a second late), and the waiters whose waits end
    together share one answer per cursor, as when a change wakes them.
    """

    def __init__(self, clock: IReactorTime, changes: ChangeLog, answer: Callable[[Cursor], dict]):
        self._clock = clock
        self._changes = changes
        self._answer = answer
        self._waiters: dict[Deferred, Cursor] = {}
        self._due: dict[int, list[Deferred]] = {}  # second -> waiters whose wait ends then
        self._sweep_call: IDelayedCall | None = None
        self._sweep_at = 0
        self._wake_call: IDelayedCall | None = None

    @property
    def open_count(self) -> int:
        return len(self._waiters)

    def poll(self, cursor: Cursor, wait: float) -> Deferred:
        """Fire with an answer now if anything changed, else when something does or ``wait`` ends."""
        if cursor != self._changes.cursor or wait <= 0:
            return succeed(self._answer(cursor))
        waiter: Deferred = Deferred(self._forget)
        self._waiters[waiter] = cursor
        due = math.ceil(self._clock.seconds() + min(wait, MAX_WAIT_SECONDS))
        self._due.setdefault(due, []).append(waiter)
        if self._sweep_call is None or due < self._sweep_at:
            self._schedule_sweep(due)
        return waiter

    def changed(self) -> None:
        """The serial moved; answer every waiter after this reactor turn."""
        if self._wake_call is None and self._waiters:
            self._wake_call = self._clock.callLater(0, self._wake)

    def close(self) -> None:
        """Answer every waiter now (the server is stopping)."""
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        self._wake(batch=None)

    def _wake(self, batch: int | None = WAKE_BATCH) -> None:
        self._wake_call = None
        waiters, self._waiters = self._waiters, {}
        self._stop_sweeping()  # before answering: an answer may bring a new poll
        self._answer_all(list(waiters.items()), {}, batch=batch)

    def _answer_all(self, waiters: list, answers: dict, start: int = 0, batch: int | None = None) -> None:
        """Answer ``waiters`` from ``start``, ``batch`` per reactor turn if
        given: the reactor sends the first answers while it makes the next,
        and the nodes read them meanwhile (at 10,000 waiters, making them
        all takes about a second)."""
        end = len(waiters) if batch is None else min(len(waiters), start + batch)
        for waiter, cursor in waiters[start:end]:
            if waiter.called:
                continue  # cancelled while it waited its turn: the node went away
            if cursor not in answers:
                answers[cursor] = SharedJson(self._answer(cursor))
            waiter.callback(answers[cursor])
        if end < len(waiters):
            self._clock.callLater(0, self._answer_all, waiters, answers, end, batch)

    def _forget(self, waiter: Deferred) -> None:
        """The canceller: the client went away."""
        self._waiters.pop(waiter, None)
        if not self._waiters:
            self._stop_sweeping()

    def _schedule_sweep(self, at: int) -> None:
        if self._sweep_call is not None:
            self._sweep_call.cancel()
        self._sweep_at = at
        self._sweep_call = self._clock.callLater(max(0.0, at - self._clock.seconds()), self._sweep)

    def _stop_sweeping(self) -> None:
        if self._sweep_call is not None:
            self._sweep_call.cancel()
            self._sweep_call = None
        self._due.clear()

    def _sweep(self) -> None:
        """Answer the waiters whose wait has ended (nothing changed for them)."""
        self._sweep_call = None
        now = self._clock.seconds()
        ended = []
        for second in sorted(second for second in self._due if second <= now):
            for waiter in self._due.pop(second):
                cursor = self._waiters.pop(waiter, None)
                if cursor is not None:  # else answered or cancelled already
                    ended.append((waiter, cursor))
        if self._due:
            self._schedule_sweep(min(self._due))
        self._answer_all(ended, {})
