"""Relaying across replicas, for real (issue 19): two ``twistd wire-server``
replicas (HTTPS, node authentication, one shared certificate) on one
throw-away PostgreSQL (tests.pgcluster). Node X enrolls at A, node Y at B;
each asks its own replica for its side of the X-Y relay session: both are
told the same relay (the pair's home), and real UDP frames sealed with the
grants cross it. kill -9 of the home: both sides, asking again, get a
session at the survivor and frames cross again. Removing X through the
replica that is not its pair's home ends the session at the home. And two
real node daemons (fake WireGuard, real relay shims) of a relayed pair are
relayed again at the survivor within 10 s of kill -9 of their home."""

from __future__ import annotations

import json
import re
import signal
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater

from tests.helpers import body_for
from tests.test_cli import run_wire
from tests.test_replicas import OnOneDatabase, eventually
from wire.client import make_http_client
from wire.jointoken import decode_join_token
from wire.relayproto import TO_NODE, TO_SERVER, FrameKey, payload_view, read_header


class _Side(DatagramProtocol):
    """One node's end of a relay session: a real UDP socket on 127.0.0.1
    that seals frames with its grant and opens the relay's."""

    def __init__(self):
        self.grant: dict = {}
        self.sent = 0
        self.received: list[tuple[bytes, tuple]] = []
        self.waiting: Deferred | None = None

    def use(self, grant: dict) -> None:
        self.grant, self.sent = grant, 0
        self.received.clear()

    @property
    def relay(self) -> tuple[str, int]:
        return (self.grant["relay_host"], self.grant["relay_port"])

    def send(self, payload: bytes) -> None:
        import base64

        self.sent += 1
        key = FrameKey(base64.b64decode(self.grant["key"]))
        self.transport.write(key.seal(bytes.fromhex(self.grant["token"]), TO_SERVER, self.sent, payload), self.relay)

    def datagramReceived(self, data: bytes, addr) -> None:
        self.received.append((data, addr))

    def payloads(self) -> list[bytes]:
        """What reached this side from its relay, sealed for it (others dropped)."""
        import base64

        key = FrameKey(base64.b64decode(self.grant["key"]))
        opened = []
        for data, addr in self.received:
            token, direction, _ = read_header(data)
            if addr == self.relay and token == bytes.fromhex(self.grant["token"]) and direction == TO_NODE and key.authentic(data):
                opened.append(bytes(payload_view(data)))
        return opened


