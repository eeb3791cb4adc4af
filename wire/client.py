"""The one place that speaks HTTP: to the coordination server, and to the
local node daemon's control socket."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferTimeout, fail, succeed
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError, TimeoutError
from OpenSSL import SSL
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, RequestTransmissionFailed, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from wire.protocol.dns import parse_dns_digest
from wire.protocol.filter import parse_filter_digest
from wire.protocol.report import NodeReport
from wire.protocol import (
    LeaveRequest,
    NetmapAnswer,
    PathFailure,
    PathReport,
    PathReportAnswer,
    ProtocolError,
    RegisterAnswer,
    Registration,
    RelayGrant,
    RelayRequest,
    error_message,
    parse_cursor_text,
    parse_node_id,
)
from wire.proxy import ProxyConfig, ProxyEndpointFactory
from wire.tls import client_policy

T = TypeVar("T")

# The long-poll's own wait, plus slack for the network.
LONGPOLL_WAIT = 25.0
# Until an answer's headers have arrived.
REQUEST_TIMEOUT = 10.0
# Until the whole answer (headers and body) has arrived: a server that
# trickles its body, or stalls in it, is dropped like one that never answers.
# A full netmap of a large mesh is megabytes: time to carry them on a slow link.
ANSWER_TIMEOUT = 30.0
# A netmap of 10,000 peers is about 4.3 MB (6 MB with a path word on every
# pair): 16 MiB holds a mesh of 25,000 and more. Answers that hold one thing
# (a registration, a grant, a key) are far smaller.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_SMALL_RESPONSE_BYTES = 1024 * 1024
# No answer of ours nests deeper than a handful of levels; much deeper is an
# attack on the JSON decoder (its recursion) or on whoever walks the result.
MAX_JSON_DEPTH = 32
# A netmap stream's answers that may wait unread before its connection stops being read.
STREAM_BACKLOG = 8
NETMAP_STREAM_TYPE = b"application/x-ndjson"


class ServerUnreachable(Exception):
    """No answer from the server (refused, timed out, name not found)."""

    tls_refused = False


class TLSRefused(ServerUnreachable):
    """The server's certificate is not the one we trust: we did not talk."""

    tls_refused = True


class ServerError(Exception):
    """The server answered with an error; ``str()`` is its message."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"server said {status}: {message}")
        self.status = status
        self.message = message
        # For 429: how long the server asks us to wait.
        self.retry_after = retry_after


class BadAnswer(ServerError):
    """The server answered 200, but not what the protocol says it answers."""

    def __init__(self, what: str, error: ProtocolError):
        super().__init__(200, f"bad answer to {what}: {error}")
        self.error = error


def make_http_client(
    reactor, persistent: bool = True, tls_fingerprint: str = "", proxy: ProxyConfig | None = None
) -> HTTPClient:
    """An HTTP client; for https, pinned to ``tls_fingerprint`` when given,
    else verifying the certificate by hostname against the system's CAs.
    With ``proxy``, through its CONNECT tunnel (for the hosts it applies to)."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = 2
    # A GET whose kept-alive connection dies fails to its caller, not sent
    # again unseen: after TCP keepalive found the server gone, that second
    # try would wait a whole connect timeout first. Callers own retries (the
    # daemon's loops, with backoff and failover to another replica).
    pool.retryAutomatically = False
    # Our endpoints even without a proxy: their connections carry TCP keepalive (wire.tcpkeepalive).
    endpoints = ProxyEndpointFactory(reactor, proxy, client_policy(tls_fingerprint), REQUEST_TIMEOUT)
    return HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))


@implementer(IAgentEndpointFactory)
class _UnixEndpointFactory:
    def __init__(self, reactor, path: str):
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(self._reactor, self._path, timeout=REQUEST_TIMEOUT)


