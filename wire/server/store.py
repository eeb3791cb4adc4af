"""The server's durable state: one asynchronous interface (IStore), the
logic both databases share (SQLStore), and the schema.

Two engines sit behind it: SQLite in the data dir (wire.server.sqlitestore,
the default for one server) and PostgreSQL (wire.server.pgstore, for
replicas sharing one database). Their queries are one text (``?``
placeholders, ``INSERT ... ON CONFLICT ... DO UPDATE``); only the engine
adapters differ.

What the server acknowledges must survive ``kill -9``: a registration that
changed a node is answered only after its transaction is committed
(SQLite: WAL, synchronous=FULL; PostgreSQL: synchronous_commit). Many such
writes arriving in the same reactor turn share one transaction. Heartbeats
that change nothing but ``last_seen`` are not worth an fsync each: they are
batched and written every few seconds (losing a few seconds of "last seen"
in a crash is harmless), and never rewrite anything but their own row.
Every database call runs on the store's own thread (wire.server.dbthread):
the reactor thread, which also carries STUN and relay frames, never waits
on a disk or the network. Loading at startup does wait, before the reactor
serves.

A database that cannot be read stops the server with a clear error and is
left exactly as it was: the server never "repairs" by wiping. A database
with a newer schema than this wire knows is refused.

Schema 3 adds ``pair_paths``, the server's word on pairs of nodes
(:mod:`wire.server.pathbook`): a restarted server must not flip a relayed
pair to direct, or the reverse. Older databases gain the table when opened
(every table is created if missing), and keep everything else as it was.

Schema 4 adds tags: a node's (``nodes.tags``) and those a join key gives
the nodes it enrolls (``join_keys.tags``), space-separated, and a key's
``ephemeral_after`` (0: its nodes are not ephemeral). Older databases gain
the columns, with their defaults, when opened.

Schema 5 adds ``policies``, every version of the access policy
(:mod:`wire.server.policybook`). An older wire refuses the database rather
than run without the policy, which would let everything reach everything.

Schema 6 adds ``dns_settings``, the admin's DNS records, forwarded zones
and nameservers (:mod:`wire.server.dnsbook`): one row, the version in force.
Older databases gain the empty table when opened.

Schema 7 adds routes beyond the mesh (:mod:`wire.protocol.routes`): the
networks a node advertises (``nodes.advertised_routes``) and those approved
for it (``nodes.approved_routes``), space-separated. Older databases gain
the columns, empty, when opened.

Schema 8 adds IPv6 mesh addresses: ``nodes.vpn_ip6`` (unique when set),
and the mesh's IPv6 prefix kept in ``meta`` under ``subnet6``
(:mod:`wire.server.meshprefix`). Older databases gain the column, empty,
when opened; their nodes get addresses as the registry loads them.

Schema 9 adds a node's own IPv6 underlay address (``nodes.public_ip6``,
"" for none), where peers with IPv6 reach it directly, and
``pair_paths.family`` (4: the pair's direct word is over IPv4 only, as
IPv6 failed). Older databases gain the columns when opened.

Schema 10 adds the cluster's change stream (issue 19, :mod:`wire.server.cluster`):
``cluster``, one row holding the serial of the mesh's latest change, and
``changes`` (serial, kind, subject, origin), one row per change peers must
learn, appended in the transaction that makes it. Serials are taken under
the ``cluster`` row's lock (``UPDATE ... RETURNING``), so the order in which
changes commit is their serial order: a replica that has read serial N has
every change below it. The mesh's epoch (of ``EPOCH:SERIAL`` cursors) is
drawn once, in ``meta``. Older databases gain the tables when opened.

Schema 11 adds ``node_reports``, each node's latest report of how it
reaches its peers (:mod:`wire.server.reports`), for the admin's view of the
mesh: one row per node, written in batches. Older databases gain the empty
table when opened.

Schema 12 adds ``replicas`` (:mod:`wire.server.replicas`): each replica on
one database, where it answers and relays; which of them are alive is what
PostgreSQL's advisory locks say, not this table. Older databases gain the
empty table when opened.

Schema 13 adds admin API keys (issue 20, :mod:`wire.server.apikeys`):
``api_keys``, one row per key (its secret's hash, never the secret), and
``audit.actor``, who made each change ("admin" over the socket,
"apikey:ID" over /api/v1, "" the server itself). Older databases gain the
table and the column ("" for their old entries) when opened.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol, Sequence, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from wire.protocol import PathMode
from wire.server.dbthread import DatabaseThread
from wire.server.model import RECORD_FIELDS, NodeRecord, PairWord

SCHEMA_VERSION = 13

# SQLite's dialect; wire.server.pgstore translates the few types that differ.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    node_name TEXT NOT NULL,
    wg_public_key TEXT NOT NULL UNIQUE,
    vpn_ip TEXT NOT NULL UNIQUE,
    public_ip TEXT NOT NULL,
    port INTEGER NOT NULL,
    nat_port INTEGER NOT NULL,
    lan_ip TEXT NOT NULL,
    nat_type TEXT NOT NULL,
    registered REAL NOT NULL,
    last_seen REAL NOT NULL,
    tags TEXT NOT NULL DEFAULT '',
    advertised_routes TEXT NOT NULL DEFAULT '',
    approved_routes TEXT NOT NULL DEFAULT '',
    vpn_ip6 TEXT NOT NULL DEFAULT '',
    public_ip6 TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS join_keys (
    key_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    reusable INTEGER NOT NULL,
    uses INTEGER NOT NULL,
    revoked INTEGER NOT NULL,
    note TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '',
    ephemeral_after REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS credentials (
    credential_hash TEXT PRIMARY KEY,
    node_id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    key_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pair_paths (
    lo TEXT NOT NULL,
    hi TEXT NOT NULL,
    mode TEXT NOT NULL,
    reason TEXT NOT NULL,
    since REAL NOT NULL,
    tries INTEGER NOT NULL,
    retry_at REAL,
    family INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (lo, hi)
);
CREATE TABLE IF NOT EXISTS policies (
    version INTEGER PRIMARY KEY,
    text TEXT,
    set_at REAL NOT NULL,
    source TEXT NOT NULL
);
-- The admin's DNS settings (wire.server.dnsbook): one row, the version in force.
CREATE TABLE IF NOT EXISTS dns_settings (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    settings TEXT NOT NULL,
    set_at REAL NOT NULL
);
-- The cluster's change stream (schema 10): the latest serial, and one row per change.
CREATE TABLE IF NOT EXISTS cluster (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    serial BIGINT NOT NULL
);
INSERT INTO cluster (id, serial) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS changes (
    serial BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    origin TEXT NOT NULL
);
-- Each node's latest report of its paths (schema 11, wire.server.reports).
CREATE TABLE IF NOT EXISTS node_reports (
    node_id TEXT PRIMARY KEY,
    reported_at REAL NOT NULL,
    peers TEXT NOT NULL
);
-- The replicas on one database (schema 12, wire.server.replicas): where each
-- relays; which of them live is what PostgreSQL's advisory locks say.
CREATE TABLE IF NOT EXISTS replicas (
    name TEXT PRIMARY KEY,
    api_url TEXT NOT NULL,
    relay_host TEXT NOT NULL,
    relay_port INTEGER NOT NULL,
    started REAL NOT NULL,
    seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    actor TEXT NOT NULL DEFAULT ''
);
-- Admin API keys (schema 13, wire.server.apikeys): the secret's SHA-256, never the secret.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    read_only INTEGER NOT NULL,
    revoked INTEGER NOT NULL,
    last_used REAL NOT NULL DEFAULT 0
);
"""


