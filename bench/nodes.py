"""Simulated nodes: many per process, each speaking the real protocol.

Two behaviours, chosen per fleet:

- ``wire``: what ``twistd wire-node`` does (wire/node/daemon.py). Two
  persistent connections per node, as its treq pool keeps them: one carries
  ``POST /register`` every 30 s, the other an endless netmap request
  ``GET /peers?since=CURSOR&wait=25`` that is sent again as soon as it is
  answered. How the netmap is read is the fleet's ``netmap``:
  ``stream`` (the daemon's way since the netmap stream, wire/client.py
  ``netmap_stream``): ``&stream=1``, and every NDJSON line of the answer is
  taken as it arrives, as a whole long-poll answer would be, until the
  server ends the response (its wait over, or after a line that changes
  what the node holds: a full netmap, a filter, DNS, a route filter); a
  server that does not stream answers once, and that is taken the same.
  ``longpoll`` (the protocol before): one answer per request.
- ``seed``: what the seed's client does with ``requests``: every 30 s a
  ``POST /register`` and a ``GET /peers`` (the whole online list), each on a
  fresh connection that the client closes once it has the answer.

Against an authenticating server (wire's default) a wire node first enrolls
(``POST /enroll`` with a join key, as ``wire up --join`` does) and then sends
its credential as ``Authorization: Bearer`` on every request; against an
``--open`` server it just registers. Each node connects from its own
loopback address (127.x.y.z), so the server sees one client address per
node, as it would in real life (per-address rate limits, ``public_ip``).

A fleet may be given several replicas of one mesh (one database, one
certificate): node ``i`` starts at replica ``i % len(replicas)`` and, as
``twistd wire-node`` does (wire/node/servers.py), moves to the next one
round-robin when its replica stops answering (no connection, no answer, or
502/503/504), keeping its credential and its cursor: the first round
through the replicas retries at once, later rounds back off. Each move is
noted (when, where to, whether the first answer there was a full netmap),
for the failover bench (bench/replica_scale.py).

Every node's loop is bounded: in time by the fleet's deadline and each
request's timeout, in count by ``MAX_LOOP_ROUNDS``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater

from bench.httpload import Connector, Counters, HttpConnection, HttpError, LineCallback, NotSent, Response, TimedOut, client_tls
from wire.node.servers import FAIL_OVER_STATUSES
from wire.protocol import Registration
from wire.protocol.filter import filter_digest, filter_json, parse_filter_rules

MODES = ("wire", "seed")
# How a wire node reads its netmap: a stream of answers per request (the
# daemon's way), or one answer per request (the long-poll before it).
NETMAP_MODES = ("stream", "longpoll")
# An answer's keys after which the server ends a netmap stream
# (wire/server/netmapstream.py ends_stream), besides "full".
STREAM_HELD_KEYS = ("filter", "dns", "route_filter")
# A stream shorter than its wait by more than this ended early (the server
# ends one with less than a second left: netmapstream.MIN_WAIT_LEFT).
STREAM_WAIT_SLACK = 1.5
REQUEST_TIMEOUT = 10.0
# A long-poll answered at once every time (a server that ignores wait) must
# still not spin forever: a node makes at most this many requests per loop.
MAX_LOOP_ROUNDS = 1_000_000
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 4.0
# wire/node/heartbeat.py REGISTER_AT_LEAST_EVERY: with the long-poll as the
# heartbeat, a node still registers this often.
FULL_REGISTER_EVERY = 600.0
# A join refused with a fail-over status (503) or a conflict (409) is tried this often in all.
JOIN_ATTEMPTS = 5


def node_identity(run_tag: str, index: int) -> tuple[str, str, str]:
    """(node_id, node_name, wg_public_key) for simulated node ``index``: stable, unique, valid."""
    name = f"b-{run_tag}-{index}"
    node_id = hashlib.sha256(name.encode()).hexdigest()[:32]
    key = base64.b64encode(hashlib.sha256(b"wg-key:" + name.encode()).digest()).decode()
    return node_id, name, key


def registration_for(run_tag: str, index: int, moved: int = 0) -> Registration:
    """``moved``: how many times the node's NAT mapping has moved (each a new
    ``nat_port``, so its registration is a real change, written and told)."""
    node_id, name, key = node_identity(run_tag, index)
    # Ports spread like NAT mappings; lan_ip as real nodes send it.
    return Registration(
        node_id=node_id,
        node_name=name,
        wg_public_key=key,
        port=51820,
        nat_port=20000 + (index + moved * 7919) % 40000,
        lan_ip=f"192.168.{index // 250 % 250}.{1 + index % 250}",
    )


def registration_body(run_tag: str, index: int, moved: int = 0) -> bytes:
    """``POST /register``'s body, as wire/node/daemon.py builds it (Registration.as_body)."""
    return json.dumps(registration_for(run_tag, index, moved).as_body()).encode()


