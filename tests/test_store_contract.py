"""One contract both stores keep (wire.server.store): the same tests against
SQLite in a temp dir and against a real, throw-away PostgreSQL
(tests.pgcluster), on the real reactor with the store serving, so every
answer comes back from the database thread."""

from __future__ import annotations

import os
import sqlite3
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial import unittest

from tests import pgcluster
from tests.helpers import registration_for
from wire.addressing import AddressPool, parse_subnet
from wire.protocol import PathMode
from wire.server.auth import Authority, AuthError, acting_as, hash_secret
from wire.server.coordinator import ENROLL_ADDRESS_TRIES, Coordinator
from wire.server.dnsbook import DnsBook
from wire.server.model import NodeRecord, PairWord
from wire.server.policybook import PolicyBook
from wire.server.registry import Registry, RegistryConflict
from wire.server.store import SCHEMA_VERSION, SQLStore, StoreConflict, StoreError, Writes, open_store

POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'


def record(name: str, vpn_ip: str, **fields) -> NodeRecord:
    r = registration_for(name)
    values = dict(
        node_id=r.node_id, node_name=name, wg_public_key=r.wg_public_key, vpn_ip=vpn_ip, public_ip="203.0.113.5",
        port=51820, nat_port=51820, lan_ip="", nat_type="easy", registered=1_700_000_000.5, last_seen=1_700_000_001.25,
        tags=("tag:web",), vpn_ip6="fd7a:115c:a1e0::5",
    )
    values.update(fields)
    return NodeRecord(**values)  # type: ignore[arg-type]


def audit(writes: Writes, event: str, detail: str) -> None:
    writes.execute("INSERT INTO audit (at, event, detail) VALUES (?, ?, ?)", (0.0, event, detail))


def _put(node: NodeRecord) -> Writes:
    writes = Writes()
    writes.put_record(node)
    return writes


