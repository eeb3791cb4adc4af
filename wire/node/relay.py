"""The node's relay shim: relayed peers look like local UDP peers to WireGuard.

For each relayed peer the shim opens a loopback UDP socket and makes it that
peer's WireGuard endpoint, so WireGuard itself never changes. Packets
WireGuard sends to it are wrapped in relay frames and sent to the
coordination server's relay port; frames coming back are checked (MAC,
replay window, the server's address) and their payload handed to WireGuard
from that peer's loopback socket. A keepalive every few seconds keeps the
server's idea of our address (and the NAT mapping to it) fresh.

Where UDP to the server does not work (a network that blocks it), the same
frames go over the relay stream instead (:mod:`wire.node.relaystream`, TCP
on the server's API port): when no answer came over UDP within
UDP_FALLBACK_AFTER of the first frame, or UDP answers stopped for
UDP_DEAD_AFTER. While on the stream the shim still probes UDP with every
keepalive round; the first answer over UDP moves it back, with no change
WireGuard can see (its endpoint is the same loopback socket throughout).

The server's kernel fast path (wire.server.fastpath) forwards a session's
frames unchanged: they arrive sealed by the peer's side (its token, its
direction TO_SERVER, its counter), so the shim asks for grants with
``fastpath`` and, when the grant carries the peer's token and key, checks
such frames under the peer's key with a replay window of their own. A
fast-path session also gets its own upstream socket: the kernel forwards
by address, so each session's frames must come from an address of their own.
When the server says the peer's side changed (REFRESH_PEER in a keepalive
answer), ``on_peer_changed`` asks for the grant again, keeping our side.

Replicas (wire.server.replicas): a session's relay is the replica that
is its pair's home, named in the grant (``relay_host``), so each session
sends to its own relay address and takes frames only from it. A node
takes a relay host only if it is one of its own servers' hosts
(``relay_hosts``: the replicas its join token named); any other is
refused (RelayHostRefused), so a hostile server cannot aim the node's
traffic elsewhere. The relay stream (TCP) goes to the node's own server:
a session homed at another replica is carried over UDP only.

The kernel path takes the shim out of WireGuard's way. A shim that can send
from WireGuard's own port (root: a raw socket, wire.node.rawudp) asks with
``direct``; a grant with a ``direct_port`` (the server's port for our side)
has it send a bind frame from WireGuard's port to that port with every
keepalive round, so the server learns the address our WireGuard has there
(behind a symmetric NAT, only that flow shows it). Once the server says
(KERNEL_PATH in its answers) that the kernel forwards our side, the peer's
WireGuard endpoint is ``server:direct_port`` (``wg_endpoint``;
``on_path_changed`` has the daemon apply it); as soon as it stops saying
so, or stops answering, it is the loopback socket again. The shim channel
goes on throughout, so either path works while the other takes over.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import DeferredLock
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from wire.debuglog import logger as debug_aware_logger
from wire.protocol import RelayGrant
from wire.relayproto import (
    MAX_FRAME,
    MAX_PAYLOAD,
    OVERHEAD,
    REFRESH_PEER,
    TO_NODE,
    TO_SERVER,
    HEADER_BYTES,
    KERNEL_PATH,
    DatagramBatcher,
    FrameError,
    FrameKey,
    ReplayWindow,
    enlarge_socket_buffers,
    payload_view,
    read_header,
)

KEEPALIVE_INTERVAL = 10.0
# No answer over UDP this long after the first frame: UDP to the server is blocked.
UDP_FALLBACK_AFTER = 3.0
# Answers over UDP stopped this long ago (two keepalive rounds): blocked now.
UDP_DEAD_AFTER = 25.0
# On the stream, a UDP probe's answer has this long to arrive before the
# stream's own keepalives say again that the side is on the stream.
UDP_PROBE_GRACE = 0.5
# A session whose keepalives go unanswered this long is reported dead.
ALIVE_WITHIN = 3 * KEEPALIVE_INTERVAL
# At most one request for the peer's side per session this often.
REFRESH_EVERY = 30.0
# A kernel endpoint (the server's port for our side) is known as the relay's
# this long after its session ended: the server may still forward it, and
# WireGuard roams to where packets come from (wire.node.reconciler sets a
# direct path that roamed there back, and the path proves nothing meanwhile).
RECENT_KERNEL_ENDPOINT = 600.0
MAX_RECENT_KERNEL_ENDPOINTS = 4096
# The kernel path counts as on this long after the server last said so
# (two keepalive rounds and some): silence sends WireGuard to the shim again.
KERNEL_VALID = 2 * KEEPALIVE_INTERVAL + 5.0

log = debug_aware_logger()


class RelayHostRefused(ValueError):
    """A grant names a relay host that is none of this node's servers."""


