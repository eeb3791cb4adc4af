"""The registry's files on disk: what the server refuses to start from, and who may read them."""

from __future__ import annotations

import os
import sqlite3
import stat

from twisted.internet.task import Clock
from twisted.trial import unittest

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
        store.close()
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
