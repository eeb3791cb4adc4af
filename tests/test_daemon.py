"""The node daemon against a real coordination server on 127.0.0.1, with a fake WireGuard."""

from __future__ import annotations

import base64
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.fakes import FakeRawSender, FakeWireGuard, UDPClock, fixed_nat, started_daemon
from tests.helpers import body_for, key_for, make_coordinator
from tests.serverproc import http_client
from tests.test_lan import ScriptedResolver
from wire.client import (
    LONGPOLL_WAIT,
    BadAnswer,
    CoordinationClient,
    NetmapAnswers,
    ServerError,
    ServerUnreachable,
    make_http_client,
)
from wire.debuglog import show_debug
from wire.keys import load_or_create_keys
from wire.node.config import NodeConfig, load_config, save_config
from wire.node.control import node_status
from wire.node.daemon import NAT_RECHECK_INTERVAL, PATH_CHECK_INTERVAL, NodeDaemon
from wire.node.heartbeat import HEARTBEAT_INTERVAL, REGISTER_AT_LEAST_EVERY
from wire.node.lan import LanAddress
from wire.node.netmap import PERSISTENT_KEEPALIVE
from wire.node.paths import DEAD_AFTER_WITHOUT_ECHO, SETTLE
from wire.protocol.paths import DIRECT_TIMEOUT
from wire.node.reconciler import RELAY_GRANTS_AT_ONCE
from wire.node.relay import RelayShim
from wire.relayproto import KERNEL_PATH, TO_NODE, FrameKey
from wire.protocol import (
    PairPath,
    PathFailure,
    PathMode,
    PathReportAnswer,
    NetmapAnswer,
    ProtocolError,
    RegisterAnswer,
    Registration,
    RelayGrant,
)
from wire.server.api import build_site


async def eventually(predicate, timeout: float = 5.0, step: float = 0.02) -> None:
    """Wait on the real reactor (for tests of real processes and sockets;
    test_ops, test_cli and test_launcher use it). The daemon's own tests
    here run on a fake clock instead."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, step, lambda: None)
        waited += step



DIRECT_PORT = 8790  # the fake server's port for our side (the kernel path)

async def settle(clock, predicate, advance: float = 0.0, turns: int = 500) -> None:
    """Let real I/O happen (and what is due on the fake clock run) until
    ``predicate`` holds, moving the fake clock ``advance`` seconds a turn."""
    for _ in range(turns):
        clock.advance(0)
        if predicate():
            return
        clock.advance(advance)
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"condition not met within {turns} turns")


def real_http_daemon(test, clock, config_dir: str, config: NodeConfig, wireguard, lan_ip: str, relay=None) -> NodeDaemon:
    """A daemon on ``clock`` talking to its server over real HTTP (config saved first)."""
    save_config(config_dir, config)
    client = CoordinationClient(make_http_client(reactor, persistent=False), config.server_url)
    return started_daemon(test, clock=clock, config_dir=config_dir, config=config, wireguard=wireguard, client=client, lan_ip=lan_ip, relay=relay)


class DaemonTests(unittest.TestCase):
    """The daemon against a real server over real TCP on 127.0.0.1. Both
    run on one fake clock: only the sockets use the real reactor, so no
    timer (the daemon's retries, the server's long-poll wait) fires unless
    a test moves the clock."""

    timeout = 30

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.coordinator = make_coordinator(self, clock=self.clock)
        self.listen()
        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)

    def listen(self, port: int = 0):
        self.port = reactor.listenTCP(port, build_site(self.coordinator), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    async def settle(self, predicate, advance: float = 0.0, turns: int = 500) -> None:
        await settle(self.clock, predicate, advance, turns)

    async def pumped(self, coroutine):
        """Await ``coroutine`` while the fake clock's due calls run (the
        server's store commits after the reactor turn)."""
        d = Deferred.fromCoroutine(coroutine)
        await self.settle(lambda: d.called)
        return await d

    def make_daemon(self, name="web1", lan_ip="192.168.1.10", **config_fields):
        config = NodeConfig(server_url=self.url, node_name=name, node_id=body_for(name)["node_id"], **config_fields)
        self.wireguard = FakeWireGuard(clock=self.clock)
        return real_http_daemon(self, self.clock, self.config_dir, config, self.wireguard, lan_ip)

    async def register_other(self, name, **fields):
        response = await http_client().post(self.url + "/register", data=json.dumps(body_for(name, **fields)).encode())
        self.assertEqual(response.code, 200)
        return json.loads(await response.content())

    async def test_registers_brings_interface_up_and_saves_assignment(self):
        daemon = self.make_daemon()
        await self.settle(lambda: daemon.contact.registered and daemon.interface_ready)
        record = self.coordinator.registry.get(daemon.config.node_id)
        self.assertEqual((record.nat_port, record.nat_type, record.lan_ip), (40000, "easy", "192.168.1.10"))
        self.assertEqual(self.wireguard.ups, [(51820, record.vpn_ip, 16)])
        saved = load_config(self.config_dir)
        self.assertEqual((saved.vpn_ip, saved.vpn_subnet, saved.nat_port), (record.vpn_ip, "10.99.0.0/16", 40000))

    async def test_new_peer_is_configured_at_once(self):
        daemon = self.make_daemon()
        await self.settle(lambda: daemon.contact.registered and daemon.netmap.cursor != "0")
        started = self.clock.seconds()
        other = await self.pumped(self.register_other("db1", lan_ip="10.1.1.1"))
        await self.settle(lambda: len(self.wireguard.peers) == 1)
        # Pushed by the open long-poll: not one timer had to fire, so it
        # came well within 2 s (here: within 0 s of the daemon's time).
        self.assertLess(self.clock.seconds() - started, 2.0)
        self.assertEqual(self.clock.seconds(), started)
        (peer,) = self.wireguard.peers.values()
        # Its IPv4 and its IPv6 mesh address (the server gives both).
        self.assertEqual(peer.allowed_ips, (f"{other['vpn_ip']}/32", f"{other['vpn_ip6']}/128"))
        # Both seen from 127.0.0.1, so "behind the same NAT": the LAN address wins.
        self.assertEqual(peer.endpoint, "10.1.1.1:51820")
        self.assertEqual(peer.persistent_keepalive, 25)
        # The fake WireGuard handshakes at once: the path shows as proven.
        status = await self.pumped(node_status(daemon))
        self.assertEqual([(p["node_name"], p["path"]) for p in status["peers"]], [("db1", "lan")])

    async def test_removed_peer_leaves_wireguard(self):
        daemon = self.make_daemon()
        await self.settle(lambda: daemon.contact.registered)
        await self.pumped(self.register_other("db1"))
        await self.settle(lambda: len(self.wireguard.peers) == 1)
        self.coordinator.registry.remove(body_for("db1")["node_id"])
        # The stream waits again at once, so the removal, within a second of
        # db1's registration, wakes it at the end of that second (COALESCE_PER_NODE).
        await self.settle(lambda: len(self.wireguard.peers) == 0, advance=0.1)

    async def test_server_restart_keeps_peers_and_node_reregisters(self):
        daemon = self.make_daemon()
        await self.settle(lambda: daemon.contact.registered)
        await self.pumped(self.register_other("db1"))
        await self.settle(lambda: len(self.wireguard.peers) == 1)
        port_number = self.port.getHost().port
        await self.port.stopListening()
        self.coordinator.close()  # answers open long-polls, closes the store
        await self.settle(lambda: not daemon.contact.reachable)
        # A while of retries against nothing (the backoff runs on the fake clock).
        offline_since = self.clock.seconds()
        await self.settle(lambda: self.clock.seconds() - offline_since >= 10, advance=0.5)
        self.assertEqual(len(self.wireguard.peers), 1, "an unreachable server must not remove peers")
        # A new server run on the same data and port (a new netmap epoch).
        restarted_at = self.clock.seconds()
        self.coordinator = make_coordinator(self, clock=self.clock, data_dir=self.coordinator.data_dir)
        self.listen(port_number)
        node_id = daemon.config.node_id
        await self.settle(lambda: self.coordinator.registry.get(node_id).last_seen > restarted_at, advance=0.5)
        self.assertTrue(daemon.contact.reachable)
        self.assertEqual(len(self.wireguard.peers), 1)

    async def test_restart_with_saved_address_brings_interface_up_without_server(self):
        await self.port.stopListening()
        daemon = self.make_daemon(vpn_ip="10.99.5.5", vpn_subnet="10.99.0.0/16")
        await self.settle(lambda: daemon.interface_ready)
        self.assertEqual(self.wireguard.ups, [(51820, "10.99.5.5", 16)])
        self.assertFalse(daemon.contact.registered)

    async def test_leave_tells_server_and_removes_interface(self):
        daemon = self.make_daemon()
        await self.settle(lambda: daemon.contact.registered and daemon.interface_ready)
        await self.pumped(daemon.leave())
        self.assertTrue(self.wireguard.is_down)
        self.assertFalse(self.coordinator.registry.is_online(daemon.config.node_id))


