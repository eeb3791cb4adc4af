"""The netmap as a stream: one response that carries every change of a wait.

``GET /peers?since=CURSOR&wait=S&stream=1`` answers ``application/x-ndjson``:
one netmap answer per line, each what the long-poll would answer to the
cursor the line before left, until the wait ends (the long-poll's wait,
capped as it is). Without it, every change costs the server an answer and,
per node, a new request (TLS, HTTP parsing, authentication: profiled at
10,000 nodes, 2.5 times what the answer costs); with it, one written line
per node.

The stream ends, and the node asks again with what it then holds, after a
line that changes what the node says it holds in its request (a packet
filter, a forwarding filter, DNS settings, a full snapshot); when its
credential stops working (a removed node hears nothing more); when the
node reads too slowly (the server keeps no backlog of lines for it: its
next request picks up from its cursor); and when the server stops.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wire.protocol.routefilter import ANSWER_KEY as ROUTE_FILTER
from wire.web import ApiError, BoundedRequest, DeadlineChannel, encode_json, write_json, write_whole
from wire.protocol import error_body

log = Logger()

CONTENT_TYPE = b"application/x-ndjson"
# Less than this left of its wait, a stream ends with the line it wrote
# rather than start another wait the node would see end at once.
MIN_WAIT_LEFT = 1.0
# An answer's keys that change what the node holds and says in its request.
_HELD_KEYS = ("filter", "dns", ROUTE_FILTER)

# (cursor text, seconds to wait) -> the next answer, as the long-poll gives it.
Ask = Callable[[str, float], Deferred]


def ends_stream(answer: dict) -> bool:
    """Whether, after this answer, the node must ask again (with what it then holds)."""
    return bool(answer.get("full")) or any(key in answer for key in _HELD_KEYS)


@implementer(IPushProducer)
class NetmapStream:
    """Writes one node's answers as lines on its response until its wait ends.

    ``ask`` is the long-poll itself (Coordinator.netmap, bound to this
    node and what it holds), so a line is exactly what a long-poll answer
    would be; ``allowed`` says whether the node may still hear (its
    credential still works)."""

    def __init__(self, request: BoundedRequest, ask: Ask, clock: IReactorTime, wait: float, allowed: Callable[[], bool]):
        self._request = request
        self._ask = ask
        self._clock = clock
        self._ends_at = clock.seconds() + wait
        self._allowed = allowed
        self._paused = False
        self._ended = False
        self._head_sent = False
        self.lines = 0

    def start(self, first: Deferred) -> None:
        """``first``: the long-poll's answer to the request's own cursor."""
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        request.registerProducer(self, True)
        self._wait_for(first)

    def _wait_for(self, answer: Deferred) -> None:
        # The head waits for the first line, as a long-poll's does for its
        # answer (the node allows for that): an idle stream, its one line at
        # the end of the wait, costs what a long-poll does, one TLS record.
        self._request.awaiting = answer
        answer.addCallbacks(self._answered, self._failed)

    def _answered(self, answer: dict) -> None:
        request = self._request
        request.awaiting = None
        if self._ended or request.finished or request._disconnected:
            return
        left = self._ends_at - self._clock.seconds()
        line = encode_json(answer)
        if ends_stream(answer) or self._paused or left < MIN_WAIT_LEFT or not self._allowed():
            if self._head_sent:
                self._write_line(line)
                self._end()
            else:
                self._write_only_line(line)
            return
        self._write_line(line)
        cursor = answer.get("cursor")
        if not isinstance(cursor, str):
            self._end()
            return
        try:
            following = self._ask(cursor, left)
        except Exception:
            # A refusal now (the server began to stop): the node asks again and hears why.
            self._end()
            return
        if following.called:
            # Behind again at once (changes came while this line was made):
            # answered next turn, so that a run of them is no deep recursion.
            self._clock.callLater(0, self._wait_for, following)
        else:
            self._wait_for(following)

    def _write_only_line(self, line: bytes) -> None:
        """A stream of one line: written as a long-poll answer is, head and
        body in one write with a known length (no chunk framing, no last
        chunk written apart)."""
        self._ended = True
        self.lines += 1
        self._request.unregisterProducer()
        write_whole(self._request, line)

    def _write_line(self, line: bytes) -> None:
        self.lines += 1
        channel = self._request.channel
        if self._head_sent or not isinstance(channel, DeadlineChannel):
            self._head_sent = True
            self._request.write(line)
            return
        # The first line with the head: one TLS record, as a long-poll answer.
        self._head_sent = True
        channel.hold_head()
        try:
            self._request.write(line)
        finally:
            channel.release_head()

    def _failed(self, failure: Failure) -> None:
        request = self._request
        request.awaiting = None
        if self._ended or request.finished or request._disconnected:
            return
        refused = failure.check(ApiError) is not None
        if not refused:
            log.failure("netmap stream answer failed", failure)
        if self._head_sent:
            # Lines were written: the stream just ends, and the node asks again.
            self._end()
            return
        # Nothing written yet: the error is the whole answer, as for a long-poll.
        self._ended = True
        request.unregisterProducer()
        if refused:
            status, message = failure.value.status, failure.value.message
        else:
            status, message = 500, "internal error; see the server log"
        write_whole(request, write_json(request, status, error_body(message)))

    @property
    def ended(self) -> bool:
        return self._ended

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        request = self._request
        request.unregisterProducer()
        if not request.finished and not request._disconnected:
            request.finish()

    # -- IPushProducer: the node's reading --------------------------------------

    def pauseProducing(self) -> None:
        # The node reads slower than its lines come: the next one ends the stream.
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False

    def stopProducing(self) -> None:
        self._ended = True
        awaiting, self._request.awaiting = self._request.awaiting, None
        if awaiting is not None and not awaiting.called:
            awaiting.cancel()


def stream_answer(value: Any) -> bool:
    """Whether a ``stream=`` query value asks for a stream ("1"), refusing anything else."""
    if value is None:
        return False
    if value not in ("0", "1"):
        raise ApiError(400, f"stream: {value[:20]!r} is not 0 or 1")
    return value == "1"
