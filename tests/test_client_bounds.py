"""The client against a hostile server, over real 127.0.0.1 sockets: an
answer is bounded in size, in time and in nesting, and each failure is one
of the client's own errors; the next good answer still works."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from twisted.web import resource, server

from wire.client import (
    ANSWER_TIMEOUT,
    MAX_JSON_DEPTH,
    MAX_RESPONSE_BYTES,
    MAX_SMALL_RESPONSE_BYTES,
    REQUEST_TIMEOUT,
    BadAnswer,
    CoordinationClient,
    ServerError,
    ServerUnreachable,
    make_http_client,
)

GOOD = {"ok": True, "status": "healthy"}
CHUNK = 64 * 1024


class Flood:
    """Writes ``total`` bytes in chunks, only as fast as the client reads
    them (a streaming producer), and notes how far it got before the client hung up."""

    def __init__(self, request, total: int):
        self.request = request
        self.total = total
        self.written = 0
        self.paused = False
        self.lost = False
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(self._lost)
        reactor.callLater(0, self._more)

    def _lost(self, _):
        self.lost = True

    def _more(self):
        if self.lost or self.paused:
            return
        if self.written >= self.total:
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.request.write(b" " * CHUNK)
        self.written += CHUNK
        reactor.callLater(0, self._more)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        if self.paused:
            self.paused = False
            reactor.callLater(0, self._more)

    def stopProducing(self):
        self.lost = True


class Hostile(resource.Resource):
    """Answers as ``self.mode`` says, then (mode back to "good") like a good server."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.mode = "good"
        self.finished: Deferred = Deferred()  # fires when a hostile answer's connection is gone
        self.flood: Flood | None = None
        self.trickled = 0

    def render(self, request):
        mode, self.mode = self.mode, "good"
        if mode == "good":
            return json.dumps(GOOD).encode()
        request.notifyFinish().addBoth(lambda _: self.finished.callback(None) if not self.finished.called else None)
        if mode == "announce":  # a Content-Length above the limit, then nothing: the client must hang up unread
            request.setHeader(b"content-length", str(100 * MAX_RESPONSE_BYTES).encode())
            request.write(b"")
        elif mode == "flood":  # no Content-Length (chunked), and far more than the limit
            self.flood = Flood(request, 64 * MAX_RESPONSE_BYTES)
        elif mode == "flood-error":
            request.setResponseCode(500)
            self.flood = Flood(request, 64 * MAX_RESPONSE_BYTES)
        elif mode == "trickle":  # a byte now and then, never the end
            request.write(b"{")
            request.notifyFinish().addBoth(lambda _: self._trickling.cancel())
            self._trickle(request)
        elif mode == "silent":  # never even headers
            pass
        else:
            return mode.encode("latin-1")  # a body, raw
        return server.NOT_DONE_YET

    def _trickle(self, request):
        request.write(b" ")
        self.trickled += 1
        self._trickling = reactor.callLater(0.02, self._trickle, request)


