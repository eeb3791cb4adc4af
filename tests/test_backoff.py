"""Backoff: doubling from the first delay, capped, and back to the first after a reset."""

from twisted.trial import unittest

from wire.node.backoff import BACKOFF_CAP, BACKOFF_FIRST, Backoff


class BackoffTests(unittest.TestCase):
    def test_doubles_up_to_the_cap_and_resets(self):
        backoff = Backoff()
        delays = [backoff.next() for _ in range(6)]
        self.assertEqual(delays, [BACKOFF_FIRST, 1.0, 2.0, BACKOFF_CAP, BACKOFF_CAP, BACKOFF_CAP])
        backoff.reset()
        self.assertEqual(backoff.next(), BACKOFF_FIRST)
