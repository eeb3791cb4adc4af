"""Durable registry storage in SQLite, with group commit.

What the server acknowledges must survive ``kill -9``: a registration that
changed a node is answered only after its transaction is committed
(WAL, synchronous=FULL). Many such writes arriving in the same reactor turn
share one transaction. Heartbeats that change nothing but ``last_seen`` are
not worth an fsync each: they are batched and written every few seconds
(losing a few seconds of "last seen" in a crash is harmless), and never
rewrite anything but their own row.

A database that cannot be read stops the server with a clear error and is
left exactly as it was: the server never "repairs" by wiping.

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
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from wire.protocol import PathMode
from wire.server.model import RECORD_FIELDS, NodeRecord, PairWord

SCHEMA_VERSION = 9

_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


class StoreError(Exception):
    """The registry database cannot be used; the message says why and what to do."""


class IStore(Interface):
    def load() -> list[NodeRecord]:
        """Every stored node."""

    def put(record: NodeRecord) -> None:
        """Queue ``record`` to be written (as it is at commit time)."""

    def delete(node_id: str) -> None:
        """Queue the removal of a node."""

    def discard(node_id: str) -> None:
        """Forget a queued write of this node (it was refused and undone)."""

    def touch(node_id: str, last_seen: float) -> None:
        """Note a heartbeat; written lazily."""

    def load_pairs() -> list[tuple[str, str, PairWord]]:
        """Every stored pair word, as (lo, hi, word)."""

    def put_pair(lo: str, hi: str, word: PairWord | None) -> None:
        """Queue a pair's word to be written (None: deleted), with the next commit."""

    def commit() -> Deferred:
        """Fire once everything queued so far is durably written."""

    def write_pending() -> None:
        """Write everything queued now (startup, shutdown)."""

    def flush_touches() -> None:
        """Write batched heartbeats now."""

    def transaction() -> AbstractContextManager[sqlite3.Connection]:
        """One synchronous, durable transaction (rare writes: keys, enrollment, audit)."""

    def write_record_now(db: sqlite3.Connection, record: NodeRecord) -> None:
        """Write a node inside :meth:`transaction`; it is no longer pending."""

    def close() -> None:
        """Write what is pending and close."""

    def read_meta(key: str) -> str | None:
        """A value the server keeps about itself (``meta``), or None."""

    def write_meta(key: str, value: str) -> None:
        """Keep ``value`` under ``key``, durably, now."""


