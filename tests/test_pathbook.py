"""PathBook: the server's word on pairs, pure and driven by the times passed in."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.trial import unittest

from wire.protocol import Cursor, NatType, PairPath, PathFailure, PathMode
from wire.server.netmap import ChangeLog
from wire.server.pathbook import FORGET_AFTER, PathBook
from tests.helpers import settled

NO_PROOF, STOPPED = PathFailure.NO_PROOF, PathFailure.STOPPED
T0 = 1_000_000.0


@dataclass
class Facts:
    node_id: str
    public_ip: str = ""
    lan_ip: str = ""
    nat_type: NatType = NatType.EASY
    node_name: str = ""
    public_ip6: str = ""


def public(node_id: str, ip: str) -> Facts:
    return Facts(node_id, public_ip=ip, lan_ip="192.168.1.2")


class BookTestCase(unittest.TestCase):
    def setUp(self):
        self.changes = ChangeLog(epoch="e")
        self.fresh: dict[str, float] = {}
        self.book = PathBook(self.changes, lambda node_id: self.fresh.get(node_id, 0.0))
        self.heard: list[tuple[str, str, object]] = []
        self.book.on_change(lambda lo, hi, word: self.heard.append((lo, hi, word)))
        self.a, self.b, self.c = public("a", "198.51.100.1"), public("b", "203.0.113.2"), public("c", "192.0.2.3")

    def relay(self, now: float = T0, reporter=None, peer=None):
        answer = self.book.report(reporter or self.a, peer or self.b, NO_PROOF, now)
        self.assertTrue(answer.accepted)
        return answer


class ReportTests(BookTestCase):
    def test_a_no_proof_report_relays_the_pair_for_both(self):
        answer = self.relay()
        self.assertEqual(
            answer.path, PairPath("b", PathMode.RELAY, "no direct handshake within 15s", T0, 1, T0 + 60)
        )
        self.assertEqual(self.book.word("b", "a"), PairPath("a", PathMode.RELAY, answer.path.reason, T0, 1, T0 + 60))
        self.assertEqual(self.heard, [("a", "b", self.heard[0][2])])
        self.assertEqual((len(self.book), self.book.count(PathMode.RELAY)), (1, 1))

    def test_a_relayed_pair_refuses_more_reports_and_says_why(self):
        self.relay()
        for reporter, peer, failure in ((self.a, self.b, NO_PROOF), (self.b, self.a, STOPPED)):
            answer = self.book.report(reporter, peer, failure, T0 + 30)
            self.assertFalse(answer.accepted)
            self.assertEqual((answer.path.peer, answer.path.mode, answer.path.since), (peer.node_id, PathMode.RELAY, T0))

    def test_a_pair_the_rule_relays_is_never_reported(self):
        hard = Facts("h", public_ip="198.51.100.9", nat_type=NatType.HARD)
        for failure in PathFailure:
            answer = self.book.report(self.a, hard, failure, T0)
            self.assertFalse(answer.accepted)
            self.assertEqual(answer.path, PairPath("h", None))
        self.assertEqual((len(self.book), self.heard), (0, []))

    def test_a_lan_pair_may_be_relayed(self):
        a, b = public("a", "198.51.100.1"), public("b", "198.51.100.1")
        self.assertTrue(self.book.report(a, b, STOPPED, T0).accepted)

    def test_no_proof_must_wait_for_the_attempt_less_the_clock_slack(self):
        self.fresh["b"] = T0  # b came online (or changed) at T0: the attempt starts then
        self.assertFalse(self.book.report(self.a, self.b, NO_PROOF, T0 + 12.9).accepted)
        self.assertTrue(self.book.report(self.a, self.b, NO_PROOF, T0 + 13).accepted, "15 s less 2 s of slack")

    def test_stopped_needs_no_wait(self):
        self.fresh["a"] = T0
        answer = self.book.report(self.a, self.b, STOPPED, T0 + 1)
        self.assertTrue(answer.accepted)
        self.assertEqual((answer.path.reason, answer.path.tries), ("the direct path stopped working", 1))

    def test_a_retry_has_five_seconds_less_slack(self):
        self.relay()
        self.book.tick(T0 + 60)
        self.assertFalse(self.book.report(self.a, self.b, NO_PROOF, T0 + 62.9).accepted)
        answer = self.book.report(self.b, self.a, NO_PROOF, T0 + 63)
        self.assertTrue(answer.accepted)
        self.assertEqual(answer.path, PairPath("a", PathMode.RELAY, "direct retry 1 failed", T0 + 63, 2, T0 + 63 + 120))

    def test_the_book_is_bounded(self):
        book = PathBook(ChangeLog(epoch="e"), max_words=1)
        self.assertTrue(book.report(self.a, self.b, STOPPED, T0).accepted)
        self.assertFalse(book.report(self.a, self.c, STOPPED, T0).accepted, "full: no new relayed pair")
        self.assertEqual(len(book), 1)


class TickTests(BookTestCase):
    def test_backoff_doubles_to_half_an_hour(self):
        now, delays = T0, []
        self.relay(now)
        for retry in range(1, 9):
            word = self.book.word("a", "b")
            delays.append(word.retry_at - word.since)
            self.book.tick(word.retry_at - 0.5)
            self.assertEqual(self.book.word("a", "b").mode, PathMode.RELAY, "not before its time")
            now = word.retry_at
            self.assertEqual(self.book.tick(now), 1)
            for viewer, peer in (("a", "b"), ("b", "a")):
                self.assertEqual(
                    self.book.word(viewer, peer),
                    PairPath(peer, PathMode.DIRECT, f"trying direct again (retry {retry})", now, retry),
                    "both sides try direct at once",
                )
            now += 5
            self.assertTrue(self.book.report(self.a, self.b, NO_PROOF, now).accepted)
        self.assertEqual(delays, [60, 120, 240, 480, 960, 1800, 1800, 1800])

    def test_a_retry_goes_to_lan_when_the_rule_says_so(self):
        self.relay()
        self.book.tick(T0 + 60, rule=lambda lo, hi: PathMode.LAN)
        self.assertEqual(self.book.word("a", "b").mode, PathMode.LAN)

    def test_a_retry_the_rule_now_relays_is_dropped(self):
        self.relay()
        self.book.tick(T0 + 60, rule=lambda lo, hi: PathMode.RELAY)
        self.assertIsNone(self.book.word("a", "b"))

    def test_a_direct_word_that_nobody_reports_is_forgotten(self):
        self.relay()
        self.book.tick(T0 + 60)
        self.book.tick(T0 + 60 + FORGET_AFTER - 1)
        self.assertEqual(self.book.word("a", "b").mode, PathMode.DIRECT)
        self.assertEqual(self.book.tick(T0 + 60 + FORGET_AFTER), 1)
        self.assertIsNone(self.book.word("a", "b"))
        self.assertEqual(self.heard[-1], ("a", "b", None))
        self.assertEqual(self.book.changes_for("b", Cursor("e", self.changes.serial - 1)), ([PairPath("a", None)], False))

    def test_tick_skips_times_of_words_that_changed(self):
        self.relay()
        self.book.forget_node("a", T0 + 1)
        self.relay(T0 + 2)
        self.assertEqual(self.book.tick(T0 + 61), 0, "the first word's retry is stale")
        self.assertEqual(self.book.tick(T0 + 62), 1)


class ForgetTests(BookTestCase):
    def test_forgetting_a_node_drops_its_words_for_both_sides(self):
        self.relay()
        self.relay(reporter=self.c, peer=self.a)
        self.relay(reporter=self.b, peer=self.c)
        before = self.changes.serial
        self.assertEqual(self.book.forget_node("a", T0 + 5), 2)
        self.assertIsNone(self.book.word("b", "a"))
        self.assertIsNone(self.book.word("c", "a"))
        self.assertEqual(self.book.word("b", "c").mode, PathMode.RELAY)
        self.assertEqual(self.changes.serial, before + 2, "each drop is announced")
        self.assertEqual(self.book.changes_for("b", Cursor("e", before)), ([PairPath("a", None)], False))
        self.assertEqual(self.book.forget_node("a", T0 + 6), 0)
        self.assertEqual(self.book.forget_node("nobody", T0 + 6), 0)


class ChangesForTests(BookTestCase):
    def test_a_viewer_without_words_costs_nothing(self):
        self.assertEqual(self.book.changes_for("z", Cursor("e", 0)), ([], True))
        self.changes.record("z")
        self.assertEqual(self.book.changes_for("z", Cursor("e", 1)), ([], False))
        self.relay()
        self.assertEqual(self.book.changes_for("z", Cursor("e", 1)), ([], False))
        self.assertNotIn("z", self.book._viewers)

    def test_deltas_hold_only_what_changed_after_the_cursor(self):
        self.relay()
        cursor = self.changes.cursor
        self.assertEqual(self.book.changes_for("a", cursor), ([], False))
        self.book.report(self.c, self.a, STOPPED, T0 + 1)
        paths, complete = self.book.changes_for("a", cursor)
        self.assertEqual(([p.peer for p in paths], complete), (["c"], False))
        self.assertEqual([p.peer for p in self.book.changes_for("c", cursor)[0]], ["a"])
        self.assertEqual(self.book.changes_for("b", cursor), ([], False))

    def test_complete_sets_for_another_epoch_serial_zero_or_the_future(self):
        self.relay()
        self.relay(reporter=self.c, peer=self.a)
        for cursor in (Cursor("other", 2), Cursor("e", 0), Cursor("e", 99)):
            paths, complete = self.book.changes_for("a", cursor)
            self.assertEqual((sorted(p.peer for p in paths), complete), (["b", "c"], True))

    def test_an_old_cursor_gets_the_complete_set_once_tombstones_are_pruned(self):
        book = PathBook(self.changes, tombstone_keep=100)
        book.report(self.a, self.b, STOPPED, T0)
        book.report(self.a, self.c, STOPPED, T0)
        old = self.changes.cursor
        book.forget_node("b", T0 + 1)
        self.assertEqual(book.changes_for("a", old), ([PairPath("b", None)], False))
        book.tick(T0 + 50)
        self.assertEqual(book.changes_for("a", old), ([PairPath("b", None)], False), "kept a while")
        book.tick(T0 + 101)
        paths, complete = book.changes_for("a", old)
        self.assertEqual(([p.peer for p in paths], complete), (["c"], True))
        # b has no entries left, and its horizon lives on in the book's.
        self.assertNotIn("b", book._viewers)
        self.assertEqual(book.changes_for("b", old), ([], True))
        self.assertEqual(book.changes_for("b", self.changes.cursor), ([], False))

    def test_tombstones_are_bounded(self):
        book = PathBook(self.changes, max_tombstones=2)
        for i in range(10):
            peer = public(f"p{i}", f"192.0.2.{10 + i}")
            book.report(self.a, peer, STOPPED, T0)
            book.forget_node(peer.node_id, T0)
        book.tick(T0)
        self.assertEqual(len(book._tombstones), 2)
        self.assertEqual(len(book._viewers["a"].entries), 2)


class CoordinatorPathTests(unittest.TestCase):
    """The book inside the coordinator: the registry forgets words, the store keeps them."""

    def setUp(self):
        from tests.helpers import make_coordinator

        self.make_coordinator = make_coordinator
        self.coordinator = make_coordinator(self, offline_after=90)
        self.clock = self.coordinator.clock
        self.registry = self.coordinator.registry
        self.web, self.db, self.app = (self.register(name) for name in ("web1", "db1", "app1"))

    def register(self, name, ip="198.51.100.7", **fields):
        from tests.helpers import registration_for

        fields.setdefault("nat_type", "easy")
        record = self.registry.register(registration_for(name, **fields), ip, self.clock.seconds()).record
        self.coordinator.store.write_pending()
        return record

    def report(self, reporter, peer, failure=STOPPED):
        from wire.protocol import PathReport

        d = self.coordinator.report_path(PathReport(reporter.node_id, reporter.wg_public_key, peer.node_id, failure))
        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(d)
        self.clock.advance(0)  # the group commit
        return self.successResultOf(d)

    def word(self, a, b):
        return self.coordinator.paths.word(a.node_id, b.node_id)

    def test_a_facts_change_forgets_the_nodes_words(self):
        self.report(self.web, self.db)
        self.report(self.app, self.db)
        serial = self.registry.changes.serial
        self.register("db1", nat_port=40001)
        self.assertIsNone(self.word(self.web, self.db))
        self.assertIsNone(self.word(self.app, self.db))
        self.assertEqual(self.registry.changed_at(self.db.node_id), self.clock.seconds())
        from wire.protocol import Cursor

        self.assertEqual(
            self.coordinator.paths.changes_for(self.web.node_id, Cursor(self.registry.changes.epoch, serial)),
            ([PairPath(self.db.node_id, None)], False),
        )

    def test_a_name_or_a_heartbeat_changes_no_path(self):
        self.report(self.web, self.db)
        self.registry.rename(self.db.node_id, "db2")
        self.register("web1")  # a heartbeat
        self.assertEqual(self.word(self.web, self.db).mode, PathMode.RELAY)

    def test_coming_back_online_forgets_the_nodes_words(self):
        self.report(self.web, self.db)
        self.clock.advance(91)
        self.register("web1")
        self.coordinator.sweep()
        self.assertFalse(self.registry.is_online(self.db.node_id))
        self.assertIsNotNone(self.word(self.web, self.db), "offline alone forgets nothing (the retry came meanwhile)")
        self.registry.seen(self.db.node_id, self.clock.seconds())
        self.assertIsNone(self.word(self.web, self.db))

    def test_a_removed_node_takes_its_words(self):
        self.report(self.web, self.db)
        self.registry.remove(self.db.node_id)
        self.assertIsNone(self.word(self.web, self.db))
        self.assertEqual(len(self.coordinator.paths), 0)

    def test_a_no_proof_report_right_after_a_change_is_refused(self):
        self.register("db1", nat_port=40001)
        self.clock.advance(5)
        self.assertFalse(self.report(self.web, self.db, NO_PROOF).accepted)
        self.clock.advance(10)
        self.assertTrue(self.report(self.web, self.db, NO_PROOF).accepted)

    def test_the_sweep_retries_direct(self):
        self.report(self.web, self.db)
        self.clock.advance(60)
        self.coordinator.sweep()
        self.assertEqual(self.word(self.db, self.web).mode, PathMode.DIRECT)

    def reopen(self) -> "object":
        """A second server on the same data dir; the first was never closed (as after kill -9)."""
        from wire.addressing import AddressPool
        from wire.server.coordinator import Coordinator
        from wire.server.registry import Registry
        from wire.server.store import open_store

        store = open_store(self.coordinator.data_dir, self.clock)
        self.addCleanup(store.close)
        registry = Registry(store, AddressPool(self.registry.pool.network))
        registry.load(store.load(), self.clock.seconds())
        return Coordinator(self.clock, store, registry)

    def test_words_survive_a_restart_without_a_clean_close(self):
        answer = self.report(self.web, self.db)
        again = self.reopen()
        self.assertEqual(again.paths.word(self.web.node_id, self.db.node_id), answer.path.__class__(
            self.db.node_id, PathMode.RELAY, answer.path.reason, answer.path.since, 1, answer.path.retry_at))
        # A new run, a new epoch: every node gets its complete set.
        from wire.protocol import Cursor

        paths, complete = again.paths.changes_for(self.db.node_id, Cursor(self.registry.changes.epoch, 5))
        self.assertEqual(([p.peer for p in paths], complete), ([self.web.node_id], True))

    def test_an_overdue_retry_happens_on_the_first_tick_after_a_restart(self):
        self.report(self.web, self.db)
        self.clock.advance(600)  # the server was down meanwhile
        self.register("web1")
        self.register("db1")
        again = self.reopen()
        again.sweep()
        self.assertEqual(again.paths.word(self.web.node_id, self.db.node_id).mode, PathMode.DIRECT)

    def test_words_of_nodes_gone_are_dropped_at_load(self):
        from wire.server.model import PairWord

        self.report(self.web, self.db)
        self.coordinator.store.put_pair("gone", self.web.node_id, PairWord(PathMode.RELAY, "x", 1.0, 1, 2.0))
        self.coordinator.store.write_pending()
        again = self.reopen()
        self.assertEqual(len(again.paths), 1)
        self.assertEqual(len(again.store.load_pairs()), 1, "and deleted from the database")

    def test_words_in_the_netmap_answer(self):
        from wire.protocol import NetmapAnswer

        cursor = str(self.registry.changes.cursor)
        self.report(self.web, self.db)
        for viewer, peer in ((self.web, self.db), (self.db, self.web)):
            answer = NetmapAnswer.from_json(self.successResultOf(self.coordinator.netmap(cursor, 0, viewer=viewer.node_id)))
            self.assertEqual(([p.peer for p in answer.paths], answer.paths_full), ([peer.node_id], False))
        plain = self.successResultOf(self.coordinator.netmap(cursor, 0, viewer=self.app.node_id))
        self.assertNotIn("paths", plain)
        full = self.successResultOf(self.coordinator.netmap("0", 0, viewer=self.web.node_id))
        self.assertEqual((full["full"], full["paths_full"], len(full["paths"])), (True, True, 1))
        self.assertNotIn("paths", self.successResultOf(self.coordinator.netmap("0", 0, viewer=self.app.node_id)))

    def test_metrics(self):
        from wire.server.metrics import exposition

        self.report(self.web, self.db)
        self.report(self.web, self.db)
        text = exposition(self.coordinator.metrics).decode()
        self.assertIn('wire_pair_paths{mode="relay"} 1.0', text)
        self.assertIn('wire_path_reports_total{failure="stopped",outcome="accepted"} 1.0', text)
        self.assertIn('wire_path_reports_total{failure="stopped",outcome="refused"} 1.0', text)


class SchemaTests(unittest.TestCase):
    def test_a_schema_2_database_gains_the_pair_table(self):
        import os
        import sqlite3

        from twisted.internet.task import Clock

        from wire.server.store import SCHEMA_VERSION, open_store

        data_dir = self.mktemp()
        store = open_store(data_dir, Clock())
        settled(store.close())
        path = os.path.join(data_dir, "registry.sqlite3")
        db = sqlite3.connect(path)
        db.execute("DROP TABLE pair_paths")
        db.execute("PRAGMA user_version = 2")
        db.commit()
        db.close()
        store = open_store(data_dir, Clock())
        self.addCleanup(store.close)
        self.assertEqual(store.load_pairs(), [])
        self.assertEqual(settled(store.query("PRAGMA user_version"))[0][0], SCHEMA_VERSION)
        self.assertEqual(SCHEMA_VERSION, 13)


class ScaleTests(unittest.TestCase):
    def test_ten_thousand_viewers_without_words_share_one_answer(self):
        from tests.helpers import make_coordinator

        coordinator = make_coordinator(self)
        cursor = coordinator.registry.changes.cursor
        hub = coordinator.longpolls
        polls = [hub.poll(cursor, 30, viewer=f"n{i}") for i in range(10_000)]
        coordinator.paths.report(Facts("n1", "198.51.100.1"), Facts("n2", "203.0.113.2"), STOPPED, 1.0)
        coordinator.clock.advance(0)
        self.assertEqual(sum(d.called for d in polls), 2, "a pair's word wakes its two nodes only")
        coordinator.registry.changes.record("x")
        hub.changed()
        for _ in range(30):
            coordinator.clock.advance(0)  # a batch per turn
        answers = [self.successResultOf(d) for d in polls]
        shared = answers[0]
        self.assertTrue(all(a is shared for i, a in enumerate(answers) if i not in (1, 2)))
        self.assertEqual(len(coordinator.paths._viewers), 2, "nothing kept for nodes without words")
