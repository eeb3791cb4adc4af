"""Authentication, TLS pinning and the admin API, against a real ``twistd wire-server``."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.helpers import body_for, registration_for
from tests.serverproc import ServerProcess
from tests.test_daemon import eventually
from wire.client import AdminClient, CoordinationClient, ServerError, ServerUnreachable, make_http_client
from wire.jointoken import JoinTokenError, decode_join_token
from wire.datadir import admin_socket_path
from wire.protocol import RegisterAnswer


class SecureServerTests(unittest.TestCase):
    timeout = 60

    async def setUp(self):
        # UNIX socket paths are short (108 bytes): a short data dir.
        self.data_dir = tempfile.mkdtemp(prefix="wire-sec-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.server = ServerProcess(self, self.data_dir)
        await self.server.start()
        self.admin = AdminClient(reactor, admin_socket_path(self.data_dir))

    async def tearDown(self):
        await self.server.stop()

    def node_client(self, credential=None, fingerprint=None) -> CoordinationClient:
        fingerprint = self.server.fingerprint if fingerprint is None else fingerprint
        http = make_http_client(reactor, persistent=False, tls_fingerprint=fingerprint)
        return CoordinationClient(http, self.server.url, credential)

    async def enroll(self, name: str, token: str | None = None, **fields) -> RegisterAnswer:
        if token is None:
            token = (await self.admin.create_key())["token"]
        join = decode_join_token(token)
        return await self.node_client(fingerprint=join.fingerprint).enroll(registration_for(name, **fields), join.secret)

    async def test_first_start_leaves_a_root_only_join_command(self):
        path = os.path.join(self.data_dir, "first-join.txt")
        # Written once the server listens, after /health answers: its join key is a database write.
        await eventually(lambda: os.path.exists(path), timeout=10)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            # Above the command, "#" lines about its URL (here: a loopback one).
            (command,) = [line for line in f.read().splitlines() if not line.startswith("#")]
        self.assertTrue(command.startswith("sudo wire up --join wire1."))
        join = decode_join_token(command.rsplit(" ", 1)[1])
        self.assertEqual((join.server_url, join.fingerprint), ("https://127.0.0.1:%d" % self.server.port, self.server.fingerprint))
        self.assertNotIn(join.secret, self.server.output, "secrets never reach the log")
        for name in ("tls-key.pem", "registry.sqlite3"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.data_dir, name)).st_mode), 0o600, name)
        self.assertEqual(stat.S_IMODE(os.stat(admin_socket_path(self.data_dir)).st_mode) & 0o077, 0)

    async def test_nothing_but_health_ip_without_credential(self):
        client = self.node_client()
        self.assertTrue((await client.health())["ok"])
        for call in (client.status(), client.peers(), client.netmap("0", 0), client.register(registration_for("web1"))):
            with self.assertRaises(ServerError) as caught:
                await call
            self.assertEqual(caught.exception.status, 401)
            self.assertIn("wire up --join", caught.exception.message)

    async def test_enroll_then_use_the_credential(self):
        answer = await self.enroll("web1")
        credential = answer.credential
        self.assertRegex(answer.vpn_ip, r"^10\.99\.")
        client = self.node_client(credential)
        status = await client.status()
        self.assertEqual([n["node_name"] for n in status["nodes"]], ["web1"])
        again = await client.register(registration_for("web1", node_name="renamed-by-node"))
        self.assertEqual(again.node_name, "web1", "the enrolled name stands")
        with self.assertRaises(ServerError) as caught:
            await client.register(registration_for("other"))
        self.assertEqual(caught.exception.status, 403)
        with self.assertRaises(ServerError) as caught:
            await self.node_client("made-up-credential").status()
        self.assertEqual(caught.exception.status, 401)

    async def test_one_time_keys_expiry_and_revocation(self):
        token = (await self.admin.create_key())["token"]
        await self.enroll("web1", token)
        with self.assertRaises(ServerError) as caught:
            await self.enroll("web2", token)
        self.assertIn("already used", caught.exception.message)
        reusable = await self.admin.create_key(reusable=True)
        await self.enroll("web2", reusable["token"])
        await self.enroll("web3", reusable["token"])
        await self.admin.revoke_key(reusable["key"]["key_id"])
        with self.assertRaises(ServerError) as caught:
            await self.enroll("web4", reusable["token"])
        self.assertIn("revoked", caught.exception.message)
        keys = (await self.admin.keys())["keys"]
        self.assertEqual(sorted((k["uses"], k["usable"]) for k in keys), [(0, True), (1, False), (2, False)])
        self.assertNotIn("secret", json.dumps(keys))

    async def test_keys_list_tells_revoked_from_expired_from_spent(self):
        first_start = {k["key_id"] for k in (await self.admin.keys())["keys"]}  # first-join.txt's key
        expiring = (await self.admin.create_key(expires_in=0.5))["key"]
        revoked = (await self.admin.create_key(reusable=True, expires_in=3600))["key"]
        spent = await self.admin.create_key()
        usable = (await self.admin.create_key(reusable=True))["key"]
        await self.admin.revoke_key(revoked["key_id"])
        await self.enroll("web1", spent["token"])
        await deferLater(reactor, 0.6, lambda: None)
        answer = await self.admin.keys()
        listed = {k["key_id"]: k for k in answer["keys"]}
        states = {key_id: (k["state"], k["usable"]) for key_id, k in listed.items()}
        self.assertEqual(
            {key_id: state for key_id, state in states.items() if key_id not in first_start},
            {
                expiring["key_id"]: ("expired", False),
                revoked["key_id"]: ("revoked", False),
                spent["key"]["key_id"]: ("spent", False),
                usable["key_id"]: ("usable", True),
            },
        )
        self.assertLessEqual(listed[expiring["key_id"]]["expires"], answer["timestamp"])
        for k in (listed[expiring["key_id"]], listed[revoked["key_id"]]):
            self.assertRegex(k["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            self.assertRegex(k["expires_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertIsNone(listed[usable["key_id"]]["expires_at"])

    async def test_names_keys_and_addresses_cannot_be_taken(self):
        first = await self.enroll("web1")
        with self.assertRaises(ServerError) as caught:
            await self.enroll("web1", node_id="another-machine-id", wg_public_key=body_for("x")["wg_public_key"])
        self.assertEqual(caught.exception.status, 409)
        self.assertIn("taken", caught.exception.message)
        with self.assertRaises(ServerError) as caught:
            await self.enroll("web2", wg_public_key=body_for("web1")["wg_public_key"])
        self.assertEqual(caught.exception.status, 409)
        second = await self.enroll("web2", vpn_ip=first.vpn_ip)
        self.assertNotEqual(second.vpn_ip, first.vpn_ip)

    async def test_wrong_fingerprint_refuses_to_talk(self):
        with self.assertRaises(ServerUnreachable) as caught:
            await self.node_client(fingerprint="0" * 64).health()
        self.assertIn("certificate", str(caught.exception))

    async def test_removed_node_loses_its_credential_at_once(self):
        web1 = await self.enroll("web1")
        web2 = await self.enroll("web2")
        client2 = self.node_client(web2.credential)
        cursor = (await client2.netmap("0", 0)).cursor
        removal = await self.admin.remove_node("web1")
        self.assertEqual(removal["removed"], "web1")
        with self.assertRaises(ServerError) as caught:
            await self.node_client(web1.credential).status()
        self.assertEqual(caught.exception.status, 401)
        delta = await client2.netmap(cursor, 5)
        self.assertEqual(delta.removals, (web1.node_id,))
        events = [e["event"] for e in (await self.admin.audit())["events"]]
        self.assertIn("node.remove", events)
        self.assertIn("node.enroll", events)

    async def test_rename(self):
        await self.enroll("web1")
        await self.enroll("web2")
        with self.assertRaises(ServerError) as caught:
            await self.admin.rename_node("web1", "web2")
        self.assertEqual(caught.exception.status, 409)
        renamed = await self.admin.rename_node("web1", "frontend")
        self.assertEqual((renamed["old_name"], renamed["node_name"]), ("web1", "frontend"))
        names = sorted(n["node_name"] for n in (await self.admin.nodes())["nodes"])
        self.assertEqual(names, ["frontend", "web2"])


class LongPollHeartbeatProcessTests(unittest.TestCase):
    """A real server counts an authenticated long-poll as the node's heartbeat."""

    timeout = 60

    async def setUp(self):
        self.data_dir = tempfile.mkdtemp(prefix="wire-hb-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.server = ServerProcess(self, self.data_dir, extra_args=("--offline-after=5",))
        await self.server.start()
        self.admin = AdminClient(reactor, admin_socket_path(self.data_dir))

    async def tearDown(self):
        await self.server.stop()

    def node_client(self, credential=None) -> CoordinationClient:
        http = make_http_client(reactor, persistent=False, tls_fingerprint=self.server.fingerprint)
        return CoordinationClient(http, self.server.url, credential)

    async def test_a_node_that_only_longpolls_stays_online(self):
        key = await self.admin.create_key(reusable=True)
        secret = decode_join_token(key["token"]).secret
        polling = await self.node_client().enroll(registration_for("poller"), secret)
        silent = await self.node_client().enroll(registration_for("silent"), secret)
        self.assertEqual((polling.heartbeat, silent.heartbeat), ("longpoll", "longpoll"))
        client = self.node_client(polling.credential)
        again = await client.register(registration_for("poller"))
        self.assertEqual(again.heartbeat, "longpoll")
        cursor = polling.cursor
        started = reactor.seconds()
        # Twice --offline-after, with nothing but long-polls from "poller".
        while reactor.seconds() - started < 10:
            cursor = (await client.netmap(cursor, 1)).cursor
        nodes = {n["node_name"]: n for n in (await client.status())["nodes"]}
        self.assertEqual(nodes["poller"]["status"], "online")
        self.assertLess(nodes["poller"]["last_seen_ago"], 3)
        self.assertEqual(nodes["silent"]["status"], "offline")


class JoinTokenTests(unittest.TestCase):
    def test_bad_tokens_say_what_is_wrong(self):
        for text, words in [
            ("hello", "starts with"),
            ("wire1.!!!!", "damaged"),
            ("wire1.e30", "missing"),
        ]:
            with self.assertRaises(JoinTokenError) as caught:
                decode_join_token(text)
            self.assertIn(words, str(caught.exception))
