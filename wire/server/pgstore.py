"""The PostgreSQL engine of the store (wire.server.store), through psycopg 3,
for replicas that share one database (issue 19).

``--database postgresql://USER@HOST:PORT/DB`` is a libpq URL; its password
comes from the URL, libpq's ``PGPASSFILE`` (or ``~/.pgpass``), or
``--database-password-file``. No message says it: every URL shown goes
through :func:`redact`.

The schema is the store's one text with PostgreSQL's types; it is created
and migrated by the server in one transaction, under an advisory lock so
that replicas starting together migrate once. Its version is kept in
``meta`` (``schema_version``); a newer one than this wire knows is refused.
The connection runs in autocommit (each read is its own statement) and
writes open explicit transactions; a lost connection is opened again on the
next call.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from wire.server.sqlitestore import ADDED_COLUMNS, VPN_IP6_INDEX
from wire.server.store import SCHEMA, SCHEMA_VERSION, StoreError

SCHEMA_VERSION_KEY = "schema_version"
# pg_advisory_xact_lock's key for migrations ("wire" in ASCII).
MIGRATION_LOCK = 0x77697265
CONNECT_TIMEOUT = 10
# The channel a transaction that appended changes NOTIFYs (wire.server.cluster LISTENs).
CHANGES_CHANNEL = "wire_changes"

# A one-time join key enrolls one node, even when two replicas take it at the
# same moment: the second enrollment's transaction is refused. NOT VALID: rows
# already there are left as they are; every change from now on is checked.
ONE_TIME_KEYS = """DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'join_keys_one_time') THEN
        ALTER TABLE join_keys ADD CONSTRAINT join_keys_one_time CHECK (reusable = 1 OR uses <= 1) NOT VALID;
    END IF;
END $$"""

# What each schema after the first PostgreSQL one (9) changes, by version:
# run in order, in the migration's transaction.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 12: the replicas table (wire.server.replicas); a fresh database has it from SCHEMA.
    12: (
        "CREATE TABLE IF NOT EXISTS replicas (name TEXT PRIMARY KEY, api_url TEXT NOT NULL, relay_host TEXT NOT NULL, "
        "relay_port INTEGER NOT NULL, started DOUBLE PRECISION NOT NULL, seen DOUBLE PRECISION NOT NULL)",
    ),
}


# A database that vanished mid-query (a dead host, a partition) must fail the
# write within seconds, not after TCP's quarter of an hour: the store's one
# thread would wait there, and every write behind it. And the other way
# round: the server probes its end of each session too (the tcp_* settings
# in the options), so a replica that vanished loses its sessions within
# seconds there, and with them the leader's lock (wire.server.cluster),
# which a surviving replica then takes, and its liveness lock, so the pairs
# it relayed move to a live replica (wire.server.replicas). The server's
# side is the stricter, about 4 s of silence or of unacknowledged data, so
# those pairs ping again within 10 s; a replica whose link to the database
# drops out that long loses its sessions, takes them again at once, and its
# pairs move back (a replica and its database share a data centre).
# Acknowledged means committed on the server itself, whatever its
# configuration says.
LIVENESS: dict[str, Any] = {
    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
    "options": (
        "-c statement_timeout=30000 -c synchronous_commit=on"
        " -c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=2 -c tcp_user_timeout=4000"
    ),
}


def redact(url: str) -> str:
    """``url`` without its password (in the user part or as ``?password=``),
    for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)
        userinfo = netloc[0].split(":", 1)[0]
        parts = parts._replace(netloc=f"{userinfo}:***@{netloc[1]}")
    if parts.query:
        query = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*/:"))
    return urlunsplit(parts)


def is_database_url(text: str) -> bool:
    return text.startswith(("postgresql://", "postgres://"))


def check_database_url(url: str) -> dict[str, Any]:
    """The URL's libpq parameters; ValueError saying what is wrong (the URL shown redacted)."""
    if not is_database_url(url):
        raise ValueError(f"{redact(url)} is not a PostgreSQL URL (postgresql://USER@HOST:PORT/DB)")
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as e:
        raise ValueError(f"{redact(url)} is not a valid libpq URL: {_one_line(str(e), url)}") from None
    if not params.get("dbname"):
        raise ValueError(f"{redact(url)} names no database (postgresql://USER@HOST:PORT/DB)")
    return params