class ScriptedServer:
    """A coordination client answering from memory on a fake clock.

    Registrations answer at once; each long-poll is answered after its wait
    with what changed since its cursor (the first with a snapshot), at once
    when something did or :meth:`push` changes the mesh while it is open,
    or fails after a second while ``polls_fail`` is set. Relay grants are
    given at once, or never while ``grants_hang`` is set (see ``hanging``),
    or fail while ``grants_fail`` is set.
    """

    def __init__(self, clock, heartbeat: str | None = "longpoll"):
        self.clock = clock
        self.heartbeat = heartbeat
        self.epoch = "epoch1"
        self.registrations: list[float] = []
        self.registered_bodies: list[dict] = []
        self.register_error: Exception | None = None
        self.polls_fail = False
        self.polls_hang = False
        self.polls = 0
        self.next_answer_extra: dict = {}
        self.peers: dict[str, dict] = {}  # node id -> peer view
        self.serial = 1
        self._changes: list[tuple[int, list, list]] = []
        self._open: tuple[Deferred, object, str] | None = None
        self.relay_requests: list[str] = []  # peer node ids, as asked
        self.relay_asked: list[tuple[str, bool, bytes | None]] = []  # (peer, fastpath, held)
        self.granted: dict[str, dict] = {}  # the last grant by peer
        self.fastpath_on = False  # the server's kernel fast path (grants carry the peer's side)
        self.direct_on = False  # ... with side ports (grants asked with direct carry one)
        self.direct_asked: list[bool] = []
        self.grants_hang = False
        self.grants_fail = False
        self.grants_bad = False
        self.hanging: dict[str, Deferred] = {}
        # The server's word on this node's pairs (by peer id), and reports.
        self.words: dict[str, PairPath] = {}
        self.path_reports: list[tuple[str, PathFailure]] = []
        self.paths_unsupported = False  # a seed server: POST /path is a 404

    async def register(self, registration: Registration) -> RegisterAnswer:
        body = registration.as_body()
        self.registrations.append(self.clock.seconds())
        self.registered_bodies.append(body)
        if self.register_error is not None:
            raise self.register_error
        answer = {
            "ok": True,
            "vpn_ip": "10.99.0.5",
            "your_ip": "198.51.100.7",
            "node_id": body["node_id"],
            "node_name": body["node_name"],
            "vpn_subnet": "10.99.0.0/16",
            "offline_after": 90,
            "cursor": f"{self.epoch}:1",
        }
        if self.heartbeat is not None:
            answer["heartbeat"] = self.heartbeat
        # What wire.client.CoordinationClient gives: the answer, parsed.
        return RegisterAnswer.from_json(answer)

    def netmap_stream(self, cursor, wait, holds_filter=None, holds_dns=None, holds_route_filter=None):
        # A server that does not stream: each stream carries one answer.
        return NetmapAnswers.of_one(self.netmap(cursor, wait, holds_filter, holds_dns, holds_route_filter))

    def netmap(self, cursor: str, wait: float, holds_filter: str | None = None, holds_dns: str | None = None,
               holds_route_filter: str | None = None) -> Deferred:
        self.held_dns = holds_dns
        self.polls += 1
        if self.polls_fail:
            return deferLater(self.clock, 1.0, self._unreachable)
        if self.polls_hang:
            return Deferred()  # sent, and never answered
        answer = self._answer_for(cursor)
        at_once = answer["full"] or answer["upserts"] or answer["removals"] or answer.get("paths")
        d: Deferred = Deferred(lambda _: call.cancel())
        call = self.clock.callLater(0 if at_once else wait, self._answer, d)
        self._open = (d, call, cursor)
        return d

    def _answer(self, d: Deferred, answer: dict | None = None) -> None:
        opened, call, cursor = self._open
        self._open = None
        if answer is None:
            answer = self._answer_for(cursor)
        answer.update(self.next_answer_extra)
        self.next_answer_extra = {}
        # What wire.client.CoordinationClient gives: the answer, parsed.
        d.callback(NetmapAnswer.from_json(answer))

    def _answer_for(self, cursor: str) -> dict:
        answer: dict = {"cursor": f"{self.epoch}:{self.serial}", "full": False, "upserts": [], "removals": []}
        if not cursor.startswith(self.epoch + ":"):
            answer.update(full=True, upserts=list(self.peers.values()), paths=[w.to_json() for w in self.words.values()])
            return answer
        since = int(cursor.rpartition(":")[2])
        for serial, upserts, removals, paths in self._changes:
            if serial > since:
                answer["upserts"] += upserts
                answer["removals"] += removals
                answer.setdefault("paths", []).extend(paths)
        return answer

    def push(self, upserts=(), removals=(), paths=()) -> None:
        """The mesh changes: the open long-poll (if any) answers now."""
        self.serial += 1
        for view in upserts:
            self.peers[view["node_id"]] = view
        for node_id in removals:
            self.peers.pop(node_id, None)
        for word in paths:
            if word.mode is None:
                self.words.pop(word.peer, None)
            else:
                self.words[word.peer] = word
        self._changes.append((self.serial, list(upserts), list(removals), [w.to_json() for w in paths]))
        if self._open is not None and not self._open[0].called:
            d, call, _ = self._open
            call.cancel()
            self._answer(d)

    def relay(
        self, node_id: str, wg_public_key: str, peer_node_id: str, fastpath: bool = False, held=None, direct: bool = False
    ) -> Deferred:
        self.relay_requests.append(peer_node_id)
        self.direct_asked.append(direct)
        self.relay_asked.append((peer_node_id, fastpath, held))
        if self.grants_hang:
            d: Deferred = Deferred()
            self.hanging[peer_node_id] = d
            return d
        if self.grants_fail:
            return deferLater(self.clock, 1.0, self._unreachable)
        if self.grants_bad:
            # The client parses a grant once: a bad one is a BadAnswer.
            try:
                RelayGrant.from_json(grant_for(peer_node_id) | {"token": "00"})
            except ProtocolError as e:
                return fail(BadAnswer("POST /relay", e))
        body = grant_for(peer_node_id)
        last = self.granted.get(peer_node_id)
        if held is not None and last is not None and last["token"] == held.hex():
            body = {**body, "token": last["token"], "key": last["key"]}  # our side kept
        if fastpath and self.fastpath_on:
            body = {**body, "peer_token": os.urandom(8).hex(), "peer_key": base64.b64encode(os.urandom(32)).decode()}
        if direct and self.direct_on:
            body = {**body, "direct_port": DIRECT_PORT}
        self.granted[peer_node_id] = body
        return succeed(RelayGrant.from_json(body))

    async def report_path(self, node_id: str, wg_public_key: str, peer_node_id: str, failure: PathFailure) -> PathReportAnswer:
        """As the server does: the pair goes to the relay, told to both (here: the long-poll)."""
        self.path_reports.append((peer_node_id, failure))
        if self.paths_unsupported:
            raise ServerError(404, "no such path: /path")
        now = self.clock.seconds()
        word = PairPath(peer_node_id, PathMode.RELAY, f"reported {failure}", since=now, tries=1, retry_at=now + 60)
        self.push(paths=[word])
        return PathReportAnswer(True, word)

    def _unreachable(self):
        raise ServerUnreachable("http://wire.test is unreachable: connection refused")

    def registered_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.registrations if start < t <= end)


