"""The replicas' one TLS identity (wire.server.sharedtls), on a real store:
the first stores its pair, the others adopt it, a conflicting one is refused."""

from __future__ import annotations

import os
import stat

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers import settled
from wire.server.sharedtls import CERT_META, KEY_META, SharedIdentityError, shared_self_signed
from wire.server.store import Writes, open_store
from wire.tls import CERT_FILE, KEY_FILE, ensure_self_signed, read_fingerprint


class SharedIdentityTests(unittest.TestCase):
    def setUp(self):
        # One database (the replicas'), a data dir per replica.
        self.store = open_store(self.dir(), Clock())
        self.addCleanup(self.store.close)

    def dir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def test_the_first_replica_stores_its_pair_and_the_next_adopts_it(self):
        first, second = self.dir(), self.dir()
        cert1, _ = shared_self_signed(self.store, first)
        cert2, key2 = shared_self_signed(self.store, second)
        self.assertEqual(read_fingerprint(cert1), read_fingerprint(cert2))
        self.assertEqual(stat.S_IMODE(os.stat(key2).st_mode), 0o600, "the adopted key is the owner's alone")
        with open(os.path.join(first, KEY_FILE), "rb") as a, open(key2, "rb") as b:
            self.assertEqual(a.read(), b.read())
        # A restart of either changes nothing.
        self.assertEqual(read_fingerprint(shared_self_signed(self.store, second)[0]), read_fingerprint(cert1))

    def test_a_servers_own_pair_becomes_the_meshs(self):
        # A server that ran alone (its nodes pin its certificate) moving to the database.
        own = self.dir()
        cert, _ = ensure_self_signed(own)
        fingerprint = read_fingerprint(cert)
        shared_self_signed(self.store, own)
        self.assertEqual(read_fingerprint(shared_self_signed(self.store, self.dir())[0]), fingerprint)

    def test_another_pair_in_a_data_dir_is_refused_not_replaced(self):
        shared_self_signed(self.store, self.dir())
        other = self.dir()
        cert, _ = ensure_self_signed(other)
        before = read_fingerprint(cert)
        with self.assertRaises(SharedIdentityError) as caught:
            shared_self_signed(self.store, other)
        self.assertIn("is not the certificate this mesh's replicas share", str(caught.exception))
        self.assertEqual(read_fingerprint(os.path.join(other, CERT_FILE)), before, "left as it was")

    def test_a_replica_that_lost_the_race_adopts_the_winners_pair(self):
        winner = self.dir()
        ensure_self_signed(winner)
        with open(os.path.join(winner, CERT_FILE)) as c, open(os.path.join(winner, KEY_FILE)) as k:
            pair = (c.read(), k.read())
        # The winner's rows land between the loser's look and its offer.
        real_read = self.store.read_meta
        looks = []

        def read_meta(key):
            looks.append(key)
            if len(looks) == 2:  # between its first look (nothing stored) and its offer
                writes = Writes()
                writes.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (CERT_META, pair[0]))
                writes.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (KEY_META, pair[1]))
                settled(self.store.transaction(writes))
            return real_read(key)

        self.store.read_meta = read_meta
        loser = self.dir()
        cert, _ = shared_self_signed(self.store, loser)
        self.assertEqual(read_fingerprint(cert), read_fingerprint(os.path.join(winner, CERT_FILE)))
