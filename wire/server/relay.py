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
    KERNEL_PATH,
    KEY_BYTES,
    OVERHEAD,
    REFRESH_PEER,
    TO_NODE,
    TO_SERVER,
    TOKEN_BYTES,
    FrameError,
    FrameKey,
    ReplayWindow,
    is_relay_frame,
    payload_view,
    read_header,
)
from wire.server.ratelimit import TokenBucket
from wire.server.relayports import DirectPorts

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
    "relay_bound",
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
    # The side's own port (its node asked with ``direct``: it binds from
    # WireGuard's port, wire.server.relayports), and the address its
    # WireGuard has as seen there (learned from an authenticated bind frame).
    direct_port: int | None = None
    wg_address: tuple[str, int] | None = None

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
        # Each side's budget, bytes per second and burst (--rate-limit-relay).
        self.rate = rate
        self.burst = burst
        self.idle_timeout = idle_timeout
        self._by_pair: dict[frozenset[str], RelaySession] = {}
        self._by_token: dict[bytes, tuple[RelaySession, RelaySide]] = {}
        # Called when what the kernel fast path could carry may have changed
        # (a side's address, a side or a session ended): wire.server.fastpath.
        self.on_change: Callable[[], None] | None = None
        # Whether grants carry the peer's side to nodes that ask (only while
        # the kernel fast path is on: a peer's key lets a node speak as it).
        self.offer_peer_keys = False
        # Per-side ports (None: none configured), offered while
        # ``offer_direct`` (the kernel fast path is on).
        self.direct_ports: DirectPorts | None = None
        self.offer_direct = False
        self._by_port: dict[int, RelaySide] = {}
        # Tokens of the sides whose WireGuard packets the kernel forwards
        # now (set by wire.server.fastpath after each change of its table).
        self.kernel: frozenset[bytes] = frozenset()
        # How to send a datagram from the relay port (the STUN protocol's
        # batched send), to tell a side at once that its kernel path changed.
        self.send: Callable[[bytes, tuple[str, int]], None] | None = None
        # Called when WireGuard's packets reach a port the kernel should
        # forward (its table gone or its flows stale): the fast path rebuilds.
        self.on_kernel_missed: Callable[[], None] | None = None

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
        direct: bool = False,
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
        ``direct``: the node binds from WireGuard's own port; while the fast
        path is on, the side gets a port of its own (``direct_port``).
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
            self._forget_side(session.sides[node_id])
            self._new_side(session, node_id, now)
            self._changed()
        session.last_used = now
        side = session.sides[node_id]
        if direct and self.offer_direct and self.direct_ports is not None and side.direct_port is None:
            side.direct_port = self.direct_ports.allocate()
            if side.direct_port is not None:
                self._by_port[side.direct_port] = side
        if not (fastpath and self.offer_peer_keys):
            side.told_peer = None
            return RelayGrant(session.session_id, peer_node_id, side.token, side.key, relay_port, direct_port=side.direct_port)
        peer = session.sides[peer_node_id]
        side.told_peer = peer.token
        self._changed()
        return RelayGrant(
            session.session_id, peer_node_id, side.token, side.key, relay_port, peer.token, peer.key, side.direct_port
        )

    def _new_side(self, session: RelaySession, node_id: str, now: float) -> None:
        side = RelaySide(node_id, secrets.token_bytes(TOKEN_BYTES), secrets.token_bytes(KEY_BYTES), TokenBucket(self.rate, self.burst, now))
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
            self._forget_side(side)
        self._changed()

    def _forget_side(self, side: RelaySide) -> None:
        self._by_token.pop(side.token, None)
        self._free_port(side)

    def _free_port(self, side: RelaySide) -> None:
        if side.direct_port is None:
            return
        self._by_port.pop(side.direct_port, None)
        if self.direct_ports is not None:
            self.direct_ports.free(side.direct_port)
        side.direct_port, side.wg_address = None, None

    def free_direct_ports(self) -> None:
        """No side keeps a port of its own (the kernel path is off)."""
        for side in list(self._by_port.values()):
            self._free_port(side)

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

    def direct_candidates(self) -> list[RelaySession]:
        """Sessions whose WireGuard packets the kernel may forward: both
        sides bound from their own ports, over IPv4. (A side's rule matches
        its own port, so addresses may be shared.)"""
        found = []
        for session in self._by_pair.values():
            sides = list(session.sides.values())
            if len(sides) == 2 and all(s.direct_port is not None and _udp4(s.wg_address) for s in sides):
                found.append(session)
        return found

    def set_kernel(self, tokens: frozenset[bytes]) -> None:
        """The sides the kernel now forwards; each side whose state changed
        is told at once (its node moves WireGuard's endpoint on that word)."""
        changed, self.kernel = self.kernel ^ tokens, tokens
        for token in sorted(changed):
            found = self._by_token.get(token)
            if found is not None and found[1].address is not None and self.send is not None:
                self.send(found[1].wrap(self._answer(found[1])), found[1].address)

    def _answer(self, side: RelaySide) -> bytes:
        """A keepalive answer's payload: empty, or flags for a shim that
        asked for them (REFRESH_PEER: the peer's side it knows is gone;
        KERNEL_PATH: the kernel forwards this side's WireGuard packets)."""
        other = side.other
        flags = REFRESH_PEER[0] if side.told_peer is not None and other is not None and side.told_peer != other.token else 0
        if side.direct_port is not None and side.token in self.kernel:
            flags |= KERNEL_PATH
        return bytes([flags]) if flags else b""

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
        refused, session, side = self._verify(data, sender)
        if refused:
            return refused, None, None
        now = self._clock.seconds()
        if side.address != source:
            side.address = source
            self._changed()
        session.last_used = now
        other = side.other
        if len(data) == OVERHEAD:
            # A keepalive: answer it, so the node knows the relay hears it
            # (and a fast-path shim, what it should know: see _answer).
            return "relay_keepalive", side.wrap(self._answer(side)), source
        if other is None or other.address is None:
            return "relay_no_peer", None, None
        if not side.bucket.spend(len(data) - OVERHEAD, now):
            return "relay_rate_limited", None, None
        return "relay_forwarded", other.wrap(payload_view(data)), other.address


    def _verify(self, data: bytes, sender: str | None = None):
        """``(refusal, session, side)``: refusal is "" for an authentic,
        fresh frame to the server (its counter is then marked seen)."""
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
        return "", session, side

    def bind(self, data: bytes, source: tuple[str, int], port: int) -> str:
        """A datagram on a side's own port; its outcome label. An
        authentic, fresh, empty frame of that side (a bind, sent from its
        node's WireGuard port) says where that WireGuard is."""
        owner = self._by_port.get(port)
        if owner is None:
            return "relay_unknown"
        if not is_relay_frame(data):
            # WireGuard's own packets: the kernel should have taken them.
            if owner.token in self.kernel and source == owner.wg_address and self.on_kernel_missed is not None:
                self.on_kernel_missed()
            return "relay_malformed"
        if len(data) != OVERHEAD or data[4 : 4 + TOKEN_BYTES] != owner.token:
            return "relay_forged"  # one with a payload, or another side's: never this port's bind
        refused, session, _ = self._verify(data)
        if refused:
            return refused
        session.last_used = self._clock.seconds()
        if owner.wg_address != source:
            owner.wg_address = source
            self._changed()
        return "relay_bound"


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
