"""A lab mesh served by two wire-server replicas on one PostgreSQL (issue 19).

On top of :class:`wire.demo.MeshLab`: PostgreSQL (:mod:`wire.labpostgres`)
runs in a namespace of its own ("db") and lets in only the replicas'
addresses; replica "a" runs in the lab's server namespace, replica "b" in
another ("server-b"). Each is given ``--public-url`` itself first, then the
other (so every join token lists both), ``--replica-name`` and the database,
whose password reaches it in a 0600 file, never on a command line. "a"
starts first: its self-signed certificate becomes the one both present
(wire/server/sharedtls.py). Nodes join with a key made at "a".

Teardown takes the nodes down, stops the replicas, then PostgreSQL, then the
lab (whose stray-process sweep ends a PostgreSQL that did not stop), and
removes the cluster's dir, also after a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass

from twisted.logger import Logger

from wire import labpostgres
from wire.admin_ops import AdminOps
from wire.demo import SERVER_PORT, DemoError, MeshLab
from wire.fsutil import write_atomically
from wire.lab import Lab, LabUnavailable
from wire.labpostgres import ClusterLayout
from wire.runner import IProcessRunner, IRunningProcess
from wire.twistd import wire_environment

log = Logger()

# Replica name -> the lab host it runs on ("server" is the lab's own).
REPLICA_HOSTS = {"a": "server", "b": "server-b"}
DATABASE_HOST = "db"
DATABASE = "wire"
# Inside its own namespace: the standard port is free.
DATABASE_PORT = 5432
# A page's text, certificate unchecked (the nodes check it, not the lab).
FETCH = (
    "import ssl, sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=3, context=ssl._create_unverified_context()).read().decode())"
)


@dataclass
class Replica:
    name: str
    host: str
    url: str
    data_dir: str
    process: IRunningProcess | None = None


class LabPostgres:
    """A throw-away PostgreSQL cluster running in one of the lab's namespaces."""

    def __init__(self, lab: Lab, host: str, directory: str | None = None) -> None:
        self.lab = lab
        self.host = host
        # The cluster's dir: a fresh one at start unless given (made by make_cluster_dir).
        self._directory = directory
        self.layout: ClusterLayout | None = None
        self.running = False

    async def start(self, clients: list[str], password_file: str) -> None:
        """initdb, let ``clients`` (addresses) in with a fresh password, which
        is written to ``password_file`` (0600) for them; start; make the database."""
        reason = labpostgres.unavailable_reason()
        bin_dir = labpostgres.bin_dir()
        if reason is not None or bin_dir is None:
            raise LabUnavailable(f"the replicas' lab needs PostgreSQL: {reason}")
        address = self.lab.hosts[self.host].address
        assert address is not None
        directory = self._directory or labpostgres.make_cluster_dir("wire-lab-pg-")
        self.layout = layout = ClusterLayout(bin_dir, directory, address, DATABASE_PORT)
        password = secrets.token_urlsafe(24)
        layout.write_password(password)
        try:
            await self._run(layout.initdb(), "initdb")
        finally:
            os.unlink(layout.pwfile)
        layout.allow_clients(clients)
        write_atomically(password_file, (password + "\n").encode(), 0o600)
        await self._run(layout.start(), "pg_ctl start")
        self.running = True
        await self._run(layout.psql(f"CREATE DATABASE {DATABASE}"), "CREATE DATABASE")

    @property
    def url(self) -> str:
        """libpq's URL of the database, without the password."""
        assert self.layout is not None
        return self.layout.url(DATABASE)

    async def stop(self) -> None:
        if self.layout is not None and self.running:
            self.running = False
            await self._run(self.layout.stop("fast"), "pg_ctl stop")

    def remove(self) -> None:
        """The cluster's dir (data, log, socket); call once it has stopped."""
        if self.layout is not None:
            shutil.rmtree(self.layout.dir, ignore_errors=True)

    async def _run(self, argv: list[str], what: str) -> None:
        result = await self.lab.run(self.host, argv, timeout=120)
        if result.rc != 0:
            assert self.layout is not None
            said = (result.stderr or result.stdout).decode(errors="replace").strip()
            raise DemoError(f"PostgreSQL in the lab: {what} failed (exit {result.rc}): {said}\nits log ends:\n{self.layout.log_tail()}")


