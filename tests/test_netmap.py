import math

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fakes import TurnClock
from wire.protocol import Cursor, ProtocolError, parse_cursor
from wire.server.netmap import CATCH_UP_CHECK, CATCH_UP_WAIT, WAKE_BATCH, WAKE_BYTES, ChangeLog, LongPollHub
from wire.web import encode_json


class ChangeLogTests(unittest.TestCase):
    def test_changed_since(self):
        log = ChangeLog(epoch="e1")
        for node in "abcab":
            log.record(node)
        self.assertEqual(log.changed_since(Cursor("e1", 3)), {"a", "b"})
        self.assertEqual(log.changed_since(Cursor("e1", 5)), set())
        self.assertIsNone(log.changed_since(Cursor("e2", 5)))
        self.assertIsNone(log.changed_since(Cursor("e1", 6)))
        self.assertIsNone(log.changed_since(Cursor("e1", 0)), "serial 0 asks for a snapshot")

    def test_trimmed_log_forces_snapshot_for_old_cursors(self):
        log = ChangeLog(max_entries=10, epoch="e")
        for i in range(25):
            log.record(f"n{i}")
        self.assertIsNone(log.changed_since(Cursor("e", 1)))
        self.assertEqual(log.changed_since(Cursor("e", 24)), {"n24"})

    def test_parse_cursor(self):
        self.assertEqual(parse_cursor("abc123:42", "x"), Cursor("abc123", 42))
        self.assertEqual(parse_cursor("42", "cur"), Cursor("cur", 42))
        for bad in ("", "x", "a:b", "e:-1", "e e:1", "a:" + "9" * 30):
            self.assertRaises(ProtocolError, parse_cursor, bad, "cur")


class LongPollHubTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.log = ChangeLog(epoch="e")
        self.answers = []
        self.hub = LongPollHub(self.clock, self.log, self.answer)

    def answer(self, cursor):
        self.answers.append(cursor)
        return {"since": str(cursor), "now": str(self.log.cursor)}

    def test_behind_answers_at_once(self):
        self.log.record("a")
        d = self.hub.poll(Cursor("e", 0), wait=30)
        self.assertEqual(self.successResultOf(d)["now"], "e:1")

    def test_polls_behind_share_an_answer_while_the_netmap_stands(self):
        # After a burst of changes every node asks again at once, from one of
        # a few cursors: each cursor's answer is made once, not once a node.
        self.log.record("a")
        self.log.record("b")
        first = [self.successResultOf(self.hub.poll(Cursor("e", 1), wait=30)) for _ in range(100)]
        other = self.successResultOf(self.hub.poll(Cursor("e", 0), wait=30))
        self.assertEqual([a["now"] for a in first], ["e:2"] * 100)
        self.assertEqual(other["since"], "e:0")
        self.assertEqual(self.answers, [Cursor("e", 1), Cursor("e", 0)])

    def test_a_shared_answer_behind_is_made_again_when_the_netmap_moves_or_a_second_passes(self):
        self.log.record("a")
        self.successResultOf(self.hub.poll(Cursor("e", 0), wait=30))
        self.log.record("b")
        self.assertEqual(self.successResultOf(self.hub.poll(Cursor("e", 0), wait=30))["now"], "e:2")
        self.clock.advance(1)  # views carry seconds since last seen: never older than a second
        self.successResultOf(self.hub.poll(Cursor("e", 0), wait=30))
        self.assertEqual(self.answers, [Cursor("e", 0)] * 3)

    def test_waits_until_change_and_coalesces(self):
        polls = [self.hub.poll(Cursor("e", 0), wait=30) for _ in range(100)]
        for d in polls:
            self.assertNoResult(d)
        self.assertEqual(self.hub.open_count, 100)
        self.log.record("a")
        self.hub.changed()
        self.log.record("b")
        self.hub.changed()
        self.clock.advance(0)
        for d in polls:
            self.assertEqual(self.successResultOf(d)["now"], "e:2")
        self.assertEqual(len(self.answers), 1, "waiters with one cursor share one answer")
        self.assertEqual(self.hub.open_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [], "wait timers are cancelled")

    def test_one_node_changing_in_a_loop_wakes_everyone_at_most_once_a_second(self):
        self.clock.advance(100)
        wakes = []

        def poll_again():
            d = self.hub.poll(self.log.cursor, wait=30)
            d.addCallback(lambda answer: (wakes.append(self.clock.seconds()), poll_again()))

        poll_again()
        for step in range(40):  # flapper changes every 0.1 s for 4 s
            self.log.record("flapper")
            self.hub.changed("flapper")
            self.clock.advance(0)
            self.clock.advance(0.1)
        self.clock.advance(1)
        self.assertEqual(wakes[0], 100, "the first change wakes at once")
        gaps = [b - a for a, b in zip(wakes, wakes[1:])]
        self.assertTrue(all(gap >= 0.99 for gap in gaps), gaps)
        self.assertLessEqual(len(wakes), 6)
        # Another node's change is not held back by the flapper.
        self.log.record("flapper")
        self.hub.changed("flapper")
        self.clock.advance(0.1)
        self.log.record("other")
        self.hub.changed("other")
        before = len(wakes)
        self.clock.advance(0)
        self.assertEqual(len(wakes), before + 1, "woken at once for another node")

    def test_times_out_with_empty_answer(self):
        d = self.hub.poll(Cursor("e", 0), wait=25)
        self.clock.advance(24.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(d)["now"], "e:0")

    def test_waits_end_on_one_timer_at_most_a_second_late(self):
        self.clock.advance(0.5)
        early = [self.hub.poll(Cursor("e", 0), wait=10) for _ in range(50)]
        self.clock.advance(0.3)
        late = self.hub.poll(Cursor("e", 0), wait=20)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "one timer for every waiter")
        self.clock.advance(10.1)  # 10.9 s; the first polls' 10 s end at 10.5, rounded up to 11
        for d in early:
            self.assertNoResult(d)
        self.clock.advance(0.1)
        for d in early:
            self.assertEqual(self.successResultOf(d)["now"], "e:0")
        self.assertEqual(len(self.answers), 1, "waits that end together share one answer")
        self.assertNoResult(late)
        self.clock.advance(9.9)  # 20.9 s; the late poll's 20 s end at 20.8, rounded up to 21
        self.assertNoResult(late)
        self.clock.advance(0.1)
        self.successResultOf(late)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_shorter_wait_moves_the_timer_sooner(self):
        long = self.hub.poll(Cursor("e", 0), wait=100)
        short = self.hub.poll(Cursor("e", 0), wait=5)
        self.clock.advance(5)
        self.successResultOf(short)
        self.assertNoResult(long)
        self.clock.advance(95)
        self.successResultOf(long)

    def test_an_answer_may_poll_again(self):
        again = []

        def poll_again(answer, cursor):
            again.append(self.hub.poll(cursor, wait=5))
            return answer

        d = self.hub.poll(Cursor("e", 0), wait=5)
        d.addCallback(poll_again, Cursor("e", 0))
        self.clock.advance(5)
        self.assertNoResult(again[0])
        self.assertEqual(self.hub.open_count, 1)
        self.clock.advance(5)
        self.successResultOf(again[0])
        self.log.record("a")
        d = self.hub.poll(Cursor("e", 1), wait=5)
        d.addCallback(poll_again, Cursor("e", 1))
        self.log.record("b")
        self.hub.changed()
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d)["now"], "e:2")
        self.assertEqual(self.successResultOf(again[1])["now"], "e:2", "behind again: answered at once")

    def test_a_change_answers_many_waiters_a_batch_per_turn(self):
        self.clock = TurnClock()
        self.hub = LongPollHub(self.clock, self.log, self.answer)
        polls = [self.hub.poll(Cursor("e", 0), wait=30) for _ in range(WAKE_BATCH * 2 + 10)]
        self.log.record("a")
        self.hub.changed()
        self.clock.turn()
        self.assertEqual(sum(d.called for d in polls), WAKE_BATCH)
        polls[-1].cancel()  # a node that goes away while it waits its turn
        self.failureResultOf(polls[-1])
        self.clock.turn()
        self.assertEqual(sum(d.called for d in polls), WAKE_BATCH * 2 + 1)
        self.clock.turn()
        for d in polls[:-1]:
            self.assertEqual(self.successResultOf(d)["now"], "e:1")
        self.assertEqual(len(self.answers), 1, "one answer for all batches")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_large_answers_are_spread_over_turns_by_their_bytes(self):
        # Each waiter owes 4 MiB (a stream writes it as it is answered):
        # a turn stops after WAKE_BYTES of them, not after WAKE_BATCH waiters.
        self.clock = TurnClock()
        big = "x" * (4 * 1024 * 1024)
        self.hub = LongPollHub(self.clock, self.log, lambda cursor: {"upserts": big, "now": str(self.log.cursor)})
        polls = [self.hub.poll(Cursor("e", 0), wait=30) for _ in range(40)]
        for d in polls:
            d.addCallback(encode_json)
        self.log.record("a")
        self.hub.changed()
        per_turn = math.ceil(WAKE_BYTES / len(encode_json({"upserts": big, "now": "e:1"})))
        self.clock.turn()
        self.assertEqual(sum(d.called for d in polls), per_turn)
        while not all(d.called for d in polls):
            self.clock.turn()
        self.assertEqual({len(self.successResultOf(d)) for d in polls}, {len(big) + 27})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closing_answers_everyone_at_once(self):
        polls = [self.hub.poll(Cursor("e", 0), wait=30) for _ in range(WAKE_BATCH + 1)]
        self.hub.close()
        for d in polls:
            self.assertEqual(self.successResultOf(d)["now"], "e:0")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelling_one_leaves_the_others_waiting(self):
        stay, leave = (self.hub.poll(Cursor("e", 0), wait=25) for _ in range(2))
        leave.cancel()
        self.failureResultOf(leave)
        self.assertEqual(self.hub.open_count, 1)
        self.clock.advance(25)
        self.successResultOf(stay)

    def test_cancel_forgets_waiter(self):
        d = self.hub.poll(Cursor("e", 0), wait=25)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.hub.open_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CatchingUpTests(unittest.TestCase):
    """A node that moves to another replica (or joined at another) brings a
    cursor of a replica that may have read the cluster's change stream
    further than this one has: it waits for this one to read as far, and
    then hears only what came after its cursor, not everything again."""

    def setUp(self):
        self.clock = Clock()
        self.log = ChangeLog(epoch="e", serial=5, shared=True)
        self.answers = []
        self.hub = LongPollHub(self.clock, self.log, self.answer)

    def answer(self, cursor):
        self.answers.append(cursor)
        changed = self.log.changed_since(cursor)
        return {"full": changed is None, "changed": sorted(changed or ()), "cursor": str(self.log.cursor)}

    def test_a_cursor_ahead_waits_until_this_replica_reads_as_far_then_waits_as_any(self):
        d = self.hub.poll(Cursor("e", 7), wait=25)
        self.assertEqual(self.hub.open_count, 1)
        self.log.record("a", 6)
        self.clock.advance(CATCH_UP_CHECK)
        self.assertNoResult(d)
        self.log.record("b", 7)
        self.clock.advance(CATCH_UP_CHECK)
        self.assertNoResult(d)  # caught up: now it waits for a change past its cursor
        self.assertEqual(self.answers, [], "a and b, which the node has, were not sent again")
        self.log.record("c", 8)
        self.hub.changed("c")
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), {"full": False, "changed": ["c"], "cursor": "e:8"})

    def test_caught_up_past_its_cursor_it_is_answered_with_what_came_after(self):
        d = self.hub.poll(Cursor("e", 6), wait=25)
        self.log.record("a", 6)
        self.log.record("b", 7)
        self.clock.advance(CATCH_UP_CHECK)
        self.assertEqual(self.successResultOf(d), {"full": False, "changed": ["b"], "cursor": "e:7"})

    def test_the_wait_ends_when_it_would_have_from_the_start(self):
        d = self.hub.poll(Cursor("e", 6), wait=3)
        self.clock.advance(1)
        self.log.record("a", 6)
        self.clock.advance(CATCH_UP_CHECK)
        self.assertNoResult(d)
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(d), {"full": False, "changed": [], "cursor": "e:6"})

    def test_a_replica_that_does_not_catch_up_answers_from_its_own_serial(self):
        # Its database out of reach: the node hears what this replica has,
        # no snapshot, and what it reads later comes again.
        d = self.hub.poll(Cursor("e", 9), wait=25)
        self.clock.pump([CATCH_UP_CHECK] * int(CATCH_UP_WAIT / CATCH_UP_CHECK - 1))
        self.assertNoResult(d)
        self.clock.advance(CATCH_UP_CHECK * 2)
        self.assertEqual(self.successResultOf(d), {"full": False, "changed": [], "cursor": "e:5"})
        self.assertEqual(self.hub.open_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_a_wait_a_cursor_ahead_is_answered_from_this_replicas_serial(self):
        self.assertEqual(self.successResultOf(self.hub.poll(Cursor("e", 7), wait=0))["cursor"], "e:5")

    def test_a_cursor_of_another_epoch_or_of_one_server_alone_gets_a_snapshot_at_once(self):
        self.assertEqual(self.successResultOf(self.hub.poll(Cursor("other", 7), wait=25))["full"], True)
        alone = LongPollHub(self.clock, ChangeLog(epoch="e", serial=5), self.answer)
        self.assertEqual(self.successResultOf(alone.poll(Cursor("e", 7), wait=25))["full"], True)

    def test_cancelled_before_or_after_catching_up_it_is_forgotten(self):
        before = self.hub.poll(Cursor("e", 6), wait=25)
        after = self.hub.poll(Cursor("e", 6), wait=25)
        before.cancel()
        self.failureResultOf(before)
        self.log.record("a", 6)
        self.clock.advance(CATCH_UP_CHECK)
        self.assertEqual(self.hub.open_count, 1)
        after.cancel()
        self.failureResultOf(after)
        self.assertEqual(self.hub.open_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closing_answers_those_catching_up_too(self):
        d = self.hub.poll(Cursor("e", 7), wait=25)
        self.hub.close()
        self.assertEqual(self.successResultOf(d)["cursor"], "e:5")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ViewerTests(unittest.TestCase):
    """Polls that name their viewer: a pair's change wakes only its two nodes,
    and only viewers with news of their own get an answer of their own."""

    def setUp(self):
        self.clock = Clock()
        self.log = ChangeLog(epoch="e")
        self.news: dict[str, list] = {}  # viewer -> what its own answer adds
        self.hub = LongPollHub(self.clock, self.log, self.answer, self.viewer_answer)

    def answer(self, cursor):
        return {"cursor": str(self.log.cursor), "full": False}

    def viewer_answer(self, shared, viewer, cursor):
        news = self.news.get(viewer)
        return None if not news else {**shared, "paths": news}

    def test_a_pair_change_wakes_only_its_two_nodes(self):
        polls = {v: self.hub.poll(Cursor("e", 0), wait=30, viewer=v) for v in ("a", "b", "c")}
        anonymous = self.hub.poll(Cursor("e", 0), wait=30)
        self.log.advance()
        self.news = {"a": ["ab"], "b": ["ab"]}
        self.hub.changed_for(("a", "b"))
        self.assertNoResult(polls["a"])  # after this reactor turn
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(polls["a"])["paths"], ["ab"])
        self.assertEqual(self.successResultOf(polls["b"])["paths"], ["ab"])
        self.assertNoResult(polls["c"])
        self.assertNoResult(anonymous)
        self.assertEqual(self.hub.open_count, 2)
        self.clock.advance(30)
        self.assertEqual(self.successResultOf(polls["c"]), {"cursor": "e:1", "full": False}, "its wait still ends")
        self.successResultOf(anonymous)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_node_change_still_wakes_everyone_sharing_the_answer(self):
        polls = [self.hub.poll(Cursor("e", 0), wait=30, viewer=v) for v in ("a", "b", "c")]
        self.news = {"c": ["cd"]}
        self.log.record("x")
        self.hub.changed()
        self.hub.changed_for(("c",))
        self.clock.advance(0)
        a, b, c = (self.successResultOf(d) for d in polls)
        self.assertIs(a, b, "viewers without news share one answer")
        self.assertEqual(c["paths"], ["cd"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_viewer_that_went_away_is_not_woken(self):
        d = self.hub.poll(Cursor("e", 0), wait=30, viewer="a")
        d.cancel()
        self.failureResultOf(d)
        self.hub.changed_for(("a",))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_viewer_behind_is_answered_at_once_with_its_news(self):
        self.log.advance()
        self.news = {"a": ["ab"]}
        self.assertEqual(self.successResultOf(self.hub.poll(Cursor("e", 0), 30, viewer="a"))["paths"], ["ab"])
        self.assertNotIn("paths", self.successResultOf(self.hub.poll(Cursor("e", 0), 30, viewer="c")))

    def test_advance_moves_cursors_without_a_node(self):
        self.log.record("a")
        self.log.advance()
        self.log.record("b")
        self.assertEqual(self.log.changed_since(Cursor("e", 1)), {"b"})
        self.assertEqual(self.log.changed_since(Cursor("e", 2)), {"b"})
        self.assertEqual(self.log.changed_since(Cursor("e", 3)), set())
        self.log.advance()
        self.assertEqual(self.log.changed_since(Cursor("e", 3)), set())
        self.assertEqual(self.log.cursor, Cursor("e", 4))

    def test_a_viewer_whose_answer_fails_does_not_stall_the_others(self):
        polls = {v: self.hub.poll(Cursor("e", 0), wait=30, viewer=v) for v in ("a", "bad", "c")}

        def viewer_answer(shared, viewer, cursor):
            if viewer == "bad":
                raise KeyError(viewer)
            return None

        self.hub._viewer_answer = viewer_answer
        self.log.record("x")
        self.hub.changed()
        self.clock.advance(0)
        self.successResultOf(polls["a"])
        self.successResultOf(polls["c"])
        self.failureResultOf(polls["bad"], KeyError)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
