"""The SQLite engine of the store (wire.server.store): one file in the data
dir, the default for a single server. Its connection is opened, checked and
used on the store's database thread only."""

from __future__ import annotations

import os
import sqlite3
from contextlib import AbstractContextManager
from urllib.parse import quote

from wire.server.store import SCHEMA, SCHEMA_VERSION, StoreError


UNIQUE_FAILED = "UNIQUE constraint failed: "


class SQLiteEngine:
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    conflicts: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    def __init__(self, path: str):
        self.path = path
        self.where = path

    def connect(self) -> sqlite3.Connection:
        return _open(self.path)

    def usable(self, connection: sqlite3.Connection) -> bool:
        return True

    def transaction(self, connection: sqlite3.Connection) -> AbstractContextManager:
        return connection

    def execute(self, connection: sqlite3.Connection, sql: str, rows: list[tuple]) -> None:
        connection.executemany(sql, rows)

    def select(self, connection: sqlite3.Connection, sql: str, parameters: tuple) -> list[tuple]:
        return connection.execute(sql, parameters).fetchall()

    def fetch(self, connection: sqlite3.Connection, sql: str, parameters: tuple) -> list[tuple]:
        return connection.execute(sql, parameters).fetchall()

    def notify(self, connection: sqlite3.Connection) -> None:
        """One server: nobody else to wake."""

    def conflicting_column(self, error: Exception) -> str:
        # "UNIQUE constraint failed: nodes.vpn_ip" (a key of several columns lists them all).
        _, marker, columns = str(error).partition(UNIQUE_FAILED)
        return columns.strip() if marker else ""

    def close(self, connection: sqlite3.Connection) -> None:
        connection.close()


# Columns later schemas added to tables an older database already has.
ADDED_COLUMNS = {
    "nodes": (
        ("tags", "TEXT NOT NULL DEFAULT ''"),
        ("advertised_routes", "TEXT NOT NULL DEFAULT ''"),
        ("approved_routes", "TEXT NOT NULL DEFAULT ''"),
        ("vpn_ip6", "TEXT NOT NULL DEFAULT ''"),
        ("public_ip6", "TEXT NOT NULL DEFAULT ''"),
    ),
    "pair_paths": (("family", "INTEGER NOT NULL DEFAULT 0"),),
    "join_keys": (("tags", "TEXT NOT NULL DEFAULT ''"), ("ephemeral_after", "REAL NOT NULL DEFAULT 0")),
    "audit": (("actor", "TEXT NOT NULL DEFAULT ''"),),  # schema 13
}

# As vpn_ip is UNIQUE; partial, since nodes wait without one ("") until loaded.
VPN_IP6_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS nodes_vpn_ip6 ON nodes (vpn_ip6) WHERE vpn_ip6 != ''"


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns:
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
    db.execute(VPN_IP6_INDEX)


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
        db.executescript(SCHEMA)
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
    return quote(os.path.abspath(path))


