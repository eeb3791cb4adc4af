"""The server's word on pairs of nodes: one path for both, decided once.

The two nodes of a pair each apply :func:`~wire.protocol.paths.pair_rule`
to the same facts, so they agree by construction. What the facts cannot
tell — a direct attempt that failed — is decided here, once for the pair,
and the same word reaches both nodes in their netmap long-polls:

- a node reports a failure (``POST /path``); if the pair was meant to be
  direct and the attempt had its full time, the pair is relayed, and
  :meth:`PathBook.tick` tries direct again after
  :func:`~wire.protocol.paths.retry_delay`, for both nodes at once;
- when either node's facts change, or it comes back online, or it is
  removed, the pair's word is forgotten: both go back to the rule.

Everything here is pure and driven by the times passed in, so it is tested
without a reactor. Memory is O(words + recent tombstones): a node without a
word costs nothing, and a netmap answer for it costs one dict lookup.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Callable, Iterable

from twisted.logger import Logger

from wire.protocol import Cursor, PairPath, PathFailure, PathMode, PathReportAnswer
from wire.protocol.paths import (
    CLOCK_SLACK,
    DIRECT_MODES,
    PairFacts,
    after_failure,
    attempt_timeout,
    ipv4_rule,
    over_ipv6,
    pair_rule,
    retry_delay,
    retry_reason,
)
from wire.server.model import PairWord, pair_key
from wire.server.netmap import ChangeLog

# A direct word that nobody reported failing for this long is dropped: the
# rule says direct as well, and the pair forgets its backoff.
FORGET_AFTER = 3600.0
# A dropped word leaves a tombstone, so a viewer's delta can say "forget
# it"; a viewer whose cursor is older than the tombstones kept gets its
# complete set of words instead.
TOMBSTONE_KEEP = 600.0
MAX_TOMBSTONES = 100_000
MAX_WORDS = 200_000


Listener = Callable[[str, str, "PairWord | None"], None]


class _Viewer:
    """One node's side of its words: the latest change to each pair, by peer."""

    __slots__ = ("entries", "horizon")

    def __init__(self, horizon: int):
        self.entries: dict[str, tuple[int, PairWord | None]] = {}  # peer -> (serial, word or tombstone)
        # A cursor older than this serial missed a tombstone that is gone.
        self.horizon = horizon


