"""A lean HTTP/1.1 client for load generation: one request at a time per
connection, keep-alive or not, byte-counted.

Why not treq: the load generator simulates thousands of nodes on one core,
and what it measures is the *server*. treq/Agent cost several times more CPU
per request than the server's own handling of a heartbeat, so with them the
load process, not the server, would set every number. This client does only
what the coordination API needs: a request line, a few headers, a JSON body,
and answers framed by Content-Length, chunked encoding or connection close.

A request may ask for its answer line by line (``on_line``): a chunked
``application/x-ndjson`` answer (the netmap stream, ``GET /peers?...&stream=1``)
then hands each complete ``\n``-terminated line of its body to the callback
as it arrives, with its arrival time, and the request's Deferred fires once
the answer ends (its ``body`` empty, ``lines`` counted). Any other answer to
such a request (an error, a server that does not stream) is read whole, as
for every other request. A line, like a body, is at most MAX_BODY_BYTES.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 256 * 1024 * 1024
STREAM_TYPE = b"application/x-ndjson"

# A streamed answer's line and the time.monotonic() it arrived at.
LineCallback = Callable[[bytes, float], None]


class HttpError(Exception):
    """The connection failed or the answer could not be read."""


class LostMidAnswer(HttpError):
    """The connection was lost after part of the answer (a stream's head or lines) came."""


class TimedOut(HttpError):
    """The answer (a whole stream) did not end within the request's timeout."""


class LineRefused(Exception):
    """An ``on_line`` callback raised: the answer is abandoned (the
    connection dropped) and the request fails with the callback's error."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class NotSent(HttpError):
    """The connection was gone before the request could be answered; no byte
    of an answer arrived, so sending it again is safe."""


@dataclass
class Counters:
    """Traffic as the simulated nodes see it (application bytes, not TCP/IP)."""

    bytes_in: int = 0
    bytes_out: int = 0
    connects: int = 0
    connect_failures: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    # The netmap streams' lines and how each stream ended (bench/nodes.py).
    netmap: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n

    def snapshot(self) -> dict:
        return {
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "requests": dict(self.requests),
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "netmap": dict(self.netmap),
        }


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes  # empty for a streamed answer: its lines went to on_line
    done_at: float  # time.monotonic() when the last byte was read
    lines: int = 0  # a streamed answer's lines given to on_line
    streamed: bool = False  # the answer was a line stream (on_line asked, ndjson answered)


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE = range(7)


class HttpConnection(Protocol):
    """One TCP connection; ``request`` may be called again once an answer is in."""

    def __init__(self, counters: Counters, host_header: bytes):
        self.transport = None
        self._counters = counters
        self._host = host_header
        self._buffer = bytearray()
        self._state = _HEAD
        self._pending: Deferred | None = None
        self._status = 0
        self._remaining = 0
        self._body = bytearray()
        self._keep_alive = True
        self._got_bytes = False
        self._on_line: LineCallback | None = None
        self._streaming = False  # this answer's body goes line by line to _on_line
        self._lines = 0
        self.connected_ok = False
        self.closed = False
        self.uses = 0

    # -- requests ------------------------------------------------------------

    def request(
        self,
        method: bytes,
        path: bytes,
        body: bytes | None = None,
        close: bool = False,
        headers: bytes = b"",
        on_line: LineCallback | None = None,
    ) -> Deferred:
        """``headers``: extra header lines, each ending in CRLF (``Authorization: ...``).
        ``on_line``: a chunked ndjson answer's lines, each as it arrives (see the module's docstring)."""
        if self._pending is not None:
            raise RuntimeError("one request at a time on a connection")
        if self.closed:
            raise NotSent("connection already closed")
        head = [method, b" ", path, b" HTTP/1.1\r\nHost: ", self._host, b"\r\nUser-Agent: wire-bench\r\n", headers]
        if body is not None:
            head += [b"Content-Type: application/json\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        if close:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        if body is not None:
            head.append(body)
        data = b"".join(head)
        self._pending = Deferred()
        self._state = _HEAD
        self._got_bytes = False
        self._keep_alive = not close
        self._on_line = on_line
        self._streaming = False
        self._lines = 0
        self.uses += 1
        self._counters.bytes_out += len(data)
        self.transport.write(data)
        return self._pending

    def progress(self) -> str:
        """How far the pending answer came, for a timeout's message."""
        if not self._got_bytes:
            return "no byte of the answer yet"
        if self._state == _HEAD:
            return f"{len(self._buffer)} bytes of its head"
        return f"status {self._status}, {self._lines} lines, {len(self._body)} bytes of body"

    def fail_and_abort(self, error: Exception) -> None:
        """Give up on the pending request (a timeout) and drop the connection."""
        self._fail(error)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abortConnection()

    # -- Protocol ------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ok = True
        self._counters.connects += 1

    def dataReceived(self, data: bytes) -> None:
        self._counters.bytes_in += len(data)
        if self._pending is None:
            # Nothing asked: the server is closing an idle connection, or misbehaving.
            self.transport.loseConnection()
            return
        self._got_bytes = True
        self._buffer += data
        try:
            self._parse()
        except HttpError as e:
            self._fail(e)
            self.transport.abortConnection()
        except LineRefused as e:
            self._fail(e.error)
            self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        self.closed = True
        if self._pending is None:
            return
        if self._state == _UNTIL_CLOSE and reason is not None and reason.check(ConnectionDone):
            self._body += self._buffer
            self._complete()
            return
        if not self._got_bytes:
            self._fail(NotSent(f"connection lost before an answer: {reason.getErrorMessage() if reason else '?'}"))
        else:
            self._fail(LostMidAnswer(f"connection lost mid-answer: {reason.getErrorMessage() if reason else '?'}"))

    # -- parsing -------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buffer
        while self._pending is not None:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise HttpError("response head too large")
                    return
                self._read_head(bytes(buf[:end]))
                del buf[: end + 4]
            elif state == _LENGTH:
                take = min(self._remaining, len(buf))
                self._body += buf[:take]
                del buf[:take]
                self._remaining -= take
                if self._remaining:
                    return
                self._complete()
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                try:
                    size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                except ValueError:
                    raise HttpError("bad chunk size")
                del buf[: end + 2]
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                take = min(self._remaining, len(buf))
                self._body += buf[:take]
                del buf[:take]
                self._remaining -= take
                if self._streaming:
                    self._give_lines()
                if len(self._body) > MAX_BODY_BYTES:
                    raise HttpError("response line too large" if self._streaming else "response body too large")
                if self._remaining:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise HttpError("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    self._complete()
            elif state == _UNTIL_CLOSE:
                self._body += buf
                del buf[:]
                if len(self._body) > MAX_BODY_BYTES:
                    raise HttpError("response body too large")
                return

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {lines[0][:60]!r}")
        try:
            self._status = int(parts[1])
        except ValueError:
            raise HttpError(f"bad status line {lines[0][:60]!r}")
        http10 = parts[0] == b"HTTP/1.0"
        length = None
        chunked = False
        connection = b""
        content_type = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                connection = value.strip().lower()
            elif name == b"content-type":
                content_type = value.split(b";", 1)[0].strip().lower()
        if connection == b"close" or (http10 and connection != b"keep-alive"):
            self._keep_alive = False
        self._body = bytearray()
        self._streaming = self._on_line is not None and chunked and self._status == 200 and content_type == STREAM_TYPE
        if chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            if length > MAX_BODY_BYTES:
                raise HttpError("response body too large")
            self._remaining = length
            self._state = _LENGTH
            if length == 0:
                self._complete()
        else:
            self._keep_alive = False
            self._state = _UNTIL_CLOSE

    def _give_lines(self) -> None:
        """The streamed body's complete lines, to the callback (the rest waits in _body)."""
        body = self._body
        end = body.find(b"\n")
        if end < 0:
            return
        deliver = self._on_line
        assert deliver is not None
        at = time.monotonic()
        start = 0
        while end >= 0:
            line = bytes(body[start:end])
            start = end + 1
            if line.strip():
                self._lines += 1
                try:
                    deliver(line, at)
                except Exception as e:
                    raise LineRefused(e) from e
            if self._pending is None:
                return  # the callback gave up on the request
            end = body.find(b"\n", start)
        del body[:start]

    def _complete(self) -> None:
        if self._streaming and self._body.strip():
            # A last line without its newline is still a line.
            self._body += b"\n"
            self._give_lines()
        streamed, self._streaming, self._on_line = self._streaming, False, None
        d, self._pending = self._pending, None
        if d is None:
            return
        response = Response(self._status, b"" if streamed else bytes(self._body), time.monotonic(), self._lines, streamed)
        self._body = bytearray()
        self._state = _HEAD
        self._counters.count(self._counters.statuses, str(self._status))
        if not self._keep_alive:
            self.transport.loseConnection()
        d.callback(response)

    def _fail(self, error: Exception) -> None:
        d, self._pending = self._pending, None
        if d is not None:
            d.errback(error)


class _ConnectionFactory(Factory):
    noisy = False  # thousands of connects: no "Starting factory" log lines

    def __init__(self, counters: Counters, host_header: bytes):
        self._counters = counters
        self._host = host_header

    def buildProtocol(self, addr):
        return HttpConnection(self._counters, self._host)


class Connector:
    """Opens connections to one server, at most ``concurrency`` connects at once.

    Pacing connects keeps the load from piling up in the server's accept
    queue faster than a busy server drains it (a dropped handshake costs a
    second: the kernel's retransmit timer, not the server's latency).

    ``tls``: a client TLS context factory (the bench does not check the
    server's certificate: it is a throwaway self-signed one on loopback).
    ``source`` given to :meth:`connect` binds the client socket to that
    loopback address, so each simulated node has its own address, as real
    nodes do (per-address rate limits then see one node each).
    """

    def __init__(
        self,
        reactor,
        host: str,
        port: int,
        counters: Counters,
        concurrency: int = 64,
        timeout: float = 10,
        tls=None,
        unix_path: str | None = None,
    ):
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout
        self._tls = tls
        self._unix_path = unix_path
        self._factory = _ConnectionFactory(counters, f"{host}:{port}".encode() if not unix_path else b"localhost")
        self._semaphore = DeferredSemaphore(concurrency)
        self._counters = counters

    def _endpoint(self, source: str | None):
        bind = (source, 0) if source else None
        if self._unix_path:
            return UNIXClientEndpoint(self._reactor, self._unix_path, timeout=self._timeout)
        if self._tls is not None:
            return SSL4ClientEndpoint(self._reactor, self._host, self._port, self._tls, timeout=self._timeout, bindAddress=bind)
        return TCP4ClientEndpoint(self._reactor, self._host, self._port, timeout=self._timeout, bindAddress=bind)

    async def connect(self, source: str | None = None) -> HttpConnection:
        await self._semaphore.acquire()
        try:
            conn = await self._endpoint(source).connect(self._factory)
        except Exception as e:
            self._counters.connect_failures += 1
            raise HttpError(f"connect failed: {e}") from e
        finally:
            self._semaphore.release()
        return conn


def client_tls():
    """A TLS client context for the bench (no certificate check: see Connector)."""
    from twisted.internet.ssl import CertificateOptions

    return CertificateOptions(verify=False)
