"""What happens while a write is in flight, on a fake clock: the store's
database calls are held (HeldDatabase) and the test lets each one run or
refuses it, in the order a slow disk or a far PostgreSQL would. A one-time
key enrolls one node, a refused change is never written by a later commit,
an acknowledged registration is durable, and a closing store writes nothing
refused and answers later calls with a StoreError."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.helpers import body_for, make_coordinator, registration_for, settled
from wire.server.admin import Admin
from wire.server.auth import Authority, AuthError
from wire.server.store import StoreError, Writes, open_store


class HeldDatabase:
    """The store's database calls wait until the test lets one run
    (``release``) or refuses it (``refuse``); blocking reads (``read_now``)
    still go through."""

    def __init__(self, test: unittest.TestCase, store: Any):
        self._store = store
        self._real = store._thread.run
        self.held: list[tuple[Callable, tuple, Deferred]] = []
        store._thread.run = self._hold
        test.addCleanup(self.stop_holding)  # before the store's close (cleanups run last first)

    def _hold(self, work: Callable, *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.held.append((work, args, d))
        return d

    def release(self, index: int = 0) -> None:
        work, args, d = self.held.pop(index)
        self._real(work, *args).chainDeferred(d)

    def refuse(self, index: int = 0) -> None:
        _, _, d = self.held.pop(index)
        d.errback(StoreError("the registry could not be saved: database is locked"))

    def release_all(self) -> None:
        while self.held:
            self.release()

    def stop_holding(self) -> None:
        self._store._thread.run = self._real
        self.release_all()


class RaceCase(unittest.TestCase):
    def setUp(self):
        self.coordinator = make_coordinator(self, unique_names=True)
        self.clock = self.coordinator.clock
        self.store = self.coordinator.store
        self.registry = self.coordinator.registry
        self.authority = Authority(self.store, self.clock)
        self.coordinator.authority = self.authority
        self.admin = Admin(self.coordinator, "https://wire.example:8443", "00" * 32)

    def hold(self) -> HeldDatabase:
        return HeldDatabase(self, self.store)

    def enroll(self, secret: str, name: str, **fields) -> Deferred:
        return Deferred.fromCoroutine(self.coordinator.enroll(secret, registration_for(name, **fields), "203.0.113.9"))

    def register(self, name: str, **fields) -> Deferred:
        d = Deferred.fromCoroutine(self.coordinator.register(registration_for(name, **fields), "203.0.113.5"))
        self.clock.advance(0)  # the group commit is cut
        return d

    def stored(self, sql: str) -> list[tuple]:
        return self.store.read_now(sql)


class OneTimeKeyTests(RaceCase):
    def test_a_one_time_key_enrolls_one_node_while_its_first_enrollment_is_in_flight(self):
        _, secret = settled(self.authority.create_key())
        held = self.hold()
        first = self.enroll(secret, "web1")
        second = self.enroll(secret, "db1")
        failure = self.failureResultOf(second, AuthError)
        self.assertIn("already used", str(failure.value))
        held.release_all()
        self.successResultOf(first)
        self.assertEqual(len(self.stored("SELECT node_id FROM credentials")), 1)
        self.assertEqual(self.stored("SELECT uses FROM join_keys"), [(1,)])
        self.assertIsNone(self.registry.by_name("db1"))

    def test_a_refused_enrollment_gives_its_use_of_the_key_back(self):
        _, secret = settled(self.authority.create_key())
        held = self.hold()
        first = self.enroll(secret, "web1")
        held.refuse()
        self.failureResultOf(first, StoreError)
        self.assertEqual(self.authority.keys()[0].uses, 0)
        second = self.enroll(secret, "db1")
        held.release_all()
        self.successResultOf(second)
        self.assertEqual(self.stored("SELECT uses FROM join_keys"), [(1,)])

    def test_a_key_being_revoked_enrolls_no_one(self):
        key, secret = settled(self.authority.create_key())
        held = self.hold()
        revoked = Deferred.fromCoroutine(self.authority.revoke_key(key.key_id))
        enrolling = self.enroll(secret, "web1")
        self.failureResultOf(enrolling, AuthError)
        held.release_all()
        self.successResultOf(revoked)
        self.assertEqual(self.stored("SELECT node_id FROM credentials"), [])

    def test_a_refused_revocation_leaves_the_key_usable(self):
        key, secret = settled(self.authority.create_key())
        held = self.hold()
        revoked = Deferred.fromCoroutine(self.authority.revoke_key(key.key_id))
        held.refuse()
        self.failureResultOf(revoked, StoreError)
        self.assertFalse(key.revoked)
        enrolling = self.enroll(secret, "web1")
        held.release_all()
        self.successResultOf(enrolling)


class RetriedRegistrationTests(RaceCase):
    """A node retries while its first registration's commit is in flight; that commit fails."""

    def test_an_identical_retry_is_answered_only_once_durable_and_fails_with_the_first(self):
        held = self.hold()
        first = self.register("web1")
        self.assertEqual(len(held.held), 1, "the first commit is in flight")
        again = self.register("web1")
        self.assertNoResult(again)
        held.refuse()
        self.failureResultOf(first, StoreError)
        self.clock.advance(0)
        held.release_all()
        self.failureResultOf(again, StoreError)
        self.assertIsNone(self.registry.get(body_for("web1")["node_id"]))
        self.assertEqual(self.stored("SELECT node_id FROM nodes"), [])

    def test_an_identical_retry_after_the_first_commit_succeeds_is_answered(self):
        held = self.hold()
        first = self.register("web1")
        again = self.register("web1")
        held.release()
        self.successResultOf(first)
        self.clock.advance(0)
        held.release_all()
        self.successResultOf(again)

    def test_a_changed_retry_is_stored_when_the_first_commit_fails(self):
        held = self.hold()
        first = self.register("web1", nat_port=40001)
        second = self.register("web1", nat_port=40002)
        held.refuse()
        self.failureResultOf(first, StoreError)
        node_id = body_for("web1")["node_id"]
        self.assertEqual(self.registry.get(node_id).nat_port, 40002, "the newer registration is not undone")
        self.clock.advance(0)
        held.release_all()
        self.successResultOf(second)
        self.assertEqual(self.stored("SELECT nat_port FROM nodes"), [(40002,)])


