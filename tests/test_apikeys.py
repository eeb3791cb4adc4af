"""Admin API keys (wire.server.apikeys) on a fake clock and a real SQLite
store: shown once, kept hashed, checked in every state, their last use
written at most once a minute; and ``wire admin apikeys`` against a real
admin socket."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers import settled, short_dir
from tests.test_cli import run_wire
from tests.serverproc import ServerProcess
from wire.cli import admin as cli_admin
from wire.cli.formatting import Style
from wire.server.apikeys import LAST_USED_EVERY, MALFORMED, ApiKeys
from wire.server.auth import AuthError, Authority
from wire.server.store import open_store

TOKEN = re.compile(r"^wire_ak_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


class ApiKeyTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.data_dir = self.mktemp()
        self.store = open_store(self.data_dir, self.clock)
        self.addCleanup(lambda: self.store.close())
        self.authority = Authority(self.store, self.clock)
        self.keys = self.authority.api_keys

    def create(self, **options):
        return settled(self.keys.create(**options))

    def refused(self, token: str) -> str:
        with self.assertRaises(AuthError) as caught:
            self.keys.check(token)
        return str(caught.exception)

    def test_a_key_is_shown_once_and_kept_only_as_its_hash(self):
        key, token = self.create(name="ci")
        self.assertRegex(token, TOKEN)
        secret = token.split("_", 3)[3]
        self.assertEqual(key.secret_hash, hashlib.sha256(secret.encode()).hexdigest())
        self.assertEqual(settled(self.store.query("SELECT secret_hash FROM api_keys")), [(key.secret_hash,)])
        settled(self.store.close())
        for path in glob.glob(os.path.join(self.data_dir, "registry.sqlite3*")):
            with open(path, "rb") as f:
                self.assertNotIn(secret.encode(), f.read(), path)
        self.assertNotIn("token", key.as_dict(self.clock.seconds()))
        self.assertNotIn("secret_hash", key.as_dict(self.clock.seconds()))

    def test_every_key_is_different(self):
        tokens = {self.create()[1] for _ in range(50)}
        self.assertEqual(len(tokens), 50)
        self.assertEqual(len({t.split("_")[2] for t in tokens}), 50)

    def test_each_state(self):
        key, token = self.create(expires_in=3600, read_only=True)
        self.assertEqual(self.keys.check(token), key)
        self.assertTrue(key.read_only)
        self.assertEqual(self.refused("wire_ak_" + "x"), MALFORMED)
        self.assertEqual(self.refused(token[:-1] + ("B" if token[-1] != "B" else "C")), "unknown API key")
        self.clock.advance(3600)
        self.assertEqual(self.refused(token), f"API key {key.key_id} has expired")
        self.assertEqual(key.as_dict(self.clock.seconds())["state"], "expired")
        other, other_token = self.create()
        settled(self.keys.revoke(other.key_id))
        self.assertEqual(self.refused(other_token), f"API key {other.key_id} was revoked")
        self.assertEqual(other.as_dict(self.clock.seconds())["state"], "revoked")
        with self.assertRaises(KeyError):
            settled(self.keys.revoke("000000000000"))

    def test_expiry_and_name_are_bounded(self):
        key, _ = self.create()
        self.assertEqual(key.expires - key.created, 90 * 86400, "90 days unless told")
        for bad in (0, -1, 366 * 86400):
            with self.assertRaises(ValueError):
                self.create(expires_in=bad)
        for bad in ("x" * 65, "a\nb", "\x1b[2J"):
            with self.assertRaises(ValueError):
                self.create(name=bad)
        self.assertEqual(len(self.keys.keys()), 1, "nothing made by a refused create")

    def test_kept_across_a_restart(self):
        key, token = self.create(name="grafana", read_only=True)
        gone, gone_token = self.create()
        settled(self.keys.revoke(gone.key_id))
        self.clock.advance(5)
        self.keys.check(token)
        again = ApiKeys(self.store, self.clock, self.authority.audit)
        self.assertEqual(again.check(token).name, "grafana")
        self.assertTrue(again.check(token).read_only)
        with self.assertRaises(AuthError):
            again.check(gone_token)
        self.assertEqual([e["event"] for e in settled(self.authority.audit_log())], ["apikey.revoke", "apikey.create", "apikey.create"])

    def test_its_last_use_is_written_at_most_once_a_minute(self):
        key, token = self.create()

        def stored() -> float:
            return settled(self.store.query("SELECT last_used FROM api_keys WHERE key_id = ?", (key.key_id,)))[0][0]

        first = self.clock.seconds()
        self.keys.check(token)
        self.clock.advance(0)
        self.assertEqual(stored(), first)
        self.clock.advance(10)
        self.keys.check(token)
        self.clock.advance(0)
        self.assertEqual((stored(), key.last_used), (first, first + 10), "in memory at once, on disk within a minute")
        self.clock.advance(LAST_USED_EVERY)
        self.keys.check(token)
        self.clock.advance(0)
        self.assertEqual(stored(), first + 10 + LAST_USED_EVERY)
        self.assertEqual(self.keys.keys()[0].as_dict(self.clock.seconds())["last_used"], first + 10 + LAST_USED_EVERY)

    def test_a_replica_adopts_a_key_made_or_revoked_elsewhere(self):
        # Two ApiKeys on one store stand for two replicas (the cluster's stream calls reread).
        other = ApiKeys(self.store, self.clock, self.authority.audit)
        key, token = self.create()
        with self.assertRaises(AuthError):
            other.check(token)
        settled(other.reread([key.key_id]))
        self.assertEqual(other.check(token).key_id, key.key_id)
        settled(self.keys.revoke(key.key_id))
        settled(other.reread([key.key_id]))
        self.assertIn("was revoked", str(self.assertRaises(AuthError, other.check, token)))

    def test_a_listing_shows_the_last_use_another_replica_wrote(self):
        other = ApiKeys(self.store, self.clock, self.authority.audit)
        key, token = self.create()
        settled(other.reread([key.key_id]))
        self.clock.advance(30)
        other.check(token)  # used at the other replica: written there
        self.clock.advance(0)
        self.assertEqual(key.last_used, 0.0)
        settled(self.keys.refresh())
        self.assertEqual(self.keys.keys()[0].last_used, self.clock.seconds())


class CliFormatTests(unittest.TestCase):
    plain = Style(False)

    def test_created_listed_and_revoked(self):
        key = {"key_id": "0123456789ab", "name": "ci", "created": 1_700_000_000.0, "expires": 1_700_086_400.0, "read_only": True, "state": "usable", "last_used": None}
        created = cli_admin.format_api_key_created({"api_key": key, "token": "wire_ak_0123456789ab_" + "s" * 43}, self.plain)
        self.assertIn("admin API key 0123456789ab (read-only, expires", created)
        self.assertIn("\n\n  wire_ak_0123456789ab_" + "s" * 43 + "\n\n", created)
        listed = cli_admin.format_api_keys({"api_keys": [key], "timestamp": 1_700_000_100.0}, self.plain).splitlines()
        self.assertEqual(listed[0].split(), ["KEY", "ID", "STATE", "ACCESS", "CREATED", "EXPIRES", "LAST", "USED", "NAME"])
        self.assertIn("never", listed[1])
        self.assertEqual(cli_admin.format_api_keys({"api_keys": []}, self.plain), "no admin API keys (create one: wire admin apikeys create)")
        self.assertEqual(cli_admin.format_api_key_revoked({"api_key": key}, self.plain), "admin API key 0123456789ab revoked: it no longer works")


class CliThroughARealSocketTests(unittest.TestCase):
    """``wire admin apikeys`` as a process, against a real ``twistd wire-server``'s admin socket."""

    timeout = 120

    async def test_create_list_revoke(self):
        data_dir = short_dir(self)
        server = ServerProcess(self, data_dir)
        await server.start()
        code, out, err = await run_wire("admin", "--data-dir", data_dir, "apikeys", "create", "--name", "ci", "--read-only", "--expires", "30d", "--json")
        self.assertEqual(code, 0, err)
        created = json.loads(out)
        self.assertRegex(created["token"], TOKEN)
        self.assertEqual((created["api_key"]["name"], created["api_key"]["read_only"]), ("ci", True))
        self.assertEqual(created["api_key"]["expires"] - created["api_key"]["created"], 30 * 86400)
        key_id = created["api_key"]["key_id"]
        code, out, err = await run_wire("admin", "--data-dir", data_dir, "apikeys", "list")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, rf"\n  {key_id} +usable +read-only .* never +ci\n$")
        self.assertNotIn(created["token"], out)
        code, out, err = await run_wire("admin", "--data-dir", data_dir, "apikeys", "revoke", key_id)
        self.assertEqual((code, out.strip()), (0, f"admin API key {key_id} revoked: it no longer works"), err)
        code, out, err = await run_wire("admin", "--data-dir", data_dir, "apikeys", "revoke", "000000000000")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.strip(), "wire admin: no API key 000000000000 (see: wire admin apikeys list)")
        code, out, err = await run_wire("admin", "--data-dir", data_dir, "apikeys", "create", "--expires", "400d")
        self.assertEqual(code, 1)
        self.assertIn("expires_in: must be a number of seconds from 1 to 31536000", err)
        code, out, _ = await run_wire("admin", "--data-dir", data_dir, "audit")
        self.assertRegex(out, rf"apikey.create .*API key {key_id} 'ci' read-only.*\(by admin\)")
        self.assertRegex(out, rf"apikey.revoke .*API key {key_id} 'ci'.*\(by admin\)")