class PathBook:
    """The pair words, their retry and forget times, and who must hear of each change."""

    log = Logger()

    def __init__(
        self,
        changes: ChangeLog,
        changed_at: Callable[[str], float] = lambda node_id: 0.0,
        *,
        max_words: int = MAX_WORDS,
        tombstone_keep: float = TOMBSTONE_KEEP,
        max_tombstones: int = MAX_TOMBSTONES,
    ):
        self._changes = changes
        # When a node's facts last changed or it came online (Registry.changed_at).
        self._changed_at = changed_at
        self._max_words = max_words
        self._tombstone_keep = tombstone_keep
        self._max_tombstones = max_tombstones
        self._words: dict[tuple[str, str], PairWord] = {}
        self._viewers: dict[str, _Viewer] = {}
        # (when, lo, hi): a retry or forget time; stale entries are skipped
        # when they come up (the word changed since), so tick is O(due).
        self._due: list[tuple[float, str, str]] = []
        self._tombstones: deque[tuple[float, int, str, str]] = deque()  # (dropped at, serial, lo, hi)
        self._horizon = 0  # the newest serial of any pruned tombstone
        self._counts: dict[PathMode, int] = {}
        self._listeners: list[Listener] = []
        self._full_logged = False

    # -- queries -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._words)

    def count(self, mode: PathMode) -> int:
        return self._counts.get(mode, 0)

    def word(self, a: str, b: str) -> PairPath | None:
        """The word on (a, b) as ``a`` is told it, or None."""
        word = self._words.get(pair_key(a, b))
        return None if word is None else word.seen_from(b)

    def words_of(self, viewer: str) -> list[PairPath]:
        """Every current word on ``viewer``'s pairs."""
        seen = self._viewers.get(viewer)
        if seen is None:
            return []
        return [word.seen_from(peer) for peer, (_, word) in seen.entries.items() if word is not None]

    def changes_for(self, viewer: str, cursor: Cursor) -> tuple[list[PairPath], bool]:
        """What ``viewer`` holding ``cursor`` must learn: the words changed
        after it (a dropped word as mode None), or with True, every word it
        has (the cursor is from another run, empty, or older than what the
        book remembers of its drops)."""
        seen = self._viewers.get(viewer)
        horizon = self._horizon if seen is None else seen.horizon
        if (
            cursor.serial == 0
            or cursor.epoch != self._changes.epoch
            or cursor.serial > self._changes.serial
            or cursor.serial < horizon
        ):
            return self.words_of(viewer), True
        if seen is None:
            return [], False
        return [
            PairPath(peer, None) if word is None else word.seen_from(peer)
            for peer, (serial, word) in seen.entries.items()
            if serial > cursor.serial
        ], False

    # -- changes -----------------------------------------------------------

    def on_change(self, listener: Listener) -> None:
        """``listener(lo, hi, word)`` hears of every change (None: dropped)."""
        self._listeners.append(listener)

    def load(self, words: Iterable[tuple[str, str, PairWord]], known: Callable[[str], bool]) -> list[tuple[str, str]]:
        """Adopt stored words, without announcing them (every cursor is from
        the previous run, so every node gets its complete set). Returns the
        pairs dropped because a node is no longer in the registry."""
        dropped = []
        for lo, hi, word in words:
            if lo == hi or not (known(lo) and known(hi)):
                dropped.append((lo, hi))
                continue
            self._put(lo, hi, word, serial=0)
        return dropped

    def report(self, reporter: PairFacts, peer: PairFacts, failure: PathFailure, now: float) -> PathReportAnswer:
        """A node's direct path to ``peer`` failed: relay the pair, if the report stands."""
        key = pair_key(reporter.node_id, peer.node_id)
        word = self._words.get(key)
        current = word.seen_from(peer.node_id) if word is not None else PairPath(peer.node_id, None)
        mode = word.mode if word is not None else pair_rule(reporter, peer)[0]
        if mode not in DIRECT_MODES:
            return PathReportAnswer(False, current)  # relayed already, by word or by rule
        if failure is PathFailure.NO_PROOF:
            basis = max(
                word.since if word is not None else 0.0,
                self._changed_at(reporter.node_id),
                self._changed_at(peer.node_id),
            )
            if now - basis < attempt_timeout(current if word is not None else None) - CLOCK_SLACK:
                return PathReportAnswer(False, current)  # the attempt has not had its time
        if word is None and len(self._words) >= self._max_words:
            if not self._full_logged:
                self._full_logged = True
                self.log.warn("path book full ({count} pair words): refusing new relayed pairs", count=len(self._words))
            return PathReportAnswer(False, current)
        if mode is PathMode.DIRECT and over_ipv6(reporter, peer) and (word is None or word.family != 4):
            # IPv6 failed: IPv4 next, direct where its rule allows, before the relay.
            if ipv4_rule(reporter, peer)[0] is PathMode.DIRECT:
                tries = word.tries if word is not None else 0
                over4 = PairWord(PathMode.DIRECT, f"IPv6 {_failed(failure)}: trying IPv4", now, tries, family=4)
                self._set(*key, over4, now)
                return PathReportAnswer(True, over4.seen_from(peer.node_id))
        tries, reason = after_failure(failure, word.tries if word is not None else 0)
        relayed = PairWord(PathMode.RELAY, reason, now, tries, now + retry_delay(tries))
        self._set(*key, relayed, now)
        return PathReportAnswer(True, relayed.seen_from(peer.node_id))

    def tick(self, now: float, rule: Callable[[str, str], PathMode | None] | None = None) -> int:
        """Retries and drops that are due: relayed pairs go direct again
        (LAN, if ``rule`` says so; dropped if it now says relay), direct
        words past FORGET_AFTER are dropped. Returns how many changed."""
        changed = 0
        while self._due and self._due[0][0] <= now:
            at, lo, hi = heapq.heappop(self._due)
            word = self._words.get((lo, hi))
            if word is None or _due_at(word) != at:
                continue  # changed or dropped since this time was set
            changed += 1
            if word.mode is not PathMode.RELAY:
                self._set(lo, hi, None, now)
                continue
            mode = PathMode.DIRECT if rule is None else rule(lo, hi)
            if mode not in DIRECT_MODES:
                self._set(lo, hi, None, now)  # the rule relays it anyway (or a node is gone)
                continue
            self._set(lo, hi, PairWord(mode, retry_reason(word.tries), now, word.tries), now)
        self._prune(now)
        if len(self._due) > 2 * len(self._words) + 1000:
            self._due = [(_due_at(w), lo, hi) for (lo, hi), w in self._words.items()]
            heapq.heapify(self._due)
        return changed

    def forget_node(self, node_id: str, now: float) -> int:
        """Drop every word on ``node_id``'s pairs (its facts changed, it came
        back online, or it is gone), telling both sides. Returns how many."""
        seen = self._viewers.get(node_id)
        if seen is None:
            return 0
        peers = [peer for peer, (_, word) in seen.entries.items() if word is not None]
        for peer in peers:
            self._set(*pair_key(node_id, peer), None, now)
        return len(peers)

    # -- internals ---------------------------------------------------------

    def _set(self, lo: str, hi: str, word: PairWord | None, now: float) -> None:
        """The one way a word changes: stored, given the next serial, noted
        for both viewers, and announced."""
        if word is None and (lo, hi) not in self._words:
            return
        serial = self._changes.advance()
        self._put(lo, hi, word, serial)
        if word is None:
            self._tombstones.append((now, serial, lo, hi))
        for listener in self._listeners:
            listener(lo, hi, word)

    def _put(self, lo: str, hi: str, word: PairWord | None, serial: int) -> None:
        old = self._words.pop((lo, hi), None)
        if old is not None:
            self._counts[old.mode] -= 1
        if word is not None:
            self._words[(lo, hi)] = word
            self._counts[word.mode] = self._counts.get(word.mode, 0) + 1
            heapq.heappush(self._due, (_due_at(word), lo, hi))
        if len(self._words) < self._max_words:
            self._full_logged = False
        for viewer, peer in ((lo, hi), (hi, lo)):
            seen = self._viewers.get(viewer)
            if seen is None:
                seen = self._viewers[viewer] = _Viewer(self._horizon)
            seen.entries[peer] = (serial, word)

    def _prune(self, now: float) -> None:
        """Forget tombstones past their time (or beyond the bound), moving
        their viewers' horizons past them."""
        old_before = now - self._tombstone_keep
        while self._tombstones and (
            self._tombstones[0][0] <= old_before or len(self._tombstones) > self._max_tombstones
        ):
            _, serial, lo, hi = self._tombstones.popleft()
            self._horizon = max(self._horizon, serial)
            for viewer, peer in ((lo, hi), (hi, lo)):
                seen = self._viewers.get(viewer)
                if seen is None:
                    continue
                seen.horizon = max(seen.horizon, serial)
                entry = seen.entries.get(peer)
                if entry is not None and entry == (serial, None):
                    del seen.entries[peer]
                    if not seen.entries:
                        # Its horizon lives on in the book's, which is no older.
                        del self._viewers[viewer]


def _due_at(word: PairWord) -> float:
    """When a word is next looked at: its retry, or when it is forgotten.
    An IPv4 word stays while the facts do (they reset it): forgetting it
    would send the pair back to the IPv6 path that failed, and stall it."""
    if word.mode is PathMode.RELAY and word.retry_at is not None:
        return word.retry_at
    if word.family == 4:
        return float("inf")
    return word.since + FORGET_AFTER


def _failed(failure: PathFailure) -> str:
    return "gave no handshake" if failure is PathFailure.NO_PROOF else "stopped working"
