"""JSON-over-HTTP plumbing for twisted.web: every answer is JSON, every
error a ``{"error": "..."}`` (wire.protocol.error_body) that names the problem, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any, BinaryIO, Callable, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.http_headers import Headers

from wire.protocol import MAX_BODY_BYTES, BodyTooLarge, ProtocolError, error_body, parse_json_object

log = Logger()

# How long a request's line, headers and body may take to arrive.
REQUEST_RECEIVE_TIMEOUT = 30.0


class ApiError(Exception):
    """An error answer: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class BoundedRequest(server.Request):
    """A request that never buffers more than MAX_BODY_BYTES of body.

    twisted.web would otherwise read any body whole before rendering; here a
    larger one is dropped as it arrives and the resource answers 413.
    """

    max_body = MAX_BODY_BYTES
    body_too_large = False

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        if self.content.tell() + len(data) > self.max_body:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    # What the answer waits for, if it is not ready (JsonResource): a
    # client that goes away cancels it. (Cheaper than notifyFinish, which
    # costs a Deferred and a callback per request: thousands of long-polls
    # wait at any time.)
    awaiting: Deferred | None = None

    def connectionLost(self, reason):
        awaiting, self.awaiting = self.awaiting, None
        super().connectionLost(reason)
        if awaiting is not None:
            awaiting.cancel()

    def finish(self):
        # Lets the site count error answers (for /metrics) in one place.
        observe = getattr(getattr(self, "site", None), "observe_status", None)
        if observe is not None:
            observe(self.code)
        return super().finish()


def forget_input(request: server.Request) -> None:
    """Drop what a request brought (query, body, headers) once it was read
    and its answer is to wait: thousands of long-polls wait at any time,
    and these are over 1 KB of each. (twisted.web is done with them too:
    it decided on keep-alive when the request arrived.)"""
    request.args = {}  # type: ignore[assignment]  # Twisted types args by its class default, None
    request.requestHeaders = Headers()
    if request.content is not None:
        request.content.close()
        request.content = None


class DeadlineChannel(http.HTTPChannel):
    """An HTTP channel that gives each request a bounded time to arrive.

    twisted.web's idle timeout restarts on every byte, so a client sending
    its headers a byte every 50 s (slowloris) would hold a connection for
    ever. Here a request must be received whole within ``receive_timeout``
    seconds of its first byte. The clock stops once it is received: the
    answer may take as long as it needs (a long-poll waits minutes), and a
    kept-alive connection waiting for its next request is left to the idle
    timeout.
    """

    receive_timeout = REQUEST_RECEIVE_TIMEOUT
    _receive_deadline = None

    def dataReceived(self, data):
        # While a request is being answered, later bytes are only buffered;
        # they are fed back through here once it is done.
        if self._receive_deadline is None and not self._handlingRequest:
            self._receive_deadline = self.callLater(self.receive_timeout, self._too_slow)
        super().dataReceived(data)

    def allContentReceived(self):
        # Before the request runs: answering may feed in a pipelined request.
        self._cancel_deadline()
        super().allContentReceived()

    def connectionLost(self, reason):
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self) -> None:
        if self._receive_deadline is not None:
            if self._receive_deadline.active():
                self._receive_deadline.cancel()
            self._receive_deadline = None

    def _too_slow(self) -> None:
        self._receive_deadline = None
        self.timeoutConnection()

    # An answer's head and body in one write (see _finish): twisted.web
    # writes the head, then the body, and over TLS each write is a record
    # of its own, encrypted and sent apart. Held only while _finish writes.
    _holding_head = False
    _held_head: list[bytes] | None = None

    def hold_head(self) -> None:
        self._holding_head = True

    def release_head(self) -> None:
        """Write a head still held (an answer with no body: HEAD, 204)."""
        self._holding_head = False
        held, self._held_head = self._held_head, None
        if held is not None:
            super().writeSequence(held)

    def writeHeaders(self, version, code, reason, headers):
        if not self._holding_head or not isinstance(headers, Headers):
            return super().writeHeaders(version, code, reason, headers)
        # As HTTPChannel.writeHeaders, kept for the body's write.
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self._held_head = head

    def write(self, data):
        if self._held_head is None:
            return super().write(data)
        self.writeSequence([data])

    def writeSequence(self, iovec):
        held, self._held_head = self._held_head, None
        super().writeSequence(iovec if held is None else held + list(iovec))


