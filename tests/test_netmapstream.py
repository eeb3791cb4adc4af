"""The netmap stream (``GET /peers?...&stream=1``): the server's side over a
real 127.0.0.1 socket and in memory, and the node's client reading it."""

from __future__ import annotations

import json
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.test.requesthelper import DummyRequest

from tests.helpers import make_coordinator, registration_for, settled
from tests.test_api import _read_into, until
from wire import client as client_module
from wire.client import BadAnswer, CoordinationClient, NetmapAnswers, make_http_client
from wire.server.api import build_site
from wire.server.auth import Authority, hash_secret
from wire.server.netmapstream import NetmapStream, ends_stream


class StreamRequest(DummyRequest):
    """A DummyRequest that keeps its push producer (DummyRequest would pull in a loop)."""

    _disconnected = False
    producer = None
    channel = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def register(coordinator, name: str) -> str:
    """Register ``name`` (its commit runs on the coordinator's fake clock)."""
    registering = Deferred.fromCoroutine(coordinator.register(registration_for(name), "127.0.0.1"))
    coordinator.clock.advance(0)
    return settled(registering).record.node_id


def lines_of(chunks: list[bytes]) -> list[dict]:
    """The JSON lines in a chunked HTTP response read so far (head and chunk framing skipped)."""
    data = b"".join(chunks)
    return [json.loads(line) for line in data.split(b"\r\n") if line.startswith(b"{")]


class StreamOverTcpTests(unittest.TestCase):
    """The server as served (build_site) on a real socket; its clock is fake."""

    def setUp(self):
        self.coordinator = make_coordinator(self)
        register(self.coordinator, "web1")
        port = reactor.listenTCP(0, build_site(self.coordinator), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(self.sock.close)
        self.sock.setblocking(False)
        self.received: list[bytes] = []

    def ask(self, query: str) -> None:
        self.sock.sendall(f"GET /peers?{query} HTTP/1.1\r\nHost: wire.test\r\n\r\n".encode())

    def read_until(self, condition):
        return until(lambda: _read_into(self.sock, self.received) and condition(b"".join(self.received)))

    async def test_one_response_carries_every_change_of_its_wait(self):
        coordinator = self.coordinator
        cursor = str(coordinator.registry.changes.cursor)
        self.ask(f"since={cursor}&wait=30&stream=1")
        await until(lambda: coordinator.longpolls.open_count == 1)
        db1 = register(coordinator, "db1")
        coordinator.clock.advance(0)
        await self.read_until(lambda data: b'"db1"' in data)
        # The head came with the first line (as a long-poll's with its answer).
        head = b"".join(self.received).lower()
        self.assertTrue(head.startswith(b"http/1.1 200 "), head[:80])
        self.assertIn(b"content-type: application/x-ndjson", head)
        self.assertIn(b"transfer-encoding: chunked", head)
        coordinator.clock.advance(2)  # past the one-second coalescing of one node's changes
        app1 = register(coordinator, "app1")
        coordinator.clock.advance(0)
        await self.read_until(lambda data: b'"app1"' in data)
        first, second = lines_of(self.received)
        self.assertEqual([v["node_id"] for v in first["upserts"]], [db1])
        self.assertEqual([v["node_id"] for v in second["upserts"]], [app1])
        # Each line continues from the one before: a delta from its cursor.
        self.assertFalse(second["full"])
        self.assertNotEqual(first["cursor"], second["cursor"])
        self.assertEqual(second["cursor"], str(coordinator.registry.changes.cursor))
        # Still one waiter: the stream waits again by itself, no new request.
        await until(lambda: coordinator.longpolls.open_count == 1)
        # The wait ends: a last line (nothing changed), and the response ends.
        coordinator.clock.advance(31)
        await self.read_until(lambda data: data.endswith(b"0\r\n\r\n"))
        self.assertEqual(lines_of(self.received)[-1]["upserts"], [])
        self.assertEqual(coordinator.longpolls.open_count, 0)

    async def test_a_full_snapshot_ends_the_stream(self):
        self.ask("since=0&wait=30&stream=1")
        await self.read_until(lambda data: data.endswith(b"}\n"))
        (answer,) = lines_of(self.received)
        self.assertTrue(answer["full"])
        self.assertEqual(self.coordinator.longpolls.open_count, 0)
        # A stream of one line goes as a long-poll answer does: one write, its length known.
        head = b"".join(self.received).split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"content-type: application/x-ndjson", head)
        self.assertIn(b"content-length: ", head)
        self.assertNotIn(b"chunked", head)

    async def test_an_idle_stream_is_one_answer_at_the_end_of_its_wait(self):
        cursor = str(self.coordinator.registry.changes.cursor)
        self.ask(f"since={cursor}&wait=30&stream=1")
        await until(lambda: self.coordinator.longpolls.open_count == 1)
        self.coordinator.clock.advance(31)
        await self.read_until(lambda data: data.endswith(b"}\n"))
        (answer,) = lines_of(self.received)
        self.assertEqual((answer["upserts"], answer["removals"]), ([], []))
        self.assertIn(b"content-length: ", b"".join(self.received).lower())

    async def test_a_client_that_goes_away_stops_the_stream(self):
        cursor = str(self.coordinator.registry.changes.cursor)
        self.ask(f"since={cursor}&wait=30&stream=1")
        await until(lambda: self.coordinator.longpolls.open_count == 1)
        self.sock.close()
        await until(lambda: self.coordinator.longpolls.open_count == 0)

    async def test_a_stopping_server_ends_its_streams_and_refuses_new_ones(self):
        cursor = str(self.coordinator.registry.changes.cursor)
        self.ask(f"since={cursor}&wait=30&stream=1")
        await until(lambda: self.coordinator.longpolls.open_count == 1)
        await self.coordinator.close()
        await self.read_until(lambda data: data.endswith(b"}\n"))
        self.assertEqual(len(lines_of(self.received)), 1)  # answered as it stopped, and ended
        # Asked again (a kept connection outlives the listener): 503, so the node moves on.
        self.received = []
        self.ask(f"since={cursor}&wait=30&stream=1")
        await self.read_until(lambda data: b"}" in data)
        data = b"".join(self.received)
        self.assertTrue(data.startswith(b"HTTP/1.1 503 "), data[:60])
        self.assertIn(b"stopping", data)
        self.assertEqual(self.coordinator.longpolls.open_count, 0)

    async def test_bad_requests_are_refused_before_any_line(self):
        for query, named in (("since=0&wait=30&stream=yes", b"stream"), ("since=nonsense&wait=30&stream=1", b"since")):
            self.received = []
            self.ask(query)
            await self.read_until(lambda data: b"}" in data)
            data = b"".join(self.received)
            self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data[:60])
            self.assertIn(b"content-type: application/json", data.lower())
            self.assertIn(named, data.split(b"\r\n\r\n", 1)[1])