class TwoReplicas(OnOneDatabase):
    """Two HTTPS replicas with authentication, each its own URL first."""

    MODE = "--no-rate-limits"
    timeout = 180

    async def call(self, server, method, path, body=None, credential=None):
        headers = {"Authorization": [f"Bearer {credential}"]} if credential else {}
        data = json.dumps(body).encode() if body is not None else None
        response = await self.http.request(method, server.url + path, data=data, headers=headers, timeout=10)
        return response.code, json.loads(await response.content())

    async def two_replicas(self):
        a, b = self.replica("a"), self.replica("b")
        # Each replica's own URL first (the others after it: join tokens list them all).
        a.extra_args += [f"--public-url={a.url}", f"--public-url={b.url}"]
        b.extra_args += [f"--public-url={b.url}", f"--public-url={a.url}"]
        await a.start()
        await b.start()
        self.assertEqual(a.fingerprint, b.fingerprint, "one certificate")
        self.http = make_http_client(reactor, persistent=False, tls_fingerprint=a.fingerprint)
        return a, b

    async def join_token(self, server):
        """A reusable join key's token, made through the replica's admin socket (the real ``wire`` command)."""
        code, out, err = await run_wire("--data-dir", server.data_dir, "admin", "keys", "create", "--reusable", "--json")
        self.assertEqual(code, 0, err)
        return decode_join_token(json.loads(out)["token"])

    async def enrolled(self, server, name: str, secret: str) -> str:
        code, answer = await self.call(server, "POST", "/enroll", {**body_for(name), "join_key": secret})
        self.assertEqual(code, 200, answer)
        return answer["credential"]

    async def both_know(self, servers, credential: str, names: set[str]) -> None:
        async def known():
            for server in servers:
                code, status = await self.call(server, "GET", "/status", credential=credential)
                if code != 200 or {n["node_name"] for n in status["nodes"]} != names:
                    return False
            return True

        self.assertTrue(await eventually(known), f"not every replica knows {names}")

    async def live_relays(self, server) -> list[str]:
        code, health = await self.call(server, "GET", "/health")
        return health["cluster"]["relay_replicas"] if code == 200 else []

    async def grant(self, server, name: str, peer: str, credential: str) -> dict:
        body = {"node_id": body_for(name)["node_id"], "wg_public_key": body_for(name)["wg_public_key"], "peer_node_id": body_for(peer)["node_id"]}
        code, grant = await self.call(server, "POST", "/relay", body, credential)
        self.assertEqual(code, 200, grant)
        return grant

    def side(self) -> _Side:
        side = _Side()
        port = reactor.listenUDP(0, side, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return side

    async def frames_cross(self, x: _Side, y: _Side, what: bytes) -> bool:
        """Both sides say where they are (keepalives), then X's payload reaches Y through the relay."""

        async def crossed():
            for side in (x, y):
                side.send(b"")
            await deferLater(reactor, 0.05, lambda: None)
            x.send(what)
            await deferLater(reactor, 0.1, lambda: None)
            return what in y.payloads()

        return bool(await eventually(crossed, 5))

    async def mesh(self):
        a, b = await self.two_replicas()
        self.assertTrue(await eventually(lambda: self._both_live(a, b)), "both replicas live")
        secret = (await self.join_token(a)).secret
        x_credential = await self.enrolled(a, "x", secret)
        y_credential = await self.enrolled(b, "y", secret)
        await self.both_know((a, b), x_credential, {"x", "y"})
        return a, b, x_credential, y_credential

    async def _both_live(self, a, b) -> bool:
        return await self.live_relays(a) == ["a", "b"] and await self.live_relays(b) == ["a", "b"]

    async def relay_sessions(self, server) -> int:
        response = await self.http.get(server.url + "/metrics", timeout=5)
        text = (await response.content()).decode()
        return int(float(re.search(r"^wire_relay_sessions (\S+)$", text, re.M).group(1)))


class RelayAcrossReplicasTests(TwoReplicas):
    async def test_both_sides_get_one_relay_and_a_new_one_at_the_survivor_after_kill_9(self):
        a, b, x_credential, y_credential = await self.mesh()
        x_grant = await self.grant(a, "x", "y", x_credential)
        y_grant = await self.grant(b, "y", "x", y_credential)
        self.assertEqual(x_grant["session_id"], y_grant["session_id"], f"one session for the pair: {x_grant} {y_grant}")
        self.assertEqual((x_grant["relay_host"], x_grant["relay_port"]), (y_grant["relay_host"], y_grant["relay_port"]))
        self.assertEqual(x_grant["relay_replica"], y_grant["relay_replica"])
        home, survivor = (a, b) if x_grant["relay_replica"] == "a" else (b, a)
        self.assertEqual(x_grant["relay_port"], home.port + 1)
        x, y = self.side(), self.side()
        x.use(x_grant)
        y.use(y_grant)
        self.assertTrue(await self.frames_cross(x, y, b"through the home"), "X's frame reached Y through the home")
        # The other replica forwarded its node's request to the home.
        response = await self.http.get(survivor.url + "/metrics", timeout=5)
        self.assertIn('wire_relay_grants_total{where="forwarded"} 1.0', (await response.content()).decode())

        await home.kill(signal.SIGKILL)
        killed = time.monotonic()

        async def survivor_alone():
            return await self.live_relays(survivor) == [survivor_name]

        survivor_name = "a" if survivor is a else "b"
        self.assertTrue(await eventually(survivor_alone, 10), "the survivor sees the home dead")
        seen_dead = time.monotonic() - killed
        # Both sides ask the survivor now (the node at the dead home fails over to it).
        x_again = await self.grant(survivor, "x", "y", x_credential)
        y_again = await self.grant(survivor, "y", "x", y_credential)
        self.assertEqual(x_again["session_id"], y_again["session_id"])
        self.assertNotEqual(x_again["session_id"], x_grant["session_id"])
        self.assertEqual((x_again["relay_replica"], x_again["relay_port"]), (survivor_name, survivor.port + 1))
        x.use(x_again)
        y.use(y_again)
        self.assertTrue(await self.frames_cross(x, y, b"through the survivor"), "frames cross the survivor")
        again_after = time.monotonic() - killed
        self.assertLess(again_after, 10.0)
        from twisted.python import log

        log.msg(f"relay home killed: seen dead by the survivor after {seen_dead:.2f} s, frames cross it after {again_after:.2f} s")
        print(f"\nhome killed -9: survivor saw it dead after {seen_dead:.2f} s; frames crossed again after {again_after:.2f} s")

    async def test_removing_a_node_through_the_other_replica_ends_its_session_at_the_home(self):
        a, b, x_credential, y_credential = await self.mesh()
        x_grant = await self.grant(a, "x", "y", x_credential)
        y_grant = await self.grant(b, "y", "x", y_credential)
        home, other = (a, b) if x_grant["relay_replica"] == "a" else (b, a)
        x, y = self.side(), self.side()
        x.use(x_grant)
        y.use(y_grant)
        self.assertTrue(await self.frames_cross(x, y, b"before"))
        self.assertEqual(await self.relay_sessions(home), 1)
        code, out, err = await run_wire("--data-dir", other.data_dir, "admin", "nodes", "remove", "x")
        self.assertEqual(code, 0, out + err)

        async def ended():
            return await self.relay_sessions(home) == 0

        self.assertTrue(await eventually(ended, 5), "the home ended the removed node's session")
        y.received.clear()
        x.send(b"after")
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(y.payloads(), [], "nothing of the removed node's crosses")

    async def test_a_replica_call_without_the_cluster_secret_is_refused(self):
        a, b = await self.two_replicas()
        forged = {"from": "a", "at": time.time(), "fresh": True, "mac": "00" * 32,
                  "request": {"node_id": body_for("x")["node_id"], "wg_public_key": body_for("x")["wg_public_key"],
                              "peer_node_id": body_for("y")["node_id"]}}
        code, answer = await self.call(b, "POST", "/cluster/v1/relay-grant", forged)
        self.assertEqual(code, 403, answer)
        self.assertIn("MAC", answer["error"])
        code, answer = await self.call(b, "POST", "/cluster/v1/relay-grant", {"from": 1})
        self.assertEqual(code, 403, answer)


class NodesRelayedAcrossReplicasTests(TwoReplicas):
    """Two real node daemons (fake WireGuard, real relay shims on UDP) of a
    hard-NAT pair, X using replica A and Y replica B: their shims hold one
    session at the pair's home; kill -9 of the home, and both hold a live
    session at the survivor within 10 s (the node at the dead replica fails
    over; the other is told by its long-poll that the home's relay is gone)."""

    def daemon(self, name: str, server, token, servers, lan_ip: str):
        import os

        from tests.fakes import FakeWireGuard, fixed_nat
        from wire.client import CoordinationClient
        from wire.keys import load_or_create_keys
        from wire.node.config import NodeConfig, save_config, stun_ports
        from wire.node.daemon import NodeDaemon
        from wire.node.relay import RelayShim
        from wire.node.servers import server_hosts

        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        config = NodeConfig(
            server_url=server.url, server_urls=tuple(s.url for s in servers), server_fingerprint=token.fingerprint,
            node_name=name, node_id=body_for(name)["node_id"],
        )
        save_config(config_dir, config)
        host, relay_port, _ = stun_ports(server.url)
        shim = RelayShim(reactor, host, relay_port, 51820, relay_hosts=server_hosts(config))
        client = CoordinationClient(make_http_client(reactor, persistent=False, tls_fingerprint=token.fingerprint), server.url)
        daemon = NodeDaemon(
            clock=reactor, config_dir=config_dir, config=config, keys=load_or_create_keys(config_dir),
            # No handshake ever (no real WireGuard): no direct path proves itself, the pair is relayed.
            wireguard=FakeWireGuard(clock=reactor, auto_handshake=False), client=client, probe_nat=fixed_nat(nat_type="hard"),
            lan_ip=lambda: lan_ip, join_token=token, relay=shim,
        )
        daemon.startService()
        self.addCleanup(daemon.stopService)
        return daemon, shim

    async def test_a_relayed_pair_is_relayed_again_at_the_survivor_within_10_s_of_kill_9(self):
        a, b = await self.two_replicas()
        self.assertTrue(await eventually(lambda: self._both_live(a, b)), "both replicas live")
        token = await self.join_token(a)
        _, x_shim = self.daemon("x", a, token, (a, b), "192.168.1.10")
        _, y_shim = self.daemon("y", b, token, (a, b), "192.168.2.20")
        x_id, y_id = body_for("x")["node_id"], body_for("y")["node_id"]

        def paired(after: float = 0.0):
            async def check():
                xs, ys = x_shim.sessions().get(y_id), y_shim.sessions().get(x_id)
                if xs is None or ys is None or xs.session_id != ys.session_id or xs.relay != ys.relay:
                    return None
                if min(xs.last_heard, ys.last_heard) <= after:  # the relay answered both since
                    return None
                return xs.relay_replica

            return check

        home_name = await eventually(paired(), 60)
        self.assertIn(home_name, ("a", "b"), f"one session at one home, both sides heard by it: {x_shim.sessions()} {y_shim.sessions()}")
        home, survivor = (a, b) if home_name == "a" else (b, a)
        await home.kill(signal.SIGKILL)
        killed = time.monotonic()
        # Both sides' last_heard are on the reactor's clock (time.time): heard after the kill.
        killed_wall = reactor.seconds()
        moved_to = await eventually(paired(killed_wall), 10)
        took = time.monotonic() - killed
        self.assertEqual(moved_to, "a" if survivor is a else "b", f"relayed again at the survivor ({took:.1f} s)")
        self.assertLess(took, 10.0)
        print(f"\nrelayed pair: both shims on a live session at the survivor {took:.2f} s after kill -9 of its home")