def source_address(index: int) -> str:
    """Simulated node ``index``'s own loopback address: 127.1.0.1 onwards.

    127.0.0.0/8 is all loopback on Linux, so no setup is needed; traffic
    still goes only to the server on 127.0.0.1.
    """
    n = index + 1
    return f"127.{1 + (n >> 16) % 200}.{(n >> 8) & 255}.{n & 255}"


def probe_source_address(k: int) -> str:
    return f"127.250.{(k >> 8) & 255}.{1 + (k & 255) % 254}"


def enroll_body(run_tag: str, index: int, join_key: str) -> bytes:
    """``POST /enroll``'s body, as wire/node/enroll.py builds it."""
    return json.dumps(registration_for(run_tag, index).enrollment_body(join_key)).encode()


class EmptyStream(Exception):
    """A netmap stream that ended without a line (the server failed its first
    answer after sending the head): not the replica's absence, no move."""


class Answered(HttpError):
    """The server answered, with a status the caller did not want."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def fails_over(error: Exception) -> bool:
    """Whether a node moves to another replica after ``error`` (as
    wire/node/servers.py says: no connection, no answer, or a replica that
    cannot serve now); a refusal (401, 400...) is not the replica's fault."""
    if isinstance(error, Answered):
        return error.status in FAIL_OVER_STATUSES
    return isinstance(error, (HttpError, ConnectionError, TimeoutError))


def cursor_serial(cursor: str) -> int:
    try:
        return int(cursor.rpartition(":")[2])
    except ValueError:
        return -1


@dataclass
class Watch:
    """Which of this fleet's nodes have seen a given node appear, and when."""

    node_id: str
    seen: dict[int, float] = field(default_factory=dict)
    reported: bool = False
    # Under a policy, only these nodes (indices) may see it: done when they have.
    expect: frozenset[int] | None = None


@dataclass
class Wave:
    """What each node's answers carried after a policy change (from ``mark``)."""

    started: float
    new_filter_at: dict[int, float] = field(default_factory=dict)
    new_filter_digest: dict[int, str] = field(default_factory=dict)
    full_at: dict[int, float] = field(default_factory=dict)
    answers: dict[int, int] = field(default_factory=dict)
    body_bytes: dict[int, int] = field(default_factory=dict)
    # Nodes whose view the change alters: the peers each must still gain and lose.
    pending_views: dict[int, tuple[set[str], set[str]]] = field(default_factory=dict)
    view_at: dict[int, float] = field(default_factory=dict)


@dataclass
class Move:
    """A node that lost its replica and long-polls another (bench/replica_scale.py)."""

    index: int
    left: int  # the replica it lost
    lost_at: float  # time.monotonic() of the failure that made it move
    to: int = -1  # where its first answer came from
    polling_at: float | None = None  # its long-poll was written at a replica that then answered it
    answered_at: float | None = None
    first_full: bool | None = None  # was that first answer a whole netmap?
    tries: int = 0  # replicas tried until one answered

    def as_json(self) -> dict:
        return {
            "index": self.index, "left": self.left, "to": self.to, "lost_at": round(self.lost_at, 6),
            "polling_at": None if self.polling_at is None else round(self.polling_at, 6),
            "answered_at": None if self.answered_at is None else round(self.answered_at, 6),
            "first_full": self.first_full, "tries": self.tries,
        }


