"""A throw-away PostgreSQL for tests: ``initdb`` in a temp dir, ``pg_ctl``
run as an unprivileged user (postgres refuses root) on a free 127.0.0.1
port with its socket in that dir. It never touches a system cluster.

One cluster per test process (started by the first test that asks, stopped
and removed at exit, also after a failure); each test gets a database of its
own, dropped by its cleanup. Where the binaries or root are missing,
:func:`skip_reason` says why and the tests skip (CI installs them:
scripts/setup.sh).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from itertools import count


USER = "wire"
PASSWORD = "test-password-not-a-secret"
# The unprivileged account the cluster runs as.
RUN_AS = "nobody"


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def skip_reason() -> str | None:
    """Why a throw-away PostgreSQL cannot run here (None: it can)."""
    if _bin_dir() is None:
        return "needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin; Debian package postgresql)"
    if os.geteuid() != 0:
        return f"needs root (to run the throw-away PostgreSQL as {RUN_AS}; postgres refuses root)"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to run PostgreSQL as an unprivileged user"
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return f"needs the unprivileged user {RUN_AS} to run PostgreSQL as"
    return None


class PostgresCluster:
    def __init__(self) -> None:
        bin_dir = _bin_dir()
        assert bin_dir is not None, skip_reason()
        self._bin = bin_dir
        self.dir = tempfile.mkdtemp(prefix="wire-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_tcp_port()
        self._names = count(1)
        self.running = False
        account = pwd.getpwnam(RUN_AS)
        os.chown(self.dir, account.pw_uid, account.pw_gid)
        os.chmod(self.dir, 0o700)

    def _run(self, *argv: str, input: str | None = None) -> str:
        """A PostgreSQL program as the unprivileged user; CalledProcessError with its output."""
        account = pwd.getpwnam(RUN_AS)
        command = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--", *argv]
        done = subprocess.run(command, cwd=self.dir, input=input, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{os.path.basename(argv[0])} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        pwfile = os.path.join(self.dir, "pwfile")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        os.chown(pwfile, pwd.getpwnam(RUN_AS).pw_uid, -1)
        # Passwords over TCP (a test can give a wrong one); the socket in the dir trusts its owner.
        self._run(
            f"{self._bin}/initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "-E", "UTF8",
        )
        os.unlink(pwfile)
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=on"
        self._run(f"{self._bin}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-o", options, "-w", "-t", "60", "start")
        self.running = True

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(f"{self._bin}/psql", "-h", self.dir, "-p", str(self.port), "-U", USER, "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql)

    def url(self, database: str, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"wire_test_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        if self.running:
            self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(f"{self._bin}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")
            self.running = False

    def restart(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}"
        self._run(f"{self._bin}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-o", options, "-w", "-t", "60", "start")
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