class BoundsTests(unittest.TestCase):
    def setUp(self):
        self.hostile = Hostile()
        site = server.Site(self.hostile)
        site.displayTracebacks = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.clock = Clock()  # the client's deadlines; the sockets are real
        http = make_http_client(reactor, persistent=True)
        self.addCleanup(http._agent._pool.closeCachedConnections)
        self.client = CoordinationClient(http, f"http://127.0.0.1:{port.getHost().port}", clock=self.clock)

    async def still_good(self):
        self.assertEqual(await self.client.health(), GOOD)

    async def hostile_answer(self, mode: str, call=None):
        self.hostile.mode = mode
        return ensureDeferred((call or self.client.health)())

    async def failure_of(self, d: Deferred, error_class):
        try:
            await d
        except error_class as e:
            return e
        self.fail(f"no {error_class.__name__}")

    async def test_an_announced_oversize_answer_is_refused_unread(self):
        e = await self.failure_of(await self.hostile_answer("announce"), BadAnswer)
        self.assertIn(f"answer larger than {MAX_SMALL_RESPONSE_BYTES} bytes", str(e))
        self.assertIn("GET /health", str(e))
        await self.hostile.finished  # the server saw the client hang up
        await self.still_good()

    async def test_an_oversize_answer_is_cut_off_as_it_arrives(self):
        e = await self.failure_of(await self.hostile_answer("flood"), BadAnswer)
        self.assertIn(f"answer larger than {MAX_SMALL_RESPONSE_BYTES} bytes", str(e))
        await self.hostile.finished
        flood = self.hostile.flood
        assert flood is not None
        self.assertTrue(flood.lost, "the client hung up")
        # Not all read first: the server got no further than the limit and the sockets' buffers.
        self.assertLess(flood.written, 16 * MAX_SMALL_RESPONSE_BYTES)
        self.assertLess(flood.written, flood.total)
        await self.still_good()

    async def test_the_netmap_may_be_larger_but_is_bounded_too(self):
        e = await self.failure_of(await self.hostile_answer("flood", lambda: self.client.netmap("e1:2", 5)), BadAnswer)
        self.assertIn(f"answer larger than {MAX_RESPONSE_BYTES} bytes", str(e))
        await self.hostile.finished
        assert self.hostile.flood is not None
        self.assertLess(self.hostile.flood.written, 4 * MAX_RESPONSE_BYTES)
        await self.still_good()

    async def test_an_oversize_error_answer_is_a_server_error(self):
        e = await self.failure_of(await self.hostile_answer("flood-error"), ServerError)
        self.assertEqual(e.status, 500)
        self.assertIn(f"answer larger than {MAX_SMALL_RESPONSE_BYTES} bytes", str(e))
        await self.still_good()

    async def wait_for_trickle(self, bytes_: int = 3):
        while self.hostile.trickled < bytes_:
            await deferLater(reactor, 0.01, lambda: None)

    async def test_a_trickling_body_has_a_deadline(self):
        d = await self.hostile_answer("trickle")
        await self.wait_for_trickle()
        self.clock.advance(REQUEST_TIMEOUT + 1)
        self.assertNoResult(d)  # headers came in time; the body has longer
        self.clock.advance(ANSWER_TIMEOUT)
        e = await self.failure_of(d, ServerUnreachable)
        self.assertIn(f"answer to GET /health took longer than {REQUEST_TIMEOUT + ANSWER_TIMEOUT:g}s", str(e))
        await self.hostile.finished  # the client hung up
        await self.still_good()

    async def test_the_long_polls_deadline_is_its_wait_and_a_margin(self):
        d = await self.hostile_answer("trickle", lambda: self.client.netmap("e1:2", 25))
        await self.wait_for_trickle()
        self.clock.advance(25 + REQUEST_TIMEOUT + ANSWER_TIMEOUT - 1)
        self.assertNoResult(d)
        self.clock.advance(1)
        e = await self.failure_of(d, ServerUnreachable)
        self.assertIn("took longer than 65s", str(e))
        await self.still_good()

    async def test_no_headers_in_time_is_unreachable(self):
        d = await self.hostile_answer("silent")
        await deferLater(reactor, 0.05, lambda: None)
        self.clock.advance(REQUEST_TIMEOUT)
        e = await self.failure_of(d, ServerUnreachable)
        self.assertIn(f"did not answer within {REQUEST_TIMEOUT:g}s", str(e))
        await self.still_good()

    async def test_a_callers_cancel_stays_a_cancel(self):
        d = await self.hostile_answer("trickle")
        await self.wait_for_trickle()
        d.cancel()
        await self.failure_of(d, CancelledError)
        await self.hostile.finished
        self.assertEqual(self.clock.getDelayedCalls(), [], "no deadline left behind")
        await self.still_good()

    async def test_bad_bodies_are_bad_answers(self):
        deep_but_decodable = "[" * (MAX_JSON_DEPTH + 5) + "]" * (MAX_JSON_DEPTH + 5)
        for body, problem in [
            ("[" * 100_000, f"answer nested deeper than {MAX_JSON_DEPTH} levels"),  # RecursionError in json
            ('{"a": ' * 100_000, f"answer nested deeper than {MAX_JSON_DEPTH} levels"),
            ('{"a": ' + deep_but_decodable + "}", f"answer nested deeper than {MAX_JSON_DEPTH} levels"),
            ('{"name": "caf\xe9"}', "answer is not UTF-8"),  # latin-1 on the wire
            ("[1, 2]", "answer is not a JSON object"),
            ('"ok"', "answer is not a JSON object"),
            ("{not json", "answer is not JSON"),
            ("", "answer is not JSON"),
        ]:
            e = await self.failure_of(await self.hostile_answer(body), BadAnswer)
            self.assertEqual(str(e), f"server said 200: bad answer to GET /health: {problem}", body[:20])
            await self.still_good()

    async def test_nesting_of_real_answers_is_allowed(self):
        nested: dict = {}
        inner = nested
        for _ in range(MAX_JSON_DEPTH - 1):
            inner["a"] = {}
            inner = inner["a"]
        self.hostile.mode = json.dumps(nested)
        self.assertEqual(await self.client.health(), nested)