class JsonHttp:
    """JSON requests to one base URL, with errors turned into ServerUnreachable/ServerError."""

    def __init__(self, http: HTTPClient, server_url: str, credential: str | None = None, clock=None):
        self._http = http
        self.server_url = server_url.rstrip("/")
        self._credential = credential
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock

    async def _request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        timeout: float = REQUEST_TIMEOUT,
        limit: int = MAX_SMALL_RESPONSE_BYTES,
        deadline: float | None = None,
    ) -> Any:
        """``method path``'s answer, a JSON object: its headers within
        ``timeout`` s, all of it within ``deadline`` s (``timeout`` plus
        ANSWER_TIMEOUT unless given), at most ``limit`` bytes of body."""
        deadline = timeout + ANSWER_TIMEOUT if deadline is None else deadline
        exchange = _Exchange()
        fetching = Deferred.fromCoroutine(self._fetch(exchange, method, path, body, limit))
        why: list[str] = []

        def stop(reason: str) -> None:
            why.append(reason)
            fetching.cancel()

        def on_headers_timeout() -> None:
            if not exchange.headers_in:
                stop("headers")

        # So that a caller's cancel is told from our deadlines.
        answer: Deferred = Deferred(lambda _: stop("caller"))
        fetching.chainDeferred(answer)
        timers = [self._clock.callLater(timeout, on_headers_timeout), self._clock.callLater(deadline, stop, "deadline")]
        try:
            decoded = await answer
        except Exception:
            if why and why[0] == "caller":
                raise CancelledError()
            if why and why[0] == "headers":
                raise ServerUnreachable(f"{self.server_url} did not answer within {timeout:g}s")
            if why:
                raise ServerUnreachable(f"{self.server_url}: answer to {method} {path} took longer than {deadline:g}s")
            raise
        finally:
            for timer in timers:
                if timer.active():
                    timer.cancel()
        return decoded

    async def _fetch(self, exchange: _Exchange, method: str, path: str, body: dict | None, limit: int) -> dict:
        response = await self._send(method, path, body)
        exchange.headers_in = True
        return await self._read_answer(response, f"{method} {path}", limit)

    async def _send(self, method: str, path: str, body: dict | None = None):
        """The response to ``method path`` (its head; the body is still to read)."""
        url = self.server_url + path
        data = json.dumps(body).encode() if body is not None else None
        headers: dict[bytes | str, list[bytes | str]] = {}
        if data is not None:
            headers[b"content-type"] = [b"application/json"]
        if self._credential:
            headers[b"authorization"] = [b"Bearer " + self._credential.encode()]
        with self._unreachable_on_failure():
            return await self._http.request(method, url, data=data, headers=headers, unbuffered=True)

    async def _read_answer(self, response, what: str, limit: int) -> dict:
        """``response``'s body as one JSON object; a server's error raised as ServerError."""
        try:
            with self._unreachable_on_failure():
                content = await _read_body(response, limit)
        except AnswerTooLarge:
            raise _bad_answer(response.code, what, f"answer larger than {limit} bytes")
        decoded = _decode(response.code, what, content)
        if response.code >= 400:
            raise ServerError(response.code, error_message(decoded), _retry_after(response))
        if not isinstance(decoded, dict):
            raise _bad_answer(response.code, what, "answer is not a JSON object")
        return decoded

    def _unreachable_on_failure(self) -> _Unreachable:
        return _Unreachable(self.server_url)


_CONNECTION_FAILURES = (
    ConnectError,
    DNSLookupError,
    TimeoutError,
    DeferTimeout,
    ResponseFailed,
    RequestTransmissionFailed,
    ConnectingCancelledError,
)


class _Unreachable:
    """``with _Unreachable(url):`` turns a connection's failure into ServerUnreachable (TLSRefused for a wrong certificate)."""

    def __init__(self, server_url: str):
        self._server_url = server_url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, _CONNECTION_FAILURES):
            if _tls_refused(error):
                raise TLSRefused(f"{self._server_url}: {TLS_REFUSED}") from error
            raise ServerUnreachable(f"{self._server_url} is unreachable: {_reason(error)}") from error


class _Exchange:
    """How far one request got (for telling its two deadlines apart)."""

    headers_in = False


class AnswerTooLarge(Exception):
    """More body arrived (or was announced) than the limit: we hung up."""


