"""A throw-away PostgreSQL cluster: the commands that make, start, query and
stop one, for whoever runs them.

The cluster lives in a temp dir of its own (data, log, socket) owned by an
unprivileged account (postgres refuses to run as root), listens on one
address and port, and is removed with its dir afterwards: it never touches
a system cluster. Two callers run these commands: ``tests.pgcluster``
(synchronously, on 127.0.0.1, for the store and replica tests) and
``wire.labreplicas`` (through an IProcessRunner, inside a lab namespace, for
the replicas' lab). One layout, so both make and stop a cluster alike.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass

# The database superuser initdb makes; servers connect as it.
USER = "wire"
# The unprivileged account the cluster runs as.
RUN_AS = "nobody"


def bin_dir() -> str | None:
    """The newest installed PostgreSQL's server binaries (Debian's layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def unavailable_reason() -> str | None:
    """Why a throw-away PostgreSQL cannot run here (None: it can)."""
    if bin_dir() is None:
        return "needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin; Debian package postgresql)"
    if os.geteuid() != 0:
        return f"needs root (to run the throw-away PostgreSQL as {RUN_AS}; postgres refuses root)"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to run PostgreSQL as an unprivileged user"
    if shutil.which("env") is None:
        return "needs env (coreutils) to run PostgreSQL's programs in its own dir"
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return f"needs the unprivileged user {RUN_AS} to run PostgreSQL as"
    return None


def make_cluster_dir(prefix: str = "wire-pg-") -> str:
    """A fresh temp dir that only the cluster's account may enter."""
    directory = tempfile.mkdtemp(prefix=prefix)
    account = pwd.getpwnam(RUN_AS)
    os.chown(directory, account.pw_uid, account.pw_gid)
    os.chmod(directory, 0o700)
    return directory


@dataclass(frozen=True)
class ClusterLayout:
    """Where one throw-away cluster lives and how it listens; each method is
    one command as an argument list, run as the cluster's account from its dir."""

    bin: str
    dir: str
    listen: str = "127.0.0.1"
    port: int = 5432

    @property
    def data(self) -> str:
        return os.path.join(self.dir, "data")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "log")

    @property
    def pwfile(self) -> str:
        """initdb reads the superuser's password here (then it is removed)."""
        return os.path.join(self.dir, "pwfile")

    @property
    def hba(self) -> str:
        return os.path.join(self.data, "pg_hba.conf")

    def as_owner(self, argv: list[str]) -> list[str]:
        account = pwd.getpwnam(RUN_AS)
        return [
            "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--",
            # From its own dir: the caller's may be closed to the account.
            "env", f"--chdir={self.dir}", *argv,
        ]

    def initdb(self) -> list[str]:
        # Passwords over TCP (a test can give a wrong one); the socket in the dir trusts its owner.
        return self.as_owner([
            f"{self.bin}/initdb", "-D", self.data, "-U", USER, f"--pwfile={self.pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "-E", "UTF8",
        ])

    def start(self) -> list[str]:
        options = f"-c listen_addresses={self.listen} -p {self.port} -k {self.dir} -c fsync=on"
        return self.as_owner([f"{self.bin}/pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> list[str]:
        return self.as_owner([f"{self.bin}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"])

    def psql(self, sql: str, database: str = "postgres") -> list[str]:
        """One statement over the dir's socket (trusted: the owner's own)."""
        return self.as_owner([
            f"{self.bin}/psql", "-h", self.dir, "-p", str(self.port), "-U", USER, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-Atc", sql,
        ])

    def url(self, database: str, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{USER}{secret}@{self.listen}:{self.port}/{database}"

    def write_password(self, password: str) -> None:
        """The pwfile initdb reads: the account's alone."""
        fd = os.open(self.pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.chown(self.pwfile, pwd.getpwnam(RUN_AS).pw_uid, -1)

    def allow_clients(self, addresses: list[str]) -> None:
        """pg_hba lines letting each address in (with the password), after
        initdb's own loopback ones; read when the cluster starts."""
        lines = "".join(f"host all {USER} {address}/32 scram-sha-256\n" for address in addresses)
        with open(self.hba, "a") as f:
            f.write("# wire lab: the replicas' addresses\n" + lines)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""