class SharedJson(dict):
    """A JSON answer given to many requests at once (long-poll waiters on
    the same cursor): encoded for the first, the bytes reused for the rest."""

    __slots__ = ("encoded",)
    encoded: bytes  # unset until the first encode_json


class ViewerJson(dict):
    """A :class:`SharedJson` answer with a few keys of one viewer's own
    (its pairs' words, its packet filter): encoded as the shared bytes with
    those keys spliced in, so the shared part (a whole netmap, perhaps) is
    never encoded again per viewer. Reads as the merged dict."""

    __slots__ = ("shared", "extras")

    def __init__(self, shared: SharedJson, extras: dict[str, Any]):
        assert extras and not extras.keys() & shared.keys(), "an extra key must be the viewer's own"
        super().__init__(shared)
        self.update(extras)
        self.shared = shared
        self.extras = extras

    def encode(self) -> bytes:
        shared = encode_json(self.shared)  # b'{...}\n'
        own = _encode_extras(self.extras)  # b'{...}'
        if shared == b"{}\n":
            return own + b"\n"
        return shared[:-2] + b"," + own[1:] + b"\n"


def _encode_extras(extras: dict[str, Any]) -> bytes:
    """A viewer's own keys as a JSON object; a value that is a SharedJson
    (the mesh's DNS settings, the same for every node) is spliced in as
    the bytes it was encoded to once."""
    if not any(isinstance(value, SharedJson) for value in extras.values()):
        return json.dumps(extras, separators=(",", ":")).encode()
    parts = [
        json.dumps(key).encode() + b":" + (encode_json(value)[:-1] if isinstance(value, SharedJson) else json.dumps(value, separators=(",", ":")).encode())
        for key, value in extras.items()
    ]
    return b"{" + b",".join(parts) + b"}"


def encode_json(body: Any) -> bytes:
    if isinstance(body, ViewerJson):
        return body.encode()
    encoded = getattr(body, "encoded", None) if isinstance(body, SharedJson) else None
    if encoded is None:
        encoded = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        if isinstance(body, SharedJson):
            body.encoded = encoded
    return encoded