class _BoundedBody(Protocol):
    """Collects a response body up to ``limit`` bytes, and hangs up at once
    when more arrives (or a Content-Length says more will)."""

    def __init__(self, limit: int, length: int | object, finished: Deferred):
        self._limit = limit
        self._length = length
        self._finished = finished
        self._chunks: list[bytes] = []
        self._received = 0

    def connectionMade(self) -> None:
        # A length not known (UNKNOWN_LENGTH) is counted as it arrives.
        if isinstance(self._length, int) and self._length > self._limit:
            self._give_up(AnswerTooLarge())

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._give_up(AnswerTooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            # PotentialDataLoss: an HTTP/1.0 body ends when its connection does.
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(ResponseFailed([reason]))

    def hang_up(self) -> None:
        """Stop reading: the connection is closed, never returned to the pool."""
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]  # an IPushProducer too

    def _give_up(self, error: Exception) -> None:
        self._chunks = []
        self.hang_up()
        if not self._finished.called:
            self._finished.errback(error)


def _read_body(response, limit: int) -> Deferred:
    """``response``'s body, at most ``limit`` bytes of it (else AnswerTooLarge);
    cancelling hangs up."""
    finished: Deferred = Deferred(lambda _: reader.hang_up())
    reader = _BoundedBody(limit, response.length, finished)
    response.deliverBody(reader)
    return finished


def _decode(status: int, what: str, content: bytes) -> Any:
    """An answer's JSON: UTF-8, no deeper than MAX_JSON_DEPTH; else a clean error."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_answer(status, what, "answer is not UTF-8")
    try:
        decoded = json.loads(text)
    except RecursionError:
        raise _bad_answer(status, what, f"answer nested deeper than {MAX_JSON_DEPTH} levels")
    except ValueError:
        raise _bad_answer(status, what, "answer is not JSON")
    if _deeper_than(decoded, MAX_JSON_DEPTH):
        raise _bad_answer(status, what, f"answer nested deeper than {MAX_JSON_DEPTH} levels")
    return decoded


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects in ``value`` nest deeper than ``limit`` (without recursion)."""
    level = [value]
    for _ in range(limit + 1):
        inner: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                inner.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list):
                inner.extend(v for v in item if isinstance(v, (dict, list)))
        if not inner:
            return False
        level = inner
    return True


def _bad_answer(status: int, what: str, problem: str) -> ServerError:
    """A body we will not act on: a BadAnswer for a success, else the server's error as we could read it."""
    if status >= 400:
        return ServerError(status, f"{what}: {problem}")
    return BadAnswer(what, ProtocolError(None, problem))