class RefusedTransactionTests(RaceCase):
    """A transaction of its own is refused while a group commit is cut: the
    group commit must not write what the transaction carried."""

    def enrolled(self, name: str) -> tuple[str, str]:
        _, secret = settled(self.authority.create_key())
        _, credential = settled(self.enroll(secret, name))
        return body_for(name)["node_id"], credential

    def refused_while_a_group_commit_is_cut(self, call: Callable[[], Any]) -> None:
        """``call`` (a coroutine) sends its transaction; a group commit is cut
        and written meanwhile; the transaction is refused."""
        held = self.hold()
        d = Deferred.fromCoroutine(call())
        self.store.commit().addErrback(lambda _: None)
        self.clock.advance(0)
        held.refuse()  # the transaction, sent first
        held.release_all()
        self.failureResultOf(d, StoreError)
        # And whatever is queued after the undo goes with the next commit.
        committed = self.store.commit()
        self.clock.advance(0)
        held.stop_holding()
        self.successResultOf(committed)

    def test_a_refused_enrollment_leaves_no_node_row(self):
        _, secret = settled(self.authority.create_key())
        self.refused_while_a_group_commit_is_cut(lambda: self.coordinator.enroll(secret, registration_for("web1"), "203.0.113.9"))
        self.assertEqual(self.stored("SELECT node_id FROM nodes"), [])
        self.assertFalse(self.store.is_pending(body_for("web1")["node_id"]))
        self.successResultOf(self.enroll(secret, "web1"))

    def test_a_refused_rename_is_undone_and_never_written(self):
        node_id, _ = self.enrolled("web1")
        self.refused_while_a_group_commit_is_cut(lambda: self.admin.rename_node("web1", "web2"))
        self.assertEqual(self.registry.get(node_id).node_name, "web1")
        self.assertIsNone(self.registry.by_name("web2"))
        self.assertEqual(self.stored("SELECT node_name FROM nodes"), [("web1",)])

    def test_a_refused_tagging_is_undone_and_never_written(self):
        node_id, _ = self.enrolled("web1")
        self.refused_while_a_group_commit_is_cut(lambda: self.admin.tag_node("web1", ("tag:db",)))
        self.assertEqual(self.registry.get(node_id).tags, ())
        self.assertEqual(self.stored("SELECT tags FROM nodes"), [("",)])

    def test_a_refused_removal_leaves_the_node_and_its_credential(self):
        node_id, credential = self.enrolled("web1")
        self.refused_while_a_group_commit_is_cut(lambda: self.admin.remove_node("web1"))
        self.assertIsNotNone(self.registry.get(node_id))
        self.assertTrue(self.registry.is_online(node_id))
        self.assertEqual(self.coordinator.authenticate(credential), node_id)
        self.assertEqual(self.stored("SELECT node_id FROM nodes"), [(node_id,)])
        self.assertEqual(self.stored("SELECT node_id FROM credentials"), [(node_id,)])


class ClosingTests(RaceCase):
    def test_close_waits_for_the_commit_in_flight_and_writes_nothing_it_refused(self):
        held = self.hold()
        first = self.register("web1")
        closed = self.store.close()
        self.assertEqual(len(held.held), 1, "no second batch while the first is in flight")
        held.refuse()
        self.failureResultOf(first, StoreError)
        held.release_all()
        self.successResultOf(closed)
        self.assertEqual(open_store(self.coordinator.data_dir, self.clock).load(), [])

    def test_what_is_queued_at_close_is_written(self):
        self.register("web1")  # committed at once: nothing held
        self.store.put(self.registry.get(body_for("web1")["node_id"]))
        self.successResultOf(self.store.close())
        self.assertEqual([r.node_name for r in open_store(self.coordinator.data_dir, self.clock).load()], ["web1"])

    def test_calls_after_close_fail_with_a_store_error(self):
        self.successResultOf(self.store.close())
        for call in (self.store.commit, lambda: self.store.transaction(Writes()), lambda: self.store.query("SELECT 1")):
            failure = self.failureResultOf(call(), StoreError)
            self.assertEqual(str(failure.value), "the server is stopping")
        self.clock.advance(1)  # nothing left scheduled that would use the stopped thread
        self.failureResultOf(self.register("web1"), StoreError)
