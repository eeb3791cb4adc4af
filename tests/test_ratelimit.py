"""The one token bucket, on a fake clock that also steps back."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from wire.server.ratelimit import RateLimiter, TokenBucket


class TokenBucketTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.bucket = TokenBucket(rate=10, burst=100, now=self.clock.seconds())

    def spend(self, amount: float) -> bool:
        return self.bucket.spend(amount, self.clock.seconds())

    def test_burst_then_rate(self):
        self.assertTrue(self.spend(60))
        self.assertTrue(self.spend(40))
        self.assertFalse(self.spend(1))
        self.clock.advance(0.5)
        self.assertTrue(self.spend(5))
        self.assertFalse(self.spend(1))

    def test_a_refused_spend_takes_nothing(self):
        self.assertTrue(self.spend(90))
        self.assertFalse(self.spend(20))
        self.assertTrue(self.spend(10))

    def test_a_clock_stepping_back_grants_no_burst(self):
        self.assertTrue(self.spend(100))
        self.clock.rightNow -= 3600
        self.assertFalse(self.spend(1), "stepping back refilled the bucket")
        self.clock.advance(0.5)
        self.assertTrue(self.spend(5))
        self.assertFalse(self.spend(1), "more than the time really passed was refilled")

    def test_a_clock_stepping_back_locks_nobody_out(self):
        self.assertTrue(self.spend(100))
        self.clock.rightNow -= 3600
        self.assertFalse(self.spend(1))
        # Refilling resumes at the new time, not once the clock is back
        # where it was an hour later.
        self.clock.advance(1)
        self.assertTrue(self.spend(10))

    def test_a_clock_stepping_back_keeps_what_is_left(self):
        self.assertTrue(self.spend(30))
        self.clock.rightNow -= 3600
        self.assertTrue(self.spend(70))
        self.assertFalse(self.spend(1))

    @settings(deadline=None, max_examples=200)
    @given(st.lists(st.tuples(st.floats(-100, 5), st.floats(0, 150)), max_size=100))
    def test_never_more_than_burst_plus_rate_times_forward_time(self, steps):
        """However the clock jumps, what is granted never exceeds the burst plus
        the rate times the time the clock moved forward."""
        forward = 0.0
        granted = 0.0
        for dt, amount in steps:
            self.clock.rightNow += dt
            forward += max(0.0, dt)
            if self.spend(amount):
                granted += amount
            self.assertLessEqual(granted, 100 + 10 * forward + 1e-6)


class RateLimiterClockTests(unittest.SynchronousTestCase):
    def test_a_clock_stepping_back_locks_nobody_out(self):
        clock = Clock()
        clock.advance(1000)
        limiter = RateLimiter(rate=2, burst=3, clock=clock)
        self.assertEqual([limiter.allow("a") for _ in range(4)], [True, True, True, False])
        clock.rightNow -= 3600
        self.assertFalse(limiter.allow("a"))
        clock.advance(0.5)
        self.assertTrue(limiter.allow("a"))
        self.assertEqual(limiter.retry_after("a"), 0.5)
