"""When the node's heartbeat needs ``POST /register``, and when the long-poll carries it.

A server with authentication counts each long-poll as the node's heartbeat
(its register answer says ``"heartbeat": "longpoll"``). Then a heartbeat
registers only when it has to: the registration body changed, the last one
failed, no long-poll reached the server lately, the server asked for one,
or the last one is ``REGISTER_AT_LEAST_EVERY`` old. :class:`HeartbeatState`
holds what that decision needs; the decision takes ``now`` and changes
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from wire.protocol import Registration

HEARTBEAT_INTERVAL = 30.0
# With long-polls as heartbeats, a full registration still goes out this
# often: whatever the node may have missed, the server hears it all again.
REGISTER_AT_LEAST_EVERY = 600.0


@dataclass
class HeartbeatState:
    """What the server said, what we last registered, and when polls went out."""

    longpoll: bool = False  # the server counts our long-polls as heartbeats
    registered_body: Registration | None = None  # what the server holds (None: must register)
    registered_at: float = 0.0
    poll_sent_at: float | None = None  # the long-poll in flight
    poll_answered_sent_at: float = float("-inf")  # when the last answered one went out

    def registered(self, body: Registration, now: float, longpoll: bool) -> None:
        """The server took ``body`` at ``now``, and said whether it counts long-polls."""
        self.registered_body = body
        self.registered_at = now
        self.longpoll = longpoll

    def must_register(self) -> None:
        """The next heartbeat registers, whatever else holds."""
        self.registered_body = None

    def poll_sent(self, now: float) -> None:
        self.poll_sent_at = now

    def poll_closed(self) -> None:
        """The long-poll in flight ended (answered, failed or cancelled)."""
        self.poll_sent_at = None

    def poll_answered(self, sent_at: float) -> None:
        self.poll_answered_sent_at = sent_at

    def carried_by_longpoll(self, now: float, reachable: bool, current_body: Callable[[], Registration]) -> bool:
        """Whether this heartbeat may go without ``POST /register``: the
        server counts our long-polls, one reached it (answered, or sent and
        still open) within the last interval, and the server already holds
        exactly what we would register (``current_body``), from a
        registration not too old."""
        if not (self.longpoll and self.registered_body is not None and reachable):
            return False
        if now - self.registered_at >= REGISTER_AT_LEAST_EVERY:
            return False
        last_poll = self.poll_answered_sent_at if self.poll_sent_at is None else self.poll_sent_at
        if now - last_poll > HEARTBEAT_INTERVAL:
            return False
        # Last, as it looks up the LAN address: any change registers at once.
        return current_body() == self.registered_body
