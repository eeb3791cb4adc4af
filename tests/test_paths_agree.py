"""Two nodes' planners and the server's path book on one fake clock: a pair
blocked, retried, healed, with the server's words reaching each node at its
own moment. Whatever the moments, the two agree once both have heard."""

from twisted.trial import unittest

from tests.test_paths import DB1, WEB1, Side
from wire.protocol import Cursor, PathMode
from wire.protocol.paths import DIRECT_TIMEOUT, FIRST_RETRY, RETRY_TIMEOUT
from wire.server.netmap import ChangeLog
from wire.server.pathbook import PathBook


class Pair:
    """web1 and db1, each with its planner; the server's book between them."""

    def __init__(self, delay_a: float, delay_b: float):
        self.changes = ChangeLog(epoch="e")
        self.book = PathBook(self.changes)
        self.a, self.b = Side(WEB1, DB1), Side(DB1, WEB1)
        self.delays = {id(self.a): delay_a, id(self.b): delay_b}
        self.cursors = {id(self.a): Cursor("e", 0), id(self.b): Cursor("e", 0)}
        self.inbox: list[tuple[float, Side, list]] = []
        self.blocked = True
        self.reports: list[tuple[str, str, bool]] = []

    def sides(self):
        return (self.a, self.b)

    def step(self, now: float) -> None:
        """One second of the world: traffic, plans, reports, words on their way."""
        for side in self.sides():
            path = side.planner.paths.get(side.peer.node_id)
            if path is not None and (path.mode is PathMode.RELAY or not self.blocked):
                side.rx += 100  # the relay always carries the peer's packets; the direct path once unblocked
            plan = side.plan(now)
            for peer_id, failure in plan.reports:
                answer = self.book.report(side.me, side.peer, failure, now)
                side.planner.reported(peer_id, answer.accepted, now)
                self.reports.append((side.me.node_name, str(failure), answer.accepted))
        self.book.tick(now)
        for side in self.sides():
            words, _ = self.book.changes_for(side.me.node_id, self.cursors[id(side)])
            self.cursors[id(side)] = self.changes.cursor
            if words:
                self.inbox.append((now + self.delays[id(side)], side, words))
        for due, side, words in list(self.inbox):
            if due <= now:
                self.inbox.remove((due, side, words))
                for word in words:
                    if word.mode is None:
                        side.words.pop(word.peer, None)
                    else:
                        side.words[word.peer] = word

    def modes(self) -> tuple[PathMode, PathMode]:
        return self.a.path().mode, self.b.path().mode


class PlannersAndBookTests(unittest.TestCase):
    def run_day(self, delay_a: float, delay_b: float) -> Pair:
        pair = Pair(delay_a, delay_b)
        delivery = max(delay_a, delay_b) + 1
        history = []
        for t in range(0, 400):
            if t == 150:
                pair.blocked = False  # the block is lifted during the second relay spell
            pair.step(float(t))
            history.append((t, pair.modes()))
        # Agreement: the sides differ only while a word is on its way.
        disagreeing = [t for t, (a, b) in history if a != b]
        for t in disagreeing:
            self.assertTrue(
                any(abs(t - c) <= delivery for c in self.change_times(history)),
                f"delays {delay_a}/{delay_b}: split at {t}s with no word on its way",
            )
        return pair

    @staticmethod
    def change_times(history) -> list[int]:
        return [t for (t, m), (_, previous) in zip(history[1:], history) if m != previous]

    def test_blocked_relayed_retried_and_healed_whatever_the_delays(self):
        for delays in [(0, 0), (0, 2), (2, 0), (0.5, 4), (4, 0.5)]:
            pair = self.run_day(*delays)
            # First attempt: no proof within 15 s, relayed; retry 1 at +60 s fails
            # within the retry timeout; retry 2 (2 minutes later) finds the lifted block.
            accepted = [r for r in pair.reports if r[2]]
            self.assertEqual([r[1] for r in accepted], ["no-proof", "no-proof"], f"delays {delays}: {pair.reports}")
            self.assertEqual(pair.modes(), (PathMode.DIRECT, PathMode.DIRECT), f"delays {delays}: healed")
            word = pair.book.word(WEB1.node_id, DB1.node_id)
            self.assertEqual((word.mode, word.tries), (PathMode.DIRECT, 2), "the retry that worked")

    def test_the_timeline(self):
        pair = Pair(0, 1)
        modes = {}
        for t in range(0, 260):
            if t == 150:
                pair.blocked = False
            pair.step(float(t))
            modes[t] = pair.modes()
        first_relay = min(t for t, m in modes.items() if m == (PathMode.RELAY, PathMode.RELAY))
        self.assertLessEqual(first_relay, DIRECT_TIMEOUT + 2)
        retry = min(t for t, m in modes.items() if t > first_relay and m[0] is PathMode.DIRECT)
        self.assertLessEqual(abs(retry - (first_relay + FIRST_RETRY)), 2)
        back = min(t for t, m in modes.items() if t > retry and m == (PathMode.RELAY, PathMode.RELAY))
        self.assertLessEqual(back - retry, RETRY_TIMEOUT + 2, "a failed retry costs its timeout")
        healed = min(t for t, m in modes.items() if t > back and m == (PathMode.DIRECT, PathMode.DIRECT))
        self.assertLessEqual(abs(healed - (back + 2 * FIRST_RETRY)), 2)
        self.assertTrue(all(m == (PathMode.DIRECT, PathMode.DIRECT) for t, m in modes.items() if t > healed + 2))
