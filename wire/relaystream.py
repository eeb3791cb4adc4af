"""The relay over TCP: relay frames in a TLS stream on the server's API port,
for nodes whose networks block UDP.

A node opens the stream with an HTTP/1.1 Upgrade on the API's own port (so a
server on 443 serves both, and a proxy's CONNECT tunnel carries it like any
HTTPS request)::

    GET /relay/stream HTTP/1.1
    Host: vpn.example.org
    Connection: Upgrade
    Upgrade: wire-relay/1
    Authorization: Bearer CREDENTIAL      (not on an open server)
    X-Wire-Node: NODE_ID

and the server answers ``HTTP/1.1 101 Switching Protocols`` (``Upgrade:
wire-relay/1``), or an error status with a one-line reason, and closes.
After the 101 both directions carry *records*: a 2-byte big-endian length,
then one relay frame exactly as the UDP relay carries it
(:mod:`wire.relayproto`: token, direction, counter, payload, MAC). So every
property of the UDP relay holds: only a side's key holder can send as it,
the server checks each frame's MAC and replay window, re-seals it for the
other side, and never sees inside the WireGuard packet. The stream itself
only says where a side is: a frame from it makes the stream that side's
address, as a datagram makes its source the address of a side on UDP, and
a stream carries only the sides of the node it authenticated as.

A record shorter than a frame's overhead or longer than the largest frame
ends the stream (a peer speaking something else); so does a request head
longer than :data:`MAX_HEAD`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from wire.relayproto import MAX_FRAME, OVERHEAD

PATH = b"/relay/stream"
UPGRADE = b"wire-relay/1"
REQUEST_LINE = b"GET " + PATH + b" HTTP/1.1"
MAX_HEAD = 8192
_LENGTH = struct.Struct("!H")
# What the stream's TCP connection holds, not yet taken by the kernel, before
# it pauses the writer (and frames drop). Twisted's 64 KiB is less than one
# turn of reading a relay socket (up to 256 KiB, Twisted's UDP
# maxThroughput): bursts the kernel was about to take dropped frames (2,800
# in 8 s of iperf in the lab, each one halving the tunnel's TCP window).
# Room for two turns; still a bound.
STREAM_BUFFER = 512 * 1024
# The stream's place in the relay's address book: (STREAM_HOST, stream number).
STREAM_HOST = "relay-tcp"


class StreamError(ValueError):
    """The other end does not speak the relay stream; ``str()`` says how."""


def record(frame: bytes) -> bytes:
    """One frame as a record on the stream."""
    return _LENGTH.pack(len(frame)) + bytes(frame)


class RecordReader:
    """Records out of a byte stream, however it is cut; bounded memory."""

    def __init__(self) -> None:
        self._rest = b""  # the start of a record the next data finishes

    def feed(self, data: bytes) -> list[bytes]:
        """The complete frames ``data`` finishes (raises StreamError on a bad record)."""
        # Frames are sliced from the data as it came (one copy each): a
        # TLS read brings about ten of them, and a record cut between two.
        if self._rest:
            data = self._rest + data
        frames = []
        start, end = 0, len(data)
        while end - start >= 2:
            (length,) = _LENGTH.unpack_from(data, start)
            if not OVERHEAD <= length <= MAX_FRAME:
                raise StreamError(f"a record of {length} bytes (a frame is {OVERHEAD} to {MAX_FRAME})")
            if end - start - 2 < length:
                break
            frames.append(bytes(data[start + 2 : start + 2 + length]))
            start += 2 + length
        self._rest = bytes(data[start:])
        return frames


@implementer(IPushProducer)
class RecordWriter:
    """The frames of one reactor turn, written as one: one TLS record (up to
    16 KiB) for many frames instead of one each (both ends of a stream).
    The transport's producer too: while its buffer is full, frames are
    dropped instead of queued (memory stays bounded; the tunnel inside recovers)."""

    def __init__(self, clock: Any, transport: Any):
        self._clock = clock
        self._transport = transport
        _tune_tcp(transport)
        self._pending: list[bytes] = []
        self._flush: Any = None
        self._paused = False
        transport.registerProducer(self, True)

    def add(self, frame: bytes) -> bool:
        """False (dropped) while the reader is slow, or once the connection is gone."""
        if self._paused or self._transport is None:
            return False
        self._pending += (_LENGTH.pack(len(frame)), frame)  # one copy, in the join
        if self._flush is None:
            self._flush = self._clock.callLater(0, self._write)
        return True

    def _write(self) -> None:
        self._flush = None
        pending, self._pending = self._pending, []
        if pending and self._transport is not None:
            self._transport.write(b"".join(pending))

    def cancel(self) -> None:
        """The connection is gone: nothing more is written, no timer is left."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush, self._pending, self._transport = None, [], None

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False

    def stopProducing(self) -> None:
        self._paused = True


def transports_under(transport: Any) -> Iterator[Any]:
    """``transport`` and each one it writes through (protocol wrappers such
    as TLS or the connection guard), down to the TCP connection."""
    while transport is not None:
        yield transport
        transport = getattr(transport, "transport", None)


def _tune_tcp(transport: Any) -> None:
    for under in transports_under(transport):
        if isinstance(under, FileDescriptor):  # the TCP connection (not a test's fake)
            under.bufferSize = STREAM_BUFFER
            # A turn's frames are one write already: Nagle would only hold
            # its last segment (and the tunnel's small ACKs) for the peer's ACK.
            set_no_delay = getattr(under, "setTcpNoDelay", None)
            if set_no_delay is not None:
                set_no_delay(True)


def request_head(host: str, node_id: str, credential: str | None) -> bytes:
    """The Upgrade request a node sends (``host`` as the URL names the server)."""
    lines = [
        REQUEST_LINE,
        b"Host: " + host.encode("idna" if not _is_ascii(host) else "ascii"),
        b"Connection: Upgrade",
        b"Upgrade: " + UPGRADE,
        b"X-Wire-Node: " + node_id.encode("ascii"),
    ]
    if credential:
        lines.append(b"Authorization: Bearer " + credential.encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_head(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The first line and the headers (names lower-case) of an HTTP head
    (without its final blank line); raises StreamError when it is none."""
    lines = head.split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise StreamError("a header line that is not NAME: VALUE")
        headers[name.lower()] = value.strip()
    return lines[0], headers


def response_status(head: bytes) -> tuple[int, str]:
    """The status and reason of the server's answer head."""
    first, _ = parse_head(head)
    parts = first.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise StreamError(f"not an HTTP answer: {first[:60]!r}")
    reason = parts[2].decode("utf-8", "replace") if len(parts) > 2 else ""
    return int(parts[1]), reason[:200]


def answer_head(status: int, reason: str) -> bytes:
    """The server's answer: 101 switches, anything else says why and closes."""
    if status == 101:
        return b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + UPGRADE + b"\r\n\r\n"
    body = reason.encode("utf-8", "replace")[:200] + b"\n"
    return (
        f"HTTP/1.1 {status} {reason[:60]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("utf-8", "replace") + body


def _is_ascii(text: str) -> bool:
    return all(ord(c) < 128 for c in text)
