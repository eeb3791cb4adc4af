"""The bench's netmap stream (bench/httpload.py ``on_line``, bench/nodes.py
``poll_loop`` with ``netmap="stream"``): lines handed on as they arrive,
every other answer read whole, and a simulated node that takes each line
as the daemon takes a long-poll answer."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from bench import httpload
from bench.httpload import Counters, HttpConnection, HttpError
from bench.nodes import Fleet, SimNode

STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


class Connection:
    def __init__(self):
        self.counters = Counters()
        self.conn = HttpConnection(self.counters, b"h")
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)
        self.lines: list[tuple[bytes, float]] = []

    def request(self, on_line=True) -> Deferred:
        return self.conn.request(b"GET", b"/peers?stream=1", on_line=self.take if on_line else None)

    def take(self, line: bytes, at: float) -> None:
        self.lines.append((line, at))


class StreamedAnswers(unittest.TestCase):
    def test_each_line_is_handed_on_as_it_arrives_and_the_request_ends_with_the_answer(self):
        c = Connection()
        done = []
        c.request().addCallback(done.append)
        c.conn.dataReceived(STREAM_HEAD + chunk(b'{"cursor": "e:1"}\n{"cur'))
        self.assertEqual([line for line, _ in c.lines], [b'{"cursor": "e:1"}'])
        c.conn.dataReceived(chunk(b'sor": "e:2"}'))
        self.assertEqual(len(c.lines), 1)  # half a line is not a line
        c.conn.dataReceived(chunk(b"\n") + chunk(b'{"cursor": "e:3"}\n'))
        self.assertEqual([json.loads(line)["cursor"] for line, _ in c.lines], ["e:1", "e:2", "e:3"])
        self.assertEqual(done, [])
        c.conn.dataReceived(b"0\r\n\r\n")
        (response,) = done
        self.assertEqual((response.status, response.body, response.lines, response.streamed), (200, b"", 3, True))
        self.assertTrue(all(at <= response.done_at for _, at in c.lines))
        # The connection is kept for the next request.
        self.assertFalse(c.transport.disconnecting)
        c.request()

    def test_a_last_line_without_its_newline_is_still_a_line(self):
        c = Connection()
        done = []
        c.request().addCallback(done.append)
        c.conn.dataReceived(STREAM_HEAD + chunk(b'{"a": 1}\n{"b": 2}') + b"0\r\n\r\n")
        self.assertEqual([line for line, _ in c.lines], [b'{"a": 1}', b'{"b": 2}'])
        self.assertEqual(done[0].lines, 2)

    def test_an_answer_that_is_not_a_stream_is_read_whole(self):
        for head in (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n",
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/x-ndjson\r\nContent-Length: 17\r\n\r\n",
        ):
            c = Connection()
            done = []
            c.request().addCallback(done.append)
            c.conn.dataReceived(head + b'{"cursor": "e:1"}')
            self.assertEqual(c.lines, [])
            self.assertEqual((done[0].body, done[0].streamed), (b'{"cursor": "e:1"}', False))

    def test_without_on_line_a_stream_is_one_body(self):
        c = Connection()
        done = []
        c.request(on_line=False).addCallback(done.append)
        c.conn.dataReceived(STREAM_HEAD + chunk(b'{"a": 1}\n') + chunk(b'{"b": 2}\n') + b"0\r\n\r\n")
        self.assertEqual((done[0].body, done[0].streamed), (b'{"a": 1}\n{"b": 2}\n', False))

    def test_a_line_longer_than_the_bound_fails_the_request(self):
        self.patch(httpload, "MAX_BODY_BYTES", 64)
        c = Connection()
        failed = []
        c.request().addErrback(failed.append)
        c.conn.dataReceived(STREAM_HEAD + chunk(b"x" * 40))
        c.conn.dataReceived(chunk(b"\n" + b"y" * 40))  # two short lines' worth, but one line each: fine
        self.assertEqual(failed, [])
        c.conn.dataReceived(chunk(b"y" * 40))
        self.assertEqual(len(failed), 1)
        failed[0].trap(HttpError)
        self.assertTrue(c.transport.disconnecting or c.conn.closed or c.transport.connected is False)

    def test_a_line_the_callback_refuses_fails_the_request_with_its_error(self):
        c = Connection()
        failed = []
        c.conn.request(b"GET", b"/p", on_line=lambda line, at: json.loads(line)).addErrback(failed.append)
        c.conn.dataReceived(STREAM_HEAD + chunk(b"not json\n"))
        self.assertEqual(len(failed), 1)
        failed[0].trap(ValueError)


class StreamServer(Protocol):
    """Answers each GET with the next of ``answers`` (lists of lines: a stream)."""

    def __init__(self, factory):
        self.factory = factory
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.factory.paths.append(head.split(b" ")[1].decode())
            answers = self.factory.answers
            if not answers:
                self.factory.fleet.stop()
                self.transport.loseConnection()
                return
            lines = answers.pop(0)
            self.transport.write(STREAM_HEAD + b"".join(chunk(json.dumps(a).encode() + b"\n") for a in lines) + b"0\r\n\r\n")


class NodeReadsAStream(unittest.TestCase):
    async def test_each_line_is_an_answer_and_the_node_asks_again_when_the_stream_ends(self):
        factory = Factory()
        factory.protocol = lambda: StreamServer(factory)  # type: ignore[assignment]
        factory.paths = []  # type: ignore[attr-defined]
        watched = {"node_id": "n-watched"}
        factory.answers = [  # type: ignore[attr-defined]
            [{"cursor": "e:5", "upserts": [watched], "removals": []}, {"cursor": "e:6", "upserts": [], "removals": []}],
            [{"cursor": "e:7", "full": True, "upserts": [], "removals": []}],
        ]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        fleet = Fleet(reactor, "127.0.0.1", port.getHost().port, "wire", "t", range(1), own_addresses=False)
        factory.fleet = fleet  # type: ignore[attr-defined]
        self.addCleanup(fleet.stop)
        fleet.running = True
        fleet.mark_moves()
        fleet.watch("n-watched")
        node: SimNode = fleet.nodes[0]
        await Deferred.fromCoroutine(node.poll_loop(1, 2))
        paths = factory.paths  # type: ignore[attr-defined]
        self.assertEqual(paths[0], "/peers?since=0&wait=1&stream=1")
        self.assertEqual(paths[1], "/peers?since=e:6&wait=2&stream=1")  # the last line's cursor
        self.assertEqual(paths[2], "/peers?since=e:7&wait=2&stream=1")
        self.assertEqual(node.cursor, "e:7")
        self.assertEqual(fleet.moves_report()["answers"], {"full": 1, "delta": 2})
        netmap = fleet.counters.netmap
        self.assertEqual((netmap["lines"], netmap["streams"], netmap["ended_after_full"]), (3, 2, 1))
        self.assertEqual(netmap["streams_of_several_lines"], 1)

    async def test_longpoll_mode_asks_without_stream(self):
        factory = Factory()
        factory.protocol = lambda: StreamServer(factory)  # type: ignore[assignment]
        factory.paths = []  # type: ignore[attr-defined]
        factory.answers = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        fleet = Fleet(reactor, "127.0.0.1", port.getHost().port, "wire", "t", range(1), own_addresses=False, netmap="longpoll")
        factory.fleet = fleet  # type: ignore[attr-defined]
        self.addCleanup(fleet.stop)
        fleet.running = True
        await Deferred.fromCoroutine(fleet.nodes[0].poll_loop(1, 2))
        self.assertEqual(factory.paths, ["/peers?since=0&wait=1"])  # type: ignore[attr-defined]

    def test_an_unknown_netmap_mode_is_refused(self):
        with self.assertRaises(ValueError):
            Fleet(reactor, "127.0.0.1", 1, "wire", "t", range(1), netmap="websocket")
