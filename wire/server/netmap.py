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
nodes) work. A pair's path (:mod:`wire.server.pathbook`) concerns two nodes
only: its change takes a serial too, but wakes just those two nodes'
waiters, and only their answers are copied to carry their words.
"""

from __future__ import annotations

import bisect
import math
import secrets
from typing import Callable, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wire.protocol import Cursor
from wire.web import SharedJson

log = Logger()

MAX_WAIT_SECONDS = 120.0
# Long-polls a change answers per reactor turn (see LongPollHub._answer_all).
# Each turn between batches also reads the new polls of the nodes answered
# so far, and one costs the server about 2.5 times what an answer does
# (TLS, HTTP parsing, authentication; profiled at 10,000 nodes): with small
# batches the last waiter waited for nearly every other node's next poll as
# well as for its answer. A batch this size answers a replica's share of
# 10,000 nodes over two (about 0.35 s of Python) before their next polls
# are read.
WAKE_BATCH = 5000
# And at most about this many bytes of answers per turn: a wake that owes
# every waiter a large answer (hundreds of upserts each, 640 MB at 5,000
# waiters) would otherwise hold the reactor for the whole fan-out, 20 s
# and more with TLS, while STUN, relayed frames and every other request
# wait. Well above an ordinary wake's (5,000 answers of a few upserts):
# at 8 MiB, splitting those too put 10,000-node propagation p99 at
# 2.1-2.6 s against 1.5-1.8 s unsplit (three runs each).
WAKE_BYTES = 64 * 1024 * 1024
# The same for wakes of chosen viewers (a policy change): their answers carry
# the peers they gained, often hundreds each, so fewer per turn let the first
# go out while the next are made.
VIEWER_WAKE_BATCH = 50
# A poll whose cursor is past this replica's serial (from a replica further
# along the change stream: a node that moved, or that joined at another)
# waits this long at most for this replica to read as far, checked this
# often. Answered from this replica's own serial at once, it would get again
# every change this replica had yet to read: at 10,000 nodes joining through
# two replicas, hundreds of upserts for each node. Still behind after this
# (its database unreachable), it is answered so.
CATCH_UP_WAIT = 5.0
CATCH_UP_CHECK = 0.1
# One node's changes wake the long-polls at most this often (LongPollHub.changed).
COALESCE_PER_NODE = 1.0
MAX_COALESCED = 100_000

# (shared answer, viewer, cursor) -> the viewer's own answer, or None when
# the shared one will do (nothing of its pairs changed).
ViewerAnswer = Callable[[dict, str, Cursor], "dict | None"]


class ChangeLog:
    """Serial numbers and which node changed at each."""

    def __init__(self, max_entries: int = 50_000, epoch: str | None = None, serial: int = 0, shared: bool = False):
        """``shared``: the serials are the cluster's (wire.server.cluster),
        recorded as the database's change stream reaches them, from ``serial``
        (what was loaded is as of then: an older cursor gets a snapshot)."""
        self.epoch = epoch or secrets.token_hex(6)
        self.serial = serial
        self.shared = shared
        self._max_entries = max_entries
        self._serials: list[int] = []
        self._node_ids: list[str] = []
        # The oldest serial whose successors are all still in the log.
        self._complete_after = serial

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.epoch, self.serial)

    def record(self, node_id: str, serial: int | None = None) -> int:
        """The next serial, or (shared) the cluster's ``serial`` of this change;
        several nodes may change at one serial (a router's primary moved)."""
        if serial is None:
            self.serial += 1
        elif serial < self.serial:
            raise ValueError(f"serial {serial} is before {self.serial}: the stream goes in order")
        else:
            self.serial = serial
        self._serials.append(self.serial)
        self._node_ids.append(node_id)
        if len(self._serials) > self._max_entries:
            # Trim half at once so trimming stays amortised O(1) per change.
            cut = len(self._serials) // 2
            self._complete_after = self._serials[cut - 1]
            del self._serials[:cut]
            del self._node_ids[:cut]
        return self.serial

    def reach(self, serial: int) -> None:
        """The cluster's ``serial`` was a change of no node (a join key): cursors move past it."""
        if serial < self.serial:
            raise ValueError(f"serial {serial} is before {self.serial}: the stream goes in order")
        self.serial = serial

    def advance(self) -> int:
        """The next serial, for a change that is no node's (a pair's path,
        :mod:`wire.server.pathbook`): cursors move past it, and
        :meth:`changed_since` finds no node changed at it.

        Shared, such changes stay this replica's (they are not in the
        cluster's stream): the serial a cursor carries must mean the same on
        every replica, so it does not move; the change is stamped with the
        next one, which every cursor held now is before."""
        if self.shared:
            return self.serial + 1
        self.serial += 1
        return self.serial

    def is_ahead(self, cursor: Cursor) -> bool:
        """Whether ``cursor`` is the cluster's, past what this replica has read
        of the stream so far: the node was at a replica ahead of this one."""
        return self.shared and cursor.epoch == self.epoch and cursor.serial > self.serial

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
    and what each costs counts: a waiter is a Deferred, its cursor and its
    viewer (and, when it names one, a place in that viewer's short list).
    Their waits end on one shared timer, in buckets of whole seconds (a
    wait ends up to a second late), and the waiters whose waits end
    together share one answer per cursor, as when a change wakes them.

    A poll may name its viewer (the node asking): ``viewer_answer`` then
    adds what changed of that node's own pairs, and :meth:`changed_for`
    wakes only the given viewers. A viewer with nothing of its own gets
    the shared answer.
    """

    def __init__(
        self,
        clock: IReactorTime,
        changes: ChangeLog,
        answer: Callable[[Cursor], dict],
        viewer_answer: ViewerAnswer | None = None,
    ):
        self._clock = clock
        self._changes = changes
        self._answer = answer
        self._viewer_answer = viewer_answer
        self._waiters: dict[Deferred, tuple[Cursor, str | None]] = {}
        self._by_viewer: dict[str, list[Deferred]] = {}  # only viewers waiting now
        self._due: dict[int, list[Deferred]] = {}  # second -> waiters whose wait ends then
        self._sweep_call: IDelayedCall | None = None
        self._sweep_at = 0
        self._wake_call: IDelayedCall | None = None
        self._woke_for: dict[str, float] = {}  # node id -> the wake that carries its latest change
        self._wake_viewers: set[str] = set()
        self._wake_viewers_call: IDelayedCall | None = None
        self._behind_key: tuple[Cursor, int] | None = None
        self._behind: dict = {}
        self._catching_up: dict[Deferred, _CatchingUp] = {}
        self._catch_up_call: IDelayedCall | None = None

    @property
    def open_count(self) -> int:
        return len(self._waiters) + len(self._catching_up)

    def waiting_viewers(self) -> list[str]:
        """The viewers with a poll waiting now."""
        return list(self._by_viewer)

    def poll(self, cursor: Cursor, wait: float, viewer: str | None = None) -> Deferred:
        """Fire with an answer now if anything changed, else when something does or ``wait`` ends."""
        if self._changes.is_ahead(cursor):
            if wait > 0:
                return self._catch_up(cursor, wait, viewer)
            # Answered from this replica's serial: what it reads next, the node hears again.
            cursor = self._changes.cursor
        if cursor != self._changes.cursor or wait <= 0:
            return succeed(self._answer_for(cursor, viewer, self._answers_behind()))
        waiter: Deferred = Deferred(self._forget)
        self._waiters[waiter] = (cursor, viewer)
        if viewer is not None:
            self._by_viewer.setdefault(viewer, []).append(waiter)
        due = math.ceil(self._clock.seconds() + min(wait, MAX_WAIT_SECONDS))
        self._due.setdefault(due, []).append(waiter)
        if self._sweep_call is None or due < self._sweep_at:
            self._schedule_sweep(due)
        return waiter

    def _catch_up(self, cursor: Cursor, wait: float, viewer: str | None) -> Deferred:
        """A poll from past this replica's serial: once this replica has read
        as far, a poll as any other (for what is left of its wait); if it
        has not within CATCH_UP_WAIT, answered from this replica's serial."""
        now = self._clock.seconds()
        ends_at = now + min(wait, MAX_WAIT_SECONDS)
        entry = _CatchingUp(cursor, viewer, ends_at, min(ends_at, now + CATCH_UP_WAIT))
        waiter: Deferred = Deferred(lambda d: self._stop_catching_up(d, entry))
        self._catching_up[waiter] = entry
        if self._catch_up_call is None:
            self._catch_up_call = self._clock.callLater(CATCH_UP_CHECK, self._check_catching_up)
        return waiter

    def _check_catching_up(self, give_up: bool = False) -> None:
        self._catch_up_call = None
        now = self._clock.seconds()
        for waiter, entry in list(self._catching_up.items()):
            caught_up = not self._changes.is_ahead(entry.cursor)
            if not (caught_up or give_up or now >= entry.gives_up_at):
                continue
            del self._catching_up[waiter]
            # Not caught up: a wait of 0, answered now.
            left = entry.ends_at - now if caught_up and not give_up else 0
            entry.poll = self.poll(entry.cursor, left, entry.viewer)
            entry.poll.addBoth(_pass_to, waiter)
        if self._catching_up and not give_up:
            self._catch_up_call = self._clock.callLater(CATCH_UP_CHECK, self._check_catching_up)

    def _stop_catching_up(self, waiter: Deferred, entry: _CatchingUp) -> None:
        """The canceller: the client went away, before or after this replica caught up."""
        self._catching_up.pop(waiter, None)
        if entry.poll is not None:
            entry.poll.cancel()
        if not self._catching_up and self._catch_up_call is not None and self._catch_up_call.active():
            self._catch_up_call.cancel()
            self._catch_up_call = None

    def _answers_behind(self) -> dict:
        """The answers to polls that are behind, shared by cursor while the
        netmap stands and within one second (views carry seconds since last
        seen). After a burst of changes every node asks again at once, from
        one of a few cursors: each of those answers is made and encoded
        once, not once per node (at 1,000 nodes re-registering together,
        a thousand 50 KB encodings kept the reactor from anything else)."""
        key = (self._changes.cursor, int(self._clock.seconds()))
        if key != self._behind_key:
            self._behind_key, self._behind = key, {}
        return self._behind

    def changed(self, node_id: str | None = None) -> None:
        """The serial moved; answer every waiter after this reactor turn.

        A change of ``node_id`` within COALESCE_PER_NODE of the last wake it
        caused waits for the end of that second (its waiters' answers then
        carry every change since their cursor): one node registering in a
        loop wakes the mesh at most once a second. Any other node's change
        wakes everyone at once, as before.
        """
        if not self._waiters:
            return
        now = self._clock.seconds()
        at = now
        if node_id is not None:
            if len(self._woke_for) > MAX_COALESCED:
                self._woke_for = {n: t for n, t in self._woke_for.items() if now - t < COALESCE_PER_NODE}
            last = self._woke_for.get(node_id)
            if last is not None and now - last < COALESCE_PER_NODE:
                at = last + COALESCE_PER_NODE
            self._woke_for[node_id] = at
        if self._wake_call is not None and self._wake_call.active():
            if self._wake_call.getTime() <= at:
                return
            self._wake_call.cancel()
        self._wake_call = self._clock.callLater(max(0.0, at - now), self._wake)

    def changed_for(self, viewers: Iterable[str]) -> None:
        """The serial moved for these viewers only (a pair's path): answer
        their waiters after this reactor turn, and no one else's."""
        for viewer in viewers:
            if viewer in self._by_viewer:
                self._wake_viewers.add(viewer)
        if self._wake_viewers and self._wake_viewers_call is None:
            self._wake_viewers_call = self._clock.callLater(0, self._wake_some)

    def close(self) -> None:
        """Answer every waiter now (the server is stopping)."""
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        if self._catch_up_call is not None and self._catch_up_call.active():
            self._catch_up_call.cancel()
        self._check_catching_up(give_up=True)
        self._wake(batch=None)

    def _wake(self, batch: int | None = WAKE_BATCH) -> None:
        self._wake_call = None
        if self._wake_viewers_call is not None and self._wake_viewers_call.active():
            self._wake_viewers_call.cancel()
        self._wake_viewers_call = None
        self._wake_viewers.clear()
        waiters, self._waiters = self._waiters, {}
        self._by_viewer = {}
        self._stop_sweeping()  # before answering: an answer may bring a new poll
        self._answer_all([(w, c, v) for w, (c, v) in waiters.items()], {}, batch=batch)

    def _wake_some(self) -> None:
        self._wake_viewers_call = None
        viewers, self._wake_viewers = self._wake_viewers, set()
        woken = []
        for viewer in viewers:
            for waiter in self._by_viewer.pop(viewer, ()):
                cursor, _ = self._waiters.pop(waiter)
                woken.append((waiter, cursor, viewer))
        if not self._waiters:
            self._stop_sweeping()  # before answering: an answer may bring a new poll
        self._answer_all(woken, {}, batch=VIEWER_WAKE_BATCH)

    def _answer_for(self, cursor: Cursor, viewer: str | None, answers: dict) -> dict:
        """The answer for one waiter: the one shared by its cursor, or (when
        its own pairs changed) a copy carrying them."""
        if cursor not in answers:
            answers[cursor] = SharedJson(self._answer(cursor))
        shared = answers[cursor]
        if viewer is None or self._viewer_answer is None:
            return shared
        own = self._viewer_answer(shared, viewer, cursor)
        return shared if own is None else own

    def _answer_all(self, waiters: list, answers: dict, start: int = 0, batch: int | None = None) -> None:
        """Answer ``waiters`` from ``start``, ``batch`` per reactor turn if
        given: the reactor sends the first answers while it makes the next,
        and the nodes read them meanwhile (at 10,000 waiters, making them
        all takes about a second)."""
        end = len(waiters) if batch is None else min(len(waiters), start + batch)
        written = 0
        for index in range(start, end):
            waiter, cursor, viewer = waiters[index]
            if waiter.called:
                continue  # cancelled while it waited its turn: the node went away
            try:
                answer = self._answer_for(cursor, viewer, answers)
            except Exception:
                # One viewer's answer that cannot be made must not stall the others'.
                log.failure("long-poll answer for {viewer} failed", viewer=viewer)
                waiter.errback()
                continue
            waiter.callback(answer)
            if batch is not None:
                written += _encoded_size(answers[cursor])
                if written >= WAKE_BYTES:
                    end = index + 1
                    break
        if end < len(waiters):
            self._clock.callLater(0, self._answer_all, waiters, answers, end, batch)

    def _forget(self, waiter: Deferred) -> None:
        """The canceller: the client went away."""
        _, viewer = self._waiters.pop(waiter, (None, None))
        self._unindex(waiter, viewer)
        if not self._waiters:
            self._stop_sweeping()

    def _unindex(self, waiter: Deferred, viewer: str | None) -> None:
        if viewer is None or viewer not in self._by_viewer:
            return
        waiting = self._by_viewer[viewer]
        if waiter in waiting:
            waiting.remove(waiter)
        if not waiting:
            del self._by_viewer[viewer]

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
                waiting = self._waiters.pop(waiter, None)
                if waiting is not None:  # else answered or cancelled already
                    self._unindex(waiter, waiting[1])
                    ended.append((waiter, *waiting))
        if self._due:
            self._schedule_sweep(min(self._due))
        self._answer_all(ended, {})


class _CatchingUp:
    """A poll waiting for this replica to read as far as its cursor."""

    __slots__ = ("cursor", "viewer", "ends_at", "gives_up_at", "poll")

    def __init__(self, cursor: Cursor, viewer: str | None, ends_at: float, gives_up_at: float):
        self.cursor = cursor
        self.viewer = viewer
        self.ends_at = ends_at
        self.gives_up_at = gives_up_at
        self.poll: Deferred | None = None  # the poll it became once caught up


def _pass_to(result: object, waiter: Deferred) -> None:
    """The poll's outcome to the waiter the node holds (unless that one was cancelled)."""
    if not waiter.called:
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)


def _encoded_size(shared: SharedJson) -> int:
    """The bytes of a shared answer, if a waiter has written it already
    (a stream writes its line as it is answered), else 0: the hub does not
    encode answers itself, nor does it wait for them to be."""
    return len(getattr(shared, "encoded", b""))