class SimNode:
    __slots__ = (
        "fleet", "index", "node_id", "body", "source", "auth", "hb_conn", "poll_conn", "cursor", "heartbeat", "stopped",
        "filter_digest", "me", "server", "sent_at", "move", "moved", "last_line",
    )

    def __init__(self, fleet: Fleet, index: int):
        self.fleet = fleet
        self.index = index
        self.node_id = node_identity(fleet.run_tag, index)[0]
        self.body = registration_body(fleet.run_tag, index)
        self.source = source_address(index) if fleet.own_addresses else None
        self.auth = b""  # the Authorization header line, once enrolled
        self.hb_conn: HttpConnection | None = None
        self.poll_conn: HttpConnection | None = None
        self.cursor = "0"
        self.heartbeat: LoopingCall | None = None
        self.stopped = False
        # As wire/node/netmap.py: the digest of the filter held (None: never
        # told one), sent as ``filter=``; and this node as the server has it.
        self.filter_digest: str | None = None
        self.me: dict | None = None
        # The replica in use (an index into the fleet's connectors), when the
        # last request was written, and a move not yet answered at its new replica.
        self.server = index % len(fleet.connectors)
        self.sent_at = 0.0
        self.move: Move | None = None
        self.moved = 0  # re-registrations with a moved NAT mapping so far
        self.last_line: dict | None = None  # the netmap stream's latest answer

    # -- one request -----------------------------------------------------------

    async def _send(
        self, slot: str | None, method: bytes, path: bytes, body: bytes | None, kind: str, timeout: float,
        on_line: LineCallback | None = None,
    ) -> Response:
        """Send on the node's persistent connection ``slot`` (or a fresh one
        closed afterwards, when ``slot`` is None: the seed client's way).
        A request on a kept connection that the server had just closed is
        sent again once on a new one, as HTTP clients' pools do.
        ``on_line``: a streamed answer's lines (bench/httpload.py); the
        timeout is the whole stream's."""
        fleet = self.fleet
        for attempt in (1, 2):
            conn = getattr(self, slot) if slot else None
            reused = conn is not None and not conn.closed
            if not reused:
                conn = await fleet.connectors[self.server].connect(self.source)
                if slot:
                    setattr(self, slot, conn)
            fleet.counters.count(fleet.counters.requests, kind)
            d = conn.request(method, path, body, headers=self.auth, on_line=on_line)
            self.sent_at = time.monotonic()
            timer = fleet.reactor.callLater(timeout, _time_out, conn, d, timeout)
            try:
                response = await d
            except NotSent:
                if slot:
                    setattr(self, slot, None)
                if reused and attempt == 1:
                    fleet.counters.count(fleet.counters.errors, "stale_connection_retried")
                    continue
                raise
            except BaseException:
                if slot:
                    setattr(self, slot, None)
                raise
            finally:
                if timer.active():
                    timer.cancel()
            if slot is None and not conn.closed:
                conn.transport.loseConnection()
            return response
        raise AssertionError("unreachable")

    # -- registration and heartbeats ----------------------------------------------

    async def register(self) -> tuple[float, float, str]:
        """One ``POST /register``: (sent_at, done_at, cursor or "")."""
        slot = "hb_conn" if self.fleet.mode == "wire" and self.fleet.keep_heartbeat_connection else None
        sent = time.monotonic()
        response = await self._send(slot, b"POST", b"/register", self.body, "register", REQUEST_TIMEOUT)
        answer = _answer(response, "register")
        return sent, response.done_at, str(answer.get("cursor") or "")

    async def join(self) -> tuple[float, float, str]:
        """Become a node: enroll with the join key (authenticating server) or register (open)."""
        if self.fleet.join_key is None:
            return await self.register()
        slot = "hb_conn" if self.fleet.keep_heartbeat_connection else None
        sent = time.monotonic()
        keys = self.fleet.join_keys
        body = enroll_body(self.fleet.run_tag, self.index, keys[self.index % len(keys)] if keys else self.fleet.join_key)
        response = await self._send(slot, b"POST", b"/enroll", body, "enroll", REQUEST_TIMEOUT)
        answer = _answer(response, "enroll")
        credential = answer.get("credential")
        if not isinstance(credential, str) or not credential:
            raise HttpError("enroll answered without a credential")
        self.auth = b"Authorization: Bearer " + credential.encode() + b"\r\n"
        return sent, response.done_at, str(answer.get("cursor") or "")

    async def heartbeat_once(self) -> None:
        if self.stopped:
            return
        try:
            await self.register()
        except Exception as e:
            self.fleet.error("heartbeat", e)
            return
        if self.fleet.mode == "seed":
            await self.seed_sync()

    # -- seed: poll the online list --------------------------------------------------

    async def seed_sync(self) -> None:
        try:
            response = await self._send(None, b"GET", b"/peers", None, "peers", REQUEST_TIMEOUT * 3)
            if response.status != 200:
                raise HttpError(f"/peers answered {response.status}")
            answer = json.loads(response.body)
        except Exception as e:
            self.fleet.error("peers", e)
            return
        peers = answer.get("peers", []) if isinstance(answer, dict) else answer
        if isinstance(peers, dict):  # some servers key the list by id
            peers = list(peers.values())
        self.fleet.saw(self, peers, response.done_at)

    # -- wire: the netmap, a stream or a long-poll -----------------------------------

    async def poll_loop(self, first_wait: float, wait: float) -> None:
        """The netmap request, again as soon as it is answered (a stream: ended).
        Each answer (each line of a stream, at its arrival) is taken by
        :meth:`take_answer`; the request's timeout is its wait + REQUEST_TIMEOUT."""
        fleet = self.fleet
        streaming = fleet.netmap == "stream"
        netmap = fleet.counters.netmap
        current_wait = first_wait
        backoff = 0.0
        failed_in_a_row = 0
        for _ in range(MAX_LOOP_ROUNDS):
            if self.stopped or not fleet.running:
                return
            path = f"/peers?since={self.cursor}&wait={current_wait:g}"
            if self.filter_digest is not None:
                path += f"&filter={self.filter_digest}"
            if streaming:
                path += "&stream=1"
            self.last_line = None
            asked_at = time.monotonic()
            try:
                response = await self._send(
                    "poll_conn", b"GET", path.encode(), None, "longpoll", current_wait + REQUEST_TIMEOUT,
                    on_line=self._take_line if streaming else None,
                )
                if response.status != 200:
                    if response.status == 400:
                        self.cursor = "0"  # as the daemon does: a cursor this server rejects
                    raise Answered(response.status, f"long-poll answered {response.status}: {response.body[:120]!r}")
                if response.streamed:
                    self._stream_ended(response.done_at - asked_at, response.lines, current_wait)
                else:
                    if streaming:
                        fleet.counters.count(netmap, "not_streamed")  # a server that answers once
                    self.take_answer(json.loads(response.body), len(response.body), response.done_at)
            except Exception as e:
                if self.stopped or not fleet.running:
                    return
                fleet.error("longpoll", e)
                failed_in_a_row += 1
                if fails_over(e) and self.fail_over():
                    # As the daemon: the first round through the replicas without waiting.
                    if failed_in_a_row < len(fleet.connectors):
                        continue
                backoff = min(BACKOFF_CAP, backoff * 2 if backoff else BACKOFF_FIRST)
                await deferLater(fleet.reactor, backoff, lambda: None)
                continue
            backoff = 0.0
            failed_in_a_row = 0
            current_wait = wait

    def _take_line(self, line: bytes, at: float) -> None:
        """One line of the netmap stream: an answer, taken as it arrives. A
        line that cannot be taken fails the request (the connection drops)."""
        answer = json.loads(line)
        self.fleet.counters.count(self.fleet.counters.netmap, "lines")
        self.take_answer(answer, len(line), at)
        self.last_line = answer

    def _stream_ended(self, lasted: float, lines: int, wait: float) -> None:
        """Count how a netmap stream ended: after a line that makes the node
        ask again (full, a held key), at its wait, or earlier (the node read
        too slowly, its credential stopped working, the server stopped)."""
        counters = self.fleet.counters
        counters.count(counters.netmap, "streams")
        last = self.last_line
        if last is None:
            raise EmptyStream("the netmap stream ended without a line")
        if last.get("full"):
            how = "ended_after_full"
        elif any(key in last for key in STREAM_HELD_KEYS):
            how = "ended_after_held_key"
        elif lasted >= wait - STREAM_WAIT_SLACK:
            how = "ended_at_wait"
        else:
            how = "ended_early"
        counters.count(counters.netmap, how)
        if lines > 1:
            counters.count(counters.netmap, "streams_of_several_lines")

    def take_answer(self, answer: dict, size: int, at: float) -> None:
        """One netmap answer (a long-poll's, or a stream's line) arrived at ``at``."""
        fleet = self.fleet
        self.cursor = str(answer["cursor"])
        if answer.get("full"):
            fleet.counters.count(fleet.counters.netmap, "full_answers")
        held = self.filter_digest
        if "filter" in answer:
            self.filter_digest = fleet.digest_of_filter(answer["filter"])
        if isinstance(answer.get("me"), dict):
            self.me = answer["me"]
        fleet.answered(self, bool(answer.get("full")), at)
        fleet.saw(self, answer.get("upserts") or (), at)
        if fleet.wave is not None:
            fleet.wave_answer(self, answer, size, held, at)

    def fail_over(self) -> bool:
        """Move to the next replica (round-robin), as wire/node/servers.py
        next_server does; False when the fleet knows only one."""
        count = len(self.fleet.connectors)
        if count < 2:
            return False
        if self.move is None:
            self.move = Move(self.index, self.server, time.monotonic())
        self.move.tries += 1
        for conn in (self.hb_conn, self.poll_conn):
            if conn is not None and not conn.closed:
                conn.abort()
        self.hb_conn = self.poll_conn = None
        self.server = (self.server + 1) % count
        return True

    async def open_heartbeat_connection(self) -> None:
        """A kept connection for ``POST /register`` beside the long-poll,
        handshakes done (a ``GET /health``), so that a burst of registrations
        measures the server's handling of them, not TCP and TLS set-up."""
        response = await self._send("hb_conn", b"GET", b"/health", None, "health", REQUEST_TIMEOUT)
        if response.status != 200:
            raise Answered(response.status, f"/health answered {response.status}")

    async def register_moved(self) -> tuple[float, float]:
        """``POST /register`` with the NAT mapping moved (a real change): (sent, answered)."""
        self.moved += 1
        self.body = registration_body(self.fleet.run_tag, self.index, self.moved)
        sent = time.monotonic()
        response = await self._send("hb_conn", b"POST", b"/register", self.body, "register", REQUEST_TIMEOUT * 3)
        _answer(response, "register")
        return sent, response.done_at

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopped = True
        if self.heartbeat is not None and self.heartbeat.running:
            self.heartbeat.stop()
        for conn in (self.hb_conn, self.poll_conn):
            if conn is not None and not conn.closed:
                conn.abort()


