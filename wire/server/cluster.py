"""Replicas on one PostgreSQL serving one mesh (issue 19): the database's
change stream followed into memory, and the one replica that sweeps.

Every change peers must learn is a row of ``changes`` with a cluster-wide
serial, appended in the transaction that makes it (wire.server.store), and
NOTIFYs ``wire_changes`` at its commit. Each replica:

- follows the stream (:class:`ChangeStream`): it reads the rows after the
  serial it applied, with the node rows they name, and applies them in
  serial order to its registry without writing them back; its own changes
  are recorded the same way, when the stream reaches them. Its change log
  therefore holds the cluster's serials, under the cluster's epoch: a cursor
  means the same on every replica.
- is woken by a session of its own (:class:`Session`, on a thread of its
  own, never the reactor's) that LISTENs; on a lost session it reconnects and
  catches up from the serial applied, so nothing is missed. A catch-up every
  few seconds is the safety net, not the mechanism.
- holds a lock of its own on that session, which says it lives, and reads
  which replicas live (wire.server.replicas) about once a second: a pair's
  relay session is at one of them, its home.
- may be the sweep leader: that session holds a PostgreSQL advisory lock,
  released by the database when the session dies, so another replica takes
  it within seconds. Only the leader takes silent nodes offline, expires
  them and removes ephemeral ones (its changes reach the others as rows);
  it reads the heartbeats the others wrote (``last_seen``) first.

One server on SQLite is its own cluster: :class:`SingleServer`, always the
leader, no stream (its change log is as it always was).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wire.server.apikeys import API_KEY_CHANGE
from wire.server.auth import KEY_CHANGE, KEY_COLUMNS
from wire.server.dnsbook import DNS_CHANGE, DNS_SETTINGS
from wire.server.model import RECORD_FIELDS, NodeRecord
from wire.server.policybook import LATEST_POLICY, POLICY_CHANGE
from wire.server.registry import Registry
from wire.server.replicas import REPLICA_LOCK_CLASS, ClusterReplicas, Replica, live_from, lock_key
from wire.server.store import SQLStore, StoreError

log = Logger()

# A node's change, by what it is now (wire.server.registry); any other kind moves the serial only.
NODE_KINDS = frozenset(("online", "offline", "gone"))

# pg_try_advisory_lock's key for the sweep leader ("wsw1").
LEADER_LOCK = 0x77737731
# The safety net: a catch-up this often, whatever LISTEN said.
CATCH_UP_INTERVAL = 5.0
# Every replica reads the others' heartbeats (the leader then trims the stream) this often.
LEADER_INTERVAL = 5.0
# Rows read per query; nodes named per IN (...) list.
BATCH = 1000
# Rows of the stream kept behind the oldest serial a replica may still need:
# a cursor older than every replica's change log gets a snapshot anyway.
KEPT_CHANGES = 200_000
# The session thread's wait for a notification, and between reconnections.
SESSION_TICK = 1.0
# Which replicas live is read this often (their locks, on the session).
LIVE_EVERY = 1.0

UPSERT_REPLICA = (
    "INSERT INTO replicas (name, api_url, relay_host, relay_port, started, seen) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET api_url = excluded.api_url, relay_host = excluded.relay_host, "
    "relay_port = excluded.relay_port, started = excluded.started, seen = excluded.seen"
)
# The liveness locks granted now, in this database (the two-key form shows objsubid 2).
LIVE_LOCKS = (
    "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid = %s "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class SingleServer:
    """One server alone on its database: always the leader, nothing to follow."""

    replica = ""
    leader = True
    reachable = True
    applied = 0
    lag = 0

    def health(self) -> dict:
        return {}


class ChangeStream:
    """The database's change stream, applied in serial order to the registry."""

    def __init__(
        self, store: SQLStore, registry: Registry, clock: IReactorTime, authority: Any = None, policy: Any = None, dns: Any = None
    ):
        self._store = store
        self._registry = registry
        self._clock = clock
        self._authority = authority
        # Books whose one current version a change names: kind -> (book, how to read that version).
        self._books = {kind: (book, sql) for kind, book, sql in ((POLICY_CHANGE, policy, LATEST_POLICY), (DNS_CHANGE, dns, DNS_SETTINGS)) if book is not None}
        self.applied = registry.changes.serial
        self.latest = self.applied  # the database's serial when last read
        self._reading = False
        self._again = False
        self.stopped = False  # the store closes: nothing more is read
        self._failing = False
        # Called with a node another replica removed, once applied (its relay sessions here end).
        self.on_gone: Callable[[str], object] | None = None

    @property
    def lag(self) -> int:
        return max(0, self.latest - self.applied)

    def wake(self) -> None:
        """Something was committed: read what is new (once at a time)."""
        if self.stopped:
            return
        if self._reading:
            self._again = True
            return
        self._reading = True
        d = Deferred.fromCoroutine(self._catch_up())
        d.addCallbacks(self._read, self._not_read)

    def _read(self, _: object) -> None:
        if self._failing:
            self._failing = False
            log.info("cluster: reading the change stream again, at serial {serial}", serial=self.applied)
        self._finished()

    def _not_read(self, failure: Failure) -> None:
        if not failure.check(StoreError):
            log.failure("cluster: applying the change stream failed", failure)
        elif not self._failing:
            # Once until it reads again: the database may be away for a while.
            log.warn("cluster: cannot read the change stream: {error}", error=failure.value)
        self._failing = True
        self._finished()

    def _finished(self) -> None:
        self._reading = False
        if self._again:
            self._again = False
            self.wake()

    async def _catch_up(self) -> None:
        while True:
            rows = await self._store.query(
                "SELECT serial, kind, subject, origin FROM changes WHERE serial > ? ORDER BY serial LIMIT ?",
                (self.applied, BATCH),
            )
            if rows:
                await self._apply(rows)
            if len(rows) < BATCH:
                break
        (latest,), = await self._store.query("SELECT serial FROM cluster WHERE id = 1")
        self.latest = max(int(latest), self.applied)

    async def _apply(self, rows: list[tuple]) -> None:
        origin = self._store.origin
        remote = sorted({subject for _, kind, subject, who in rows if who != origin and kind in NODE_KINDS})
        # Changes made here while the rows are read: a row read before one is stale.
        made_here = {node_id: self._registry.local_changes(node_id) for node_id in remote}
        records = await self._records(remote)
        credentials = await self._credentials(remote) if self._authority is not None else {}
        keys = sorted({subject for _, kind, subject, who in rows if who != origin and kind == KEY_CHANGE})
        key_rows = await self._keys(keys) if keys and self._authority is not None else []
        for row in key_rows:
            self._authority.adopt_key(row)
        api_keys = sorted({subject for _, kind, subject, who in rows if who != origin and kind == API_KEY_CHANGE})
        if api_keys and self._authority is not None:
            await self._authority.api_keys.reread(api_keys)
        for kind in sorted({kind for _, kind, _, who in rows if who != origin and kind in self._books}):
            book, sql = self._books[kind]
            for row in (await self._store.query(sql))[:1]:
                book.adopt(row)
        now = self._clock.seconds()
        for serial, kind, subject, who in rows:
            serial = int(serial)
            if serial != self.applied + 1:
                # Commit order is serial order: a gap is a bug, said once, and crossed.
                log.warn("cluster: change stream jumps from {applied} to {serial}", applied=self.applied, serial=serial)
            if kind not in NODE_KINDS:
                self._registry.changes.reach(serial)  # a join key's (adopted above) or one this wire does not know
            elif who == origin:
                self._registry.record_local(serial, subject)
            elif self._registry.local_changes(subject) != made_here[subject]:
                # Changed here since its row was read: read again from this row on.
                self._again = True
                return
            else:
                record = records.get(subject)
                self._adopt_credential(subject, record, credentials)
                self._registry.apply(serial, kind, subject, record, now)
                if record is None and self.on_gone is not None:
                    self.on_gone(subject)
            self.applied = serial

    def _adopt_credential(self, node_id: str, record: NodeRecord | None, credentials: dict) -> None:
        if self._authority is None:
            return
        if record is None:
            self._authority.forgotten(node_id)
            return
        credential = credentials.get(node_id)
        if credential is not None:
            credential_hash, ephemeral_after = credential
            if self._authority.credential_of(node_id) != credential_hash:
                self._authority.adopt(node_id, credential_hash)
            if ephemeral_after:
                self._registry.make_ephemeral(node_id, ephemeral_after)

    async def _records(self, node_ids: list[str]) -> dict[str, NodeRecord]:
        records = {}
        for chunk in _chunks(node_ids):
            rows = await self._store.query(
                f"SELECT {', '.join(RECORD_FIELDS)} FROM nodes WHERE node_id IN ({', '.join('?' for _ in chunk)})",
                tuple(chunk),
            )
            for row in rows:
                record = NodeRecord(*row)
                records[record.node_id] = record
        return records

    async def _keys(self, key_ids: list[str]) -> list[tuple]:
        rows: list[tuple] = []
        for chunk in _chunks(key_ids):
            rows += await self._store.query(
                f"SELECT {KEY_COLUMNS} FROM join_keys WHERE key_id IN ({', '.join('?' for _ in chunk)})", tuple(chunk)
            )
        return rows

    async def _credentials(self, node_ids: list[str]) -> dict[str, tuple[str, float]]:
        found = {}
        for chunk in _chunks(node_ids):
            rows = await self._store.query(
                "SELECT credentials.node_id, credentials.credential_hash, COALESCE(join_keys.ephemeral_after, 0) "
                "FROM credentials LEFT JOIN join_keys ON join_keys.key_id = credentials.key_id "
                f"WHERE credentials.node_id IN ({', '.join('?' for _ in chunk)})",
                tuple(chunk),
            )
            for node_id, credential_hash, ephemeral_after in rows:
                found[node_id] = (credential_hash, float(ephemeral_after))
        return found


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