class RemovedNodeTests(unittest.TestCase):
    """An authenticated node's stream ends when its credential stops working."""

    async def test_a_removed_node_hears_nothing_more(self):
        coordinator = make_coordinator(self)
        coordinator.authority = Authority(coordinator.store, coordinator.clock)
        _, join_key = settled(coordinator.authority.create_key(reusable=True))
        registered = []
        for name in ("web1", "db1"):
            record, credential = settled(coordinator.enroll(join_key, registration_for(name), "127.0.0.1"))
            registered.append((record.record, credential))
        (web1, web1_credential), (db1, _) = registered
        request = StreamRequest([b""])
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + web1_credential.encode()])
        cursor = str(coordinator.registry.changes.cursor)

        def ask(since: str, seconds: float) -> Deferred:
            return coordinator.netmap(since, seconds, web1.node_id, "127.0.0.1")

        stream = NetmapStream(request, ask, coordinator.clock, 30, lambda: coordinator.may_still_hear(hash_secret(web1_credential), web1.node_id))
        stream.start(ask(cursor, 30))
        settled(coordinator.remove_node(web1))
        coordinator.clock.advance(0)
        # The change that removed it is its last line; the stream ends there.
        self.assertEqual(request.finished, 1)
        self.assertEqual(stream.lines, 1)
        self.assertFalse(coordinator.may_still_hear(hash_secret(web1_credential), web1.node_id))
        self.assertEqual(coordinator.longpolls.open_count, 0)


