"""Token buckets, and per-address rate limits built of them in bounded memory.

``TokenBucket`` is the one token bucket in wire: the relay spends bytes from
one per session side, and ``RateLimiter`` keeps one per key. A clock that
steps back (an NTP correction) neither refills a bucket nor empties it:
counting resumes from the new time.

The server limits registrations, enrollments and STUN datagrams per source
address, so that one address cannot flood the server or starve the others.
Each key has a bucket of ``burst`` tokens refilled at ``rate`` per second; a
call spends one token or is refused. Buckets live in one LRU-ordered map:
a key idle long enough to have refilled its bucket carries no information
and is forgotten, and beyond ``max_keys`` the least recently seen key goes,
so a flood of spoofed sources costs bounded memory. Every call is O(1)
(amortized: each forgotten key was added once).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable

from twisted.internet.interfaces import IReactorTime

from wire.sourceaddress import unmapped

DEFAULT_MAX_KEYS = 100_000


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second, spent by amount."""

    __slots__ = ("rate", "burst", "tokens", "counted_at")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.counted_at = now

    def available(self, now: float) -> float:
        """The tokens there are at ``now``."""
        # max(): a clock stepping back must not take tokens away.
        return min(self.burst, self.tokens + max(0.0, now - self.counted_at) * self.rate)

    def spend(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens; False (taking none) when there are fewer."""
        tokens = self.available(now)
        # Counting from ``now`` even when the clock went back: time spent
        # catching up to the old reading refills, as it really passed.
        self.counted_at = now
        allowed = tokens >= amount
        self.tokens = tokens - amount if allowed else tokens
        return allowed


class RateLimiter:
    def __init__(self, rate: float, burst: float, clock: IReactorTime, max_keys: int = DEFAULT_MAX_KEYS):
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a rate limit needs rate > 0, burst >= 1 and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        # Least recently seen first.
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: Hashable) -> bool:
        """Spend one of ``key``'s tokens; False when it has none left."""
        now = self._clock.seconds()
        self._forget_refilled(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.spend(1, now)

    def retry_after(self, key: Hashable) -> float:
        """Seconds until ``key`` may be allowed again (0 when it may now)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        return max(0.0, (1 - bucket.available(self._clock.seconds())) / self.rate)

    def _forget_refilled(self, now: float) -> None:
        # The map is ordered by last use, so the first bucket not yet surely
        # full ends the walk.
        refill_seconds = self.burst / self.rate
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if now - bucket.counted_at < refill_seconds:
                break
            del self._buckets[key]


def address_key(host: str) -> str:
    """The key a source address is limited under.

    An IPv4 client of a dual-stack socket counts as its IPv4 address. An
    IPv6 host is usually given a whole /64, and can pick a new address in it
    for every request, so IPv6 sources are limited per /64.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    address = unmapped(address)
    if address.version == 6:
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)
