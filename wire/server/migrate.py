"""Moving a server's SQLite registry into PostgreSQL, once, without a re-join.

``twistd wire-server --database URL --import-sqlite DATA_DIR`` copies every
row of the SQLite registry in DATA_DIR (nodes with their addresses, names,
tags and routes; join keys; credentials' hashes; pair words; policies; DNS
settings; the audit log; the mesh's IPv6 prefix) into the database in one
transaction, before the server serves. Nodes keep their credentials and
addresses; the certificate they pinned stays theirs, since the first server
on the database shares its data dir's pair (wire.server.sharedtls): run the
import with the old data dir as ``--data-dir``, or copy its ``tls-*.pem``.

The SQLite file is opened as the server would open it (brought to this
wire's schema, so an older wire refuses it afterwards) and not written
otherwise. A database that already holds
a mesh is refused, unless it is this very import done before (the source's
path is kept in ``meta``): running the command again is harmless.
"""

from __future__ import annotations

import os
import re

from wire.server.dbthread import result_now
from wire.server.store import SCHEMA, STREAM_TABLES, SQLStore, Writes, open_store, upsert

IMPORTED_META = "imported_from_sqlite"
# Kept by each database itself: never copied over.
_OWN_META = ("schema_version",)
# A database holding rows here holds a mesh already.
_MESH_TABLES = ("nodes", "join_keys", "credentials")


class SqliteImportError(Exception):
    """The import cannot be done; says why."""


def import_sqlite(source_dir: str, target: SQLStore, reactor) -> str:
    """Copy ``source_dir``'s registry into ``target`` (startup: blocks);
    a one-line report of what was copied."""
    path = os.path.join(os.path.abspath(source_dir), "registry.sqlite3")
    if not os.path.isfile(path):
        raise SqliteImportError(f"--import-sqlite: {path} is not a file (give the old server's --data-dir)")
    done_before = target.read_meta(IMPORTED_META)
    if done_before == path:
        return f"{path} was imported before: nothing to do"
    held = {table: target.read_now(f"SELECT count(*) FROM {table}")[0][0] for table in _MESH_TABLES}
    if any(held.values()):
        counts = ", ".join(f"{count} {table}" for table, count in held.items() if count)
        raise SqliteImportError(f"--import-sqlite: the database already holds a mesh ({counts}); import into an empty one")
    source = open_store(os.path.dirname(path), reactor)
    try:
        writes, copied = _copy(source, target)
    finally:
        result_now(source.close())
    writes.execute(upsert("meta", ("key", "value"), ("key",)), (IMPORTED_META, path))
    result_now(target.transaction(writes))
    return f"imported {path}: " + ", ".join(f"{count} {table}" for table, count in copied.items())


def wire_tables() -> list[str]:
    """The tables of this wire's schema (a table someone added by hand stays
    behind), less the change stream's, which each database keeps itself."""
    return sorted(set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA)) - set(STREAM_TABLES))


def _copy(source: SQLStore, target: SQLStore) -> tuple[Writes, dict[str, int]]:
    """One transaction's statements copying every shared table, row for row."""
    writes = Writes()
    copied: dict[str, int] = {}
    for table in wire_tables():
        # The columns both sides have (both are at this wire's schema).
        columns = [row[1] for row in source.read_now(f"PRAGMA table_info({table})")]
        rows = source.read_now(f"SELECT {', '.join(columns)} FROM {table}")
        if table == "meta":
            rows = [row for row in rows if row[0] not in _OWN_META]
            sql = upsert("meta", ("key", "value"), ("key",))
        else:
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        if rows:
            writes.statements.append((sql, [tuple(row) for row in rows]))
        copied[table] = len(rows)
    if copied.get("audit"):
        # The audit's own ids came along: its identity must count on from them.
        writes.execute("SELECT setval(pg_get_serial_sequence('audit', 'id'), (SELECT max(id) FROM audit))")
    return writes, copied
