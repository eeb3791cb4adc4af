"""The registry's files on disk: what the server refuses to start from, and who may read them."""

from __future__ import annotations

import os
import sqlite3
import stat

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers import body_for, make_coordinator, registration_for, settled
from wire.server.store import StoreError, open_store, secure_data_dir


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class StoreFileTests(unittest.TestCase):
    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.data_dir, "registry.sqlite3")

    def test_a_new_data_dir_and_its_files_are_the_owners_only(self):
        store = open_store(self.data_dir, Clock())
        self.addCleanup(store.close)
        self.assertEqual(mode_of(self.data_dir), 0o700)
        for name in (self.path, self.path + "-wal", self.path + "-shm"):
            if os.path.exists(name):
                self.assertEqual(mode_of(name), 0o600, name)
        self.assertTrue(os.path.exists(self.path + "-wal"), "WAL mode: the WAL file is there, and was checked")

    def test_a_looser_data_dir_and_database_are_tightened(self):
        os.makedirs(self.data_dir, mode=0o755)
        os.chmod(self.data_dir, 0o755)
        store = open_store(self.data_dir, Clock())
        settled(store.close())
        os.chmod(self.path, 0o644)
        os.chmod(self.data_dir, 0o755)
        secure_data_dir(self.data_dir)
        store = open_store(self.data_dir, Clock())
        self.addCleanup(store.close)
        self.assertEqual((mode_of(self.data_dir), mode_of(self.path)), (0o700, 0o600))

    def test_a_zero_length_registry_is_refused_and_left_as_it_was(self):
        os.makedirs(self.data_dir, mode=0o700)
        open(self.path, "wb").close()
        with self.assertRaises(StoreError) as caught:
            open_store(self.data_dir, Clock())
        self.assertIn("is empty (0 bytes)", str(caught.exception))
        self.assertEqual(os.path.getsize(self.path), 0, "untouched")

    def test_a_database_without_tables_is_refused(self):
        os.makedirs(self.data_dir, mode=0o700)
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA user_version = 1")
        db.commit()
        db.close()
        size = os.path.getsize(self.path)
        with self.assertRaises(StoreError) as caught:
            open_store(self.data_dir, Clock())
        self.assertIn("without a single table", str(caught.exception))
        self.assertEqual(os.path.getsize(self.path), size)


class RefusedMeansNotStoredTests(unittest.TestCase):
    """A registration the store cannot save (disk full, database locked) is
    answered 503 and leaves nothing behind: not in memory, the netmap or the
    database, not even later."""

    def setUp(self):
        self.coordinator = make_coordinator(self)
        self.store = self.coordinator.store
        self.clock = self.coordinator.clock

    def register(self, name: str, **fields):
        d = Deferred.fromCoroutine(self.coordinator.register(registration_for(name, **fields), "203.0.113.5"))
        self.clock.advance(0)  # the group commit
        return d

    def disk_full(self):
        engine = self.store._engine
        real = engine.execute

        def failing(connection, sql, rows):
            raise sqlite3.OperationalError("database or disk is full")

        engine.execute = failing
        return lambda: setattr(engine, "execute", real)

    def saved_nodes(self) -> dict:
        return {row[0]: row[1] for row in settled(self.store.query("SELECT node_id, nat_port FROM nodes"))}

    def test_a_new_node_refused_is_nowhere(self):
        heal = self.disk_full()
        serial = self.coordinator.registry.changes.serial
        self.failureResultOf(self.register("db1"), StoreError)
        node_id = body_for("db1")["node_id"]
        self.assertIsNone(self.coordinator.registry.get(node_id))
        self.assertEqual([n["node_name"] for n in self.coordinator.status()["nodes"]], [])
        snapshot = self.coordinator.registry.netmap_since(self.coordinator.registry.changes.cursor, self.clock.seconds())
        self.assertGreater(self.coordinator.registry.changes.serial, serial, "long-polls hear it is gone")
        self.assertEqual(snapshot["upserts"], [])
        heal()
        self.successResultOf(self.register("web1"))  # the next commit writes only what was taken
        self.assertNotIn(node_id, self.saved_nodes())

    def test_a_changed_node_refused_keeps_what_was_saved(self):
        self.successResultOf(self.register("db1", nat_port=40001))
        heal = self.disk_full()
        self.failureResultOf(self.register("db1", nat_port=40002), StoreError)
        node_id = body_for("db1")["node_id"]
        self.assertEqual(self.coordinator.registry.get(node_id).nat_port, 40001)
        self.assertTrue(self.coordinator.registry.is_online(node_id))
        heal()
        self.successResultOf(self.register("web1"))
        self.assertEqual(self.saved_nodes()[node_id], 40001, "the refused change was never written")