class CoordinationClient(JsonHttp):
    """The coordination server's API, in wire.protocol's types.

    Every answer the node acts on is validated here, once: a malformed one
    raises :class:`BadAnswer` (a ServerError), so callers handle it as they
    handle any refusal.

    On an open server (no credential) the node says who it is in its
    long-polls (``?node_id=``, the id it last registered), so the answers
    carry the server's word on its pairs.
    """

    def __init__(self, http: HTTPClient, server_url: str, credential: str | None = None, clock=None):
        super().__init__(http, server_url, credential, clock)
        self.node_id: str | None = None  # as this client last registered it

    @property
    def credential(self) -> str | None:
        return self._credential

    def use_credential(self, credential: str | None) -> None:
        """From now on, act as the node this credential belongs to (or as no one)."""
        self._credential = credential

    def use_http(self, http: HTTPClient) -> None:
        """From now on, send through this HTTP client (another proxy, say);
        requests under way finish on the old one."""
        self._http = http

    async def register(self, registration: Registration) -> RegisterAnswer:
        answer = await self._request("POST", "/register", registration.as_body())
        parsed = _parsed("POST /register", RegisterAnswer.from_json, answer)
        self.node_id = parsed.node_id or registration.node_id
        return parsed

    async def enroll(self, registration: Registration, join_key: str) -> RegisterAnswer:
        body = registration.enrollment_body(join_key)
        parsed = _parsed("POST /enroll", RegisterAnswer.from_json, await self._request("POST", "/enroll", body))
        self.node_id = parsed.node_id or registration.node_id
        return parsed

    async def netmap(
        self, cursor: str, wait: float = LONGPOLL_WAIT, holds_filter: str | None = None, holds_dns: str | None = None,
        holds_route_filter: str | None = None,
    ) -> NetmapAnswer:
        """The long-poll; ``holds_filter`` and ``holds_dns`` (the digests of the
        packet filter and DNS settings this node holds, or "none") spare it an
        answer carrying the same again."""
        path = self._netmap_path(cursor, wait, holds_filter, holds_dns, holds_route_filter)
        answer = await self._request("GET", path, timeout=wait + REQUEST_TIMEOUT, limit=MAX_RESPONSE_BYTES)
        return _parsed("GET /peers", NetmapAnswer.from_json, answer)

    def _netmap_path(
        self, cursor: str, wait: float, holds_filter: str | None, holds_dns: str | None, holds_route_filter: str | None
    ) -> str:
        # The cursor goes into the query string: only a well-formed one does.
        path = f"/peers?since={parse_cursor_text(cursor, 'since')}&wait={wait:g}"
        if holds_filter is not None:
            path += f"&filter={parse_filter_digest(holds_filter)}"
        if holds_dns is not None:
            path += f"&dns={parse_dns_digest(holds_dns)}"
        if holds_route_filter is not None:
            # Asks for the forwarding filter too (a subnet router's; "none" until told).
            path += f"&route_filter={parse_filter_digest(holds_route_filter)}"
        if self.node_id and not self._credential:
            # Checked like the cursor; with a credential the server knows us by it.
            path += f"&node_id={parse_node_id(self.node_id)}"
        return path

    def netmap_stream(
        self, cursor: str, wait: float = LONGPOLL_WAIT, holds_filter: str | None = None, holds_dns: str | None = None,
        holds_route_filter: str | None = None,
    ) -> NetmapAnswers:
        """The long-poll as a stream (``&stream=1``): every answer of one
        wait, on one response, each taken with ``next()``. A server that
        does not stream answers once, and that is the stream's one answer."""
        path = self._netmap_path(cursor, wait, holds_filter, holds_dns, holds_route_filter) + "&stream=1"
        stream = NetmapAnswers(f"GET {path}", self.server_url)
        opening = Deferred.fromCoroutine(self._open_stream(stream, path))
        stream.opened(opening, [self._clock.callLater(wait + REQUEST_TIMEOUT, stream.due, self._clock, wait + REQUEST_TIMEOUT)])
        return stream

    async def _open_stream(self, stream: NetmapAnswers, path: str) -> None:
        response = await self._send("GET", path)
        stream.headers_in = True
        types = response.headers.getRawHeaders(b"content-type") or [b""]
        if response.code != 200 or types[0].split(b";")[0].strip() != NETMAP_STREAM_TYPE:
            # An error, or a server that does not stream: one answer, read whole.
            stream.take(await self._read_answer(response, f"GET {path}", MAX_RESPONSE_BYTES))
            stream.end()
            return
        try:
            with self._unreachable_on_failure():
                await stream.read(response)
        except AnswerTooLarge:
            raise _bad_answer(200, f"GET {path}", f"a line longer than {MAX_RESPONSE_BYTES} bytes")

    async def status(self) -> dict:
        return await self._request("GET", "/status", limit=MAX_RESPONSE_BYTES)

    async def peers(self) -> dict:
        return await self._request("GET", "/peers", limit=MAX_RESPONSE_BYTES)

    async def health(self) -> dict:
        return await self._request("GET", "/health")

    async def relay(
        self, node_id: str, wg_public_key: str, peer_node_id: str, fastpath: bool = False, held: bytes | None = None,
        direct: bool = False,
    ) -> RelayGrant:
        """``POST /relay``; ``fastpath``: our shim takes peer-sealed frames;
        ``held``: keep the side with this token, send the peer's anew;
        ``direct``: we bind from WireGuard's port (a side port, if offered)."""
        asked = RelayRequest(node_id, wg_public_key, peer_node_id, fastpath, held, direct)
        return _parsed("POST /relay", RelayGrant.from_json, await self._request("POST", "/relay", asked.to_json()))

    async def report_path(
        self, node_id: str, wg_public_key: str, peer_node_id: str, failure: PathFailure | str
    ) -> PathReportAnswer:
        """``POST /path``: the direct path to ``peer_node_id`` failed; the server's decision for the pair."""
        report = PathReport(node_id, wg_public_key, peer_node_id, PathFailure(failure))
        answer = await self._request("POST", "/path", report.to_json())
        return _parsed("POST /path", PathReportAnswer.from_json, answer)

    async def leave(self, node_id: str, wg_public_key: str) -> dict:
        return await self._request("POST", "/leave", LeaveRequest(node_id, wg_public_key).to_json())

    async def report(self, report: NodeReport) -> int:
        """``POST /report``: our paths to our peers; how many entries the server kept."""
        answer = await self._request("POST", "/report", report.to_json())
        kept = answer.get("kept") if isinstance(answer, dict) else None
        if isinstance(kept, bool) or not isinstance(kept, int):
            raise BadAnswer("POST /report", ProtocolError("kept", "must be a whole number"))
        return kept


