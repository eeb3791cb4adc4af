"""Loop failures told once per cause, repeats counted, recovery told."""

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, globalLogPublisher
from twisted.trial import unittest

from wire.node.failurelog import REPEAT_EVERY, FailureLog


class FailureLogTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.failures = FailureLog(Logger(), self.clock)

    def break_once(self, message: str) -> None:
        try:
            raise RuntimeError(message)
        except RuntimeError:
            self.failures.failed("path check")

    def lines(self) -> list[str]:
        return [e["log_format"] for e in self.logged]

    def test_one_traceback_per_cause_then_a_line_a_minute_then_recovery(self):
        for _ in range(120):  # once a second for two minutes
            self.break_once("command `wg set wl0 peer …` (70000 words, 700000 bytes) exited with code 1")
            self.clock.advance(1)
        tracebacks = [e for e in self.logged if e.get("log_failure") is not None]
        self.assertEqual(len(tracebacks), 1)
        repeats = [e for e in self.logged if "more time(s)" in e["log_format"]]
        self.assertEqual([e["count"] for e in repeats], [REPEAT_EVERY])
        self.break_once("another cause")
        self.assertEqual(len([e for e in self.logged if e.get("log_failure") is not None]), 2, "a new cause is told in full")
        self.assertEqual(self.failures.failing()[0]["count"], 121)
        self.failures.worked("path check")
        self.assertIn("works again, after {count} failure(s)", self.lines()[-1])
        self.assertEqual(self.failures.failing(), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