class StoreContract:
    """The tests; a subclass says how to open its engine's store on one database."""

    def open_engine_store(self) -> SQLStore:
        raise NotImplementedError

    def set_schema_version(self, version: int) -> None:
        """Mark the database as written by a wire with this schema."""
        raise NotImplementedError

    async def lose_database(self) -> None:
        """Make the open store's database unusable underneath it."""
        raise NotImplementedError

    def run_sql(self, sql: str) -> None:
        """Run ``sql`` on the database, from outside any store."""
        raise NotImplementedError

    def open(self) -> SQLStore:
        store = self.open_engine_store()
        store.serve()
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        return store

    # -- nodes, group commit, heartbeats ------------------------------------

    async def test_a_committed_node_is_there_after_reopening(self):
        store = self.open()
        web = record("web1", "10.99.0.1")
        store.put(web)
        await store.commit()
        self.assertEqual(self.open().load(), [web])

    async def test_the_commit_fires_after_the_write_off_the_reactor_thread(self):
        store = self.open()
        threads = []
        real = store._write

        def spy(statements):
            threads.append(threading.current_thread())
            return real(statements)

        store._write = spy  # type: ignore[method-assign]
        store.put(record("web1", "10.99.0.1"))
        d = store.commit()
        self.assertFalse(d.called, "the commit waits for its transaction")
        await d
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())

    async def test_writes_of_one_reactor_turn_share_one_transaction(self):
        store = self.open()
        writes = []
        real = store._write

        def counted(statements):
            writes.append(statements)
            return real(statements)

        store._write = counted  # type: ignore[method-assign]
        a, b = record("web1", "10.99.0.1"), record("db1", "10.99.0.2", vpn_ip6="fd7a:115c:a1e0::6")
        store.put(a)
        first = store.commit()
        store.put(b)
        second = store.commit()
        await first
        await second
        self.assertEqual(len(writes), 1)
        self.assertEqual(sorted(r.node_name for r in self.open().load()), ["db1", "web1"])

    async def test_delete_and_a_freed_address_taken_in_the_same_commit(self):
        store = self.open()
        old = record("web1", "10.99.0.1")
        store.put(old)
        await store.commit()
        store.delete(old.node_id)
        new = record("db1", "10.99.0.1", vpn_ip6="fd7a:115c:a1e0::5")  # the same (UNIQUE) addresses
        store.put(new)
        await store.commit()
        self.assertEqual(self.open().load(), [new])

    async def test_a_taken_address_is_refused_as_a_conflict_that_names_its_column(self):
        # What lets an enrollment that raced another replica's try another address.
        store = self.open()
        await store.transaction(_put(record("web1", "10.99.0.1")))
        with self.assertRaises(StoreConflict) as caught:
            await store.transaction(_put(record("db1", "10.99.0.1", vpn_ip6="fd7a:115c:a1e0::6")))
        self.assertEqual(caught.exception.column, "nodes.vpn_ip")
        with self.assertRaises(StoreConflict) as caught:
            await store.transaction(_put(record("db1", "10.99.0.2")))  # web1's IPv6 address
        self.assertEqual(caught.exception.column, "nodes.vpn_ip6")
        self.assertEqual([r.node_name for r in self.open().load()], ["web1"])

    async def test_a_node_changed_while_its_write_is_under_way_stays_pending(self):
        store = self.open()
        web = record("web1", "10.99.0.1")
        store.put(web)
        d = store.commit()
        web.nat_port = 40000  # in place, as the registry does, before the commit fired
        await d
        await store.commit()
        self.assertEqual(self.open().load()[0].nat_port, 40000)

    async def test_heartbeats_are_batched_and_write_only_last_seen(self):
        store = self.open()
        web = record("web1", "10.99.0.1")
        store.put(web)
        await store.commit()
        store.touch(web.node_id, 1_700_000_100.5)
        self.assertEqual(self.open().load()[0].last_seen, web.last_seen, "not written before the flush")
        await store.flush_touches()
        self.assertEqual(self.open().load()[0].last_seen, 1_700_000_100.5)

    async def test_pairs(self):
        store = self.open()
        word = PairWord(PathMode.RELAY, "stopped", 1_700_000_000.0, 2, 1_700_000_060.0, 4)
        store.put_pair("a", "b", word)
        store.put_pair("a", "c", PairWord(PathMode.DIRECT, "probe", 1.0, 0, None, 0))
        await store.commit()
        store.put_pair("a", "c", None)
        await store.commit()
        self.assertEqual(self.open().load_pairs(), [("a", "b", word)])

    async def test_meta(self):
        store = self.open()
        self.assertIsNone(store.read_meta("subnet6"))
        store.put_meta("subnet6", "fd00:1::/48")
        await store.commit()
        store.put_meta("subnet6", "fd00:2::/48")
        store.write_pending()
        self.assertEqual(self.open().read_meta("subnet6"), "fd00:2::/48")

    async def test_a_transaction_of_its_own_writes_a_record_and_it_is_no_longer_pending(self):
        store = self.open()
        web = record("web1", "10.99.0.1")
        store.put(web)
        writes = Writes()
        writes.put_record(web)
        writes.execute("INSERT INTO audit (at, event, detail) VALUES (?, ?, ?)", (1.0, "node.rename", "web1"))
        await store.transaction(writes)
        self.assertEqual(store._pending(), ([], ()))
        self.assertEqual(self.open().load(), [web])
        self.assertEqual(await store.query("SELECT event, detail FROM audit"), [("node.rename", "web1")])

    # -- the books' operations ------------------------------------------------

    async def test_join_keys_credentials_and_the_audit_log(self):
        store = self.open()
        authority = Authority(store, reactor)
        key, secret = await authority.create_key(reusable=True, note="laptops", tags=("tag:ci",), ephemeral_after=600)
        gone, _ = await authority.create_key()
        await authority.revoke_key(gone.key_id)
        writes = Writes()
        credential_hash, credential = authority.record_enrollment(writes, "n" * 32, "web1", key)
        await store.transaction(writes)
        self.assertEqual(credential_hash, hash_secret(credential))

        again = Authority(self.open(), reactor)
        kept = {k.key_id: k for k in again.keys()}
        self.assertEqual((kept[key.key_id].uses, kept[key.key_id].tags, kept[key.key_id].note), (1, ("tag:ci",), "laptops"))
        self.assertTrue(kept[gone.key_id].revoked)
        self.assertEqual(again.check_join_key(secret).key_id, key.key_id)
        self.assertEqual(again.node_for(credential), "n" * 32)
        self.assertEqual(again.ephemeral_nodes(), {"n" * 32: 600})
        events = [e["event"] for e in await again.audit_log()]
        self.assertEqual(events, ["node.enroll", "key.revoke", "key.create", "key.create"], "newest first")

        writes = Writes()
        again.forget_node(writes, "n" * 32)
        await again._store.transaction(writes)
        self.assertIsNone(Authority(self.open(), reactor).node_for(credential))

    async def test_api_keys_and_the_actor_of_each_audit_entry(self):
        store = self.open()
        authority = Authority(store, reactor)
        with acting_as("admin"):
            key, token = await authority.api_keys.create(name="ci", expires_in=3600, read_only=True)
            gone, gone_token = await authority.api_keys.create()
        with acting_as("apikey:" + key.key_id):
            await authority.api_keys.revoke(gone.key_id)
        again = Authority(self.open(), reactor)
        kept = again.api_keys.check(token)
        self.assertEqual((kept.name, kept.read_only, kept.expires - kept.created, kept.secret_hash), ("ci", True, 3600, key.secret_hash))
        with self.assertRaises(AuthError):
            again.api_keys.check(gone_token)
        audited = [(e["event"], e["actor"]) for e in await again.audit_log()]
        self.assertEqual(audited, [("apikey.revoke", "apikey:" + key.key_id), ("apikey.create", "admin"), ("apikey.create", "admin")])

    async def test_a_schema_10_database_gains_api_keys_and_the_audit_actor(self):
        store = self.open()
        writes = Writes()
        audit(writes, "node.rename", "web1 -> web2")
        await store.transaction(writes)
        await store.close()
        self.run_sql("DROP TABLE api_keys")
        self.run_sql("ALTER TABLE audit DROP COLUMN actor")
        self.set_schema_version(10)
        authority = Authority(self.open(), reactor)
        self.assertEqual([(e["event"], e["actor"]) for e in await authority.audit_log()], [("node.rename", None)], "an old entry's actor is unknown")
        with acting_as("admin"):
            _, token = await authority.api_keys.create()
        self.assertEqual(Authority(self.open(), reactor).api_keys.check(token).read_only, False)

    async def test_policy_versions(self):
        book = PolicyBook(self.open(), lambda: [])
        await book.set(POLICY, "admin", audit)
        await book.clear(audit)
        await book.rollback(1, audit)
        again = PolicyBook(self.open(), lambda: [])
        self.assertEqual((again.current.version, again.current.text, again.current.source), (3, POLICY, "rollback 1"))
        self.assertEqual([v.text is not None for v in await again.history()], [True, False, True])

    async def test_dns_settings(self):
        book = DnsBook(self.open(), "wire.internal")
        await book.add_record("db", "A", "10.99.0.50", audit)
        await book.set_nameservers(["9.9.9.9"], audit)
        again = DnsBook(self.open(), "wire.internal")
        self.assertEqual((again.version, again.settings.nameservers), (2, ("9.9.9.9",)))
        self.assertEqual([r.name for r in again.settings.records], ["db"])

    # -- the cluster's change stream (wire.server.cluster) -------------------------

    async def test_changes_take_serials_in_the_commit_that_writes_their_rows(self):
        store = self.open()
        store.streaming, store.origin = True, "a"
        self.assertEqual(store.cluster_serial(), 0)
        web = record("web1", "10.99.0.1")
        store.put(web)
        store.note_change("online", web.node_id)
        store.note_change("offline", "other")
        heard = []
        store.committed_changes.append(lambda: heard.append(store.cluster_serial()))
        await store.commit()
        self.assertEqual(heard, [2])
        rows = await store.query("SELECT serial, kind, subject, origin FROM changes ORDER BY serial")
        self.assertEqual(rows, [(1, "online", web.node_id, "a"), (2, "offline", "other", "a")])
        # A transaction of its own takes the next serials, with the changes queued before it.
        store.note_change("online", "queued")
        writes = Writes()
        writes.put_record(record("db1", "10.99.0.2", vpn_ip6="fd7a:115c:a1e0::6"))
        writes.change("online", "db1")
        await store.transaction(writes)
        rows = await store.query("SELECT serial, subject FROM changes WHERE serial > 2 ORDER BY serial")
        self.assertEqual(rows, [(3, "queued"), (4, "db1")])
        self.assertEqual(store.cluster_serial(), 4)
        self.assertFalse(store.has_notes())

    async def test_a_refused_commit_takes_no_serial_and_keeps_its_changes_for_the_next(self):
        store = self.open()
        store.streaming = True
        first = record("web1", "10.99.0.1")
        store.put(first)
        await store.commit()
        clash = record("db1", "10.99.0.1", vpn_ip6="fd7a:115c:a1e0::6")  # the same (UNIQUE) address
        store.put(clash)
        store.note_change("online", clash.node_id)
        with self.assertRaises(StoreError):
            await store.commit()
        self.assertEqual(store.cluster_serial(), 0, "rolled back with its transaction")
        self.assertTrue(store.has_notes())
        store.discard(clash.node_id)  # as the registry undoes a refused registration
        await store.commit()
        self.assertEqual(await store.query("SELECT serial, subject FROM changes"), [(1, clash.node_id)])

    async def test_two_stores_on_one_database_take_serials_one_after_the_other(self):
        one, two = self.open(), self.open()
        one.origin, two.origin = "one", "two"
        one.streaming = two.streaming = True
        for round in range(10):
            # Both commits under way at once, each on its store's own thread.
            for i in range(3):
                one.note_change("online", f"a{round}.{i}")
                two.note_change("online", f"b{round}.{i}")
            both = one.commit(), two.commit()
            for d in both:
                await d
        rows = await one.query("SELECT serial, origin, subject FROM changes ORDER BY serial")
        self.assertEqual([serial for serial, _, _ in rows], list(range(1, 61)), "no gap, no serial twice")
        for origin in ("one", "two"):
            subjects = [subject for _, who, subject in rows if who == origin]
            self.assertEqual(subjects, sorted(subjects, key=lambda s: tuple(map(int, s[1:].split(".")))), "in commit order")
        self.assertEqual(two.cluster_serial(), 60)

    async def test_a_schema_9_database_gains_the_stream_and_keeps_its_nodes(self):
        store = self.open()
        web = record("web1", "10.99.0.1")
        store.put(web)
        await store.commit()
        await store.close()
        self.run_sql("DROP TABLE changes")
        self.run_sql("DROP TABLE cluster")
        self.set_schema_version(9)
        store = self.open()
        self.assertEqual(store.load(), [web])
        self.assertEqual(store.cluster_serial(), 0)
        store.streaming = True
        store.note_change("online", web.node_id)
        await store.commit()
        self.assertEqual(await store.query("SELECT serial, subject FROM changes"), [(1, web.node_id)])

    async def test_one_server_alone_keeps_no_stream(self):
        store = self.open()
        store.note_change("online", "web1")
        writes = Writes()
        writes.change("key", "k1")
        await store.transaction(writes)
        await store.commit()
        self.assertEqual((store.cluster_serial(), await store.query("SELECT * FROM changes")), (0, []))

    async def test_the_epoch_is_drawn_once(self):
        store = self.open()
        self.assertEqual(store.draw_meta("epoch", "first"), "first")
        self.assertEqual(self.open().draw_meta("epoch", "second"), "first")

    # -- versions and trouble ---------------------------------------------------

    async def test_a_newer_schema_is_refused(self):
        store = self.open()
        await store.close()
        self.set_schema_version(SCHEMA_VERSION + 1)
        with self.assertRaises(StoreError) as caught:
            self.open_engine_store()
        self.assertIn(f"newer wire (schema {SCHEMA_VERSION + 1}; this one knows {SCHEMA_VERSION})", str(caught.exception))

    async def test_a_lost_database_fails_the_commit_with_a_clear_store_error(self):
        store = self.open()
        await self.lose_database()
        store.put(record("web1", "10.99.0.1"))
        failure = None
        try:
            await store.commit()
        except StoreError as e:
            failure = e
        self.assertIsNotNone(failure, "the commit errbacks")
        self.assertIn(self.lost_says, str(failure))
        self.assertNotIn("Traceback", str(failure))
        with self.assertRaises(StoreError):
            await store.query("SELECT 1")

    lost_says = "the registry could not be saved"