T = TypeVar("T")
Row = tuple
# One statement and the parameters of each time it runs (executemany).
Statement = tuple[str, list[tuple]]
# A change for the cluster's stream: (kind, subject), e.g. ("online", node_id).
Change = tuple[str, str]


class StoreError(Exception):
    """The registry database cannot be used; the message says why and what to do."""


class StoreConflict(StoreError):
    """The database refused a write as breaking one of its rules (a one-time
    join key used twice, an address taken): another replica got there first.
    ``column``: the unique column it was on ("nodes.vpn_ip"), "" when the
    database did not say."""

    def __init__(self, message: str, column: str = ""):
        super().__init__(message)
        self.column = column


STOPPING = "the server is stopping"


class IStore(Interface):
    """The server's durable state. Loading at startup blocks (``load``,
    ``load_pairs``, ``read_now``, ``write_pending``: before the reactor
    serves); everything else returns a Deferred and never blocks the
    reactor thread. A Deferred fires once its change is committed (it
    survives ``kill -9``), or errbacks with StoreError."""

    where = Attribute("Where the data lives, for messages (a path, or a URL without its password)")

    def load() -> list[NodeRecord]:
        """Every stored node (startup: blocks)."""

    def load_pairs() -> list[tuple[str, str, PairWord]]:
        """Every stored pair word, as (lo, hi, word) (startup: blocks)."""

    def read_now(sql: str, parameters: tuple = ()) -> list[tuple]:
        """Rows of a query (startup: blocks); ``?`` placeholders."""

    def query(sql: str, parameters: tuple = ()) -> Deferred:
        """Rows of a query, later; ``?`` placeholders."""

    def put(record: NodeRecord) -> None:
        """Queue ``record`` to be written (as it is at commit time)."""

    def delete(node_id: str) -> None:
        """Queue the removal of a node."""

    def discard(node_id: str) -> None:
        """Forget a queued write of this node (it was refused and undone)."""

    def touch(node_id: str, last_seen: float) -> None:
        """Note a heartbeat; written lazily (flush_touches)."""

    def put_pair(lo: str, hi: str, word: PairWord | None) -> None:
        """Queue a pair's word to be written (None: deleted), with the next commit."""

    def put_meta(key: str, value: str) -> None:
        """Queue a value the server keeps about itself (``meta``), with the next commit."""

    def read_meta(key: str) -> str | None:
        """A value kept in ``meta``, or None (startup: blocks)."""

    def note_change(kind: str, subject: str) -> None:
        """Queue a change for the cluster's stream (a replica's, wire.server.cluster):
        given its serial in the next transaction, committed soon."""

    def is_pending(node_id: str) -> bool:
        """Whether a write of this node is queued, or under way, and not yet committed."""

    def commit() -> Deferred:
        """Fire once everything queued so far is durably written; the
        commits asked for in one reactor turn share one transaction."""

    def write_pending() -> None:
        """Write everything queued now (startup: blocks); StoreError."""

    def transaction(writes: Writes) -> Deferred:
        """Run ``writes`` in one transaction of their own (keys, enrollment, audit).
        The records (and node deletes) it writes leave the group commits' queue
        now: refused, they are never written by another commit (the caller undoes them)."""

    def flush_touches() -> Deferred:
        """Write batched heartbeats; a failure is logged and they are kept for the next try."""

    def serve() -> None:
        """The reactor runs: calls stop waiting for the database from now on."""

    def close() -> Deferred:
        """Write what is pending (once the commit under way is done), then
        close; every later call fails with StoreError("the server is stopping")."""