class NetmapAnswers:
    """The answers of one netmap stream, taken one at a time with :meth:`next`.

    Lines are parsed as they arrive (each one whole JSON object, at most
    MAX_RESPONSE_BYTES); once STREAM_BACKLOG wait unread, the connection
    stops being read (and the server, seeing that, ends the stream). The
    stream ends when the server ends it, on the first line the protocol
    refuses (BadAnswer), when its deadlines pass (ServerUnreachable), or
    on :meth:`cancel`: answers that arrived before are still given first.
    """

    def __init__(self, what: str, server_url: str):
        self._what = what
        self._server_url = server_url
        self._answers: deque[NetmapAnswer] = deque()
        self._waiter: Deferred | None = None
        self._ended = False
        self._error: Exception | None = None
        self._opening: Deferred | None = None
        self._timers: list = []
        self._reader: _LineReader | None = None
        self.headers_in = False

    @classmethod
    def of_one(cls, answer: Deferred, what: str = "GET /peers", server_url: str = "") -> NetmapAnswers:
        """A stream of one answer (``answer``'s NetmapAnswer), as from a server
        that does not stream; its failure is the stream's."""
        stream = cls(what, server_url)

        def given(parsed: NetmapAnswer) -> None:
            stream.headers_in = True
            stream._give(parsed)
            stream.end()

        answer.addCallback(given)
        stream.opened(answer, [])
        return stream

    # -- the node's side ---------------------------------------------------------

    def next(self) -> Deferred:
        """The next answer; None once the stream has ended well. Cancelling it cancels the stream."""
        if self._answers:
            answer = self._answers.popleft()
            if self._reader is not None and len(self._answers) < STREAM_BACKLOG:
                self._reader.resume()
            return succeed(answer)
        if self._ended:
            return fail(self._error) if self._error is not None else succeed(None)
        self._waiter = Deferred(lambda _: self.cancel())
        return self._waiter

    def cancel(self) -> None:
        """Hang up (the node asks elsewhere, or is stopping)."""
        self._finish(CancelledError())

    @property
    def ended(self) -> bool:
        return self._ended

    # -- the connection's side ---------------------------------------------------

    def opened(self, opening: Deferred, timers: list) -> None:
        self._opening = opening
        self._timers = timers
        opening.addErrback(self._failed)

    def due(self, clock, seconds: float) -> None:
        """The wait is over (and REQUEST_TIMEOUT more): a server that has
        not answered, or whose stream went silent past its end, is gone; a
        line (or a server's one answer) still arriving gets ANSWER_TIMEOUT more."""
        if self._ended:
            return
        if not self.headers_in:
            self._finish(ServerUnreachable(f"{self._server_url} did not answer within {seconds:g}s"))
        elif self._reader is not None and not self._reader.mid_line and not self._reader.paused:
            self._finish(ServerUnreachable(f"{self._server_url}: {self._what} went on {seconds:g}s, past its wait"))
        else:
            self._timers.append(clock.callLater(ANSWER_TIMEOUT, self._overdue, seconds + ANSWER_TIMEOUT))

    def _overdue(self, seconds: float) -> None:
        self._finish(ServerUnreachable(f"{self._server_url}: {self._what} took longer than {seconds:g}s"))

    def read(self, response) -> Deferred:
        """Read ``response``'s lines until it ends."""
        finished: Deferred = Deferred()
        self._reader = _LineReader(self._line, finished)
        response.deliverBody(self._reader)
        if self._ended:
            self._reader.hang_up()
        finished.addCallback(lambda _: self.end())
        return finished

    def _line(self, line: bytes) -> None:
        try:
            decoded = _decode(200, self._what, line)
            if not isinstance(decoded, dict):
                raise _bad_answer(200, self._what, "answer is not a JSON object")
            self.take(decoded)
        except ServerError as e:
            self._finish(e)

    def take(self, decoded: dict) -> None:
        if self._ended:
            return
        self._give(_parsed("GET /peers", NetmapAnswer.from_json, decoded))

    def _give(self, answer: NetmapAnswer) -> None:
        if self._ended:
            return
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(answer)
            return
        self._answers.append(answer)
        if self._reader is not None and len(self._answers) >= STREAM_BACKLOG:
            self._reader.pause()

    def end(self) -> None:
        self._finish(None)

    def _failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError) or not self._ended:
            self._finish(failure.value if isinstance(failure.value, Exception) else Exception(str(failure.value)))

    def _finish(self, error: Exception | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        if error is not None:
            if self._reader is not None:
                self._reader.hang_up()
            if self._opening is not None and not self._opening.called:
                self._opening.cancel()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)