def grant_for(peer_node_id: str) -> dict:
    return {
        "session_id": "session-" + peer_node_id[:6],
        "peer_node_id": peer_node_id,
        "token": os.urandom(8).hex(),
        "key": base64.b64encode(os.urandom(32)).decode(),
    }


def peer_view(name: str, number: int, nat_type: str = "easy", **fields) -> dict:
    """A peer entry as the server sends it: its own public address, not ours."""
    view = body_for(name, nat_type=nat_type, nat_port=40000 + number)
    view.update(vpn_ip=f"10.99.1.{number}", public_ip=f"203.0.113.{number}", online=True, **fields)
    return view


class LongPollHeartbeatTests(unittest.TestCase):
    """The heartbeat loop on a fake clock: when POST /register may be left out."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = ScriptedServer(self.clock)
        self.lan_ip = "192.168.1.10"

    def start(self):
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        config = NodeConfig(server_url="https://wire.test", node_name="web1", node_id=body_for("web1")["node_id"])
        save_config(config_dir, config)
        self.daemon = NodeDaemon(
            clock=self.clock,
            config_dir=config_dir,
            config=config,
            keys=load_or_create_keys(config_dir),
            wireguard=FakeWireGuard(clock=self.clock),
            client=self.server,
            probe_nat=fixed_nat(),
            lan_ip=lambda: self.lan_ip,
        )
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        self.assertEqual(len(self.server.registrations), 1, "the first registration goes out at once")
        self.started = self.clock.seconds()
        # The assignment (vpn_ip) enters the body: one more registration
        # at the first heartbeat, then the body is stable.
        self.advance(HEARTBEAT_INTERVAL)
        self.assertEqual(len(self.server.registrations), 2)

    def advance(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def registrations_over(self, seconds: float) -> int:
        start = self.clock.seconds()
        self.advance(seconds)
        return self.server.registered_between(start, self.clock.seconds())

    def test_no_register_while_the_longpoll_works(self):
        self.start()
        self.assertTrue(self.daemon.heartbeat.longpoll)
        self.assertEqual(self.registrations_over(300), 0)
        self.assertTrue(self.daemon.heartbeat_carried_by_longpoll())
        self.assertGreaterEqual(self.server.polls, 12, "the long-poll kept going")

    def test_open_server_gets_every_heartbeat(self):
        self.server.heartbeat = None
        self.start()
        self.assertFalse(self.daemon.heartbeat.longpoll)
        self.assertEqual(self.registrations_over(300), 10)

    def test_a_changed_body_registers_at_the_next_tick(self):
        self.start()
        self.assertEqual(self.registrations_over(60), 0)
        self.lan_ip = "192.168.7.7"  # the machine moved to another LAN
        self.assertEqual(self.registrations_over(HEARTBEAT_INTERVAL), 1)
        self.assertEqual(self.registrations_over(120), 0, "registered once, quiet again")

    def test_failing_longpolls_bring_the_register_back(self):
        self.start()
        self.server.polls_fail = True
        self.advance(5)  # the open poll fails when its wait ends at the latest
        self.assertGreaterEqual(self.registrations_over(HEARTBEAT_INTERVAL * 3), 3)
        self.server.polls_fail = False
        self.advance(HEARTBEAT_INTERVAL * 2)
        self.assertEqual(self.registrations_over(120), 0, "polls work again: quiet again")

    def test_a_longpoll_open_too_long_is_no_heartbeat(self):
        self.start()
        self.server.polls_hang = True
        # The open poll is answered within 25 s; the next one, sent then,
        # hangs, and counts only while it is no older than a heartbeat.
        self.assertEqual(self.registrations_over(25 + HEARTBEAT_INTERVAL), 0)
        self.assertEqual(self.registrations_over(HEARTBEAT_INTERVAL * 3), 3)
        self.assertTrue(self.daemon.contact.reachable, "registrations get through")

    def test_a_refused_registration_is_retried_as_before(self):
        self.start()
        self.server.register_error = ServerError(429, "too many registrations", retry_after=7.0)
        self.lan_ip = "192.168.7.7"
        self.advance(HEARTBEAT_INTERVAL + 20)
        tries = [t - self.started for t in self.server.registrations[2:]]
        self.assertGreaterEqual(len(tries), 3)
        self.assertTrue(all(b - a >= 7 for a, b in zip(tries, tries[1:])), f"Retry-After ignored: {tries}")
        self.assertFalse(self.daemon.heartbeat_carried_by_longpoll(), "a refused body is no registered one")
        self.server.register_error = None
        self.advance(10)
        self.assertTrue(self.daemon.heartbeat_carried_by_longpoll())
        self.assertEqual(self.registrations_over(120), 0)

    def test_full_register_at_least_every_ten_minutes(self):
        self.start()
        self.assertEqual(self.registrations_over(REGISTER_AT_LEAST_EVERY - 60), 0)
        self.assertEqual(self.registrations_over(60), 1)
        self.assertEqual(self.registrations_over(REGISTER_AT_LEAST_EVERY - 60), 0)

    def test_the_server_asking_or_restarting_registers_at_the_next_tick(self):
        self.start()
        self.server.next_answer_extra = {"register": True}
        self.assertEqual(self.registrations_over(60), 1)
        self.server.epoch = "epoch2"  # a new server run
        self.assertEqual(self.registrations_over(60), 1)
        self.assertEqual(self.registrations_over(120), 0)


class RuntimeTests(unittest.TestCase):
    """Reconcile, paths, relay grants and the relay shim, on a fake clock
    (whose UDP ports are in memory): handshakes happen when a test says so."""

    def setUp(self):
        self.clock = UDPClock()
        self.clock.advance(1_700_000_000)
        self.server = ScriptedServer(self.clock)
        self.wireguard = FakeWireGuard(clock=self.clock, auto_handshake=False)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def start(self, relay: bool = True, lan_ip=None, recheck_nat=None, raw=None) -> NodeDaemon:
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        config = NodeConfig(server_url="https://wire.test", node_name="web1", node_id=body_for("web1")["node_id"])
        save_config(config_dir, config)
        self.shim = RelayShim(self.clock, "192.0.2.1", 3479, 51820, raw=raw) if relay else None
        self.daemon = NodeDaemon(
            clock=self.clock,
            config_dir=config_dir,
            config=config,
            keys=load_or_create_keys(config_dir),
            wireguard=self.wireguard,
            client=self.server,
            probe_nat=fixed_nat(),
            recheck_nat=recheck_nat,
            lan_ip=lan_ip or (lambda: "192.168.1.10"),
            relay=self.shim,
        )
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        self.clock.advance(0)  # the first long-poll's snapshot
        return self.daemon

    def endpoint(self, name: str) -> str | None:
        return self.wireguard.peers[key_for(name)].endpoint

    def session_endpoint(self, name: str) -> str:
        return self.shim.sessions()[body_for(name)["node_id"]].endpoint

    def push(self, upserts=(), removals=()) -> None:
        """The mesh changes; the daemon's long-poll (open again by now) hears it."""
        self.clock.advance(0)
        self.server.push(upserts, removals)
        self.clock.advance(0)

    def advance(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def test_a_relayed_peer_gets_a_grant_a_shim_session_and_the_loopback_endpoint(self):
        self.start()
        self.push([peer_view("db1", 2, nat_type="hard")])  # hard NAT: relay at once
        db1 = body_for("db1")["node_id"]
        self.assertEqual(self.server.relay_requests, [db1])
        self.assertEqual(list(self.shim.sessions()), [db1])
        endpoint = self.endpoint("db1")
        self.assertEqual(endpoint, self.session_endpoint("db1"))
        self.assertTrue(endpoint.startswith("127.0.0.1:"), endpoint)
        loopback = [p for p in self.clock.listening() if p.host == "127.0.0.1"]
        self.assertEqual([f"127.0.0.1:{p.port}" for p in loopback], [endpoint], "the shim's socket for db1")
        upstream = [p for p in self.clock.listening() if p.host != "127.0.0.1"]
        self.assertEqual([addr for _, addr in upstream[0].written], [("192.0.2.1", 3479)], "a first keepalive")
        # Its facts change (no longer a hard NAT): direct again, session gone.
        self.push([peer_view("db1", 2, nat_type="easy")])
        self.assertEqual(self.endpoint("db1"), "203.0.113.2:40002")
        self.assertEqual(self.shim.sessions(), {})
        self.assertEqual([p for p in self.clock.listening() if p.host == "127.0.0.1"], [], "its socket is closed")

    def test_wireguard_sends_to_the_servers_port_while_the_kernel_forwards_our_side(self):
        raw = FakeRawSender()
        self.server.fastpath_on = self.server.direct_on = True
        self.start(raw=raw)
        self.push([peer_view("db1", 2, nat_type="hard")])
        db1 = body_for("db1")["node_id"]
        self.assertEqual(self.server.direct_asked, [True], "a node that can bind asks for a side port")
        shim_endpoint = self.session_endpoint("db1")
        self.assertEqual(self.endpoint("db1"), shim_endpoint)
        self.assertEqual([(port, to) for port, to, _ in raw.sent], [(51820, ("192.0.2.1", DIRECT_PORT))])
        grant = RelayGrant.from_json(self.server.granted[db1])
        key, sent = FrameKey(grant.key), iter(range(1, 100))

        def server_says(flags: int) -> None:
            frame = key.seal(grant.token, TO_NODE, next(sent), bytes([flags]) if flags else b"")
            for port in self.clock.listening():
                if port.host != "127.0.0.1":
                    port.protocol.datagramReceived(frame, ("192.0.2.1", 3479))
            self.clock.advance(0)

        server_says(KERNEL_PATH)
        self.assertEqual(self.endpoint("db1"), f"192.0.2.1:{DIRECT_PORT}", "no shim in WireGuard's way")
        server_says(0)
        self.assertEqual(self.endpoint("db1"), shim_endpoint, "not forwarded any more: the shim at once")
        server_says(KERNEL_PATH)
        self.assertEqual(self.endpoint("db1"), f"192.0.2.1:{DIRECT_PORT}")
        # WireGuard roams to the shim (a packet the peer sent through it): put back.
        self.wireguard.roam(key_for("db1"), shim_endpoint)
        self.daemon.reconciler._reconcile_soon()
        self.clock.advance(0)
        self.assertEqual(self.wireguard.roamed, {}, "reasserted")
        self.assertEqual(self.endpoint("db1"), f"192.0.2.1:{DIRECT_PORT}")

    def test_a_direct_peer_that_roamed_onto_an_ended_kernel_session_is_set_back_and_not_proven(self):
        self.server.fastpath_on = self.server.direct_on = True
        self.start(raw=FakeRawSender())
        self.push([peer_view("db1", 2, nat_type="hard")])
        db1 = body_for("db1")["node_id"]
        grant = RelayGrant.from_json(self.server.granted[db1])
        frame = FrameKey(grant.key).seal(grant.token, TO_NODE, 1, bytes([KERNEL_PATH]))
        for port in self.clock.listening():
            if port.host != "127.0.0.1":
                port.protocol.datagramReceived(frame, ("192.0.2.1", 3479))
        self.clock.advance(0)
        kernel = f"192.0.2.1:{DIRECT_PORT}"
        self.assertEqual(self.endpoint("db1"), kernel)
        # The pair goes direct; the server's kernel still forwards the ended
        # session for a while, and WireGuard follows what comes through it.
        self.push([peer_view("db1", 2, nat_type="easy")])
        self.assertEqual(self.endpoint("db1"), "203.0.113.2:40002")
        self.advance(SETTLE + 1)  # the attempt's baseline is taken
        self.wireguard.roam(key_for("db1"), kernel)
        self.wireguard.count(key_for("db1"), rx=5000)
        self.daemon.reconciler._reconcile_soon()
        self.clock.advance(0)
        self.assertEqual(self.wireguard.roamed, {}, "reasserted")
        self.assertEqual(self.endpoint("db1"), "203.0.113.2:40002")
        self.assertFalse(self.daemon.reconciler.paths.paths[db1].proven, "what came through the relay proves nothing")

    def test_a_node_that_cannot_bind_never_asks_for_a_side_port(self):
        self.server.fastpath_on = self.server.direct_on = True
        self.start(raw=FakeRawSender(available=False))
        self.push([peer_view("db1", 2, nat_type="hard")])
        self.assertEqual(self.server.direct_asked, [False])
        self.assertTrue(self.endpoint("db1").startswith("127.0.0.1:"))

    def test_a_nat_that_moves_our_mapping_is_registered_at_once(self):
        probes = [fixed_nat(port=40000), fixed_nat(port=40000, nat_type="unknown"), fixed_nat(port=41234)]
        self.start(recheck_nat=lambda: probes.pop(0)() if probes else fixed_nat(port=41234)())

        def ports_registered() -> list[int]:
            return [body["nat_port"] for body in self.server.registered_bodies]

        self.clock.advance(NAT_RECHECK_INTERVAL)  # the same mapping: nothing to tell
        self.clock.advance(NAT_RECHECK_INTERVAL)  # one port silent: nothing learned
        self.assertNotIn(41234, ports_registered())
        polls = self.server.polls
        self.clock.advance(NAT_RECHECK_INTERVAL)
        self.assertEqual(ports_registered()[-1], 41234)
        self.assertEqual(self.server.polls, polls + 1, "the long-poll asked again, on a new connection")
        self.assertEqual(self.server.registrations[-1], self.clock.seconds(), "at once, not at the next heartbeat")
        for _ in range(4):
            self.clock.advance(NAT_RECHECK_INTERVAL)
        self.assertEqual(ports_registered().count(41234), 1, "told once")

    def test_a_silent_direct_path_probes_the_nat_at_once(self):
        calls = []

        async def recheck():
            calls.append(self.clock.seconds())
            return await fixed_nat(port=41234)()

        self.start(recheck_nat=recheck)
        self.push([peer_view("db1", 2)])
        self.advance(PATH_CHECK_INTERVAL)
        self.wireguard.handshake(key_for("db1"))
        self.advance(PATH_CHECK_INTERVAL)
        self.assertEqual(calls, [])
        self.wireguard.count(key_for("db1"), tx=500)  # we send, nothing comes back
        self.advance(3 * PATH_CHECK_INTERVAL)
        self.assertEqual(len(calls), 1, "probed when the path went silent, before the 15 s check")
        self.assertEqual(self.server.registered_bodies[-1]["nat_port"], 41234)

    def test_a_hard_nats_new_port_per_probe_is_no_news(self):
        probes = [fixed_nat(port=40000 + i, nat_type="hard") for i in range(1, 4)]
        self.start(recheck_nat=lambda: probes.pop(0)())
        self.daemon.nat = self.successResultOf(Deferred.fromCoroutine(fixed_nat(port=40000, nat_type="hard")()))
        for _ in range(3):
            self.clock.advance(NAT_RECHECK_INTERVAL)
        self.assertEqual(self.daemon.nat.mapped.port, 40000, "kept: a hard NAT's port means nothing")
        self.assertEqual({body["nat_port"] for body in self.server.registered_bodies} & {40001, 40002, 40003}, set())

    def test_grants_are_asked_for_the_fast_path_and_the_peers_side_again_keeping_ours(self):
        self.server.fastpath_on = True
        self.start()
        self.push([peer_view("db1", 2, nat_type="hard")])
        db1 = body_for("db1")["node_id"]
        self.assertEqual(self.server.relay_asked, [(db1, True, None)], "this shim takes peer-sealed frames")
        endpoint = self.session_endpoint("db1")
        token = self.shim.sessions()[db1].token
        # The server says db1's side changed: asked again, holding our side.
        self.shim.on_peer_changed(db1)
        self.clock.advance(0)
        self.assertEqual(self.server.relay_asked[-1], (db1, True, token))
        self.assertEqual(self.session_endpoint("db1"), endpoint, "the same session, WireGuard sees no change")
        self.assertEqual(self.shim.sessions()[db1].peer_token.hex(), self.server.granted[db1]["peer_token"])

    def test_no_direct_handshake_within_the_timeout_means_relay(self):
        self.start()
        self.push([peer_view("db1", 2), peer_view("db2", 3)])
        self.assertEqual((self.endpoint("db1"), self.endpoint("db2")), ("203.0.113.2:40002", "203.0.113.3:40003"))
        self.wireguard.handshake(key_for("db2"), at=self.clock.seconds() + 3)
        self.advance(DIRECT_TIMEOUT + PATH_CHECK_INTERVAL)
        db1, db2 = body_for("db1")["node_id"], body_for("db2")["node_id"]
        self.assertEqual(self.server.path_reports, [(db1, PathFailure.NO_PROOF)], "reported once, and only db1")
        # The server's word came back (the long-poll): db1 relays.
        self.assertEqual(self.endpoint("db1"), self.session_endpoint("db1"))
        self.assertEqual(self.endpoint("db2"), "203.0.113.3:40003", "db2 handshook: it stays direct")
        self.assertTrue(self.daemon.reconciler.paths.paths[db2].proven)
        self.assertEqual(self.server.relay_requests, [db1])

    def test_a_server_without_path_words_lets_the_node_decide_alone(self):
        self.server.paths_unsupported = True
        self.start()
        self.push([peer_view("db1", 2)])
        self.advance(DIRECT_TIMEOUT + 2 * PATH_CHECK_INTERVAL)
        db1 = body_for("db1")["node_id"]
        self.assertEqual(self.server.path_reports, [(db1, PathFailure.NO_PROOF)])
        self.assertEqual(self.endpoint("db1"), self.session_endpoint("db1"))
        self.assertIn("no direct handshake within 15s", self.daemon.reconciler.paths.paths[db1].reason)

    def test_a_direct_path_that_goes_silent_falls_back_to_the_relay(self):
        self.start()
        self.push([peer_view("db1", 2)])
        self.advance(PATH_CHECK_INTERVAL)
        self.wireguard.handshake(key_for("db1"))
        self.advance(PATH_CHECK_INTERVAL)
        db1 = body_for("db1")["node_id"]
        self.assertTrue(self.daemon.reconciler.paths.paths[db1].proven)
        # We send; nothing comes back (db1 runs no probe answerer: WireGuard's own answers only).
        self.wireguard.count(key_for("db1"), tx=500)
        self.advance(DEAD_AFTER_WITHOUT_ECHO)
        self.assertEqual(self.endpoint("db1"), "203.0.113.2:40002", "silent, not yet dead")
        self.advance(2 * PATH_CHECK_INTERVAL)
        self.assertEqual(self.server.path_reports, [(db1, PathFailure.STOPPED)])
        self.assertEqual(self.endpoint("db1"), self.session_endpoint("db1"))

    def test_grants_that_never_come_hold_up_no_other_change(self):
        """The server takes relay grant requests and never answers: every
        other change still applies at once, relayed peers keep the endpoint
        they have, and only a few requests are open at a time."""
        self.start()
        self.server.grants_hang = True
        relayed = [peer_view(f"far{i}", 10 + i, nat_type="hard") for i in range(6)]
        self.push(relayed)
        self.assertEqual(len(self.wireguard.peers), 6, "configured at once, grant or no grant")
        # New and relayed from the start: no endpoint, no keepalive, so no
        # handshake goes where it cannot be answered before the grant comes.
        self.assertEqual(self.endpoint("far0"), None, "no endpoint until its grant comes")
        self.assertEqual(self.wireguard.peers[key_for("far0")].persistent_keepalive, 0)
        self.assertEqual(len(self.server.relay_requests), RELAY_GRANTS_AT_ONCE)
        self.assertFalse(self.daemon.reconciler.reconciling, "no reconcile waits on a grant")
        started = self.clock.seconds()
        self.push([peer_view("db1", 2)], removals=[body_for("far5")["node_id"]])
        self.assertEqual(self.clock.seconds(), started)
        self.assertEqual(self.endpoint("db1"), "203.0.113.2:40002", "a new peer: at once")
        self.assertNotIn(key_for("far5"), self.wireguard.peers, "a removal: at once")
        self.advance(PATH_CHECK_INTERVAL * 4)
        self.assertEqual(
            len(self.server.relay_requests), RELAY_GRANTS_AT_ONCE, "one request per peer, not one per reconcile"
        )
        # One grant comes: that peer moves to the shim at once, and the next
        # waiting peer's request goes out.
        far0 = body_for("far0")["node_id"]
        self.server.hanging[far0].callback(RelayGrant.from_json(grant_for(far0)))
        self.assertEqual(self.endpoint("far0"), self.session_endpoint("far0"))
        self.assertEqual(
            self.wireguard.peers[key_for("far0")].persistent_keepalive,
            PERSISTENT_KEEPALIVE,
            "keepalives start with the relay endpoint: the first handshake goes through the relay",
        )
        self.assertEqual(len(self.server.relay_requests), RELAY_GRANTS_AT_ONCE + 1)
        self.assertEqual(self.endpoint("far1"), None)

    def test_a_peer_keeps_its_relay_endpoint_while_a_new_grant_is_fetched(self):
        self.start()
        self.push([peer_view("db1", 2, nat_type="hard")])
        first = self.endpoint("db1")
        self.server.grants_hang = True
        # The server stops answering keepalives: the session is dead after a while.
        self.advance(60, step=PATH_CHECK_INTERVAL)
        self.assertTrue(self.shim.is_dead(body_for("db1")["node_id"]))
        self.assertEqual(len(self.server.relay_requests), 2, "asked once more, once")
        self.assertEqual(self.endpoint("db1"), first)
        db1 = body_for("db1")["node_id"]
        self.server.hanging[db1].callback(RelayGrant.from_json(grant_for(db1)))
        self.assertNotEqual(self.endpoint("db1"), first)
        self.assertEqual(self.endpoint("db1"), self.session_endpoint("db1"))

    def test_a_failing_grant_is_asked_again_and_told_once(self):
        self.start()
        self.server.grants_fail = True
        self.push([peer_view("db1", 2, nat_type="hard")])
        self.advance(PATH_CHECK_INTERVAL * 3)
        self.assertGreaterEqual(len(self.server.relay_requests), 3)
        self.assertEqual(self.endpoint("db1"), None, "relayed from the start: no endpoint before its grant")
        warnings = [e for e in self.logged if e["log_level"] == LogLevel.warn and "relay session" in formatEvent(e)]
        self.assertEqual(len(warnings), 1, "the first failure is a warning; retries are routine")
        self.assertIn("db1", formatEvent(warnings[0]))
        self.server.grants_fail = False
        self.advance(PATH_CHECK_INTERVAL)
        self.assertEqual(self.endpoint("db1"), self.session_endpoint("db1"))

    def test_a_bad_grant_is_asked_again_and_told_once(self):
        self.start()
        self.server.grants_bad = True
        self.push([peer_view("db1", 2, nat_type="hard")])
        self.advance(PATH_CHECK_INTERVAL * 3)
        self.assertGreaterEqual(len(self.server.relay_requests), 3)
        self.assertEqual((self.endpoint("db1"), self.shim.sessions()), (None, {}))
        warnings = [formatEvent(e) for e in self.logged if e["log_level"] == LogLevel.warn]
        self.assertEqual(len([w for w in warnings if "bad relay grant for db1" in w]), 1, warnings)
        self.server.grants_bad = False
        self.advance(PATH_CHECK_INTERVAL)
        self.assertEqual(self.endpoint("db1"), self.session_endpoint("db1"))

    def test_a_relayed_peer_that_leaves_ends_its_session(self):
        self.start()
        self.push([peer_view("db1", 2, nat_type="hard")])
        self.assertEqual(len(self.shim.sessions()), 1)
        self.push(removals=[body_for("db1")["node_id"]])
        self.assertEqual((self.shim.sessions(), self.wireguard.peers), ({}, {}))

    def test_a_grant_for_a_peer_gone_direct_meanwhile_is_not_used(self):
        self.start()
        self.server.grants_hang = True
        self.push([peer_view("db1", 2, nat_type="hard")])
        self.push([peer_view("db1", 2, nat_type="easy")])
        db1 = body_for("db1")["node_id"]
        self.server.hanging[db1].callback(RelayGrant.from_json(grant_for(db1)))
        self.assertEqual(self.shim.sessions(), {})
        self.assertEqual(self.endpoint("db1"), "203.0.113.2:40002")

    def test_a_new_server_run_asks_for_every_session_again(self):
        self.start()
        self.push([peer_view("db1", 2, nat_type="hard")])
        first = self.endpoint("db1")
        self.server.epoch = "epoch2"
        self.advance(LONGPOLL_WAIT)
        self.assertEqual(len(self.server.relay_requests), 2)
        self.assertNotEqual(self.endpoint("db1"), first)
        self.assertEqual(self.endpoint("db1"), self.session_endpoint("db1"))

    def test_stopping_with_grants_open_cancels_them_quietly(self):
        self.start()
        self.server.grants_hang = True
        self.push([peer_view("db1", 2, nat_type="hard")])
        (waiting,) = self.server.hanging.values()
        self.successResultOf(Deferred.fromCoroutine(_maybe(self.daemon.stopService())))
        self.assertTrue(waiting.called, "the request was cancelled")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_dead_resolver_stalls_neither_registration_nor_the_netmap(self):
        resolver = NeverResolver()
        self.start(lan_ip=LanAddress(self.clock, "https://wire.test", resolver=resolver))
        self.assertEqual(len(self.server.registrations), 1, "registered at once")
        self.assertNotIn("lan_ip", self.server.registered_bodies[0])
        self.assertEqual(resolver.asked, ["wire.test"])
        self.push([peer_view("db1", 2)])
        self.assertEqual(self.endpoint("db1"), "203.0.113.2:40002")

    def test_peers_are_logged_by_name_and_routine_work_at_debug(self):
        self.start()
        self.push([peer_view("db1", 2, nat_type="hard")])
        self.push([peer_view("db1", 2, nat_type="easy")])
        self.push(removals=[body_for("db1")["node_id"]])
        self.advance(LONGPOLL_WAIT * 2)  # long-polls answered with nothing new, path checks
        told = [(e["log_level"], formatEvent(e)) for e in self.logged]
        above_debug = [text for level, text in told if level != LogLevel.debug]
        for public_key in (key_for("db1"), self.daemon.public_key):
            self.assertFalse([t for t in told if public_key in t], "a key in the log")
        self.assertFalse([t for t in above_debug if body_for("db1")["node_id"] in t], "a node id for a name")
        self.assertTrue(any("db1: added" in t for t in above_debug), above_debug)
        self.assertTrue(any("db1: relay: hard NAT on db1" in t for t in above_debug), above_debug)
        self.assertTrue(any("db1: relayed through the server" in t for t in above_debug), above_debug)
        self.assertTrue(any("db1: relay session closed" in t for t in above_debug), above_debug)
        self.assertTrue(any("db1: removed" in t for t in above_debug), above_debug)
        quiet_from = len(self.logged)
        self.advance(LONGPOLL_WAIT * 4)
        quiet = [formatEvent(e) for e in list(self.logged)[quiet_from:]]
        self.assertEqual(quiet, [], "nothing changed: nothing logged")
        # They are debug lines: kept out of the log (twistd writes every
        # level it is given) unless asked for.
        show_debug()
        self.addCleanup(show_debug, False)
        self.advance(LONGPOLL_WAIT * 2)
        later = [(e["log_level"], formatEvent(e)) for e in list(self.logged)[quiet_from:]]
        self.assertEqual({level for level, _ in later}, {LogLevel.debug}, later)
        self.assertTrue(any("long-poll answered: 0 upsert(s), 0 removal(s)" in text for _, text in later), later)
        self.assertTrue(any("peers unchanged; 0 peers" in text for _, text in later), later)


class NeverResolver(ScriptedResolver):
    """A resolver that takes every question and never answers."""


async def _maybe(result):
    if isinstance(result, Deferred):
        await result
