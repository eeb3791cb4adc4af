"""The relay over TCP on the server (:mod:`wire.relaystream`): the Upgrade on
the API port, the streams, and one way to send a relayed frame wherever
its side is (a UDP address or a stream).

``UpgradeSniffer`` sits between the connection guard (and TLS) and the
HTTP site: a connection whose first bytes are the relay's request line is
taken over (head read, node authenticated, 101, records); every other
connection is handed to the site untouched, bytes and all. The relay table
decides everything about frames as it does for UDP datagrams; a stream is
only one more kind of address: ``(STREAM_HOST, number)``.

Bounds: a head of at most MAX_HEAD bytes within HEAD_TIMEOUT; at most
STREAMS_PER_NODE streams per node (a new one ends the oldest); a stream
whose node sends nothing for IDLE_TIMEOUT ends; a stream whose reader is
slow (the transport paused us) drops frames instead of buffering them;
a stream that sends too many frames the relay refuses ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin, WrappingFactory

from wire.relaystream import (
    MAX_HEAD,
    REQUEST_LINE,
    STREAM_HOST,
    UPGRADE,
    RecordReader,
    RecordWriter,
    StreamError,
    answer_head,
    parse_head,
    transports_under,
)
from wire.server.auth import AuthError
from wire.tlsserver import TLSServerProtocol

HEAD_TIMEOUT = 15.0
IDLE_TIMEOUT = 90.0  # nodes send a keepalive every 10 s
STREAMS_PER_NODE = 2
# Refused frames (forged, replayed, unknown) a stream may send in a row before it ends.
MAX_REFUSED_IN_A_ROW = 64
REFUSALS = ("relay_malformed", "relay_unknown", "relay_forged", "relay_replay")

Address = tuple[str, int]
Handle = Callable[[bytes, Address, str | None], tuple[str, bytes | None, Address | None]]


class RelayStreams:
    """Every open stream, by number and by node; sends frames to any side's address."""

    log = Logger()

    def __init__(self, clock: IReactorTime, handle: Handle, observe: Callable[[str], None] = lambda outcome: None):
        self.clock = clock
        self.handle = handle  # RelayTable.handle
        self.observe = observe
        # How frames reach UDP addresses: the relay port's sender, once it listens.
        self.udp_send: Callable[[bytes, Address], None] | None = None
        self._numbers = itertools.count(1)
        self._by_number: dict[int, RelayStream] = {}
        self._by_node: dict[str, list[RelayStream]] = {}
        self.dropped = 0  # frames for a stream too slow to take them

    def __len__(self) -> int:
        return len(self._by_number)

    def add(self, stream: RelayStream) -> int:
        number = next(self._numbers)
        self._by_number[number] = stream
        return number

    def claim(self, stream: RelayStream) -> None:
        """The stream carried an authentic frame of its node's: it counts as
        the node's now (and may end the oldest beyond STREAMS_PER_NODE). Only
        then: on an open server anyone may name a node, but not seal its frames."""
        mine = self._by_node.setdefault(stream.node_id, [])
        if stream in mine:
            return
        mine.append(stream)
        while len(mine) > STREAMS_PER_NODE:
            oldest = mine[0]
            oldest.end("a newer relay stream of the same node took over")
            self._forget(oldest)

    def remove(self, stream: RelayStream) -> None:
        self._forget(stream)

    def _forget(self, stream: RelayStream) -> None:
        if stream.number is not None and self._by_number.get(stream.number) is stream:
            del self._by_number[stream.number]
        mine = self._by_node.get(stream.node_id, [])
        if stream in mine:
            mine.remove(stream)
        if not mine:
            self._by_node.pop(stream.node_id, None)

    def end_node(self, node_id: str) -> int:
        """The node is gone: its streams end now (claimed or not)."""
        streams = [stream for stream in self._by_number.values() if stream.node_id == node_id]
        for stream in streams:
            stream.end("the node was removed")
        return len(streams)

    def send(self, data: bytes, destination: Address) -> None:
        """One sealed frame to wherever its side is: a stream or a UDP address."""
        if destination[0] == STREAM_HOST:
            stream = self._by_number.get(destination[1])
            if stream is None:
                return
            if not stream.write_frame(data):
                self.dropped += 1
            return
        if self.udp_send is not None:
            self.udp_send(data, destination)