@dataclass
class RelaySession:
    peer_node_id: str
    session_id: str
    token: bytes
    key: FrameKey
    # Where this session's frames go, and the only address taken them from
    # (the relay of the pair's home replica), and that replica's name.
    relay: tuple[str, int] = ("", 0)
    relay_replica: str = ""
    relay_host: str = ""  # the relay's host as the grant (or the node's server URL) names it
    socket: _PeerSocket | None = None
    sent: int = 0
    window: ReplayWindow = field(default_factory=ReplayWindow)
    created: float = 0.0
    last_heard: float = 0.0
    frames_in: int = 0
    frames_out: int = 0
    # The peer side's token and key (a fast-path grant): frames the server's
    # kernel forwarded unchanged, sealed by the peer, with their own window.
    peer_token: bytes | None = None
    peer_key: FrameKey | None = None
    peer_window: ReplayWindow = field(default_factory=ReplayWindow)
    # A fast-path session's own upstream socket, and how to send on it.
    upstream_port: Any = None
    upstream_send: Callable[[Any, Any], None] | None = None
    upstream_batcher: DatagramBatcher | None = None
    refresh_asked: float = float("-inf")
    # The server's port for our side (a ``direct`` grant), where WireGuard
    # sends while the kernel forwards it (``kernel``, last said at ``kernel_heard``).
    direct_port: int | None = None
    kernel_endpoint: str | None = None
    kernel: bool = False
    kernel_heard: float = float("-inf")

    @property
    def endpoint(self) -> str:
        """The loopback socket: the shim's endpoint for WireGuard."""
        assert self.socket is not None and self.socket.port is not None
        return f"127.0.0.1:{self.socket.port.getHost().port}"

    @property
    def wg_endpoint(self) -> str:
        """Where WireGuard should send now: the kernel path, or the shim."""
        return self.kernel_endpoint if self.kernel and self.kernel_endpoint else self.endpoint

    def wrap(self, payload: bytes) -> bytes:
        self.sent += 1
        return self.key.seal(self.token, TO_SERVER, self.sent, payload)


class _PeerSocket(DatagramProtocol):
    """The loopback socket WireGuard uses as one relayed peer's endpoint."""

    noisy = False  # no "Starting protocol" line per session: the daemon tells it

    def __init__(self, shim: RelayShim, session: RelaySession):
        self._shim = shim
        self._session = session
        self.wireguard = ("127.0.0.1", shim.wireguard_port)
        self.port: Any = None  # the reactor's UDP port, once listening
        self.batcher: DatagramBatcher | None = None
        self.send: Callable[[Any, Any], None] | None = None

    def startProtocol(self) -> None:
        self.batcher = DatagramBatcher(self._shim.reactor, self.transport)
        self.send = self.batcher.send

    def datagramReceived(self, data: bytes, addr) -> None:
        # Only our own WireGuard may use the relay through us.
        if addr != self.wireguard:
            return
        self._shim.send_upstream(self._session, data)


class _Upstream(DatagramProtocol):
    # Relay frames are at most MAX_FRAME bytes; a larger datagram is cut
    # (and then fails its MAC) instead of costing an 8 KiB buffer per read.
    maxPacketSize = MAX_FRAME + 1
    noisy = False

    def __init__(self, shim: RelayShim):
        self._shim = shim

    def datagramReceived(self, data: bytes, addr) -> None:
        self._shim.from_server(data, addr)