class _LineReader(Protocol):
    """Hands a response body on line by line; a line longer than MAX_RESPONSE_BYTES hangs up."""

    def __init__(self, line: Callable[[bytes], None], finished: Deferred):
        self._line = line
        self._finished = finished
        self._partial = bytearray()
        self._stopped = False
        self.paused = False  # not read on: the node has not taken the answers before

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return
        self._partial += data
        while not self._stopped:
            end = self._partial.find(b"\n")
            if end < 0:
                break
            line = bytes(self._partial[:end])
            del self._partial[: end + 1]
            if line.strip():
                self._line(line)
        if len(self._partial) > MAX_RESPONSE_BYTES:
            self.hang_up()
            if not self._finished.called:
                self._finished.errback(AnswerTooLarge())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            if bytes(self._partial).strip() and not self._stopped:
                self._line(bytes(self._partial))  # a last line without its newline
            self._finished.callback(None)
        else:
            self._finished.errback(ResponseFailed([reason]))

    @property
    def mid_line(self) -> bool:
        """Part of a line has arrived, and not yet its end."""
        return bool(self._partial)

    def pause(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]  # an IPushProducer too

    def resume(self) -> None:
        if self.transport is not None and self.paused and not self._stopped:
            self.paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def hang_up(self) -> None:
        self._stopped = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def _parsed(what: str, parse: Callable[[Any], T], answer: Any) -> T:
    try:
        return parse(answer)
    except ProtocolError as e:
        raise BadAnswer(what, e)


def unix_http_client(reactor, socket_path: str) -> HTTPClient:
    """HTTP over a local UNIX socket (the daemon's control and the server's admin API)."""
    endpoints = _UnixEndpointFactory(reactor, socket_path)
    return HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=HTTPConnectionPool(reactor, persistent=False)))


class ControlClient(JsonHttp):
    """The local node daemon's control API, over its UNIX socket."""

    def __init__(self, reactor, socket_path: str):
        super().__init__(unix_http_client(reactor, socket_path), "http://wire-node", clock=reactor)
        self.socket_path = socket_path

    async def status(self) -> dict:
        return await self._request("GET", "/status", timeout=REQUEST_TIMEOUT, limit=MAX_RESPONSE_BYTES)

    async def down(self) -> dict:
        return await self._request("POST", "/down", {}, timeout=30)

    async def events(self, after: int, wait: float) -> dict:
        """The daemon's events after ``after`` (waiting up to ``wait`` s for one) and its state."""
        return await self._request(
            "GET", f"/events?after={after}&wait={wait:g}", timeout=wait + REQUEST_TIMEOUT, limit=MAX_RESPONSE_BYTES
        )

    async def rename(self, node_name: str) -> dict:
        return await self._request("POST", "/rename", {"node_name": node_name}, timeout=30)

    async def change_settings(self, settings: dict) -> dict:
        """``wire set``: the daemon applies and keeps them; answers every setting as it now is."""
        return await self._request("POST", "/settings", settings, timeout=30)