class Session:
    """A PostgreSQL session of its own, on a thread of its own: LISTEN wakes
    the stream, and the session holds the leader's advisory lock. Every
    callback reaches the reactor through ``callFromThread``."""

    def __init__(
        self,
        reactor: Any,
        connect: Callable[[], Any],
        notified: Callable[[], None],
        leading: Callable[[bool], None],
        reachable: Callable[[bool], None],
        channel: str,
        replica: Replica | None = None,
        live: Callable[[dict[str, Replica]], object] | None = None,
    ):
        self._reactor = reactor
        self._connect = connect
        self._notified = notified
        self._leading = leading
        self._reachable = reachable
        self._channel = channel
        # This replica's row and liveness lock, and where the live set read goes.
        self._replica = replica
        self._live = live
        self._started = reactor.seconds()
        self._collision_said = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire-cluster", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The thread ends within a tick; its session with it (and the lock)."""
        self._stopping.set()

    def _call(self, f: Callable, *args: Any) -> None:
        self._reactor.callFromThread(f, *args)

    def _run(self) -> None:
        said = False
        while not self._stopping.is_set():
            connection = None
            leader = False
            try:
                connection = self._connect()
                connection.execute(f"LISTEN {self._channel}")
                said = False
                self._call(self._reachable, True)
                self._call(self._notified)  # whatever was missed while away
                alive, live_read = self._announce(connection), float("-inf")
                while not self._stopping.is_set():
                    if self._replica is not None and self._reactor.seconds() - live_read >= LIVE_EVERY:
                        alive = alive or self._take_lock(connection)
                        self._read_live(connection)
                        live_read = self._reactor.seconds()
                    if not leader:
                        leader = bool(connection.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()[0])
                        if leader:
                            self._call(self._leading, True)
                    else:
                        connection.execute("SELECT 1")  # a lost session shows here, at the latest
                    heard = False
                    for _ in connection.notifies(timeout=SESSION_TICK, stop_after=1):
                        heard = True
                    if heard:
                        # Drain what else came meanwhile: one catch-up reads it all.
                        for _ in connection.notifies(timeout=0):
                            pass
                        self._call(self._notified)
            except Exception as e:  # psycopg.Error, StoreError: the session is lost
                if not said:
                    log.warn("cluster: lost the database session ({error}); reconnecting", error=" ".join(str(e).split()))
                    said = True
                self._call(self._reachable, False)
            finally:
                if leader:
                    self._call(self._leading, False)
                if connection is not None:
                    try:
                        connection.close()
                    except Exception:
                        pass
            self._stopping.wait(SESSION_TICK)

    def _announce(self, connection: Any) -> bool:
        """This replica's row (where it relays), and its liveness lock taken:
        whether it holds the lock (held until the session ends)."""
        if self._replica is None:
            return False
        r = self._replica
        connection.execute(UPSERT_REPLICA, (r.name, r.api_url, r.relay_host, r.relay_port, self._started, self._reactor.seconds()))
        return self._take_lock(connection)

    def _take_lock(self, connection: Any) -> bool:
        assert self._replica is not None
        held = bool(connection.execute("SELECT pg_try_advisory_lock(%s, %s)", (REPLICA_LOCK_CLASS, lock_key(self._replica.name))).fetchone()[0])
        if not held and not self._collision_said:
            # Another session holds it: this replica's name twice, a dead session PostgreSQL has not noticed yet,
            # or (once in four billion) another name with the same hash.
            log.warn("cluster: replica {name}'s liveness lock is held by another session; it relays nothing until it has it", name=self._replica.name)
            self._collision_said = True
        if held:
            self._collision_said = False
        return held

    def _read_live(self, connection: Any) -> None:
        rows = connection.execute("SELECT name, api_url, relay_host, relay_port FROM replicas").fetchall()
        granted = [objid for (objid,) in connection.execute(LIVE_LOCKS, (REPLICA_LOCK_CLASS,)).fetchall()]
        if self._live is not None:
            self._call(self._live, live_from(rows, granted))


