from twisted.internet.task import Clock
from twisted.trial import unittest

from wire.protocol import ProtocolError
from wire.server.netmap import ChangeLog, Cursor, LongPollHub, parse_cursor


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

    def test_times_out_with_empty_answer(self):
        d = self.hub.poll(Cursor("e", 0), wait=25)
        self.clock.advance(24.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(d)["now"], "e:0")

    def test_cancel_forgets_waiter(self):
        d = self.hub.poll(Cursor("e", 0), wait=25)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.hub.open_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
