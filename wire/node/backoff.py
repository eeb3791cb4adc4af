"""Retry delays: exponential and capped, so retries come quickly once the server is back."""

from __future__ import annotations

from dataclasses import dataclass, field

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 4.0


@dataclass
class Backoff:
    """Exponential, capped: retries come quickly once the server is back."""

    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_CAP
    current: float = field(default=0.0)

    def next(self) -> float:
        self.current = min(self.cap, self.current * 2 if self.current else self.first)
        return self.current

    def reset(self) -> None:
        self.current = 0.0