def _answer(response, what: str) -> dict:
    if response.status != 200:
        raise Answered(response.status, f"{what} answered {response.status}: {response.body[:200]!r}")
    answer = json.loads(response.body)
    if not isinstance(answer, dict) or not answer.get("ok", True):
        raise HttpError(f"{what} refused: {response.body[:200]!r}")
    return answer


def _time_out(conn: HttpConnection, d: Deferred, timeout: float) -> None:
    if not d.called:
        conn.fail_and_abort(TimedOut(f"no whole answer within {timeout:g} s ({conn.progress()}, request {conn.uses} on its connection)"))


class Fleet:
    """The simulated nodes of one load process."""

    def __init__(
        self,
        reactor,
        host: str,
        port: int,
        mode: str,
        run_tag: str,
        indices: range,
        connect_concurrency: int = 64,
        keep_heartbeat_connection: bool = True,
        on_watch_done: Callable[[Watch, int], None] | None = None,
        tls: bool = False,
        own_addresses: bool = True,
        replicas: Sequence[tuple[str, int]] = (),
        netmap: str = "stream",
    ):
        """``replicas``: the mesh's other servers (host, port), after ``host:port``.
        ``netmap``: how wire nodes read it, one of NETMAP_MODES (see the module's docstring)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if netmap not in NETMAP_MODES:
            raise ValueError(f"netmap must be one of {NETMAP_MODES}")
        self.reactor = reactor
        self.mode = mode
        self.netmap = netmap
        self.run_tag = run_tag
        self.counters = Counters()
        tls_options = client_tls() if tls else None
        self.connectors = [
            Connector(reactor, h, p, self.counters, concurrency=connect_concurrency, tls=tls_options)
            for h, p in ((host, port), *replicas)
        ]
        self.connector = self.connectors[0]
        # Long-poll answers by kind, and the moves between replicas, since mark_moves.
        self.answer_kinds = {"full": 0, "delta": 0}
        self.moves: list[Move] = []
        self.moves_since = 0.0
        self.own_addresses = own_addresses
        self.join_key: str | None = None  # set before joining an authenticating server
        # Under a policy: node i enrolls with join_keys[i % len] (one tag each).
        self.join_keys: list[str] = []
        self.wave: Wave | None = None
        self._filter_digests: dict[str, str] = {}  # digest of a filter as received -> as a node holds it
        self.indices = indices
        self.nodes = [SimNode(self, i) for i in indices]
        # False: each heartbeat on a fresh connection (fd limits, see README).
        self.keep_heartbeat_connection = keep_heartbeat_connection
        self.running = False
        self.watches: dict[str, Watch] = {}
        self._on_watch_done = on_watch_done
        self._tasks: list[Deferred] = []
        self.error_samples: list[str] = []
        self._samples_per_kind: dict[str, int] = {}

    def digest_of_filter(self, rules) -> str:
        """The digest a node holds after taking ``rules``: validated and
        digested as the node daemon does (NetmapAnswer, NodeNetmap.apply).
        Nodes of a class get the same filter: each distinct one is parsed
        once per load process (thousands of sources each at 10,000 nodes;
        real nodes each have a CPU of their own)."""
        if rules is None:
            return filter_digest(None)
        raw = filter_digest(rules)
        digest = self._filter_digests.get(raw)
        if digest is None:
            if len(self._filter_digests) > 10_000:
                self._filter_digests.clear()
            digest = self._filter_digests[raw] = filter_digest(filter_json(parse_filter_rules(rules)))
        return digest

    def error(self, kind: str, error: Exception) -> None:
        self.counters.count(self.counters.errors, f"{kind}: {type(error).__name__}")
        # The first few of each kind: one kind's flood must not hide another's.
        label = f"{kind}: {type(error).__name__}"
        seen = self._samples_per_kind.get(label, 0)
        if seen < 3 and len(self.error_samples) < 60:
            self._samples_per_kind[label] = seen + 1
            # Wall-clock time, to be found in the servers' logs.
            self.error_samples.append(f"{time.strftime('%H:%M:%S')} {kind}: {error}"[:300])

    # -- registration throughput ------------------------------------------------------

    async def register_all(self, concurrency: int, join_key: str | None = None, join_keys: list[str] | None = None) -> dict:
        """Every node joins (enrolls or registers) once, ``concurrency`` at a time; per-node timings.
        With ``join_keys``, node ``i`` enrolls with ``join_keys[i % len(join_keys)]``."""
        self.join_key = join_key or (join_keys[0] if join_keys else None)
        self.join_keys = list(join_keys or ())
        pending = iter(self.nodes)
        sent_at: list[float] = []
        done_at: list[float] = []
        best_cursor = ""
        failures = 0
        retried = 0

        async def joined(node: SimNode) -> tuple[float, float, str] | None:
            nonlocal failures, retried
            for attempt in range(1, JOIN_ATTEMPTS + 1):
                try:
                    return await node.join()
                except Exception as e:
                    self.error("join", e)
                    # Two replicas offered one address (or name) at once and
                    # the database kept the first: the other is answered 409
                    # "try again". The daemon does, after REFUSED_RETRY (60 s)
                    # (wire/node/daemon.py); the bench at once, and counts it.
                    conflict = isinstance(e, Answered) and e.status == 409
                    if attempt == JOIN_ATTEMPTS or not (conflict or fails_over(e)):
                        break
                    retried += 1
                    await deferLater(self.reactor, BACKOFF_FIRST, lambda: None)
            failures += 1
            return None

        async def lane() -> None:
            nonlocal best_cursor
            for node in pending:
                outcome = await joined(node)
                if outcome is None:
                    continue
                sent, done, cursor = outcome
                sent_at.append(sent)
                done_at.append(done)
                if cursor_serial(cursor) > cursor_serial(best_cursor):
                    best_cursor = cursor

        started = time.monotonic()
        lanes = [Deferred.fromCoroutine(lane()) for _ in range(max(1, min(concurrency, len(self.nodes))))]
        for d in lanes:
            await d
        return {
            "nodes": len(self.nodes),
            "ok": len(done_at),
            "failed": failures,
            "retried": retried,
            "started": started,
            "ended": time.monotonic(),
            "latencies": [round(d - s, 6) for s, d in zip(sent_at, done_at)],
            "completions": [round(d, 6) for d in done_at],
            "cursor": best_cursor,
        }

    # -- steady state ---------------------------------------------------------------------

    def start_steady(
        self, cursor: str, heartbeat_interval: float, poll_wait: float, seed: int, implicit_heartbeat: bool = False
    ) -> None:
        """Heartbeats at random phases; in wire mode a long-poll per node,
        whose first wait is random so the 25 s cycles do not all line up.

        ``implicit_heartbeat`` (wire mode against a server that counts
        authenticated long-polls, as ``twistd wire-node`` behaves): the
        long-poll is the heartbeat, reusing the connection the node joined
        on as an HTTP client's pool would; ``POST /register`` only every
        FULL_REGISTER_EVERY seconds (its body never changes here).
        """
        rng = random.Random(seed)
        self.running = True
        implicit = implicit_heartbeat and self.mode == "wire"
        for node in self.nodes:
            node.cursor = cursor or "0"
            interval = heartbeat_interval
            if implicit:
                interval = FULL_REGISTER_EVERY
                if node.poll_conn is None and node.hb_conn is not None and not node.hb_conn.closed:
                    node.poll_conn, node.hb_conn = node.hb_conn, None
            node.heartbeat = LoopingCall(lambda n=node: Deferred.fromCoroutine(n.heartbeat_once()))
            node.heartbeat.clock = self.reactor
            # Implicit: the first full registration comes a random while
            # after the join, which was one.
            phase = rng.uniform(0, interval)
            self.reactor.callLater(phase, _start_loop, node, interval)
            if self.mode == "wire":
                first_wait = round(rng.uniform(1, poll_wait), 2)
                d = Deferred.fromCoroutine(node.poll_loop(first_wait, poll_wait))
                d.addErrback(lambda f: self.error("longpoll loop", f.value))
                self._tasks.append(d)

    # -- moves between replicas ---------------------------------------------------------------

    def answered(self, node: SimNode, full: bool, at: float) -> None:
        """A long-poll answer came (a whole netmap or a delta)."""
        self.answer_kinds["full" if full else "delta"] += 1
        move = node.move
        if move is not None:
            node.move = None
            move.to, move.polling_at, move.answered_at, move.first_full = node.server, node.sent_at, at, full
            self.moves.append(move)

    def mark_moves(self) -> None:
        """Count answers and moves from now on."""
        self.answer_kinds = {"full": 0, "delta": 0}
        self.moves = []
        self.moves_since = time.monotonic()

    def moves_report(self) -> dict:
        """Moves completed since mark_moves, those still under way, and the answers' kinds."""
        pending = [n.move.as_json() for n in self.nodes if n.move is not None]
        return {
            "nodes": len(self.nodes),
            "since": self.moves_since,
            "answers": dict(self.answer_kinds),
            "moves": [m.as_json() for m in self.moves],
            "moving": pending,
            "servers": [sum(1 for n in self.nodes if n.server == i) for i in range(len(self.connectors))],
        }

    # -- a burst of registrations ----------------------------------------------------------------

    async def open_heartbeat_connections(self, concurrency: int = 50) -> dict:
        """Every node opens (and handshakes) its registration connection;
        its periodic registrations stop (they would share it with the burst's)."""
        for node in self.nodes:
            if node.heartbeat is not None and node.heartbeat.running:
                node.heartbeat.stop()
        pending = iter(self.nodes)
        failures = 0

        async def lane() -> None:
            nonlocal failures
            for node in pending:
                try:
                    await node.open_heartbeat_connection()
                except Exception as e:
                    failures += 1
                    self.error("open", e)

        lanes = [Deferred.fromCoroutine(lane()) for _ in range(max(1, min(concurrency, len(self.nodes))))]
        for d in lanes:
            await d
        return {"nodes": len(self.nodes), "failed": failures}

    async def reregister_all(self, at: float) -> dict:
        """At ``at`` (time.monotonic(), shared by the load processes), every
        node sends ``POST /register`` at once, its NAT mapping moved."""
        # Their periodic registrations share the connection: this burst is one.
        for node in self.nodes:
            if node.heartbeat is not None and node.heartbeat.running:
                node.heartbeat.stop()
        await deferLater(self.reactor, max(0.0, at - time.monotonic()), lambda: None)
        sent_at: list[float] = []
        done_at: list[float] = []
        failures = 0

        async def one(node: SimNode) -> None:
            nonlocal failures
            try:
                sent, done = await node.register_moved()
            except Exception as e:
                failures += 1
                self.error("reregister", e)
                return
            sent_at.append(sent)
            done_at.append(done)

        started = time.monotonic()
        runs = [Deferred.fromCoroutine(one(node)) for node in self.nodes]
        for d in runs:
            await d
        return {
            "nodes": len(self.nodes),
            "ok": len(done_at),
            "failed": failures,
            "started": started,
            "ended": time.monotonic(),
            "latencies": [round(d - s, 6) for s, d in zip(sent_at, done_at)],
            "error_samples": self.error_samples[-5:],
        }

    # -- propagation ------------------------------------------------------------------------

    def watch(self, node_id: str, expect: list[int] | None = None) -> None:
        watch = self.watches[node_id] = Watch(node_id, expect=None if expect is None else frozenset(expect))
        if watch.expect is not None and not watch.expect and self._on_watch_done:
            watch.reported = True  # no node here may see it: nothing to wait for
            self._on_watch_done(watch, 0)

    def saw(self, node: SimNode, views, at: float) -> None:
        """A node received these peer views (a delta's upserts or the seed's list)."""
        if not self.watches:
            return
        for view in views:
            node_id = view.get("node_id") if isinstance(view, dict) else None
            watch = self.watches.get(node_id)
            if watch is None or node.index in watch.seen:
                continue
            watch.seen[node.index] = at
            if watch.reported:
                continue
            expect = watch.expect
            if (len(watch.seen) == len(self.nodes)) if expect is None else expect.issubset(watch.seen):
                watch.reported = True
                if self._on_watch_done:
                    self._on_watch_done(watch, 0)

    def end_watch(self, node_id: str) -> Watch | None:
        return self.watches.pop(node_id, None)

    # -- a policy change's wave ---------------------------------------------------------------

    def mark_wave(self, expect_views: dict | None = None) -> None:
        """A policy change is coming. ``expect_views``: {"sets": {KEY: {"gained":
        [node ids], "lost": [...]}}, "nodes": {INDEX: KEY}}, the change of view
        each of this fleet's nodes should be told (classes share a KEY)."""
        self.wave = Wave(time.monotonic())
        if expect_views:
            sets = expect_views["sets"]
            for index, key in expect_views["nodes"].items():
                i = int(index)
                if i in self.indices:
                    own = {self.nodes[i - self.indices.start].node_id}
                    self.wave.pending_views[i] = (set(sets[key]["gained"]) - own, set(sets[key]["lost"]) - own)

    def wave_answer(self, node: SimNode, answer: dict, size: int, held: str | None, at: float) -> None:
        wave = self.wave
        i = node.index
        wave.answers[i] = wave.answers.get(i, 0) + 1
        wave.body_bytes[i] = wave.body_bytes.get(i, 0) + size
        if node.filter_digest != held and i not in wave.new_filter_at:
            wave.new_filter_at[i] = at
            wave.new_filter_digest[i] = node.filter_digest or ""
        if answer.get("full") and i not in wave.full_at:
            wave.full_at[i] = at
        pending = wave.pending_views.get(i)
        if pending is not None:
            gained, lost = pending
            for view in answer.get("upserts") or ():
                if isinstance(view, dict):
                    gained.discard(view.get("node_id"))
                    lost.discard(view.get("node_id"))  # a lost peer seen again: the view is wrong
            if answer.get("full"):
                # A whole view: what it leaves out is gone (the check for wrong ones is below).
                lost.clear()
            for node_id in answer.get("removals") or ():
                lost.discard(node_id)
            if not gained and not lost:
                del wave.pending_views[i]
                wave.view_at[i] = at

    def wave_progress(self) -> dict:
        wave = self.wave
        if wave is None:
            return {"nodes": len(self.nodes), "new_filters": 0, "full_answers": 0, "views": 0}
        return {
            "nodes": len(self.nodes),
            "new_filters": len(wave.new_filter_at),
            "full_answers": len(wave.full_at),
            "views": len(wave.view_at),
        }

    def end_wave(self) -> dict:
        wave, self.wave = self.wave, None
        if wave is None:
            return {"nodes": len(self.nodes)}
        return {
            "nodes": len(self.nodes),
            "started": wave.started,
            "new_filter": {str(i): [round(t, 6), wave.new_filter_digest[i]] for i, t in wave.new_filter_at.items()},
            "full_at": [round(t, 6) for t in wave.full_at.values()],
            "view_at": {str(i): round(t, 6) for i, t in wave.view_at.items()},
            "views_pending": len(wave.pending_views),
            "answers": sum(wave.answers.values()),
            "answered_nodes": len(wave.answers),
            "body_bytes": sum(wave.body_bytes.values()),
            "body_bytes_max": max(wave.body_bytes.values(), default=0),
        }

    # -- stop ---------------------------------------------------------------------------------

    def stop(self) -> None:
        self.running = False
        self.watches.clear()
        for node in self.nodes:
            node.stop()


def _start_loop(node: SimNode, interval: float) -> None:
    if node.stopped or node.heartbeat is None:
        return
    d = node.heartbeat.start(interval, now=True)
    d.addErrback(lambda f: node.fleet.error("heartbeat loop", f.value))