@implementer(IStore)
class SQLiteStore:
    log = Logger()

    def __init__(self, path: str, reactor: IReactorTime):
        self.path = path
        self._reactor = reactor
        self._db = _open(path)
        self._dirty: dict[str, NodeRecord | None] = {}
        self._dirty_pairs: dict[tuple[str, str], PairWord | None] = {}
        self._touched: dict[str, float] = {}
        self._waiting: list[Deferred] = []
        self._commit_call: IDelayedCall | None = None
        self._closed = False

    def load(self) -> list[NodeRecord]:
        try:
            rows = self._db.execute(f"SELECT {', '.join(RECORD_FIELDS)} FROM nodes").fetchall()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot read nodes from {self.path}: {e}") from e
        return [NodeRecord(*row) for row in rows]

    def load_pairs(self) -> list[tuple[str, str, PairWord]]:
        try:
            rows = self._db.execute("SELECT lo, hi, mode, reason, since, tries, retry_at, family FROM pair_paths").fetchall()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot read pair paths from {self.path}: {e}") from e
        words = []
        for lo, hi, mode, reason, since, tries, retry_at, family in rows:
            try:
                words.append((lo, hi, PairWord(PathMode(mode), reason, since, tries, retry_at, 4 if family == 4 else 0)))
            except ValueError:
                # A mode this version does not know: the pair goes back to the rule.
                self.log.warn("pair {lo} {hi}: unknown path mode {mode!r} dropped", lo=lo, hi=hi, mode=mode)
        return words

    def put_pair(self, lo: str, hi: str, word: PairWord | None) -> None:
        self._dirty_pairs[(lo, hi)] = word

    def put(self, record: NodeRecord) -> None:
        self._dirty[record.node_id] = record
        self._touched.pop(record.node_id, None)

    def delete(self, node_id: str) -> None:
        self._dirty[node_id] = None
        self._touched.pop(node_id, None)

    def discard(self, node_id: str) -> None:
        self._dirty.pop(node_id, None)

    def touch(self, node_id: str, last_seen: float) -> None:
        if node_id not in self._dirty:
            self._touched[node_id] = last_seen

    def commit(self) -> Deferred:
        done: Deferred = Deferred()
        self._waiting.append(done)
        if self._commit_call is None:
            # Everything queued in this reactor turn shares one transaction.
            self._commit_call = self._reactor.callLater(0, self._commit_now)
        return done

    def _commit_now(self) -> None:
        self._commit_call = None
        waiting, self._waiting = self._waiting, []
        try:
            self.write_pending()
        except StoreError as e:
            for d in waiting:
                d.errback(e)
            return
        for d in waiting:
            d.callback(None)

    def write_pending(self) -> None:
        """Write every queued change now, in one transaction."""
        try:
            self._write_dirty()
        except sqlite3.Error as e:
            self.log.error("registry write to {path} failed: {error}", path=self.path, error=e)
            raise StoreError(f"the registry could not be saved: {e}") from e

    def _write_dirty(self) -> None:
        dirty = dict(self._dirty)
        pairs = dict(self._dirty_pairs)
        if not dirty and not pairs:
            return
        upserts = [_row(r) for r in dirty.values() if r is not None]
        deletes = [(node_id,) for node_id, r in dirty.items() if r is None]
        placeholders = ", ".join("?" for _ in RECORD_FIELDS)
        with self._db:
            # Deletes first: a re-registered node may reuse a freed address or key.
            self._db.executemany("DELETE FROM nodes WHERE node_id = ?", deletes)
            self._db.executemany(
                f"INSERT OR REPLACE INTO nodes ({', '.join(RECORD_FIELDS)}) VALUES ({placeholders})",
                upserts,
            )
            self._db.executemany(
                "DELETE FROM pair_paths WHERE lo = ? AND hi = ?", [key for key, w in pairs.items() if w is None]
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO pair_paths (lo, hi, mode, reason, since, tries, retry_at, family) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(*key, str(w.mode), w.reason, w.since, w.tries, w.retry_at, w.family) for key, w in pairs.items() if w is not None],
            )
        # Only what was written is clean; a record changed since stays dirty.
        for node_id, record in dirty.items():
            if self._dirty.get(node_id) is record:
                del self._dirty[node_id]
        for key, word in pairs.items():
            if self._dirty_pairs.get(key, self) is word:
                del self._dirty_pairs[key]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One synchronous, durable transaction (rare writes: keys, enrollment, audit)."""
        try:
            with self._db:
                yield self._db
        except sqlite3.Error as e:
            self.log.error("registry write to {path} failed: {error}", path=self.path, error=e)
            raise StoreError(f"the registry could not be saved: {e}") from e

    def write_record_now(self, db: sqlite3.Connection, record: NodeRecord) -> None:
        """Write a node inside :meth:`transaction`; it is no longer pending."""
        placeholders = ", ".join("?" for _ in RECORD_FIELDS)
        db.execute(f"INSERT OR REPLACE INTO nodes ({', '.join(RECORD_FIELDS)}) VALUES ({placeholders})", _row(record))
        if self._dirty.get(record.node_id) is record:
            del self._dirty[record.node_id]

    def query(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, parameters).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {self.path}: {e}") from e

    def read_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def write_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def flush_touches(self) -> None:
        touched, self._touched = self._touched, {}
        if not touched:
            return
        try:
            with self._db:
                self._db.executemany(
                    "UPDATE nodes SET last_seen = ? WHERE node_id = ?",
                    [(seen, node_id) for node_id, seen in touched.items()],
                )
        except sqlite3.Error as e:
            self.log.error("saving heartbeat times to {path} failed: {error}", path=self.path, error=e)
            # Keep them for the next try, without overwriting newer ones.
            for node_id, seen in touched.items():
                self._touched.setdefault(node_id, seen)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._commit_call is not None and self._commit_call.active():
            self._commit_call.cancel()
        self._commit_now()
        self.flush_touches()
        self._db.close()


# Kept space-separated (NodeRecord reads them back).
_SPACE_SEPARATED = ("tags", "advertised_routes", "approved_routes")


def _row(record: NodeRecord) -> tuple:
    return tuple(" ".join(getattr(record, name)) if name in _SPACE_SEPARATED else getattr(record, name) for name in RECORD_FIELDS)


# Columns later schemas added to tables an older database already has.
_ADDED_COLUMNS = {
    "nodes": (
        ("tags", "TEXT NOT NULL DEFAULT ''"),
        ("advertised_routes", "TEXT NOT NULL DEFAULT ''"),
        ("approved_routes", "TEXT NOT NULL DEFAULT ''"),
        ("vpn_ip6", "TEXT NOT NULL DEFAULT ''"),
        ("public_ip6", "TEXT NOT NULL DEFAULT ''"),
    ),
    "pair_paths": (("family", "INTEGER NOT NULL DEFAULT 0"),),
    "join_keys": (("tags", "TEXT NOT NULL DEFAULT ''"), ("ephemeral_after", "REAL NOT NULL DEFAULT 0")),
}


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns:
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
    # As vpn_ip is UNIQUE; partial, since nodes wait without one ("") until loaded.
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS nodes_vpn_ip6 ON nodes (vpn_ip6) WHERE vpn_ip6 != ''")


def secure_data_dir(data_dir: str) -> None:
    """The data dir holds the registry, credentials' hashes and the admin
    socket: 0700, made so, and tightened (with a warning) if it is looser."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    mode = os.stat(data_dir).st_mode & 0o777
    if mode & 0o077:
        os.chmod(data_dir, 0o700)
        Logger().warn("data dir {dir} was mode {mode:o}; now 0700", dir=data_dir, mode=mode)