class RelayShim:
    # This shim takes frames sealed by the peer's side (the request says so).
    fastpath = True

    def __init__(
        self, reactor: Any, server_host: str, relay_port: int, wireguard_port: int, raw: Any = None,
        relay_hosts: tuple[str, ...] = (),
    ):
        # IReactorUDP and IReactorTime (and IReactorPluggableNameResolver
        # when the server is named, not numbered).
        self.reactor = reactor
        self._server_host = server_host
        self._relay_port = relay_port
        # The hosts a grant may name as its relay: the node's servers (wire.node.servers.server_hosts).
        self.relay_hosts = relay_hosts or (server_host,)
        self.server: tuple[str, int] | None = None
        self.wireguard_port = wireguard_port
        self._sessions: dict[str, RelaySession] = {}  # by peer node id
        self._by_token: dict[bytes, RelaySession] = {}
        self._by_peer_token: dict[bytes, RelaySession] = {}
        # Kernel endpoints of ended sessions, with when they ended (see RECENT_KERNEL_ENDPOINT).
        self._ended_kernel_endpoints: dict[str, float] = {}
        # Called with a peer's node id when the server says its side changed.
        self.on_peer_changed: Callable[[str], None] | None = None
        # Sends from WireGuard's port (wire.node.rawudp.RawUdpSender; None:
        # this node cannot, and never asks for the kernel path).
        self.raw = raw
        # Called with a peer's node id when its WireGuard endpoint should move
        # (on to the kernel path, or back to the shim).
        self.on_path_changed: Callable[[str], None] | None = None
        self._upstream = _Upstream(self)
        self._upstream_port: Any = None
        self._upstream_batcher: DatagramBatcher | None = None
        self._send_upstream: Callable[[Any, Any], None] | None = None
        self._keepalive = LoopingCall(self._send_keepalives)
        self._keepalive.clock = reactor
        self._start_lock = DeferredLock()
        # The relay stream over TCP (None: this node has none, UDP only).
        self.stream: Any = None
        self.over_tcp = False
        self.tcp_reason = ""  # why the frames go over TCP
        self._udp_heard_at = float("-inf")
        self._udp_tried_at: float | None = None  # first frame over UDP still waiting for an answer
        self._udp_check: Any = None
        self._stream_keepalive: Any = None

    @property
    def direct(self) -> bool:
        """Whether to ask for the kernel path: we can bind from WireGuard's port."""
        return self.raw is not None and self.raw.available

    # -- life ----------------------------------------------------------------

    async def start(self) -> None:
        # Grants arrive concurrently: the first starts the shim, the others
        # wait for it (resolving the server's name may take a while).
        await self._start_lock.acquire()
        try:
            if self._upstream_port is not None:
                return
            self.server = (await self._resolve(self._server_host), self._relay_port)
            self._upstream_port = self.reactor.listenUDP(0, self._upstream)
            enlarge_socket_buffers(self._upstream_port)
            self._upstream_batcher = DatagramBatcher(self.reactor, self._upstream_port)
            self._send_upstream = self._upstream_batcher.send
            self._keepalive.start(KEEPALIVE_INTERVAL, now=False)
        finally:
            self._start_lock.release()

    async def _resolve(self, host: str) -> str:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            return await self.reactor.resolve(host)

    def check_relay_host(self, grant: RelayGrant) -> None:
        """Raises RelayHostRefused unless the grant's relay is one of our servers."""
        if grant.relay_host is not None and grant.relay_host not in (self._server_host, *self.relay_hosts):
            raise RelayHostRefused(
                f"the grant names relay host {grant.relay_host!r}, which is none of this node's servers "
                f"({', '.join(self.relay_hosts)}); refused"
            )

    async def _relay_of(self, grant: RelayGrant) -> tuple[str, int]:
        """The grant's relay address: the replica it names, or (naming none) our own server's relay port."""
        assert self.server is not None  # start() found it
        if grant.relay_host is None:
            return self.server
        host = self.server[0] if grant.relay_host == self._server_host else await self._resolve(grant.relay_host)
        return (host, grant.relay_port or self._relay_port)

    async def stop(self) -> None:
        if self._keepalive.running:
            self._keepalive.stop()
        for call in (self._udp_check, self._stream_keepalive):
            if call is not None and call.active():
                call.cancel()
        self._udp_check = self._stream_keepalive = None
        if self.stream is not None:
            self.stream.want(False)
        self.over_tcp = False
        self._udp_heard_at, self._udp_tried_at = float("-inf"), None
        for peer in list(self._sessions):
            await self.remove(peer)
        if self._upstream_port is not None:
            await self._upstream_port.stopListening()
            if self._upstream_batcher is not None:
                self._upstream_batcher.cancel()
            self._upstream_port = None
            self._send_upstream = None

    # -- sessions ------------------------------------------------------------

    def sessions(self) -> dict[str, RelaySession]:
        return dict(self._sessions)

    def kernel_endpoints(self) -> set[str]:
        """Where WireGuard sending to (or hearing from) goes through the
        relay's kernel path: each live session's server port for our side,
        and those of sessions that ended lately."""
        now = self.reactor.seconds()
        live = {s.kernel_endpoint for s in self._sessions.values() if s.kernel_endpoint}
        return live | {e for e, ended in self._ended_kernel_endpoints.items() if now - ended < RECENT_KERNEL_ENDPOINT}

    def _remember_ended(self, endpoint: str | None) -> None:
        if endpoint is None:
            return
        now = self.reactor.seconds()
        ended = self._ended_kernel_endpoints
        ended.pop(endpoint, None)
        ended[endpoint] = now
        while len(ended) > MAX_RECENT_KERNEL_ENDPOINTS or (ended and now - next(iter(ended.values())) >= RECENT_KERNEL_ENDPOINT):
            del ended[next(iter(ended))]  # the oldest first: insertion order is end order

    async def add(self, grant: RelayGrant) -> str:
        """Start relaying to a peer; returns the endpoint to give WireGuard."""
        # Refused before anything changes: the session we have goes on.
        self.check_relay_host(grant)
        peer, token, key = grant.peer_node_id, grant.token, FrameKey(grant.key)
        existing = self._sessions.get(peer)
        if existing is not None and existing.token == token and not self.is_dead(peer):
            if existing.upstream_port is not None and grant.peer_token != existing.peer_token:
                self._set_peer(existing, grant)  # the peer's side changed; ours goes on
            if grant.direct_port != existing.direct_port:
                self._set_direct(existing, grant.direct_port)
            return existing.wg_endpoint
        if existing is not None:
            await self.remove(peer)
        await self.start()
        relay = await self._relay_of(grant)
        session = RelaySession(
            peer, grant.session_id, token, key, relay=relay, relay_replica=grant.relay_replica or "",
            relay_host=grant.relay_host or self._server_host, created=self.reactor.seconds(),
        )
        session.socket = _PeerSocket(self, session)
        session.socket.port = self.reactor.listenUDP(0, session.socket, interface="127.0.0.1")
        enlarge_socket_buffers(session.socket.port)
        if grant.peer_token is not None and grant.peer_key is not None:
            session.upstream_port = self.reactor.listenUDP(0, _Upstream(self))
            enlarge_socket_buffers(session.upstream_port)
            session.upstream_batcher = DatagramBatcher(self.reactor, session.upstream_port)
            session.upstream_send = session.upstream_batcher.send
            self._set_peer(session, grant)
        self._sessions[peer] = session
        self._by_token[token] = session
        if self.over_tcp and self.stream is not None:
            self.stream.want(True)
        # Tell the server where we are before WireGuard has anything to send.
        self.send_upstream(session, b"")
        self._set_direct(session, grant.direct_port)
        # The daemon tells it by the peer's name; the details are for debugging.
        log.debug(
            "relay session {session} for node {peer} via {host}:{port}",
            peer=peer,
            host=relay[0],
            port=relay[1],
            session=session.session_id,
        )
        return session.endpoint

    def _set_direct(self, session: RelaySession, port: int | None) -> None:
        """Our side's port on the session's relay (None: none): bind to it at once."""
        if port is None or not self.direct:
            self._remember_ended(session.kernel_endpoint)
            session.direct_port = session.kernel_endpoint = None
            self._set_kernel(session, False)
            return
        endpoint = f"{session.relay[0]}:{port}"
        if session.kernel_endpoint != endpoint:
            self._remember_ended(session.kernel_endpoint)
        session.direct_port, session.kernel_endpoint = port, endpoint
        self._bind(session)

    def _bind(self, session: RelaySession) -> None:
        """A bind frame from WireGuard's port to our side's port (a keepalive
        there: the server learns the address our WireGuard has on that flow)."""
        if session.direct_port is None or self.raw is None:
            return
        session.frames_out += 1
        self.raw.send(self.wireguard_port, (session.relay[0], session.direct_port), session.wrap(b""))

    def _set_kernel(self, session: RelaySession, on: bool) -> None:
        if on:
            session.kernel_heard = self.reactor.seconds()
        if on == session.kernel:
            return
        session.kernel = on
        log.info(
            "relay session {session} for node {peer}: {how}",
            session=session.session_id,
            peer=session.peer_node_id,
            how=f"the server's kernel forwards it; WireGuard sends to {session.kernel_endpoint}" if on else "back to the shim",
        )
        if self.on_path_changed is not None and self._sessions.get(session.peer_node_id) is session:
            self.on_path_changed(session.peer_node_id)

    def _set_peer(self, session: RelaySession, grant: RelayGrant) -> None:
        if session.peer_token is not None:
            self._by_peer_token.pop(session.peer_token, None)
        assert grant.peer_token is not None and grant.peer_key is not None
        session.peer_token, session.peer_key = grant.peer_token, FrameKey(grant.peer_key)
        session.peer_window = ReplayWindow()  # a new side counts from 1
        self._by_peer_token[grant.peer_token] = session

    async def remove(self, peer_node_id: str) -> None:
        session = self._sessions.get(peer_node_id)
        if session is not None:
            upstream = session.upstream_port
            port = self._drop(session)
            for one in (port, upstream):
                if one is not None:
                    await one.stopListening()

    def _drop(self, session: RelaySession):
        self._remember_ended(session.kernel_endpoint)
        self._sessions.pop(session.peer_node_id, None)
        self._by_token.pop(session.token, None)
        if session.peer_token is not None and self._by_peer_token.get(session.peer_token) is session:
            del self._by_peer_token[session.peer_token]
        if session.upstream_batcher is not None:
            session.upstream_batcher.cancel()
        session.upstream_port = session.upstream_send = None
        if not self._sessions and self.stream is not None:
            self.stream.want(False)  # nothing to carry; opened again with the next session
        port = session.socket.port if session.socket else None
        if session.socket is not None:
            session.socket.port = None
            session.socket.send = None
            if session.socket.batcher is not None:
                session.socket.batcher.cancel()
        return port

    def is_alive(self, peer_node_id: str) -> bool:
        session = self._sessions.get(peer_node_id)
        return session is not None and self.reactor.seconds() - session.last_heard <= ALIVE_WITHIN

    def is_dead(self, peer_node_id: str) -> bool:
        """Had time to hear from the server and did not (or went silent)."""
        session = self._sessions.get(peer_node_id)
        if session is None:
            return False
        now = self.reactor.seconds()
        return now - max(session.created, session.last_heard) > ALIVE_WITHIN

    async def move_to(self, server_host: str, relay_port: int) -> None:
        """The node uses another replica (wire.node.servers): every session
        was the old one's. Stop, and start at the new one with the next grant."""
        await self.stop()
        self._server_host, self._relay_port = server_host, relay_port
        self.server = None
        if self.stream is not None:
            self.stream.host = server_host

    async def reset(self) -> None:
        """Forget every session (the server restarted); they are asked for anew."""
        for peer in list(self._sessions):
            await self.remove(peer)

    # -- packets -------------------------------------------------------------

    @property
    def transport(self) -> str:
        """How frames reach the server now: "udp", or "tcp" (the relay stream)."""
        return "tcp" if self.over_tcp else "udp"

    def send_upstream(self, session: RelaySession, payload: bytes) -> None:
        if self._send_upstream is None or len(payload) > MAX_PAYLOAD:
            return
        session.frames_out += 1
        frame = session.wrap(payload)
        if self.over_tcp and self.stream is not None and session.relay == self.server:
            self.stream.send(frame)
            return
        self._send_udp(frame, session)

    def _send_udp(self, frame: bytes, session: RelaySession) -> None:
        assert self._send_upstream is not None
        if self._udp_tried_at is None and self._udp_heard_at == float("-inf"):
            self._udp_tried_at = self.reactor.seconds()
            if self.stream is not None and self._udp_check is None:
                self._udp_check = self.reactor.callLater(UDP_FALLBACK_AFTER, self._check_udp)
        send = session.upstream_send or self._send_upstream
        send(frame, session.relay)

    def _check_udp(self) -> None:
        """UDP_FALLBACK_AFTER after the first frame: was anything heard over UDP?"""
        self._udp_check = None
        if not self._sessions:
            self._udp_tried_at = None  # the next session's first frame asks again
            return
        if self._udp_heard_at == float("-inf") and not self.over_tcp:
            self._use_tcp(f"no answer from the server over UDP within {UDP_FALLBACK_AFTER:.0f}s: UDP to the server blocked")

    def _use_tcp(self, why: str) -> None:
        if self.stream is None or self.over_tcp:
            return
        self.over_tcp, self.tcp_reason = True, why
        log.warn("relay over TCP to the server: {why}", why=why)
        self.stream.want(True)
        self._stream_keepalives()

    def _use_udp(self) -> None:
        self.over_tcp, self.tcp_reason = False, ""
        log.info("relay over UDP again: the server answers over UDP")
        if self._stream_keepalive is not None and self._stream_keepalive.active():
            self._stream_keepalive.cancel()
        self._stream_keepalive = None
        # Every side tells the server at once that it is on UDP again.
        for session in self._sessions.values():
            self.send_upstream(session, b"")
        if self.stream is not None:
            self.stream.want(False)

    def _stream_keepalives(self) -> None:
        self._stream_keepalive = None
        if not self.over_tcp or self.stream is None:
            return
        for session in self._sessions.values():
            if session.relay == self.server:  # the stream reaches our own server only
                session.frames_out += 1
                self.stream.send(session.wrap(b""))

    def from_stream(self, frame: bytes) -> bool:
        """A frame the server sent over the relay stream (True: authentic)."""
        return self._take(frame)

    def stream_up(self) -> None:
        """The relay stream is (again) open: each side says so at once, or the
        server would send the peer's frames to the old address until the next round."""
        self._stream_keepalives()

    def from_server(self, data: bytes, addr) -> None:
        if self._take(data, addr):
            self._udp_heard_at = self.reactor.seconds()
            self._udp_tried_at = None
            if self.over_tcp:
                self._use_udp()

    def _take(self, data: bytes, source: tuple[str, int] | None = None) -> bool:
        """A frame from a relay (``source``: its UDP address; None: our own
        server's stream), checked and handed to WireGuard; True if authentic.
        Over UDP only the session's own relay may send its frames."""
        try:
            token, direction, counter = read_header(data)
        except FrameError:
            return False
        session = self._by_token.get(token) or self._by_peer_token.get(token)
        if session is not None and source is not None and tuple(source) != session.relay:
            return False
        session = self._by_token.get(token)
        if session is not None:
            # From the server: sealed for us.
            if direction != TO_NODE or not session.key.authentic(data) or not session.window.check_and_mark(counter):
                return False
            if len(data) <= OVERHEAD + 1:
                # A keepalive answer: empty, or one byte of flags (no
                # WireGuard message is that short).
                flags = data[HEADER_BYTES] if len(data) > OVERHEAD else 0
                self._set_kernel(session, bool(flags & KERNEL_PATH) and session.direct_port is not None)
                if flags:
                    if flags & REFRESH_PEER[0]:
                        self._peer_changed(session)
                    session.last_heard = self.reactor.seconds()
                    return True
        else:
            # Forwarded unchanged by the server's kernel: sealed by the peer's side.
            session = self._by_peer_token.get(token)
            if session is None or session.peer_key is None or direction != TO_SERVER:
                return False
            if not session.peer_key.authentic(data) or not session.peer_window.check_and_mark(counter):
                return False
        session.last_heard = self.reactor.seconds()
        session.frames_in += 1
        socket = session.socket
        if len(data) > OVERHEAD and socket is not None and socket.send is not None:
            socket.send(payload_view(data), socket.wireguard)
        return True

    def _peer_changed(self, session: RelaySession) -> None:
        now = self.reactor.seconds()
        if self.on_peer_changed is None or now - session.refresh_asked < REFRESH_EVERY:
            return
        session.refresh_asked = now
        self.on_peer_changed(session.peer_node_id)

    def _send_keepalives(self) -> None:
        now = self.reactor.seconds()
        for session in list(self._sessions.values()):
            # Keep the NAT mapping of WireGuard's flow, and the server's idea of it, fresh.
            self._bind(session)
            if session.kernel and now - session.kernel_heard > KERNEL_VALID:
                self._set_kernel(session, False)  # the server went silent
        if not self.over_tcp:
            now = self.reactor.seconds()
            if self._sessions and self._udp_heard_at != float("-inf") and now - self._udp_heard_at > UDP_DEAD_AFTER:
                self._use_tcp(f"the server stopped answering over UDP {now - self._udp_heard_at:.0f}s ago")
            else:
                for session in self._sessions.values():
                    self.send_upstream(session, b"")
                return
        # On the stream: probe UDP (an answer moves us back), then, unless
        # one came, tell the server again that each side is on the stream.
        for session in self._sessions.values():
            session.frames_out += 1
            self._send_udp(session.wrap(b""), session)
        if self._stream_keepalive is None or not self._stream_keepalive.active():
            self._stream_keepalive = self.reactor.callLater(UDP_PROBE_GRACE, self._stream_keepalives)
