"""A node fails over between its server's replicas (wire.node.servers),
and notices a server that vanished without a word (wire.tcpkeepalive)."""

from __future__ import annotations

import json
import os
import socket

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from tests.fakes import FakeWireGuard, fixed_nat
from tests.helpers import body_for, make_coordinator
from tests.test_daemon import real_http_daemon, settle
from wire.client import CoordinationClient, make_http_client
from wire.jointoken import JoinToken, JoinTokenError, decode_join_token
from wire.keys import load_or_create_keys
from wire.node.config import ConfigError, NodeConfig, load_config, save_config, validate
from wire.node.daemon import NodeDaemon
from wire.node.enroll import JoinRequest, requested_config
from wire.node.servers import next_server, server_hosts, servers_of
from wire.protocol import ProtocolError
from wire.server.api import build_site
from wire.tcpkeepalive import KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KeepaliveEndpoint

A, B, C = "https://a.wire.test:8787", "https://b.wire.test:8787", "https://10.0.0.3:8787"
FINGERPRINT = "ab" * 32
SECRET = "s" * 32


class ServerListTests(unittest.TestCase):
    def config(self, current=A, urls=(A, B, C)) -> NodeConfig:
        return NodeConfig(server_url=current, node_name="web1", node_id="n" * 32, server_urls=urls)

    def test_round_robin_from_the_one_in_use(self):
        self.assertEqual(next_server(self.config(A)), B)
        self.assertEqual(next_server(self.config(B)), C)
        self.assertEqual(next_server(self.config(C)), A)

    def test_one_server_has_no_next(self):
        self.assertIsNone(next_server(self.config(A, ())))
        self.assertIsNone(next_server(self.config(A, (A,))))
        self.assertEqual(servers_of(self.config(A, ())), (A,))

    def test_the_one_in_use_is_always_among_them(self):
        self.assertEqual(servers_of(self.config(C, (A, B))), (C, A, B))
        self.assertEqual(next_server(self.config(C, (A, B))), A)

    def test_hosts_of_every_replica(self):
        self.assertEqual(server_hosts(self.config()), ("a.wire.test", "b.wire.test", "10.0.0.3"))


class ConfigTests(unittest.TestCase):
    def base(self, **fields) -> dict:
        return {"server_url": B, "node_name": "web1", "node_id": "n" * 32, **fields}

    def test_saved_and_read_back(self):
        config_dir = self.mktemp()
        save_config(config_dir, validate(self.base(server_urls=[A, B])))
        self.assertEqual(load_config(config_dir).server_urls, (A, B))

    def test_the_one_in_use_joins_the_list(self):
        self.assertEqual(validate(self.base(server_urls=[A, C])).server_urls, (B, A, C))

    def test_bad_lists_are_named(self):
        for bad, problem in (
            ("https://a", "list"),
            ([A, "ftp://x"], "http"),
            ([A, 7], "required"),
            ([f"https://h{i}.test" for i in range(17)], "at most 16"),
            ([A, "http://plain.test"], "mix http:// and https://"),
        ):
            with self.assertRaises(ProtocolError) as caught:
                validate(self.base(server_urls=bad))
            self.assertEqual(caught.exception.field, "server_urls")
            self.assertIn(problem, str(caught.exception))

    def test_a_corrupt_file_is_a_clear_error(self):
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        with open(os.path.join(config_dir, "config.json"), "w") as f:
            f.write('{"server_url": "%s", "node_name": "web1", "node_id": "%s", "server_urls": {"a": 1}}' % (A, "n" * 32))
        with self.assertRaises(ConfigError) as caught:
            load_config(config_dir)
        self.assertIn("server_urls", str(caught.exception))


class JoinTokenTests(unittest.TestCase):
    def test_replicas_round_trip(self):
        token = JoinToken(A, FINGERPRINT, SECRET, (B, C))
        decoded = decode_join_token(token.encode())
        self.assertEqual(decoded, token)
        self.assertEqual(decoded.server_urls, (A, B, C))

    def test_a_token_without_replicas_is_as_before(self):
        plain = JoinToken(A, FINGERPRINT, SECRET)
        self.assertNotIn(b'"r"', _body(plain.encode()))
        self.assertEqual(decode_join_token(plain.encode()).replicas, ())

    def test_bad_replicas_are_refused_by_name(self):
        import base64
        import json

        for bad in ("x", ["gopher://x"], [A] * 2 + [f"https://h{i}.test" for i in range(20)]):
            body = json.dumps({"u": A, "f": FINGERPRINT, "k": SECRET, "r": bad}).encode()
            text = "wire1." + base64.urlsafe_b64encode(body).decode().rstrip("=")
            with self.assertRaises(JoinTokenError) as caught:
                decode_join_token(text)
            self.assertIn("replica", str(caught.exception))

    def test_replicas_of_another_scheme_are_refused(self):
        # An https mesh whose token sends the node to a plain-http "replica":
        # its credential would travel in the clear.
        with self.assertRaises(JoinTokenError) as caught:
            decode_join_token(JoinToken(A, FINGERPRINT, SECRET, ("http://b.wire.test:8787",)).encode())
        self.assertIn("mix http:// and https://", str(caught.exception))

    def test_the_first_url_is_not_repeated_among_replicas(self):
        token = decode_join_token(JoinToken(A, FINGERPRINT, SECRET, (A, B)).encode())
        self.assertEqual(token.server_urls, (A, B))


