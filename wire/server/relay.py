"""The relay: forwards WireGuard packets between the two nodes of a session.

Used only for pairs that cannot reach each other directly (a hard NAT on a
side that needs it, or no handshake after trying). It shares the STUN UDP
port. For each frame it does O(1) work: look up the token, check the MAC and
the replay window, learn the sender's address, spend from the sender's rate
budget, and re-seal the payload for the other side (no copy of it is made
until the new frame is built). Anything that fails a
check is dropped without an answer, so the port reflects nothing to strangers.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from wire.protocol import RelayGrant
from wire.relayproto import (
    KEY_BYTES,
    OVERHEAD,
    REFRESH_PEER,
    TO_NODE,
    TO_SERVER,
    TOKEN_BYTES,
    FrameError,
    FrameKey,
    ReplayWindow,
    payload_view,
    read_header,
)
from wire.server.ratelimit import TokenBucket

DEFAULT_RATE_BYTES = 50 * 1024 * 1024  # per side, per second
DEFAULT_BURST_BYTES = 4 * 1024 * 1024
IDLE_TIMEOUT = 300.0
OUTCOMES = (
    "relay_forwarded",
    "relay_keepalive",
    "relay_malformed",
    "relay_unknown",
    "relay_forged",
    "relay_replay",
    "relay_no_peer",
    "relay_rate_limited",
)


@dataclass(eq=False)
class RelaySide:
    node_id: str
    token: bytes
    key: bytes
    bucket: TokenBucket
    address: tuple[str, int] | None = None
    window: ReplayWindow = field(default_factory=ReplayWindow)
    sent: int = 0
    sealer: FrameKey = field(init=False, repr=False)
    other: RelaySide | None = field(default=None, repr=False)
    # The other side's token this side's node was told (it asked with
    # ``fastpath``: its shim takes frames the other side sealed). None: an
    # older shim, or one told nothing; such a side never goes on the fast path.
    told_peer: bytes | None = None

    def __post_init__(self) -> None:
        self.sealer = FrameKey(self.key)

    def wrap(self, payload) -> bytes:
        """A frame for this side, from the server."""
        self.sent += 1
        return self.sealer.seal(self.token, TO_NODE, self.sent, payload)


@dataclass
class RelaySession:
    session_id: str
    sides: dict[str, RelaySide]
    last_used: float


class RelayTable:
    def __init__(
        self,
        clock: IReactorTime,
        rate: float = DEFAULT_RATE_BYTES,
        burst: float = DEFAULT_BURST_BYTES,
        idle_timeout: float = IDLE_TIMEOUT,
    ):
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self.idle_timeout = idle_timeout
        self._by_pair: dict[frozenset[str], RelaySession] = {}
        self._by_token: dict[bytes, tuple[RelaySession, RelaySide]] = {}
        # Called when what the kernel fast path could carry may have changed
        # (a side's address, a side or a session ended): wire.server.fastpath.
        self.on_change: Callable[[], None] | None = None
        # Whether grants carry the peer's side to nodes that ask (only while
        # the kernel fast path is on: a peer's key lets a node speak as it).
        self.offer_peer_keys = False

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def __len__(self) -> int:
        return len(self._by_pair)

    def grant(
        self,
        node_id: str,
        peer_node_id: str,
        relay_port: int | None = None,
        fresh: bool = False,
        fastpath: bool = False,
        held: bytes | None = None,
    ) -> RelayGrant:
        """The requesting node's side of the pair's session (created on first
        request), telling it the relay's port (``relay_port``).

        ``fresh``: the node asks because it has no live side (it is new, its
        daemon restarted, it came back from a direct path), so its frame
        counter starts again at 1, which the old side's replay window would
        refuse: it gets a new side (token, key, window), and the old one
        ends. The peer's side goes on untouched. A side no frame ever
        verified for (the peer's request made it) is kept instead: no counter
        of it was seen, and its token is what the peer was told.

        ``fastpath``: the node's shim takes frames sealed by the peer's side,
        so the grant carries the peer's token and key (wire.server.fastpath).
        ``held``: the node keeps the side with this token, if it is still
        its side, and asks only for the peer's (which changed).
        """
        if node_id == peer_node_id:
            raise ValueError("a node cannot relay to itself")
        now = self._clock.seconds()
        pair = frozenset((node_id, peer_node_id))
        session = self._by_pair.get(pair)
        if session is None:
            session = RelaySession(secrets.token_hex(8), {}, now)
            for member in (node_id, peer_node_id):
                self._new_side(session, member, now)
            self._by_pair[pair] = session
        elif fresh and not _unused(session.sides[node_id]) and session.sides[node_id].token != held:
            self._by_token.pop(session.sides[node_id].token, None)
            self._new_side(session, node_id, now)
            self._changed()
        session.last_used = now
        side = session.sides[node_id]
        if not (fastpath and self.offer_peer_keys):
            side.told_peer = None
            return RelayGrant(session.session_id, peer_node_id, side.token, side.key, relay_port)
        peer = session.sides[peer_node_id]
        side.told_peer = peer.token
        self._changed()
        return RelayGrant(session.session_id, peer_node_id, side.token, side.key, relay_port, peer.token, peer.key)

    def _new_side(self, session: RelaySession, node_id: str, now: float) -> None:
        side = RelaySide(node_id, secrets.token_bytes(TOKEN_BYTES), secrets.token_bytes(KEY_BYTES), TokenBucket(self._rate, self._burst, now))
        session.sides[node_id] = side
        self._by_token[side.token] = (session, side)
        others = [s for member, s in session.sides.items() if member != node_id]
        if others:
            side.other, others[0].other = others[0], side

    def end_sessions_of(self, node_id: str) -> int:
        ended = [s for pair, s in self._by_pair.items() if node_id in pair]
        for session in ended:
            self._end(session)
        return len(ended)

    def _end(self, session: RelaySession) -> None:
        self._by_pair.pop(frozenset(session.sides), None)
        for side in session.sides.values():
            self._by_token.pop(side.token, None)
        self._changed()

    def sessions(self) -> list[RelaySession]:
        return list(self._by_pair.values())

    def fastpath_candidates(self) -> list[RelaySession]:
        """Sessions the kernel may carry: both sides' nodes were told each
        other's current token (both shims take peer-sealed frames), both
        sides' addresses were learned from authenticated frames over UDP on
        IPv4, and no other side anywhere has either address (a kernel
        forward is by address: a shared one would carry other sessions' frames)."""
        uses: dict[tuple[str, int], int] = {}
        for session in self._by_pair.values():
            for side in session.sides.values():
                if side.address is not None:
                    uses[side.address] = uses.get(side.address, 0) + 1
        found = []
        for session in self._by_pair.values():
            sides = list(session.sides.values())
            if len(sides) != 2:
                continue
            a, b = sides
            if a.told_peer != b.token or b.told_peer != a.token:
                continue
            if not (_udp4(a.address) and _udp4(b.address)) or a.address == b.address:
                continue
            if uses[a.address] != 1 or uses[b.address] != 1:  # type: ignore[index]
                continue
            found.append(session)
        return found

    def expire(self) -> int:
        """End sessions nobody used for ``idle_timeout`` seconds."""
        cutoff = self._clock.seconds() - self.idle_timeout
        stale = [s for s in self._by_pair.values() if s.last_used < cutoff]
        for session in stale:
            self._end(session)
        return len(stale)

    def handle(
        self, data: bytes, source: tuple[str, int], sender: str | None = None
    ) -> tuple[str, bytes | None, tuple[str, int] | None]:
        """One datagram in; an outcome label, and the datagram to send and where (or None).

        ``source`` is a UDP address or a relay stream's (wire.server.relaystream);
        ``sender``, for a stream, the node it authenticated as: it carries that
        node's sides only (None: an open server's stream, or UDP)."""
        try:
            token, direction, counter = read_header(data)
        except FrameError:
            return "relay_malformed", None, None
        found = self._by_token.get(token)
        if found is None or direction != TO_SERVER:
            return "relay_unknown", None, None
        session, side = found
        if sender is not None and side.node_id != sender:
            return "relay_forged", None, None
        if not side.sealer.authentic(data):
            return "relay_forged", None, None
        if not side.window.check_and_mark(counter):
            return "relay_replay", None, None
        now = self._clock.seconds()
        if side.address != source:
            side.address = source
            self._changed()
        session.last_used = now
        other = side.other
        if len(data) == OVERHEAD:
            # A keepalive: answer it, so the node knows the relay hears it
            # (and a fast-path shim, that the peer's side it knows is gone).
            stale = side.told_peer is not None and other is not None and side.told_peer != other.token
            return "relay_keepalive", side.wrap(REFRESH_PEER if stale else b""), source
        if other is None or other.address is None:
            return "relay_no_peer", None, None
        if not side.bucket.spend(len(data) - OVERHEAD, now):
            return "relay_rate_limited", None, None
        return "relay_forwarded", other.wrap(payload_view(data)), other.address


def _unused(side: RelaySide) -> bool:
    return side.address is None and side.window.highest < 0


def _udp4(address) -> bool:
    """A UDP IPv4 address (not a relay stream's ``("relay-tcp", n)``)."""
    if address is None:
        return False
    try:
        return isinstance(ipaddress.ip_address(address[0]), ipaddress.IPv4Address)
    except ValueError:
        return False