class SQLiteStoreContractTests(StoreContract, unittest.TestCase):
    def setUp(self):
        self.data_dir = self.mktemp()

    def open_engine_store(self) -> SQLStore:
        return open_store(self.data_dir, reactor)

    def set_schema_version(self, version: int) -> None:
        db = sqlite3.connect(os.path.join(self.data_dir, "registry.sqlite3"))
        db.execute(f"PRAGMA user_version = {version}")
        db.close()

    def run_sql(self, sql: str) -> None:
        db = sqlite3.connect(os.path.join(self.data_dir, "registry.sqlite3"))
        with db:
            db.execute(sql)
        db.close()

    async def lose_database(self) -> None:
        # Its connection closed under it (a file gone leaves SQLite's handle working).
        store = self._last
        store._thread.run_blocking(store._connection.close)

    def open(self) -> SQLStore:
        self._last = super().open()
        return self._last


class PostgresStoreContractTests(StoreContract, unittest.TestCase):
    skip = pgcluster.skip_reason()
    timeout = 60

    def setUp(self):
        self.pg, self.database = pgcluster.database(self)
        self.data_dir = self.mktemp()

    def open_engine_store(self) -> SQLStore:
        return open_store(self.data_dir, reactor, self.pg.url(self.database))

    def set_schema_version(self, version: int) -> None:
        self.pg.psql(f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'", self.database)

    def run_sql(self, sql: str) -> None:
        self.pg.psql(sql, self.database)

    async def lose_database(self) -> None:
        self.pg.stop()
        # The cluster comes back for the next tests (this one's cleanup drops its database).
        self.addCleanup(self.pg.restart)

    async def test_it_comes_back_by_itself_when_the_database_does(self):
        store = self.open()
        self.pg.stop()
        self.addCleanup(lambda: None if self.pg.running else self.pg.restart())
        store.put(record("web1", "10.99.0.1"))
        with self.assertRaises(StoreError):
            await store.commit()
        self.pg.restart()
        store.put(record("db1", "10.99.0.2", vpn_ip6="fd7a:115c:a1e0::6"))
        await store.commit()
        self.assertEqual(sorted(r.node_name for r in self.open().load()), ["db1", "web1"], "nothing queued was lost")

    def test_a_wrong_password_or_an_unreachable_server_is_said_without_the_password(self):
        wrong = self.pg.url(self.database).replace(pgcluster.PASSWORD, "not-the-password")
        with self.assertRaises(StoreError) as caught:
            open_store(self.data_dir, reactor, wrong)
        self.assertIn('password authentication failed for user "wire"', str(caught.exception))
        self.assertNotIn("not-the-password", str(caught.exception))
        unreachable = f"postgresql://wire:{pgcluster.PASSWORD}@127.0.0.1:{pgcluster.free_tcp_port()}/x"
        with self.assertRaises(StoreError) as caught:
            open_store(self.data_dir, reactor, unreachable)
        self.assertIn("cannot reach the PostgreSQL database postgresql://wire:***@127.0.0.1:", str(caught.exception))
        self.assertNotIn(pgcluster.PASSWORD, str(caught.exception))

    async def test_a_one_time_key_enrolls_one_node_even_through_two_replicas_at_once(self):
        one, two = self.open(), self.open()
        writes = Writes()
        writes.execute(
            "INSERT INTO join_keys (key_id, secret_hash, created, expires, reusable, uses, revoked, note) VALUES (?, ?, 0, 0, 0, 0, 0, '')",
            ("k1", "h1"),
        )
        await one.transaction(writes)
        use = "UPDATE join_keys SET uses = uses + 1 WHERE key_id = ?"
        first, second = Writes(), Writes()
        first.execute(use, ("k1",))
        second.execute(use, ("k1",))
        await one.transaction(first)
        with self.assertRaises(StoreError):
            await two.transaction(second)
        self.assertEqual(await one.query("SELECT uses FROM join_keys"), [(1,)])

    def coordinator_on(self, store: SQLStore) -> Coordinator:
        """A replica's coordinator on ``store`` (the real reactor), with join keys."""
        registry = Registry(store, AddressPool(parse_subnet("10.99.0.0/16")), unique_names=True)
        registry.load(store.load(), reactor.seconds())
        coordinator = Coordinator(reactor, store, registry)
        coordinator.authority = Authority(store, reactor)
        return coordinator

    async def test_two_replicas_enrolling_with_one_one_time_key_at_once_one_is_refused_cleanly(self):
        one, two = self.open(), self.open()
        first = self.coordinator_on(one)
        _, secret = await first.authority.create_key()
        second = self.coordinator_on(two)  # it knows the key, unused
        enrollments = [
            Deferred.fromCoroutine(c.enroll(secret, registration_for(name, vpn_ip=ip), "203.0.113.9"))
            for c, name, ip in ((first, "web1", "10.99.0.1"), (second, "db1", "10.99.0.2"))
        ]
        results = await DeferredList(enrollments, consumeErrors=True)
        self.assertEqual(sorted(ok for ok, _ in results), [False, True], "one of the two enrolled")
        (refused_by,) = [c for c, (ok, _) in zip((first, second), results) if not ok]
        failure = [value for ok, value in results if not ok][0]
        failure.trap(AuthError)
        self.assertIn("already used", str(failure.value))
        self.assertEqual(len(refused_by.registry), 0, "the refused node is not in its replica's memory")
        self.assertEqual(len(await one.query("SELECT node_id FROM credentials")), 1)
        self.assertEqual(len(await one.query("SELECT node_id FROM nodes")), 1)
        self.assertEqual(await one.query("SELECT uses FROM join_keys"), [(1,)])

    async def test_two_replicas_giving_out_one_address_at_once_both_enroll(self):
        # Each hears of the other's node only once it is committed: the
        # database refuses the second address, and that replica tries another.
        one, two = self.open(), self.open()
        first = self.coordinator_on(one)
        _, secret = await first.authority.create_key(reusable=True)
        second = self.coordinator_on(two)
        enrollments = [
            Deferred.fromCoroutine(c.enroll(secret, registration_for(name, vpn_ip="10.99.0.7"), "203.0.113.9"))
            for c, name in ((first, "web1"), (second, "db1"))
        ]
        results = await DeferredList(enrollments, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True, True], [v for _, v in results])
        addresses = sorted(result.record.vpn_ip for (result, _) in (value for _, value in results))
        self.assertEqual(len(set(addresses)), 2, addresses)
        self.assertIn("10.99.0.7", addresses)
        self.assertEqual(sorted(await one.query("SELECT vpn_ip FROM nodes")), sorted((a,) for a in addresses))
        self.assertEqual(await one.query("SELECT uses FROM join_keys"), [(2,)])
        self.assertEqual(len(await one.query("SELECT node_id FROM credentials")), 2)

    async def test_an_address_refused_every_time_ends_in_a_clear_conflict(self):
        store = self.open()
        coordinator = self.coordinator_on(store)
        _, secret = await coordinator.authority.create_key(reusable=True)
        joining = registration_for("web1", vpn_ip="10.99.0.10")
        # Another replica's nodes (this one never hears of them) on the
        # requested address and on each this replica would pick after it.
        pool, picked = coordinator.registry.pool, {"10.99.0.10"}
        for _ in range(ENROLL_ADDRESS_TRIES):
            picked.add(pool.allocate(joining.node_id, picked))
        for i, address in enumerate(sorted(picked)):
            await store.transaction(_put(record(f"other{i}", address, vpn_ip6=f"fd7a:115c:a1e0::{10 + i}")))
        with self.assertRaises(RegistryConflict) as caught:
            await coordinator.enroll(secret, joining, "203.0.113.9")
        self.assertIn("at the same moment; try again", str(caught.exception))
        self.assertEqual(len(coordinator.registry), 0, "the refused node is not in memory")
        self.assertEqual(await store.query("SELECT uses FROM join_keys"), [(0,)], "no use of the key was kept")

    def test_a_vanished_database_fails_writes_in_seconds_and_commits_are_synchronous(self):
        # Keepalives, a TCP user timeout and a statement timeout on every
        # connection (wire.server.pgstore.LIVENESS); durability not left to the server's config.
        store = self.open()
        shown = dict(store.read_now(
            "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'synchronous_commit', 'tcp_keepalives_idle')"
        ))
        self.assertEqual(shown["statement_timeout"], "30000")
        self.assertEqual(shown["synchronous_commit"], "on")

    def test_the_password_may_come_from_elsewhere_than_the_url(self):
        store = open_store(self.data_dir, reactor, self.pg.url(self.database, password=False), password=pgcluster.PASSWORD)
        self.addCleanup(store.close)
        self.assertEqual(store.load(), [])

    def test_the_schema_is_made_once_and_versioned_in_meta(self):
        store = self.open()
        self.open()  # a second replica's start migrates nothing more
        self.assertEqual(store.read_meta("schema_version"), str(SCHEMA_VERSION))
        self.assertEqual(
            self.pg.psql("SELECT data_type FROM information_schema.columns WHERE table_name = 'nodes' AND column_name = 'last_seen'", self.database).strip(),
            "double precision",
            "a timestamp keeps its sub-second part",
        )