class ReplicaTests(unittest.TestCase):
    """Two replicas on one database (tests.test_cluster's, with authentication):
    a key made at one works at the other, a key revoked at one fails at the other."""

    def setUp(self):
        from tests.test_cluster import Replica, _clock
        from wire.server.cluster import ChangeStream

        data_dir = self.mktemp()
        self.a, self.b = Replica(self, data_dir, _clock(), "a"), Replica(self, data_dir, _clock(), "b")
        for replica in (self.a, self.b):
            replica.authority = Authority(replica.store, replica.clock)
            replica.coordinator.authority = replica.authority
            replica.store.committed_changes.remove(replica.stream.wake)
            replica.stream = ChangeStream(replica.store, replica.registry, replica.clock, replica.authority)
            replica.store.committed_changes.append(replica.stream.wake)

    def test_a_key_made_at_one_works_at_the_other_and_its_revocation_too(self):
        key, token = settled(self.a.authority.api_keys.create(name="ci"))
        with self.assertRaises(AuthError):
            self.b.authority.api_keys.check(token)
        self.b.stream.wake()  # its NOTIFY
        self.assertEqual(self.b.authority.api_keys.check(token).name, "ci")
        self.assertEqual(self.b.registry.changes.serial, 1, "the key's change moved the serial")
        settled(self.b.authority.api_keys.revoke(key.key_id))
        self.a.stream.wake()
        with self.assertRaises(AuthError) as caught:
            self.a.authority.api_keys.check(token)
        self.assertEqual(str(caught.exception), f"API key {key.key_id} was revoked")