class Writes:
    """The statements of one transaction, collected on the reactor thread
    (values as they are now) and run together on the database's."""

    def __init__(self) -> None:
        self.statements: list[Statement] = []
        # Records written here, as written: no longer pending once committed.
        self.records: list[tuple[NodeRecord, Row]] = []
        # Nodes deleted here (their queued delete is this transaction's).
        self.removed: list[str] = []
        # Changes for the cluster's stream, given serials in this transaction.
        self.changes: list[Change] = []

    def execute(self, sql: str, parameters: Sequence = ()) -> None:
        self.statements.append((sql, [tuple(parameters)]))

    def change(self, kind: str, subject: str) -> None:
        self.changes.append((kind, subject))

    def put_record(self, record: NodeRecord) -> None:
        row = _row(record)
        self.statements.extend(_node_statements([record.node_id], [row]))
        self.records.append((record, row))

    def remove_node(self, node_id: str) -> None:
        self.statements.append(("DELETE FROM nodes WHERE node_id = ?", [(node_id,)]))
        self.statements.append(("DELETE FROM node_reports WHERE node_id = ?", [(node_id,)]))
        self.removed.append(node_id)


class Engine(Protocol):
    """What differs between SQLite and PostgreSQL; every method but the
    attributes runs on the database thread."""

    where: str  # for messages: a path, or a URL without its password
    errors: tuple[type[Exception], ...]
    conflicts: tuple[type[Exception], ...]  # among errors: a rule of the schema refused the write

    def connect(self) -> Any:
        """Open, check and migrate; StoreError saying what is wrong."""

    def usable(self, connection: Any) -> bool:
        """False: the connection was lost (it is opened again)."""

    def transaction(self, connection: Any) -> AbstractContextManager:
        """Commit on success, roll back on an exception."""

    def execute(self, connection: Any, sql: str, rows: list[tuple]) -> None:
        """Run ``sql`` (``?`` placeholders) once per row, inside a transaction."""

    def select(self, connection: Any, sql: str, parameters: tuple) -> list[tuple]:
        """Rows of a query, outside any write transaction."""

    def fetch(self, connection: Any, sql: str, parameters: tuple) -> list[tuple]:
        """Rows of a statement run inside a transaction (``UPDATE ... RETURNING``)."""

    def notify(self, connection: Any) -> None:
        """Inside a transaction that appended changes: wake the other replicas at commit."""

    def conflicting_column(self, error: Exception) -> str:
        """The unique column a ``conflicts`` error was on ("nodes.vpn_ip"), or ""."""

    def close(self, connection: Any) -> None: ...


def upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE``: one text that SQLite and PostgreSQL both run."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_PAIR_COLUMNS = ("lo", "hi", "mode", "reason", "since", "tries", "retry_at", "family")
_INSERT_NODE = f"INSERT INTO nodes ({', '.join(RECORD_FIELDS)}) VALUES ({', '.join('?' for _ in RECORD_FIELDS)})"
_UPSERT_PAIR = upsert("pair_paths", _PAIR_COLUMNS, ("lo", "hi"))
_UPSERT_META = upsert("meta", ("key", "value"), ("key",))
# The change stream's tables (schema 10): each database's own, never copied into another.
STREAM_TABLES = ("cluster", "changes")
_TAKE_SERIALS = "UPDATE cluster SET serial = serial + ? WHERE id = 1 RETURNING serial"
_CLUSTER_SERIAL = "SELECT serial FROM cluster WHERE id = 1"
_INSERT_CHANGE = "INSERT INTO changes (serial, kind, subject, origin) VALUES (?, ?, ?, ?)"


def _node_statements(node_ids: list[str], rows: list[Row]) -> list[Statement]:
    # Every changed node's row goes, then the new ones come: a node may take
    # an address or key another one of the batch gave up (UNIQUE columns).
    return [("DELETE FROM nodes WHERE node_id = ?", [(i,) for i in node_ids]), (_INSERT_NODE, rows)]