class Cluster(Service):
    """This replica's part: the stream, the session, the leader's duties."""

    def __init__(self, coordinator: Any, store: SQLStore, reactor: Any, name: str, me: Replica | None = None):
        self.replica = name
        self._store = store
        self._registry = registry = coordinator.registry
        self._reactor = reactor
        self.stream = ChangeStream(store, registry, reactor, coordinator.authority, coordinator.policy, coordinator.dns)
        store.committed_changes.append(self.stream.wake)
        # A node removed through another replica: its relay sessions here end too.
        self.stream.on_gone = coordinator.end_relay_of
        # The live replicas (wire.server.replicas), which relay the pairs homed at them.
        self.replicas = ClusterReplicas(me if me is not None else Replica(name, "", "", 0))
        self.leader = False  # once it holds the lock and has read the others' heartbeats
        self._holds_lock = False
        self.reachable = True
        engine: Any = store.engine
        self._session = Session(
            reactor, engine.session, self.stream.wake, self._lock_held, self._reached, _channel(), self.replicas.me, self.replicas.update
        )
        self._loops = [LoopingCall(self._safety_net), LoopingCall(self._lead)]
        for loop in self._loops:
            loop.clock = reactor

    @property
    def applied(self) -> int:
        return self.stream.applied

    @property
    def lag(self) -> int:
        return self.stream.lag

    def health(self) -> dict:
        return {
            "replica": self.replica,
            "database": self.reachable,
            "leader": self.leader,
            "lag": self.lag,
            # The replicas that relay now (a pair's session is at one of them: wire.server.replicas).
            "relay_replicas": sorted(self.replicas.live),
        }

    def startService(self) -> None:
        super().startService()
        self._session.start()
        self._loops[0].start(CATCH_UP_INTERVAL, now=False)
        self._loops[1].start(LEADER_INTERVAL, now=False)

    def stopService(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._session.stop()
        self.stream.stopped = True
        super().stopService()

    def _reached(self, reachable: bool) -> None:
        self.reachable = reachable

    def _lock_held(self, held: bool) -> None:
        self._holds_lock = held
        if held:
            log.info("cluster: replica {name} leads (offline sweeps, expiry, ephemeral nodes)", name=self.replica)
            self._lead()
        elif self.leader:
            log.warn("cluster: replica {name} no longer leads (its database session ended)", name=self.replica)
            self.leader = False

    def _safety_net(self) -> None:
        self.stream.wake()
        if self._store.has_notes():
            self._store.commit().addErrback(lambda _: None)  # logged by the store; kept for the next

    def _lead(self) -> None:
        d = Deferred.fromCoroutine(self._read_heartbeats())
        d.addErrback(lambda failure: log.warn("cluster: reading heartbeats failed: {error}", error=failure.value))

    async def _read_heartbeats(self) -> None:
        """Every replica: the heartbeats the others wrote (so its /status is
        fresh, and so is a new leader's view). The leader then trims the stream."""
        rows = await self._store.query("SELECT node_id, last_seen FROM nodes")
        self._registry.refresh_seen(rows)
        if not self._holds_lock:
            return
        # Only now: a sweep on heartbeats this replica alone heard would take
        # the others' nodes offline.
        self.leader = True
        await self._store.query_write("DELETE FROM changes WHERE serial <= ?", (self.stream.applied - KEPT_CHANGES,))


def _channel() -> str:
    from wire.server.pgstore import CHANGES_CHANNEL

    return CHANGES_CHANNEL
