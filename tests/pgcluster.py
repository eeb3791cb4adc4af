"""A throw-away PostgreSQL for tests: ``initdb`` in a temp dir, ``pg_ctl``
run as an unprivileged user (postgres refuses root) on a free 127.0.0.1
port with its socket in that dir. It never touches a system cluster.

One cluster per test process (started by the first test that asks, stopped
and removed at exit, also after a failure); each test gets a database of its
own, dropped by its cleanup. Where the binaries or root are missing,
:func:`skip_reason` says why and the tests skip (CI installs them:
scripts/setup.sh). The commands themselves are :mod:`wire.labpostgres`'s,
shared with the lab's replicas.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
from itertools import count

from wire import labpostgres
from wire.labpostgres import ClusterLayout

PASSWORD = "test-password-not-a-secret"


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_reason() -> str | None:
    """Why a throw-away PostgreSQL cannot run here (None: it can)."""
    return labpostgres.unavailable_reason()


class PostgresCluster:
    def __init__(self) -> None:
        bin_dir = labpostgres.bin_dir()
        assert bin_dir is not None, skip_reason()
        self.dir = labpostgres.make_cluster_dir()
        self.layout = ClusterLayout(bin_dir, self.dir, listen="127.0.0.1", port=free_tcp_port())
        self.data = self.layout.data
        self.port = self.layout.port
        self._names = count(1)
        self.running = False

    def _run(self, argv: list[str]) -> str:
        """One of the layout's commands; RuntimeError with its output."""
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            program = os.path.basename(next(a for a in argv if a.startswith("/")))
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        self.layout.write_password(PASSWORD)
        self._run(self.layout.initdb())
        os.unlink(self.layout.pwfile)
        self.restart()

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(self.layout.psql(sql, database))

    def url(self, database: str, password: bool = True) -> str:
        return self.layout.url(database, PASSWORD if password else None)

    def create_database(self) -> str:
        name = f"wire_test_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        if self.running:
            self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(self.layout.stop(mode))
            self.running = False

    def restart(self) -> None:
        self._run(self.layout.start())
        self.running = True

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


_cluster: PostgresCluster | None = None


def cluster() -> PostgresCluster:
    """This process's cluster, started at the first call; removed at exit."""
    global _cluster
    if _cluster is None or not _cluster.running:
        if _cluster is not None:
            _cluster.remove()
        made = PostgresCluster()
        atexit.register(made.remove)
        try:
            made.start()
        except BaseException:
            made.remove()
            raise
        _cluster = made
    return _cluster


def database(test) -> tuple[PostgresCluster, str]:
    """A fresh database on this process's cluster for ``test``, dropped by its cleanup."""
    pg = cluster()
    name = pg.create_database()
    test.addCleanup(pg.drop_database, name)
    return pg, name