@implementer(IStore)
class SQLStore:
    """The registry's durable side over an :class:`Engine`: queued writes,
    group commit, batched heartbeats, on one database thread."""

    log = Logger()

    def __init__(self, engine: Engine, reactor: IReactorTime):
        self._engine = engine
        self.engine = engine  # a replica's session (wire.server.cluster) opens its own connection through it
        self.where = engine.where
        self._reactor = reactor
        self._thread = DatabaseThread(reactor)
        self._dirty: dict[str, NodeRecord | None] = {}
        self._dirty_pairs: dict[tuple[str, str], PairWord | None] = {}
        self._dirty_meta: dict[str, str] = {}
        self._touched: dict[str, float] = {}
        self._notes: list[Change] = []
        # Whether changes go to the stream (replicas, wire.server.cluster): one
        # server alone keeps none. Who wrote a change (a replica's run); heard after each commit of changes.
        self.streaming = False
        self.origin = ""
        self.committed_changes: list[Callable[[], None]] = []
        self._waiting: list[Deferred] = []
        self._commit_call: IDelayedCall | None = None
        self._committing = False
        # Fires when the group commit under way has told its waiters (close waits for it).
        self._commit_done: list[Deferred] = []
        # Records (None: a delete) a transaction of its own is writing, by node id:
        # out of the group commits' queue, still pending (is_pending).
        self._in_transaction: dict[str, list[NodeRecord | None]] = {}
        self._closed = False
        try:
            self._connection: Any = self._thread.run_blocking(engine.connect)
        except BaseException:
            self._thread.stop()
            raise

    # -- on the database thread -------------------------------------------

    def _connected(self) -> Any:
        if self._connection is None or not self._engine.usable(self._connection):
            self._connection = None
            self._connection = self._engine.connect()
        return self._connection

    def _write(self, statements: list[Statement], changes: Sequence[Change] = ()) -> None:
        try:
            connection = self._connected()
            with self._engine.transaction(connection):
                for sql, rows in statements:
                    if rows:
                        self._engine.execute(connection, sql, rows)
                if changes:
                    self._append_changes(connection, changes)
        except self._engine.errors as e:
            message = f"the registry could not be saved: {' '.join(str(e).split())}"
            if isinstance(e, self._engine.conflicts):
                raise StoreConflict(message, self._engine.conflicting_column(e)) from e
            raise StoreError(message) from e

    def _append_changes(self, connection: Any, changes: Sequence[Change]) -> None:
        # The cluster row stays locked until this transaction ends: the next
        # one to take serials waits, so serials commit in their order.
        (top,), = self._engine.fetch(connection, _TAKE_SERIALS, (len(changes),))
        first = top - len(changes) + 1
        rows = [(first + i, kind, subject, self.origin) for i, (kind, subject) in enumerate(changes)]
        self._engine.execute(connection, _INSERT_CHANGE, rows)
        self._engine.notify(connection)

    def _select(self, sql: str, parameters: tuple) -> list[tuple]:
        try:
            return self._engine.select(self._connected(), sql, parameters)
        except self._engine.errors as e:
            raise StoreError(f"cannot read {self.where}: {' '.join(str(e).split())}") from e

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._engine.close(self._connection)
            self._connection = None

    # -- startup (blocking) -----------------------------------------------

    def read_now(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        return self._thread.run_blocking(self._select, sql, parameters)

    def load(self) -> list[NodeRecord]:
        try:
            rows = self.read_now(f"SELECT {', '.join(RECORD_FIELDS)} FROM nodes")
        except StoreError as e:
            raise StoreError(f"cannot read nodes from {self.where}: {e.__cause__}") from e
        return [NodeRecord(*row) for row in rows]

    def load_pairs(self) -> list[tuple[str, str, PairWord]]:
        try:
            rows = self.read_now(f"SELECT {', '.join(_PAIR_COLUMNS)} FROM pair_paths")
        except StoreError as e:
            raise StoreError(f"cannot read pair paths from {self.where}: {e.__cause__}") from e
        words = []
        for lo, hi, mode, reason, since, tries, retry_at, family in rows:
            try:
                words.append((lo, hi, PairWord(PathMode(mode), reason, since, tries, retry_at, 4 if family == 4 else 0)))
            except ValueError:
                # A mode this version does not know: the pair goes back to the rule.
                self.log.warn("pair {lo} {hi}: unknown path mode {mode!r} dropped", lo=lo, hi=hi, mode=mode)
        return words

    def read_meta(self, key: str) -> str | None:
        rows = self.read_now("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def draw_meta(self, key: str, value: str) -> str:
        """The value kept under ``key``, ``value`` if none was (startup: blocks):
        the first of several replicas starting together draws it for all."""
        statement = ("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", [(key, value)])
        self._thread.run_blocking(self._write, [statement])
        kept = self.read_meta(key)
        assert kept is not None
        return kept

    def cluster_serial(self) -> int:
        """The serial of the mesh's latest committed change (startup: blocks)."""
        return int(self.read_now(_CLUSTER_SERIAL)[0][0])

    def write_pending(self) -> None:
        """Write every queued change now, in one transaction (blocks)."""
        statements, written = self._pending()
        if statements:
            try:
                self._thread.run_blocking(self._write, statements)
            except StoreError as e:
                self._write_failed(e)
                raise
            self._written(written)

    def serve(self) -> None:
        self._thread.serve()

    # -- queued writes ----------------------------------------------------

    def put(self, record: NodeRecord) -> None:
        self._dirty[record.node_id] = record
        self._touched.pop(record.node_id, None)

    def delete(self, node_id: str) -> None:
        self._dirty[node_id] = None
        self._touched.pop(node_id, None)

    def discard(self, node_id: str) -> None:
        self._dirty.pop(node_id, None)

    def is_pending(self, node_id: str) -> bool:
        return node_id in self._dirty or node_id in self._in_transaction

    def has_notes(self) -> bool:
        """Whether changes wait for a commit (one failed: they are tried again)."""
        return bool(self._notes)

    def note_change(self, kind: str, subject: str) -> None:
        if not self.streaming:
            return
        self._notes.append((kind, subject))
        if not self._closed:
            # Nobody may wait on it (a node back online): it still goes out now,
            # with this turn's group commit (or the one after the one under way).
            self.commit().addErrback(lambda _: None)  # a failure is logged; the change stays queued

    def touch(self, node_id: str, last_seen: float) -> None:
        if node_id not in self._dirty:
            self._touched[node_id] = last_seen

    def put_pair(self, lo: str, hi: str, word: PairWord | None) -> None:
        self._dirty_pairs[(lo, hi)] = word

    def put_meta(self, key: str, value: str) -> None:
        self._dirty_meta[key] = value

    def commit(self) -> Deferred:
        if self._closed:
            return fail(StoreError(STOPPING))
        done: Deferred = Deferred()
        self._waiting.append(done)
        if self._commit_call is None and not self._committing:
            # Everything queued in this reactor turn shares one transaction.
            self._commit_call = self._reactor.callLater(0, self._commit_now)
        return done

    def _commit_now(self) -> Deferred:
        self._commit_call = None
        waiting, self._waiting = self._waiting, []
        statements, written = self._pending()
        # One group commit at a time: the next one is cut only once this one's
        # waiters have heard, so a change refused (and undone) is never written by it.
        self._committing = True
        notes, self._notes = self._notes, []
        write = statements or notes
        d = self._logged(self._run_write(statements, notes)) if write else succeed(None)

        def committed(_: object) -> None:
            self._written(written)
            if notes:
                self._heard_changes()
            for w in waiting:
                w.callback(None)

        def failed(failure: Failure) -> None:
            self._notes[:0] = notes  # kept for the next commit, before those queued since
            for w in waiting:
                w.errback(failure)

        def next_one(_: object) -> None:
            self._committing = False
            done, self._commit_done = self._commit_done, []
            for d in done:
                d.callback(None)
            if self._waiting and self._commit_call is None and not self._closed:
                self._commit_call = self._reactor.callLater(0, self._commit_now)

        return d.addCallbacks(committed, failed).addBoth(next_one)

    def _logged(self, written: Deferred) -> Deferred:
        """A write's failure in the log too (here, on the reactor thread), and still the caller's."""

        def failed(failure: Failure) -> Failure:
            # A conflict (another replica was first) is its caller's to tell: most are expected and handled.
            if failure.check(StoreError) and not failure.check(StoreConflict):
                self._write_failed(failure.value)
            return failure

        return written.addErrback(failed)

    def _write_failed(self, error: BaseException) -> None:
        self.log.error("registry write to {where} failed: {error}", where=self.where, error=error.__cause__ or error)

    def _pending(self) -> tuple[list[Statement], tuple]:
        """The queued changes as statements, with what they write (values as they are now)."""
        nodes = [(node_id, r, None if r is None else _row(r)) for node_id, r in self._dirty.items()]
        pairs = dict(self._dirty_pairs)
        meta = dict(self._dirty_meta)
        if not nodes and not pairs and not meta:
            return [], ()
        statements = _node_statements([n[0] for n in nodes], [row for _, _, row in nodes if row is not None])
        statements += [
            ("DELETE FROM pair_paths WHERE lo = ? AND hi = ?", [key for key, w in pairs.items() if w is None]),
            (_UPSERT_PAIR, [(*key, str(w.mode), w.reason, w.since, w.tries, w.retry_at, w.family) for key, w in pairs.items() if w is not None]),
            (_UPSERT_META, list(meta.items())),
        ]
        return statements, (nodes, pairs, meta)

    def _written(self, written: tuple) -> None:
        """Only what was written is clean; a record changed since stays dirty."""
        if not written:
            return
        nodes, pairs, meta = written
        for node_id, record, row in nodes:
            self._forget_written(node_id, record, row)
        for key, word in pairs.items():
            if self._dirty_pairs.get(key, self) is word:
                del self._dirty_pairs[key]
        for key, value in meta.items():
            if self._dirty_meta.get(key) == value:
                del self._dirty_meta[key]

    def _forget_written(self, node_id: str, record: NodeRecord | None, row: Row | None) -> None:
        if node_id in self._dirty and self._dirty[node_id] is record and (record is None or _row(record) == row):
            del self._dirty[node_id]

    # -- transactions of their own, reads, heartbeats -------------------------

    def transaction(self, writes: Writes) -> Deferred:
        if self._closed:
            return fail(StoreError(STOPPING))
        # The changes queued so far (the enrolled node's) commit with the
        # rows they name: never a change before its row, nor a row without one.
        notes, self._notes = self._notes, []
        changes = notes + writes.changes if self.streaming else []
        # What it writes is its own from now on: a group commit cut meanwhile
        # must not write it (refused, the caller undoes it; a record changed
        # again since is queued again by its put).
        taken = [(r.node_id, r) for r, _ in writes.records] + [(node_id, None) for node_id in writes.removed]
        for node_id, record in taken:
            if node_id in self._dirty and self._dirty[node_id] is record:
                del self._dirty[node_id]
            self._in_transaction.setdefault(node_id, []).append(record)

        def released(result: T) -> T:
            for node_id, record in taken:
                left = self._in_transaction[node_id]
                left.remove(record)
                if not left:
                    del self._in_transaction[node_id]
            return result

        def committed(_: object) -> None:
            if changes:
                self._heard_changes()

        def failed(failure: Failure) -> Failure:
            self._notes[:0] = notes  # for the next commit
            return failure

        d = self._logged(self._run_write(writes.statements, changes))
        return d.addBoth(released).addCallbacks(committed, failed)

    def _run_write(self, statements: list[Statement], changes: list[Change]) -> Deferred:
        # A write without changes for the stream is the plain call it always was.
        return self._thread.run(self._write, statements, changes) if changes else self._thread.run(self._write, statements)

    def _heard_changes(self) -> None:
        for listener in self.committed_changes:
            listener()

    def query(self, sql: str, parameters: tuple = ()) -> Deferred:
        if self._closed:
            return fail(StoreError(STOPPING))
        return self._thread.run(self._select, sql, parameters)

    def query_write(self, sql: str, parameters: tuple = ()) -> Deferred:
        """One statement in a transaction of its own, with no change for the stream (housekeeping)."""
        if self._closed:
            return fail(StoreError(STOPPING))
        return self._logged(self._thread.run(self._write, [(sql, [parameters])]))

    def flush_touches(self) -> Deferred:
        if self._closed:
            return fail(StoreError(STOPPING))
        return self._flush_touches()

    def _flush_touches(self) -> Deferred:
        touched, self._touched = self._touched, {}
        if not touched:
            return succeed(None)
        rows = [(seen, node_id) for node_id, seen in touched.items()]

        def failed(failure: Failure) -> None:
            failure.trap(StoreError)
            self.log.error("saving heartbeat times to {where} failed: {error}", where=self.where, error=failure.value)
            # Kept for the next try, without overwriting newer ones.
            for node_id, seen in touched.items():
                self._touched.setdefault(node_id, seen)

        return self._thread.run(self._write, [("UPDATE nodes SET last_seen = ? WHERE node_id = ?", rows)]).addErrback(failed)

    def close(self) -> Deferred:
        if self._closed:
            return succeed(None)
        self._closed = True
        if self._commit_call is not None and self._commit_call.active():
            self._commit_call.cancel()
        self._commit_call = None
        # The commit under way first: what it carries is still queued, and
        # must not be written by the last one if it is refused (and undone).
        d: Deferred = succeed(None)
        if self._committing:
            d = Deferred()
            self._commit_done.append(d)
        d.addCallback(lambda _: self._commit_now())
        d.addErrback(lambda _: None)  # said in the log; the waiters had it
        d.addCallback(lambda _: self._flush_touches())
        d.addCallback(lambda _: self._thread.run(self._close_connection))
        d.addBoth(self._stopped)
        return d

    def _stopped(self, result: T) -> T:
        self._thread.stop()  # its queue is empty by now
        return result


# Kept space-separated (NodeRecord reads them back).
_SPACE_SEPARATED = ("tags", "advertised_routes", "approved_routes")


def _row(record: NodeRecord) -> Row:
    return tuple(" ".join(getattr(record, name)) if name in _SPACE_SEPARATED else getattr(record, name) for name in RECORD_FIELDS)


def secure_data_dir(data_dir: str) -> None:
    """The data dir holds the registry, credentials' hashes and the admin
    socket: 0700, made so, and tightened (with a warning) if it is looser."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    mode = os.stat(data_dir).st_mode & 0o777
    if mode & 0o077:
        os.chmod(data_dir, 0o700)
        Logger().warn("data dir {dir} was mode {mode:o}; now 0700", dir=data_dir, mode=mode)


def open_store(data_dir: str, reactor: IReactorTime, database: str | None = None, password: str | None = None) -> SQLStore:
    """``database`` None: SQLite in the data dir; else a PostgreSQL URL
    (``password``: from --database-password-file)."""
    # Imported here: each engine imports this module, and psycopg only when used.
    if database is not None:
        from wire.server.pgstore import PostgresEngine

        return SQLStore(PostgresEngine(database, password), reactor)
    from wire.server.sqlitestore import SQLiteEngine

    secure_data_dir(data_dir)
    return SQLStore(SQLiteEngine(os.path.join(data_dir, "registry.sqlite3")), reactor)
