"""Two real ``twistd wire-server`` replicas on one throw-away PostgreSQL
(tests.pgcluster) serving one mesh (issue 19): a change at one reaches
long-polls at the other at once, a cursor from one is good at the other,
kill -9 loses nothing acknowledged, two replicas never give one address
twice, and the offline sweep runs once, taken over when its leader dies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests import pgcluster
from tests.helpers import body_for
from tests.serverproc import ServerProcess, http_client
from wire.jointoken import decode_join_token


async def eventually(check, seconds: float = 10.0):
    """``check()``'s first true answer within ``seconds``, else its last."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await deferLater(reactor, 0.1, lambda: None)


class OnOneDatabase(unittest.TestCase):
    """Replicas of one mode (``MODE``) on one fresh database."""

    skip = pgcluster.skip_reason()
    timeout = 120
    MODE = "--open"

    def setUp(self):
        self.pg, self.database = pgcluster.database(self)
        self.http = http_client()

    def replica(self, name: str, *extra: str) -> ServerProcess:
        # UNIX socket paths are short (the admin socket, with authentication): a short data dir.
        data_dir = tempfile.mkdtemp(prefix=f"wire-{name}-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        args = (self.MODE, f"--database={self.pg.url(self.database)}", f"--replica-name={name}", *extra)
        return ServerProcess(self, data_dir, extra_args=args)


class ReplicaTests(OnOneDatabase):

    async def two(self, *extra: str) -> tuple[ServerProcess, ServerProcess]:
        a, b = self.replica("a", *extra), self.replica("b", *extra)
        await a.start()
        await b.start()
        self.servers = (a, b)
        return a, b

    async def leader_and_other(self, a: ServerProcess, b: ServerProcess) -> tuple[ServerProcess, ServerProcess]:
        """The one replica that leads (there is one, within seconds), and the other."""

        async def one_leads():
            leads = [(await self.get(s, "/health"))["cluster"]["leader"] for s in (a, b)]
            return leads if sum(leads) == 1 else None

        leads = await self.eventually(one_leads)
        self.assertTrue(leads, "no single leader")
        return (a, b) if leads[0] else (b, a)

    async def get(self, server: ServerProcess, path: str, timeout: float = 5):
        response = await self.http.get(server.url + path, timeout=timeout)
        return json.loads(await response.content())

    async def post(self, server: ServerProcess, path: str, body: dict):
        response = await self.http.post(server.url + path, data=json.dumps(body).encode(), timeout=10)
        return response.code, json.loads(await response.content())

    async def eventually(self, check, seconds: float = 10.0):
        return await eventually(check, seconds)

    async def caught_up(self, server: ServerProcess, serial: int) -> bool:
        async def there():
            health = await self.get(server, "/health")
            return health["cluster"]["lag"] == 0 and int((await self.get(server, "/peers"))["cursor"].split(":")[1]) >= serial

        return bool(await self.eventually(there))

    def psql(self, sql: str) -> str:
        return self.pg.psql(sql, self.database).strip()

    async def test_a_registration_at_one_reaches_a_long_poll_waiting_at_the_other_within_a_second(self):
        a, b = await self.two()
        # A cursor past serial 0 (which asks for a snapshot, on one server as on many).
        self.assertEqual((await self.post(b, "/register", body_for("db1")))[0], 200)
        self.assertTrue(await self.caught_up(b, 1))
        cursor = (await self.get(b, "/peers"))["cursor"]
        waiting = self.http.get(f"{b.url}/peers?since={cursor}&wait=20", timeout=30)
        await deferLater(reactor, 0.3, lambda: None)  # the poll waits at b
        started = time.monotonic()
        code, answer = await self.post(a, "/register", body_for("web1"))
        self.assertEqual(code, 200, answer)
        response = await waiting
        netmap = json.loads(await response.content())
        took = time.monotonic() - started
        self.assertEqual([n["node_name"] for n in netmap["upserts"]], ["web1"])
        self.assertFalse(netmap["full"])
        self.assertLess(took, 1.0)
        # Both replicas' cursors are the cluster's: the same epoch, past the change.
        self.assertEqual(netmap["cursor"].split(":")[0], cursor.split(":")[0])
        print(f"\nregistration at A answered at B's long-poll in {took * 1000:.0f} ms")

    async def test_thirty_registrations_at_one_each_reach_the_other_within_a_second(self):
        a, b = await self.two()
        self.assertEqual((await self.post(a, "/register", body_for("first")))[0], 200)
        self.assertTrue(await self.caught_up(b, 1))
        cursor = (await self.get(b, "/peers"))["cursor"]
        took = []
        for i in range(30):
            waiting = self.http.get(f"{b.url}/peers?since={cursor}&wait=20", timeout=30)
            await deferLater(reactor, 0.05, lambda: None)
            started = time.monotonic()
            self.assertEqual((await self.post(a, "/register", body_for(f"n{i}")))[0], 200)
            netmap = json.loads(await (await waiting).content())
            took.append(time.monotonic() - started)
            self.assertIn(f"n{i}", [n["node_name"] for n in netmap["upserts"]])
            cursor = netmap["cursor"]
        took.sort()
        self.assertLess(took[-1], 1.0)
        print(f"\nA->B: median {took[15] * 1000:.0f} ms, worst {took[-1] * 1000:.0f} ms (registration POST to B's answer)")

    async def delta_elsewhere(self, here: ServerProcess, there: ServerProcess, name: str) -> dict:
        """What ``there`` answers a cursor from ``here`` taken just before ``name`` registered at ``here``."""
        cursor = (await self.get(here, "/peers"))["cursor"]
        self.assertEqual((await self.post(here, "/register", body_for(name)))[0], 200)
        self.assertTrue(await self.caught_up(there, int(cursor.split(":")[1]) + 1))
        return await self.get(there, f"/peers?since={cursor}&wait=0")

    async def test_a_cursor_from_one_replica_gets_a_delta_at_the_other(self):
        a, b = await self.two()
        for name in ("web1", "web2"):
            self.assertEqual((await self.post(a, "/register", body_for(name)))[0], 200)
        # A records its own changes when the stream reaches them, as B does.
        self.assertTrue(await self.caught_up(a, 2))
        netmap = await self.delta_elsewhere(a, b, "web3")
        self.assertFalse(netmap["full"], netmap)
        self.assertEqual([n["node_name"] for n in netmap["upserts"]], ["web3"])
        # And back: b's cursor is good at a.
        self.assertTrue(await self.caught_up(b, 3))
        back = await self.delta_elsewhere(b, a, "web4")
        self.assertFalse(back["full"], back)
        self.assertEqual([n["node_name"] for n in back["upserts"]], ["web4"])

    async def test_a_cursor_from_a_replica_ahead_waits_for_the_other_to_read_as_far(self):
        # A node that moves brings the cursor of the replica it left, which
        # may have read the change stream further than its new one has: it
        # hears what came after its cursor, not a snapshot, not web3 again.
        a, b = await self.two()
        for name in ("web1", "web2"):
            self.assertEqual((await self.post(a, "/register", body_for(name)))[0], 200)
        self.assertTrue(await self.caught_up(b, 2))
        b.pause()  # b hears nothing of what follows until it resumes
        self.addCleanup(b.resume)
        self.assertEqual((await self.post(a, "/register", body_for("web3")))[0], 200)
        self.assertTrue(await self.caught_up(a, 3))
        cursor = (await self.get(a, "/peers"))["cursor"]
        waiting = self.http.get(f"{b.url}/peers?since={cursor}&wait=20", timeout=30)
        await deferLater(reactor, 0.3, lambda: None)
        b.resume()
        await deferLater(reactor, 1.0, lambda: None)
        self.assertEqual((await self.post(a, "/register", body_for("web4")))[0], 200)
        netmap = json.loads(await (await waiting).content())
        self.assertFalse(netmap["full"], "a snapshot of the whole netmap")
        self.assertEqual([n["node_name"] for n in netmap["upserts"]], ["web4"])

    async def test_kill_9_of_one_loses_no_acknowledged_registration(self):
        a, b = await self.two()
        answers = {}
        for i in range(20):
            code, answer = await self.post(a, "/register", body_for(f"n{i}"))
            self.assertEqual(code, 200, answer)
            answers[f"n{i}"] = answer["vpn_ip"]
        await a.kill(signal.SIGKILL)

        async def served():
            status = await self.get(b, "/status")
            return {n["node_name"]: n["vpn_ip"] for n in status["nodes"]} == answers

        self.assertTrue(await self.eventually(served))

    async def test_concurrent_registrations_at_both_never_share_an_address(self):
        a, b = await self.two()

        refused = []

        async def register(server, name):
            # Every node asks for one address: each replica gives it while it
            # has not heard that the other did. Refused (the database's UNIQUE
            # constraint): the node tries again, and gets another.
            for _ in range(20):
                code, answer = await self.post(server, "/register", body_for(name, vpn_ip="10.99.0.50"))
                if code == 200:
                    return answer["vpn_ip"]
                self.assertIn(code, (409, 503), answer)
                refused.append(name)
                await deferLater(reactor, 0.1, lambda: None)
            raise AssertionError(f"{name} never registered")

        calls = [register(a if i % 2 else b, f"c{i}") for i in range(30)]
        from twisted.internet.defer import Deferred

        results = await DeferredList([Deferred.fromCoroutine(c) for c in calls], fireOnOneErrback=True, consumeErrors=True)
        addresses = [vpn_ip for _, vpn_ip in results]
        self.assertEqual(len(set(addresses)), 30, addresses)
        stored = self.psql("SELECT vpn_ip FROM nodes").split()
        self.assertEqual(sorted(stored), sorted(addresses))
        self.assertIn("10.99.0.50", addresses)
        print(f"\n{len(refused)} registrations refused by the database and tried again")

    async def test_the_sweep_runs_once_and_the_other_replica_takes_it_over_when_the_leader_dies(self):
        first, other = await self.leader_and_other(*await self.two("--offline-after=5"))
        a, b = self.servers
        self.assertEqual((await self.post(other, "/register", body_for("quiet")))[0], 200)
        node_id = body_for("quiet")["node_id"]

        async def offline_everywhere():
            views = [await self.get(s, "/status") for s in (a, b)]
            return all(v["nodes"] and not v["nodes"][0]["online"] for v in views)

        self.assertTrue(await self.eventually(offline_everywhere, 15))
        await deferLater(reactor, 2, lambda: None)  # a second sweep would show by now
        self.assertEqual(self.psql(f"SELECT count(*) FROM changes WHERE subject = '{node_id}' AND kind = 'offline'"), "1")

        await first.kill(signal.SIGKILL)

        async def took_over():
            return (await self.get(other, "/health"))["cluster"]["leader"]

        self.assertTrue(await self.eventually(took_over, 10))
        self.assertEqual((await self.post(other, "/register", body_for("quiet2")))[0], 200)
        quiet2 = body_for("quiet2")["node_id"]

        async def swept():
            return self.psql(f"SELECT count(*) FROM changes WHERE subject = '{quiet2}' AND kind = 'offline'") == "1"

        self.assertTrue(await self.eventually(swept, 15))

    async def test_heartbeats_at_the_other_replica_keep_a_node_online_at_the_leader(self):
        _, other = await self.leader_and_other(*await self.two("--offline-after=15"))
        a, b = self.servers
        started = time.monotonic()
        while time.monotonic() - started < 22:  # longer than --offline-after, at the other replica only
            self.assertEqual((await self.post(other, "/register", body_for("busy")))[0], 200)
            await deferLater(reactor, 1, lambda: None)
        node_id = body_for("busy")["node_id"]
        self.assertEqual(self.psql(f"SELECT count(*) FROM changes WHERE subject = '{node_id}' AND kind = 'offline'"), "0")
        for server in (a, b):
            self.assertTrue((await self.get(server, "/status"))["nodes"][0]["online"])

    async def test_metrics_and_health_say_which_replica_and_its_lag(self):
        a, b = await self.two()
        self.assertEqual((await self.post(a, "/register", body_for("web1")))[0], 200)
        self.assertTrue(await self.caught_up(b, 1))
        health = await self.get(b, "/health")
        self.assertEqual(
            health["cluster"],
            {"replica": "b", "database": True, "leader": health["cluster"]["leader"], "lag": 0, "relay_replicas": health["cluster"]["relay_replicas"]},
        )
        self.assertIn("b", health["cluster"]["relay_replicas"], "b relays (it holds its liveness lock)")
        response = await self.http.get(f"{b.url}/metrics", timeout=5)
        metrics = (await response.content()).decode()
        self.assertIn('wire_replica_info{name="b"} 1.0', metrics)
        self.assertIn("wire_cluster_serial_applied 1.0", metrics)
        self.assertIn("wire_cluster_lag 0.0", metrics)

    async def test_after_the_database_restarts_the_replicas_listen_again_and_lose_nothing(self):
        a, b = await self.two()
        self.assertEqual((await self.post(a, "/register", body_for("web1")))[0], 200)
        self.assertTrue(await self.caught_up(b, 1))
        self.pg.stop()
        self.addCleanup(lambda: None if self.pg.running else self.pg.restart())

        async def unreachable():
            return not (await self.get(b, "/health"))["cluster"]["database"]

        self.assertTrue(await self.eventually(unreachable))
        code, _ = await self.post(a, "/register", body_for("web2"))
        self.assertEqual(code, 503, "refused, not acknowledged")
        # b still answers from memory meanwhile.
        self.assertEqual([n["node_name"] for n in (await self.get(b, "/status"))["nodes"]], ["web1"])
        self.pg.restart()

        async def reachable():
            return all([(await self.get(s, "/health"))["cluster"]["database"] for s in (a, b)])

        self.assertTrue(await self.eventually(reachable, 15))
        cursor = (await self.get(b, "/peers"))["cursor"]
        waiting = self.http.get(f"{b.url}/peers?since={cursor}&wait=20", timeout=30)
        await deferLater(reactor, 0.3, lambda: None)
        started = time.monotonic()
        self.assertEqual((await self.post(a, "/register", body_for("web3")))[0], 200)
        netmap = json.loads(await (await waiting).content())
        self.assertEqual([n["node_name"] for n in netmap["upserts"]], ["web3"])
        self.assertLess(time.monotonic() - started, 1.0, "woken by LISTEN again, not the safety net")


class AuthenticatedReplicaTests(OnOneDatabase):
    """With node authentication (join keys, credentials) on both replicas."""

    MODE = "--plain-http"

    async def call(self, server, method, path, body=None, credential=None):
        headers = {"Authorization": [f"Bearer {credential}"]} if credential else {}
        data = json.dumps(body).encode() if body is not None else None
        response = await self.http.request(method, server.url + path, data=data, headers=headers, timeout=10)
        return response.code, json.loads(await response.content())

    async def test_a_node_enrolled_at_one_is_known_at_the_other_and_its_one_time_key_is_used_up_everywhere(self):
        a = self.replica("a")
        await a.start()

        def first_join_secret():
            path = os.path.join(a.data_dir, "first-join.txt")
            if not os.path.exists(path):
                return None
            with open(path) as f:
                (command,) = [line for line in f.read().splitlines() if not line.startswith("#")]
            return decode_join_token(command.rsplit(" ", 1)[1]).secret

        async def made():
            return first_join_secret()

        secret = await eventually(made)
        self.assertTrue(secret)
        b = self.replica("b")
        await b.start()
        # The key a made is used at b.
        code, enrolled = await self.call(b, "POST", "/enroll", {**body_for("web1"), "join_key": secret})
        self.assertEqual(code, 200, enrolled)
        credential = enrolled["credential"]

        async def known_at_a():
            code, netmap = await self.call(a, "GET", "/peers?since=0:0", credential=credential)
            return netmap if code == 200 else None

        netmap = await eventually(known_at_a)
        self.assertTrue(netmap, "a does not know b's credential")
        self.assertEqual([n["node_name"] for n in netmap["upserts"]], ["web1"])
        code, refused = await self.call(a, "POST", "/enroll", {**body_for("web2"), "join_key": secret})
        self.assertEqual(code, 401, refused)


class NodeFailoverTests(OnOneDatabase):
    """A real node daemon (fake WireGuard) enrolled through a join token that
    names both HTTPS replicas (one certificate, shared through the database):
    the replica it uses is killed (-9); within 10 s it serves the node at the
    other, with the same credential and address, and the tunnel as it was."""

    MODE = "--no-rate-limits"

    async def test_kill_9_of_the_replica_in_use_moves_the_node_within_10_s(self):
        from tests.fakes import FakeWireGuard, fixed_nat
        from wire.client import CoordinationClient, make_http_client
        from wire.keys import load_or_create_keys
        from wire.node.config import NodeConfig, load_config, save_config
        from wire.node.daemon import NodeDaemon

        a, b = self.replica("a"), self.replica("b")
        for replica in (a, b):
            replica.extra_args += [f"--public-url={a.url}", f"--public-url={b.url}"]
        await a.start()
        await b.start()
        self.assertEqual(a.fingerprint, b.fingerprint, "one certificate")
        with open(os.path.join(a.data_dir, "first-join.txt")) as f:
            (command,) = [line for line in f.read().splitlines() if line and not line.startswith("#")]
        token = decode_join_token(command.rsplit(" ", 1)[1])
        self.assertEqual(token.server_urls, (a.url, b.url))

        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        config = NodeConfig(
            server_url=token.server_url, server_urls=token.server_urls, server_fingerprint=token.fingerprint,
            node_name="web1", node_id=body_for("web1")["node_id"],
        )
        save_config(config_dir, config)
        wireguard = FakeWireGuard(clock=reactor)
        client = CoordinationClient(make_http_client(reactor, persistent=False, tls_fingerprint=token.fingerprint), token.server_url)
        daemon = NodeDaemon(
            clock=reactor, config_dir=config_dir, config=config, keys=load_or_create_keys(config_dir), wireguard=wireguard,
            client=client, probe_nat=fixed_nat(), lan_ip=lambda: "192.168.1.10", join_token=token,
        )
        daemon.startService()
        self.addCleanup(daemon.stopService)

        async def registered():
            return daemon.contact.registered and daemon.interface_ready and daemon.netmap.cursor != "0"

        self.assertTrue(await eventually(registered, 20))
        address, ups = daemon.config.vpn_ip, list(wireguard.ups)
        await a.kill(signal.SIGKILL)
        killed_at = time.monotonic()

        async def served_by_b():
            return daemon.config.server_url == b.url and daemon.contact.reachable and daemon.contact.last_contact > 0

        self.assertTrue(await eventually(served_by_b, 10), "on the other replica within 10 s")
        moved_after = time.monotonic() - killed_at
        from twisted.python import log

        log.msg(f"failover: served by the other replica {moved_after:.2f} s after kill -9")
        # Its credential is good there: b answers its authenticated long-poll and registration.
        nodes = {n["node_name"]: n for n in (await daemon.client.status())["nodes"]}
        self.assertEqual(nodes["web1"]["vpn_ip"], address)
        self.assertEqual((daemon.config.vpn_ip, load_config(config_dir).server_url), (address, b.url))
        self.assertEqual(wireguard.ups, ups, "the interface was not brought up again")
        self.assertEqual(daemon.contact.last_status, 0)
        self.assertLess(moved_after, 10.0)
