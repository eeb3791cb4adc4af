"""``POST /punch``: the server's hole-punch attempt counter for each pair of nodes.

The seed's rule, kept exactly: a pair's first request starts its count at 0;
each further request more than PUNCH_RETRY_AFTER seconds after the last
counted one adds an attempt; from PUNCH_MAX_ATTEMPTS on, the answer says
``use_relay``. Unlike the seed, pairs are forgotten after a while, so the
table cannot grow without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from wire.protocol import PunchAnswer

PUNCH_RETRY_AFTER = 10.0
PUNCH_MAX_ATTEMPTS = 3
FORGET_AFTER = 3600.0


@dataclass
class _PairState:
    counted_at: float
    attempts: int
    touched_at: float


class PunchTracker:
    def __init__(self, forget_after: float = FORGET_AFTER):
        self._forget_after = forget_after
        self._pairs: OrderedDict[tuple[str, str], _PairState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pairs)

    def attempt(self, a: str, b: str, now: float) -> PunchAnswer:
        self._forget(now)
        key = (a, b) if a <= b else (b, a)
        state = self._pairs.get(key)
        if state is None:
            state = self._pairs[key] = _PairState(counted_at=now, attempts=0, touched_at=now)
        elif now - state.counted_at > PUNCH_RETRY_AFTER:
            state.attempts += 1
            state.counted_at = now
        state.touched_at = now
        self._pairs.move_to_end(key)
        return PunchAnswer(state.attempts, state.attempts >= PUNCH_MAX_ATTEMPTS)

    def _forget(self, now: float) -> None:
        while self._pairs:
            key, state = next(iter(self._pairs.items()))
            if now - state.touched_at <= self._forget_after:
                break
            del self._pairs[key]