class StreamInMemoryTests(unittest.TestCase):
    """NetmapStream with a scripted long-poll: when it waits again, and when it ends."""

    def setUp(self):
        self.clock = Clock()
        self.request = StreamRequest([b""])
        self.asked: list[tuple[str, float]] = []
        self.pending: list[Deferred] = []
        self.allowed = True
        self.behind: dict | None = None  # the next ask's answer, ready at once

    def ask(self, cursor: str, seconds: float) -> Deferred:
        self.asked.append((cursor, seconds))
        if self.behind is not None:
            ready, self.behind = self.behind, None
            return succeed(ready)
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def start(self, wait: float = 25.0) -> NetmapStream:
        stream = NetmapStream(self.request, self.ask, self.clock, wait, lambda: self.allowed)
        stream.start(self.ask("e:1", wait))
        return stream

    def answer(self, serial: int, **extra) -> None:
        self.pending.pop(0).callback({"cursor": f"e:{serial}", "full": False, "upserts": [], "removals": [], **extra})

    def written(self) -> list[dict]:
        return [json.loads(chunk) for chunk in self.request.written if chunk]

    def test_each_answer_is_a_line_and_the_next_wait_starts_from_it(self):
        stream = self.start()
        self.clock.advance(5)
        self.answer(2)
        self.clock.advance(5)
        self.answer(3)
        self.assertEqual([a["cursor"] for a in self.written()], ["e:2", "e:3"])
        # The next waits go on from each line's cursor, for what is left of the wait.
        self.assertEqual(self.asked, [("e:1", 25.0), ("e:2", 20.0), ("e:3", 15.0)])
        self.assertEqual((self.request.finished, stream.lines), (0, 2))

    def test_it_ends_when_the_wait_is_over(self):
        self.start()
        self.clock.advance(24.5)
        self.answer(1)
        self.assertEqual(self.request.finished, 1)
        self.assertEqual(len(self.asked), 1)

    def test_what_the_node_must_ask_again_for_ends_it(self):
        for extra in ({"full": True}, {"filter": []}, {"dns": None}, {"route_filter": None}):
            self.assertTrue(ends_stream({"cursor": "e:2", "full": False, **extra}), extra)
            self.setUp()
            self.start()
            self.answer(2, **extra)
            self.assertEqual(self.request.finished, 1, extra)
            self.assertEqual(len(self.written()), 1)
        self.assertFalse(ends_stream({"cursor": "e:2", "full": False, "upserts": [], "paths": []}))

    def test_a_node_that_reads_too_slowly_gets_no_backlog(self):
        stream = self.start()
        self.answer(2)
        stream.pauseProducing()  # its connection's buffer is full
        self.answer(3)
        # That line still goes (it was made), and then the stream ends: the node asks from its cursor.
        self.assertEqual(self.request.finished, 1)
        self.assertEqual(len(self.asked), 2)

    def test_a_node_no_longer_allowed_hears_no_more(self):
        self.start()
        self.answer(2)
        self.allowed = False
        self.answer(3)
        self.assertEqual(self.request.finished, 1)
        self.assertEqual(len(self.asked), 2)

    def test_an_answer_behind_at_once_is_taken_next_turn(self):
        self.start()
        self.behind = {"cursor": "e:3", "full": False, "upserts": [], "removals": []}
        self.answer(2)
        # The answer to e:2 is ready at once: written next turn, not inside this one.
        self.assertEqual(len(self.written()), 1)
        self.clock.advance(0)
        self.assertEqual([a["cursor"] for a in self.written()], ["e:2", "e:3"])


class _Lines(resource.Resource):
    """A server that writes the given bytes as its body, chunked, and ends (or not)."""

    isLeaf = True

    def __init__(self, body: list[bytes], content_type: bytes = b"application/x-ndjson", end: bool = True):
        super().__init__()
        self.body = body
        self.content_type = content_type
        self.end = end

    def render_GET(self, request):
        request.setHeader(b"content-type", self.content_type)
        for part in self.body:
            request.write(part)
        if self.end:
            request.finish()
        return server.NOT_DONE_YET


def answer_line(serial: int) -> bytes:
    return json.dumps({"cursor": f"e:{serial}", "full": False, "upserts": [], "removals": []}).encode() + b"\n"