class ReplicaMeshLab(MeshLab):
    """A MeshLab whose server is two replicas on one PostgreSQL; ``server``
    and ``server_data_dir`` are replica "a"'s."""

    def __init__(self, reactor, runner: IProcessRunner, server_args: tuple[str, ...] = ()) -> None:
        super().__init__(reactor, runner, server_args=server_args)
        self.replicas: dict[str, Replica] = {}
        self.postgres = LabPostgres(self.lab, DATABASE_HOST)
        self._password_file = os.path.join(self._workdir, "database-password")

    async def setup(self) -> None:
        await self.lab.setup()
        for host in (*REPLICA_HOSTS.values(), DATABASE_HOST):
            if host not in self.lab.hosts:
                await self.lab.add_public_node(host)
        for name, host in REPLICA_HOSTS.items():
            self.replicas[name] = Replica(
                name, host, f"https://{self.lab.hosts[host].address}:{SERVER_PORT}", os.path.join(self._workdir, host)
            )
        clients = [self.lab.hosts[host].address or "" for host in REPLICA_HOSTS.values()]
        await self.postgres.start(clients, self._password_file)
        for name in REPLICA_HOSTS:  # in order: "a"'s certificate becomes the shared one
            await self.start_replica(name)
        self.join_token = await self.create_key("a")

    def replica_argv(self, name: str) -> list[str]:
        """Replica ``name``'s wire-server: its URL first, then the other's;
        the database's password in a file, never on the command line."""
        replica = self.replicas[name]
        others = [r.url for r in self.replicas.values() if r is not replica]
        database = (
            f"--database={self.postgres.url}",
            f"--database-password-file={self._password_file}",
            f"--replica-name={name}",
        )
        return self.server_argv(replica.data_dir, [replica.url, *others], database)

    async def start_replica(self, name: str) -> None:
        replica = self.replicas[name]
        replica.process = self.lab.start(
            replica.host, self.replica_argv(name), env=wire_environment(),
            log_prefix=f"wire-server-{name}#{next(self._server_restarts)}",
        )
        if replica.host == "server":
            self.server = replica.process
        await self.wait_for_server(timeout=30, host=replica.host, url=replica.url, process=replica.process)

    async def create_key(self, name: str) -> str:
        """A reusable join key made at replica ``name``: its token lists that
        replica first, then the other."""
        created = await AdminOps(self.reactor, self.replicas[name].data_dir).create_key(
            reusable=True, note=f"lab, at replica {name}"
        )
        return created["token"]

    async def kill_replica(self, name: str, signal_number: int = 9) -> None:
        process = self.replicas[name].process
        assert process is not None
        process.kill(signal_number)
        await process.when_exited()

    async def fetch(self, name: str, path: str, from_host: str = DATABASE_HOST) -> str:
        """A page of replica ``name`` (``/health``, ``/metrics``), asked from another namespace."""
        url = self.replicas[name].url + path
        result = await self.lab.run(from_host, [sys.executable, "-c", FETCH, url], timeout=15)
        if result.rc != 0:
            said = result.stderr.decode(errors="replace").strip().splitlines()
            raise DemoError(f"{url} did not answer: {said[-1] if said else f'exit {result.rc}'}")
        return result.stdout.decode(errors="replace")

    async def health(self, name: str) -> dict:
        return json.loads(await self.fetch(name, "/health"))

    async def stop_control_plane(self) -> None:
        for replica in self.replicas.values():
            if replica.process is not None and replica.process.running:
                await replica.process.stop(5.0)
        await self.postgres.stop()

    async def teardown(self) -> None:
        try:
            await super().teardown()
        finally:
            self.postgres.remove()