class AdminClient(JsonHttp):
    """The coordination server's admin API, over the UNIX socket in its data dir."""

    def __init__(self, reactor, socket_path: str):
        super().__init__(unix_http_client(reactor, socket_path), "http://wire-admin", clock=reactor)
        self.socket_path = socket_path

    async def create_key(
        self,
        reusable: bool = False,
        expires_in: float | None = None,
        note: str = "",
        url: str | None = None,
        tags: tuple[str, ...] = (),
        ephemeral_after: float = 0.0,
    ) -> dict:
        body: dict = {"reusable": reusable, "note": note}
        if expires_in is not None:
            body["expires_in"] = expires_in
        if url:
            body["url"] = url
        if tags:
            body["tags"] = list(tags)
        if ephemeral_after:
            body["ephemeral_after"] = ephemeral_after
        return await self._request("POST", "/keys", body)

    async def keys(self) -> dict:
        return await self._request("GET", "/keys", limit=MAX_RESPONSE_BYTES)

    async def revoke_key(self, key_id: str) -> dict:
        return await self._request("POST", "/revoke-key", {"key_id": key_id})

    async def nodes(self) -> dict:
        return await self._request("GET", "/nodes", limit=MAX_RESPONSE_BYTES)

    async def remove_node(self, node: str) -> dict:
        return await self._request("POST", "/remove-node", {"node": node})

    async def rename_node(self, node: str, new_name: str) -> dict:
        return await self._request("POST", "/rename-node", {"node": node, "new_name": new_name})

    async def tag_node(self, node: str, tags: tuple[str, ...]) -> dict:
        return await self._request("POST", "/tag-node", {"node": node, "tags": list(tags)})

    async def policy(self) -> dict:
        return await self._request("GET", "/policy", limit=MAX_RESPONSE_BYTES)

    async def policy_action(self, action: str, **fields) -> dict:
        """``set``, ``check`` (``text``), ``clear``, ``history``, ``rollback`` (``version``), ``explain``."""
        return await self._request("POST", "/policy", {"action": action, **fields}, limit=MAX_RESPONSE_BYTES)

    async def dns(self) -> dict:
        return await self._request("GET", "/dns", limit=MAX_RESPONSE_BYTES)

    async def dns_action(self, action: str, **fields) -> dict:
        """``add-record``, ``remove-record`` (``name``, ``type``, ``value``),
        ``forward`` (``domain``, ``resolvers``), ``unforward`` (``domain``), ``nameservers`` (``resolvers``)."""
        return await self._request("POST", "/dns", {"action": action, **fields}, limit=MAX_RESPONSE_BYTES)

    async def routes(self) -> dict:
        return await self._request("GET", "/routes", limit=MAX_RESPONSE_BYTES)

    async def route_action(self, action: str, node: str, route: str) -> dict:
        """``approve`` or ``reject`` ``route`` for ``node``."""
        return await self._request("POST", "/routes", {"action": action, "node": node, "route": route})

    async def audit(self) -> dict:
        return await self._request("GET", "/audit", limit=MAX_RESPONSE_BYTES)

    async def create_api_key(self, name: str = "", expires_in: float | None = None, read_only: bool = False) -> dict:
        body: dict = {"name": name, "read_only": read_only}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return await self._request("POST", "/apikeys", body)

    async def api_keys(self) -> dict:
        return await self._request("GET", "/apikeys", limit=MAX_RESPONSE_BYTES)

    async def dashboard_link(self) -> dict:
        return await self._request("POST", "/dashboard", {})

    async def revoke_api_key(self, key_id: str) -> dict:
        return await self._request("POST", "/revoke-apikey", {"key_id": key_id})


def _retry_after(response) -> float | None:
    values = response.headers.getRawHeaders(b"retry-after") or []
    try:
        return min(300.0, max(0.0, float(values[0]))) if values else None
    except ValueError:
        return None


TLS_REFUSED = (
    "TLS refused: the server's certificate is not the one this node trusts "
    "(the fingerprint in its join token, or a CA-signed one for the URL's host), so nothing was sent"
)


def _tls_refused(error: Exception) -> bool:
    return isinstance(error, (ResponseFailed, RequestTransmissionFailed)) and any(
        r.check(SSL.Error) for r in error.reasons
    )


def _reason(error: Exception) -> str:
    if isinstance(error, (ResponseFailed, RequestTransmissionFailed)):
        reasons = [r.getErrorMessage() for r in error.reasons]
        return "; ".join(reasons) or "connection lost"
    return str(error) or error.__class__.__name__