class ClientStreamTests(unittest.TestCase):
    """CoordinationClient.netmap_stream over real TCP."""

    def serve(self, site_root, clock=None) -> CoordinationClient:
        port = reactor.listenTCP(0, server.Site(site_root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        http = make_http_client(reactor, persistent=False)
        return CoordinationClient(http, f"http://127.0.0.1:{port.getHost().port}", clock=clock)

    async def collect(self, stream: NetmapAnswers) -> list:
        answers = []
        while True:
            answer = await stream.next()
            if answer is None:
                return answers
            answers.append(answer.cursor)

    async def test_lines_become_answers_split_anywhere(self):
        whole = answer_line(2) + answer_line(3) + answer_line(4)
        # Split mid-line and across lines, as TCP may.
        parts = [whole[:10], whole[10:70], whole[70:]]
        client = self.serve(_Lines(parts))
        self.assertEqual(await self.collect(client.netmap_stream("e:1", wait=5)), ["e:2", "e:3", "e:4"])

    async def test_a_server_that_does_not_stream_gives_one_answer(self):
        client = self.serve(_Lines([answer_line(7)[:-1]], content_type=b"application/json"))
        self.assertEqual(await self.collect(client.netmap_stream("e:1", wait=5)), ["e:7"])

    async def test_a_bad_line_ends_the_stream_after_the_good_ones(self):
        client = self.serve(_Lines([answer_line(2), b'{"cursor": 5, "upserts": "no"}\n', answer_line(4)], end=False))
        stream = client.netmap_stream("e:1", wait=5)
        self.assertEqual((await stream.next()).cursor, "e:2")
        with self.assertRaises(BadAnswer):
            await stream.next()
        self.assertTrue(stream.ended)

    async def test_an_endless_line_is_refused(self):
        self.patch(client_module, "MAX_RESPONSE_BYTES", 1000)
        client = self.serve(_Lines([b'{"cursor": "' + b"x" * 2000], end=False))
        with self.assertRaises(BadAnswer) as caught:
            await client.netmap_stream("e:1", wait=5).next()
        self.assertIn("longer than 1000 bytes", str(caught.exception))

    async def test_cancelling_hangs_up_and_says_so(self):
        client = self.serve(_Lines([answer_line(2)], end=False))
        stream = client.netmap_stream("e:1", wait=5)
        self.assertEqual((await stream.next()).cursor, "e:2")
        waiting = stream.next()
        stream.cancel()
        failure = self.failureResultOf(waiting)
        self.assertEqual(failure.type.__name__, "CancelledError")

    async def test_a_stream_silent_past_its_wait_is_a_server_gone(self):
        clock = Clock()
        client = self.serve(_Lines([answer_line(2)], end=False), clock=clock)
        stream = client.netmap_stream("e:1", wait=5)
        self.assertEqual((await stream.next()).cursor, "e:2")
        waiting = stream.next()
        clock.advance(5 + client_module.REQUEST_TIMEOUT)
        failure = self.failureResultOf(waiting)
        self.assertIsInstance(failure.value, client_module.ServerUnreachable)
        self.assertIn("past its wait", str(failure.value))

    async def test_a_line_still_arriving_at_the_end_gets_more_time(self):
        clock = Clock()
        client = self.serve(_Lines([answer_line(2), answer_line(3)[:20]], end=False), clock=clock)
        stream = client.netmap_stream("e:1", wait=5)
        self.assertEqual((await stream.next()).cursor, "e:2")
        await until(lambda: stream._reader is not None and stream._reader.mid_line)
        waiting = stream.next()
        clock.advance(5 + client_module.REQUEST_TIMEOUT)
        self.assertNoResult(waiting)
        clock.advance(client_module.ANSWER_TIMEOUT)
        self.assertIn("took longer than", str(self.failureResultOf(waiting).value))

    async def test_against_the_real_server(self):
        coordinator = make_coordinator(self)
        register(coordinator, "web1")
        client = CoordinationClient(make_http_client(reactor, persistent=False), "")
        port = reactor.listenTCP(0, build_site(coordinator), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client.server_url = f"http://127.0.0.1:{port.getHost().port}"
        stream = client.netmap_stream(str(coordinator.registry.changes.cursor), wait=30)
        await until(lambda: coordinator.longpolls.open_count == 1)
        db1 = register(coordinator, "db1")
        coordinator.clock.advance(0)
        answer = await stream.next()
        self.assertEqual([p.node_id for p in answer.upserts], [db1])
        coordinator.clock.advance(31)
        last = await stream.next()
        self.assertEqual(last.upserts, ())
        self.assertIsNone(await stream.next())