class EnrollmentTests(unittest.TestCase):
    def test_the_token_gives_the_replicas(self):
        token = JoinToken(A, FINGERPRINT, SECRET, (B,)).encode()
        config = requested_config(self.mktemp(), None, JoinRequest(server_url=A, token=token))
        self.assertEqual((config.server_url, config.server_urls), (A, (A, B)))

    def test_a_token_of_another_replica_of_the_same_mesh_keeps_the_address(self):
        # The node moved to B; a new `wire up --join` with a token naming A
        # is the same mesh: its address stays, and it stays on B.
        saved = NodeConfig(
            server_url=B, node_name="web1", node_id="n" * 32, vpn_ip="10.99.0.5", vpn_subnet="10.99.0.0/16",
            server_fingerprint=FINGERPRINT, server_urls=(A, B),
        )
        token = JoinToken(A, FINGERPRINT, SECRET, (B,)).encode()
        config = requested_config(self.mktemp(), saved, JoinRequest(server_url=A, token=token))
        self.assertEqual((config.server_url, config.vpn_ip), (B, "10.99.0.5"))

    def test_another_mesh_is_a_new_assignment(self):
        saved = NodeConfig(
            server_url=B, node_name="web1", node_id="n" * 32, vpn_ip="10.99.0.5", server_fingerprint=FINGERPRINT,
            server_urls=(A, B),
        )
        token = JoinToken(C, "cd" * 32, SECRET).encode()
        config = requested_config(self.mktemp(), saved, JoinRequest(server_url=C, token=token))
        self.assertEqual((config.server_url, config.vpn_ip, config.server_urls), (C, "", ()))


def _body(token: str) -> bytes:
    import base64

    encoded = token[len("wire1."):]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