class RelayStream(Protocol, TimeoutMixin):
    """One node's upgraded connection: records in, each handled as a frame from the stream's address."""

    def __init__(self, streams: RelayStreams, node_id: str):
        self.streams = streams
        self.node_id = node_id
        self.number: int | None = None
        self._reader = RecordReader()
        self._refused_in_a_row = 0
        self._ended = False
        self._claimed = False  # it carried an authentic frame (RelayStreams.claim)
        self._writer: RecordWriter | None = None

    def callLater(self, period: float, func: Any, *args: Any, **kw: Any) -> Any:
        return self.streams.clock.callLater(period, func, *args, **kw)

    def start(self, transport: Any, rest: bytes) -> None:
        """Take over a connection whose head was read (``rest`` came after it)."""
        self.makeConnection(transport)
        self.number = self.streams.add(self)
        self._writer = RecordWriter(self.streams.clock, transport)
        for under in transports_under(transport):
            if isinstance(under, TLSServerProtocol):
                under.carry_bulk()  # frames, not requests: whole TLS records
        self.setTimeout(IDLE_TIMEOUT)
        if rest:
            self.dataReceived(rest)

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        self.resetTimeout()
        try:
            frames = self._reader.feed(data)
        except StreamError as e:
            self.end(f"not the relay stream: {e}")
            return
        assert self.number is not None
        source = (STREAM_HOST, self.number)
        for frame in frames:
            outcome, reply, destination = self.streams.handle(frame, source, self.node_id)
            self.streams.observe(outcome)
            if outcome in REFUSALS:
                self._refused_in_a_row += 1
                if self._refused_in_a_row > MAX_REFUSED_IN_A_ROW:
                    self.end(f"{self._refused_in_a_row} frames in a row the relay refused")
                    return
                continue
            self._refused_in_a_row = 0
            if not self._claimed:
                self._claimed = True
                self.streams.claim(self)
            if reply is not None and destination is not None:
                self.streams.send(reply, destination)

    def write_frame(self, frame: bytes) -> bool:
        """False (dropped) when the reader is slow: memory stays bounded, the tunnel inside recovers."""
        if self._ended or self._writer is None:
            return False
        return self._writer.add(frame)

    def _cancel_flush(self) -> None:
        if self._writer is not None:
            self._writer.cancel()

    def end(self, why: str) -> None:
        if self._ended:
            return
        self._ended = True
        self.streams.log.info("relay stream of node {node} ends: {why}", node=self.node_id[:12], why=why)
        self.streams.remove(self)
        self.setTimeout(None)
        self._cancel_flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        self.end(f"nothing from the node for {IDLE_TIMEOUT:.0f}s")

    def connectionLost(self, reason: Any = None) -> None:
        self._ended = True
        self.setTimeout(None)
        self._cancel_flush()
        self.streams.remove(self)


class UpgradeSniffer(Protocol, TimeoutMixin):
    """Tells the relay's Upgrade from an HTTP request on the first bytes, and
    either takes the connection over or gives it, bytes and all, to the site."""

    transport: Any

    def __init__(self, factory: UpgradeSnifferFactory):
        self.factory = factory
        self._buffer = b""
        self._handed: Any = None  # the site's protocol, once handed over
        self._stream: RelayStream | None = None
        self._done = False

    def callLater(self, period: float, func: Any, *args: Any, **kw: Any) -> Any:
        return self.factory.clock.callLater(period, func, *args, **kw)

    def connectionMade(self) -> None:
        self.setTimeout(HEAD_TIMEOUT)

    def dataReceived(self, data: bytes) -> None:
        if self._handed is not None:
            self._handed.dataReceived(data)
            return
        if self._stream is not None:
            self._stream.dataReceived(data)
            return
        if self._done:
            return
        self._buffer += data
        prefix = self._buffer[: len(REQUEST_LINE) + 2]
        if not (REQUEST_LINE + b"\r\n").startswith(prefix):
            self._hand_to_site()
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end > MAX_HEAD or (end < 0 and len(self._buffer) > MAX_HEAD):
            self._refuse(431, "request head too large")
            return
        if end < 0:
            return
        head, rest = self._buffer[:end], self._buffer[end + 4 :]
        self._buffer = b""
        self._upgrade(head, rest)

    def _hand_to_site(self) -> None:
        self.setTimeout(None)
        protocol = self.factory.site.buildProtocol(self.transport.getPeer())
        if protocol is None:
            self.transport.loseConnection()
            self._done = True
            return
        self._handed = protocol
        protocol.makeConnection(self.transport)
        buffered, self._buffer = self._buffer, b""
        if buffered:
            protocol.dataReceived(buffered)

    def _upgrade(self, head: bytes, rest: bytes) -> None:
        try:
            _, headers = parse_head(head)
        except StreamError as e:
            self._refuse(400, str(e))
            return
        if headers.get(b"upgrade", b"").lower() != UPGRADE or b"upgrade" not in headers.get(b"connection", b"").lower():
            self._refuse(426, f"this path is the relay stream: Upgrade: {UPGRADE.decode()} expected")
            return
        node_id = headers.get(b"x-wire-node", b"").decode("ascii", "replace")
        authorization = headers.get(b"authorization", b"")
        credential = authorization[7:].decode("ascii", "replace") if authorization[:7].lower() == b"bearer " else None
        try:
            authenticated = self.factory.authenticate(credential, node_id)
        except AuthError as e:
            self._refuse(e.status, str(e))
            return
        self.setTimeout(None)
        self.transport.write(answer_head(101, ""))
        self._stream = RelayStream(self.factory.streams, authenticated)
        self._stream.start(self.transport, rest)

    def _refuse(self, status: int, reason: str) -> None:
        self._done = True
        self.setTimeout(None)
        self.transport.write(answer_head(status, reason))
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        self._done = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        if self._handed is not None:
            self._handed.connectionLost(reason)
        elif self._stream is not None:
            self._stream.connectionLost(reason)

    # The site's protocol may be a producer/consumer user of the transport;
    # everything else it needs it reaches through the transport itself.


class UpgradeSnifferFactory(WrappingFactory):
    """The API's factory with the relay stream beside it on the same port."""

    protocol = UpgradeSniffer  # type: ignore[assignment]

    def __init__(self, site: Any, streams: RelayStreams, authenticate: Callable[[str | None, str], str], clock: IReactorTime):
        super().__init__(site)
        self.site = site
        self.streams = streams
        # (credential, claimed node id) -> the node id the stream carries; raises AuthError.
        self.authenticate = authenticate
        self.clock = clock

    def buildProtocol(self, addr: Any) -> UpgradeSniffer:  # type: ignore[override]
        return UpgradeSniffer(self)