def url_has_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    in_query = any(k.lower() == "password" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return parts.password is not None or in_query


_UNIQUE_KEY = re.compile(r"Key \(([^)]+)\)=")


class PostgresEngine:
    errors: tuple[type[Exception], ...] = (psycopg.Error,)
    conflicts: tuple[type[Exception], ...] = (psycopg.errors.IntegrityError,)

    def __init__(self, url: str, password: str | None = None):
        try:
            check_database_url(url)
        except ValueError as e:
            raise StoreError(str(e)) from None
        self._url = url
        self._password = password
        self.where = redact(url)

    def _open(self, application_name: str) -> psycopg.Connection:
        extra: dict[str, Any] = {} if self._password is None else {"password": self._password}
        try:
            return psycopg.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name=application_name,
                **LIVENESS, **extra,
            )
        except psycopg.Error as e:
            raise StoreError(f"cannot reach the PostgreSQL database {self.where}: {self._said(e)}") from None

    def connect(self) -> psycopg.Connection:
        connection = self._open("wire-server")
        try:
            _migrate(connection, self.where)
        except psycopg.Error as e:
            connection.close()
            raise StoreError(f"cannot use the PostgreSQL database {self.where}: {self._said(e)}") from None
        except BaseException:
            connection.close()
            raise
        return connection

    def _said(self, error: Exception) -> str:
        return _one_line(str(error), self._url, self._password)

    def usable(self, connection: psycopg.Connection) -> bool:
        return not (connection.closed or connection.broken)

    def transaction(self, connection: psycopg.Connection) -> AbstractContextManager:
        return connection.transaction()

    def execute(self, connection: psycopg.Connection, sql: str, rows: list[tuple]) -> None:
        with connection.cursor() as cursor:
            cursor.executemany(placeholders(sql), rows)

    def select(self, connection: psycopg.Connection, sql: str, parameters: tuple) -> list[tuple]:
        return connection.execute(placeholders(sql), parameters).fetchall()

    def fetch(self, connection: psycopg.Connection, sql: str, parameters: tuple) -> list[tuple]:
        return connection.execute(placeholders(sql), parameters).fetchall()

    def notify(self, connection: psycopg.Connection) -> None:
        # Delivered at commit, to every replica LISTENing (wire.server.cluster).
        connection.execute(f"NOTIFY {CHANGES_CHANNEL}")

    def conflicting_column(self, error: Exception) -> str:
        # A unique violation's detail: "Key (vpn_ip)=(10.99.0.5) already exists."
        diag = getattr(error, "diag", None)
        if diag is None:
            return ""
        found = _UNIQUE_KEY.match(diag.message_detail or "")
        return f"{diag.table_name}.{found.group(1)}" if found is not None and diag.table_name else ""

    def session(self) -> psycopg.Connection:
        """A connection of its own (no migration), for LISTEN and the leader's
        advisory lock (wire.server.cluster); its keepalives end a dead peer's
        session, and so its lock, within seconds."""
        return self._open("wire-server-cluster")

    def close(self, connection: psycopg.Connection) -> None:
        connection.close()


@lru_cache(maxsize=256)
def placeholders(sql: str) -> str:
    """The store's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def pg_schema(sqlite_schema: str = SCHEMA) -> str:
    """The store's schema with PostgreSQL's types: REAL is 4 bytes there (a
    timestamp needs 8), and an autoincrementing key is an identity column."""
    text = sqlite_schema.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", text)


def _migrate(connection: psycopg.Connection, where: str) -> None:
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        version = _stored_version(connection)
        if version > SCHEMA_VERSION:
            raise StoreError(f"{where} was written by a newer wire (schema {version}; this one knows {SCHEMA_VERSION})")
        connection.execute(pg_schema())  # every table IF NOT EXISTS: a fresh database gets them all
        for table, columns in ADDED_COLUMNS.items():
            for name, declaration in columns:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {pg_schema(declaration)}")
        connection.execute(VPN_IP6_INDEX)
        connection.execute(ONE_TIME_KEYS)
        # A fresh database got the latest tables above; an older one catches up.
        for step in range(version + 1 if version else SCHEMA_VERSION + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS.get(step, ()):
                connection.execute(statement)
        connection.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (SCHEMA_VERSION_KEY, str(SCHEMA_VERSION)),
        )


def _stored_version(connection: psycopg.Connection) -> int:
    row = connection.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    kept = connection.execute("SELECT value FROM meta WHERE key = %s", (SCHEMA_VERSION_KEY,)).fetchone()
    if kept is None:
        return 0
    try:
        return int(kept[0])
    except ValueError:
        raise StoreError(f"the database's schema_version in meta is {kept[0]!r}, not a number: not a wire registry") from None


def _one_line(message: str, *secrets: str | None) -> str:
    """libpq's message, on one line, with no secret in it."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, redact(secret) if is_database_url(secret) else "***")
    return " ".join(message.split())