class DaemonFailoverTests(unittest.TestCase):
    """A real daemon against two real servers on 127.0.0.1 (one fake clock
    for both, as in tests.test_daemon): when the one in use goes, the node
    uses the other, keeping its tunnels."""

    timeout = 30

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.servers = [self.start_server() for _ in range(2)]
        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)

    def start_server(self):
        coordinator = make_coordinator(self, clock=self.clock)
        port = reactor.listenTCP(0, build_site(coordinator), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return coordinator, port, f"http://127.0.0.1:{port.getHost().port}"

    async def settle(self, predicate, advance: float = 0.0, turns: int = 1000) -> None:
        await settle(self.clock, predicate, advance, turns)

    def make_daemon(self, urls: tuple[str, ...], relay=None) -> NodeDaemon:
        config = NodeConfig(server_url=urls[0], node_name="web1", node_id=body_for("web1")["node_id"], server_urls=urls)
        self.wireguard = FakeWireGuard(clock=self.clock)
        return real_http_daemon(self, self.clock, self.config_dir, config, self.wireguard, "192.168.1.10", relay)

    async def test_the_relay_moves_with_the_node(self):
        # Relay sessions are the old replica's: frames go to the new one's relay port.
        from wire.node.relay import RelayShim

        (_, first_port, first_url), (_, second_port, second_url) = self.servers
        shim = RelayShim(reactor, "127.0.0.1", first_port.getHost().port + 1, 51820)
        daemon = self.make_daemon((first_url, second_url), relay=shim)
        await self.settle(lambda: daemon.contact.registered)
        await shim.start()
        self.assertEqual(shim.server, ("127.0.0.1", first_port.getHost().port + 1))
        daemon._lost_contact("refused", 0, first_url)
        await self.settle(lambda: shim.server is None)
        await shim.start()  # as the next grant does
        self.addCleanup(shim.stop)
        self.assertEqual(shim.server, ("127.0.0.1", second_port.getHost().port + 1))

    async def test_a_late_failure_from_the_replica_left_moves_nothing(self):
        # A silent replica: the node moved on a register's timeout; the
        # long-poll to the old one ends later (keepalive) and must not
        # send the node back to the dead one.
        (_, _, first_url), (_, _, second_url) = self.servers
        daemon = self.make_daemon((first_url, second_url))
        await self.settle(lambda: daemon.contact.registered)
        daemon._lost_contact("timed out", 0, first_url)
        self.assertEqual(daemon.config.server_url, second_url)
        daemon._lost_contact("the long-poll's connection ended", 0, first_url)
        self.assertEqual(daemon.config.server_url, second_url, "no move back for an answer from the one it left")
        moves = [e for e in daemon.events.since(0) if e["kind"] == "server"]
        self.assertEqual(len(moves), 1)

    async def test_a_single_server_is_kept(self):
        (first, first_port, first_url), _ = self.servers
        daemon = self.make_daemon((first_url,))
        await self.settle(lambda: daemon.contact.registered)
        await first_port.stopListening()
        first.close()
        await self.settle(lambda: not daemon.contact.reachable, advance=0.25)
        self.assertEqual(daemon.config.server_url, first_url)


class RealServersFailoverTests(unittest.TestCase):
    """Two real ``twistd wire-server`` processes on 127.0.0.1 and a daemon
    on the real clock: the replica it uses is killed (-9); it is on the
    other within 10 s, with its tunnel as it was."""

    timeout = 60

    async def test_kill_9_of_the_server_in_use(self):
        import signal
        import time

        from tests.serverproc import ServerProcess

        servers = [ServerProcess(self, self.mktemp(), extra_args=("--open",)) for _ in range(2)]
        for server in servers:
            await server.start()
        first, second = servers
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        urls = (first.url, second.url)
        config = NodeConfig(server_url=urls[0], node_name="web1", node_id=body_for("web1")["node_id"], server_urls=urls)
        save_config(config_dir, config)
        wireguard = FakeWireGuard(clock=reactor)
        daemon = NodeDaemon(
            clock=reactor, config_dir=config_dir, config=config, keys=load_or_create_keys(config_dir),
            wireguard=wireguard, client=CoordinationClient(make_http_client(reactor, persistent=False), urls[0]),
            probe_nat=fixed_nat(), lan_ip=lambda: "192.168.1.10",
        )
        daemon.startService()
        self.addCleanup(daemon.stopService)
        await _until(lambda: daemon.contact.registered and daemon.interface_ready and daemon.netmap.cursor != "0")
        ups = list(wireguard.ups)
        await first.kill(signal.SIGKILL)
        killed_at = time.monotonic()

        async def known_at_second() -> bool:
            response = await second.client().get(second.url + "/peers")
            peers = (json.loads(await response.content())).get("peers", [])
            return any(p.get("node_id") == config.node_id for p in peers)

        while not await known_at_second():
            self.assertLess(time.monotonic() - killed_at, 10.0, "on the other replica within 10 s")
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(daemon.config.server_url, second.url)
        self.assertEqual(load_config(config_dir).server_url, second.url, "a restart starts at the live one")
        self.assertEqual(wireguard.ups, ups, "the interface was not brought up again")
        self.assertFalse(wireguard.is_down)
        self.assertIn(f"moved from {first.url} to {second.url}", " ".join(e["message"] for e in daemon.events.since(0)))


async def _until(predicate, timeout: float = 20.0) -> None:
    import time

    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, 0.05, lambda: None)


class KeepaliveTests(unittest.TestCase):
    """Real sockets on 127.0.0.1: connections to the server carry probes."""

    async def test_connections_are_probed(self):
        server = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(server.stopListening)
        endpoint = KeepaliveEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", server.getHost().port))
        protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.loseConnection)
        sock = protocol.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), KEEPALIVE_IDLE)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), KEEPALIVE_INTERVAL)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), KEEPALIVE_COUNT)
        self.assertLessEqual(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT, 8, "a vanished server noticed in time to move within 10 s")
        await deferLater(reactor, 0, lambda: None)

    async def test_the_node_client_probes_its_connections(self):
        # A real request with the HTTP client nodes use; the connection it
        # keeps in its pool is the probed one.
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        class Hello(Resource):
            isLeaf = True

            def render_GET(self, request):
                return b"{}"

        site = reactor.listenTCP(0, Site(Hello()), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        http = make_http_client(reactor, persistent=True)
        pool = http._agent._pool
        self.addCleanup(pool.closeCachedConnections)
        response = await http.get(f"http://127.0.0.1:{site.getHost().port}/")
        await response.content()
        (connections,) = pool._connections.values()
        sock = connections[0].transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), KEEPALIVE_IDLE)