def write_json(request: server.Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return encode_json(body)


def read_json_body(request: server.Request) -> dict[str, Any]:
    if getattr(request, "body_too_large", False):
        raise ApiError(413, f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        # Twisted types content by its class default, None; gotLength gave
        # it a file before any resource renders.
        return parse_json_object(cast(BinaryIO, request.content).read())
    except BodyTooLarge as e:
        raise ApiError(413, str(e))
    except ProtocolError as e:
        raise ApiError(400, str(e))


class JsonResource(resource.Resource):
    """A leaf endpoint. Subclasses define ``get``/``post`` (sync or async)
    taking the request and returning a JSON-able value, or raising ApiError.
    A handler that returns bytes has set its own content type; one that
    returns ``server.NOT_DONE_YET`` writes (and finishes) its answer itself.
    """

    isLeaf = True
    methods: tuple[str, ...] = ()

    # make_site's requests; `awaiting` is only set, so any Request will do.
    def render(self, request: BoundedRequest):
        method = request.method.decode("ascii", "replace")
        if request.postpath not in ([], [b""]):
            return write_json(request, 404, error_body(f"no such path: {_path(request)}"))
        if method == "HEAD" and "GET" in self.methods:
            method = "GET"
        if method not in self.methods:
            request.setHeader(b"allow", ", ".join(self.methods).encode())
            return write_json(request, 405, error_body(f"{method} is not allowed on {_path(request)}; use {' or '.join(self.methods)}"))
        handler: Callable[[server.Request], Any] = getattr(self, method.lower())
        try:
            result = handler(request)
        except ApiError as e:
            return write_json(request, e.status, error_body(e.message))
        except Exception:
            log.failure("unhandled error in {method} {path}", method=method, path=_path(request))
            return write_json(request, 500, error_body("internal error; see the server log"))
        if isinstance(result, (Deferred, Coroutine)):
            d = result if isinstance(result, Deferred) else Deferred.fromCoroutine(result)
            request.awaiting = d
            d.addCallbacks(_finish, _finish_failure, callbackArgs=(request, 200), errbackArgs=(request, method))
            return server.NOT_DONE_YET
        if isinstance(result, bytes) or result is server.NOT_DONE_YET:
            return result  # bytes: its own content type; NOT_DONE_YET: it writes its answer itself
        return write_json(request, 200, result)


def _finish(body: Any, request: BoundedRequest, status: int) -> None:
    request.awaiting = None
    if request.finished or request._disconnected:
        return
    write_whole(request, write_json(request, status, body))


def write_whole(request: server.Request, data: bytes) -> None:
    """Write ``data`` as the whole body and finish: known length, one write,
    no chunked framing (every heartbeat and long-poll answer comes through
    here), and with the head (one TLS record)."""
    request.setHeader(b"content-length", b"%d" % len(data))
    channel = request.channel
    if isinstance(channel, DeadlineChannel):
        channel.hold_head()
        try:
            request.write(data)
        finally:
            channel.release_head()
    else:
        request.write(data)
    request.finish()


def _finish_failure(failure: Failure, request: BoundedRequest, method: str) -> None:
    if failure.check(ApiError):
        _finish(error_body(failure.value.message), request, failure.value.status)
        return
    if request._disconnected:
        return
    log.failure("unhandled error in {method} {path}", failure, method=method, path=_path(request))
    _finish(error_body("internal error; see the server log"), request, 500)


class JsonNotFound(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return write_json(request, 404, error_body(f"no such path: {_path(request)}"))


class JsonRoot(resource.Resource):
    """The root: unknown paths answer a JSON 404, not twisted.web's HTML page."""

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return JsonNotFound()

    def render(self, request: server.Request) -> bytes:
        return write_json(request, 404, error_body("no such path: /"))


def _path(request: server.Request) -> str:
    return request.path.decode("utf-8", "replace")[:200]


class JsonSite(server.Site):
    """The Site make_site builds: bounded requests on deadline channels."""

    # A plain HTTP/1.1 channel: we never offer HTTP/2 (no ALPN "h2").
    # Twisted types protocol as its own default, a factory function.
    protocol = DeadlineChannel  # type: ignore[assignment]
    requestFactory = BoundedRequest
    displayTracebacks = False
    # Told each answer's status (BoundedRequest.finish), for /metrics.
    observe_status: Callable[[int], None] | None = None

    def log(self, request: http.Request) -> None:
        """Request lines are logged by our own structured logging, not as an access log."""


def make_site(
    root: resource.Resource,
    *,
    reactor: IReactorTime,
    timeout: float = 60,
    observe_status: Callable[[int], None] | None = None,
) -> JsonSite:
    """A Site for a JSON API; ``timeout`` bounds idle connections, and
    DeadlineChannel slow ones. ``reactor`` times both: always the caller's,
    so a test's clock drives them."""
    # parsePOSTFormSubmission=False: our bodies are JSON, never HTML forms;
    # left on, twisted.web parses every POST's Content-Type with the email
    # package to look for one (about 30 us per heartbeat, for nothing).
    site = JsonSite(root, timeout=timeout, reactor=reactor, parsePOSTFormSubmission=False)
    site.observe_status = observe_status
    return site