def _owner_only(path: str) -> None:
    """The database and SQLite's WAL and SHM files beside it: 0600 (the WAL
    holds recent writes in full)."""
    for name in (path, path + "-wal", path + "-shm"):
        try:
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            pass


def _open(path: str) -> sqlite3.Connection:
    """Open (or create) the database, refusing anything that is not ours."""
    exists = os.path.exists(path)
    if exists and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{path} exists but is not readable and writable by this user")
    if exists and os.path.getsize(path) == 0:
        # wire never leaves an empty file: starting from it would start an
        # empty registry, and every node's credential would stop working.
        raise StoreError(
            f"{path} is empty (0 bytes), which wire never writes; the file was left untouched: "
            "restore it from a backup, or move it aside to start with an empty registry"
        )
    try:
        # mode=rw never creates: a file that vanished is an error, not a fresh start.
        uri = f"file:{_uri_path(path)}?mode={'rw' if exists else 'rwc'}"
        db = sqlite3.connect(uri, uri=True)
        # A read first: on a corrupt file this fails before anything is written.
        db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise StoreError(f"{path} failed its integrity check ({check[0] if check else 'no answer'})")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if exists and not tables:
            raise StoreError(
                f"{path} is an SQLite database without a single table, not a wire registry; the file was left "
                "untouched: restore it from a backup, or move it aside to start with an empty registry"
            )
        if exists and tables and "nodes" not in tables:
            raise StoreError(f"{path} is an SQLite database, but not a wire registry (no 'nodes' table)")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} was written by a newer wire (schema {version}; this one knows {SCHEMA_VERSION})"
            )
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(_SCHEMA)
        with db:
            _add_missing_columns(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except StoreError:
        raise
    except sqlite3.Error as e:
        raise StoreError(
            f"cannot use the registry database {path}: {e}. The file was left untouched; "
            "restore it from a backup or move it aside to start with an empty registry"
        ) from e
    _owner_only(path)
    return db


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def open_store(data_dir: str, reactor: IReactorTime) -> SQLiteStore:
    secure_data_dir(data_dir)
    return SQLiteStore(os.path.join(data_dir, "registry.sqlite3"), reactor)
