"""The replicas' lab in memory: the throw-away PostgreSQL's commands
(wire.labpostgres), its start inside a namespace against a scripted runner,
and the replicas' command lines (wire.labreplicas). The real thing runs in
tests.test_replicas_lab."""

from __future__ import annotations

import os
import pwd
import shutil
import stat

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeProcessRunner
from wire import labpostgres
from wire.demo import DemoError
from wire.lab import Host, Lab, Role
from wire.labpostgres import RUN_AS, ClusterLayout
from wire.labreplicas import LabPostgres, Replica, ReplicaMeshLab


def _account_missing() -> str | None:
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return f"needs the account {RUN_AS}"
    return None


class ClusterLayoutTests(SynchronousTestCase):
    skip = _account_missing()

    def layout(self) -> ClusterLayout:
        return ClusterLayout("/usr/lib/postgresql/15/bin", "/tmp/wire-pg-x", "198.18.0.4", 5432)

    def test_every_command_runs_as_the_unprivileged_account_from_the_clusters_dir(self) -> None:
        layout = self.layout()
        account = pwd.getpwnam(RUN_AS)
        for argv in (layout.initdb(), layout.start(), layout.stop(), layout.psql("SELECT 1")):
            self.assertEqual(
                argv[:7],
                ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--",
                 "env", "--chdir=/tmp/wire-pg-x"],
            )
            self.assertTrue(argv[7].startswith("/usr/lib/postgresql/15/bin/"), argv)

    def test_the_cluster_listens_on_its_address_and_port_with_its_socket_in_its_dir(self) -> None:
        start = self.layout().start()
        options = start[start.index("-o") + 1]
        self.assertIn("-c listen_addresses=198.18.0.4", options)
        self.assertIn("-p 5432", options)
        self.assertIn("-k /tmp/wire-pg-x", options)
        self.assertEqual(start[start.index("-D") + 1], "/tmp/wire-pg-x/data")
        # initdb: passwords over TCP, the socket (in the dir, the owner's) trusted.
        initdb = self.layout().initdb()
        self.assertIn("--auth-host=scram-sha-256", initdb)
        self.assertIn("--auth-local=trust", initdb)
        self.assertIn("--pwfile=/tmp/wire-pg-x/pwfile", initdb)

    def test_the_url_carries_a_password_only_when_given(self) -> None:
        layout = self.layout()
        self.assertEqual(layout.url("wire"), "postgresql://wire@198.18.0.4:5432/wire")
        self.assertEqual(layout.url("wire", "s3cret"), "postgresql://wire:s3cret@198.18.0.4:5432/wire")

    def test_clients_are_let_in_by_their_own_address_only(self) -> None:
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "data"))
        layout = ClusterLayout("/bin", directory, "198.18.0.4")
        with open(layout.hba, "w") as f:
            f.write("host all all 127.0.0.1/32 scram-sha-256\n")
        layout.allow_clients(["198.18.0.2", "198.18.0.3"])
        with open(layout.hba) as f:
            lines = [line for line in f.read().splitlines() if line and not line.startswith("#")]
        self.assertEqual(
            lines,
            [
                "host all all 127.0.0.1/32 scram-sha-256",
                "host all wire 198.18.0.2/32 scram-sha-256",
                "host all wire 198.18.0.3/32 scram-sha-256",
            ],
        )


class LabPostgresTests(SynchronousTestCase):
    """Its start against a scripted runner (the files it writes are real:
    root is needed to give the cluster's dir to its account)."""

    skip = labpostgres.unavailable_reason()

    def setUp(self) -> None:
        self.runner = FakeProcessRunner()
        self.lab = Lab(self.runner, etc_netns=self.mktemp())
        self.lab.hosts["db"] = Host("db", Role.PUBLIC, "wlx-db", "198.18.0.4", None, "wlxe1", "wlxw1")
        self.directory = labpostgres.make_cluster_dir()
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.postgres = LabPostgres(self.lab, "db", directory=self.directory)
        self.layout = ClusterLayout(labpostgres.bin_dir() or "", self.directory, "198.18.0.4", 5432)
        self.password_file = self.mktemp()
        self.seen: dict[str, str] = {}

    def inside(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", "wlx-db", *argv]

    def initdb_ran(self) -> None:
        """What initdb would leave: a data dir with its pg_hba; it read the pwfile."""
        with open(self.layout.pwfile) as f:
            self.seen["password"] = f.read().strip()
        self.seen["pwfile_mode"] = oct(stat.S_IMODE(os.stat(self.layout.pwfile).st_mode))
        os.makedirs(self.layout.data)
        with open(self.layout.hba, "w") as f:
            f.write("local all all trust\n")

    def test_it_starts_inside_its_namespace_and_the_password_reaches_no_command_line(self) -> None:
        self.runner.expect(self.inside(self.layout.initdb()), then=self.initdb_ran)
        self.runner.expect(self.inside(self.layout.start()))
        self.runner.expect(self.inside(self.layout.psql("CREATE DATABASE wire")))
        self.successResultOf(Deferred.fromCoroutine(self.postgres.start(["198.18.0.2", "198.18.0.3"], self.password_file)))
        self.runner.assert_all_called()
        password = self.seen["password"]
        self.assertGreaterEqual(len(password), 24)
        self.assertEqual(self.seen["pwfile_mode"], "0o600")
        self.assertFalse(os.path.exists(self.layout.pwfile), "initdb's copy is removed")
        with open(self.password_file) as f:
            self.assertEqual(f.read().strip(), password, "the replicas' copy")
        self.assertEqual(stat.S_IMODE(os.stat(self.password_file).st_mode), 0o600)
        for call in self.runner.calls:
            self.assertFalse(any(password in word for word in call.argv), call.argv)
        self.assertNotIn(password, self.postgres.url)
        self.assertEqual(self.postgres.url, "postgresql://wire@198.18.0.4:5432/wire")
        with open(self.layout.hba) as f:
            self.assertIn("host all wire 198.18.0.3/32 scram-sha-256", f.read())
        # Stopped once, however often asked.
        self.runner.expect(self.inside(self.layout.stop("fast")))
        self.successResultOf(Deferred.fromCoroutine(self.postgres.stop()))
        self.successResultOf(Deferred.fromCoroutine(self.postgres.stop()))
        self.runner.assert_all_called()

    def test_a_failed_initdb_is_named_with_what_it_said_and_leaves_no_password_behind(self) -> None:
        self.runner.expect(self.inside(self.layout.initdb()), rc=1, stderr=b"initdb: error: directory exists")
        failure = self.failureResultOf(
            Deferred.fromCoroutine(self.postgres.start(["198.18.0.2"], self.password_file)), DemoError
        )
        self.assertIn("initdb failed (exit 1): initdb: error: directory exists", str(failure.value))
        self.assertFalse(os.path.exists(self.layout.pwfile))
        self.assertFalse(os.path.exists(self.password_file))
        # Never started: nothing to stop.
        self.successResultOf(Deferred.fromCoroutine(self.postgres.stop()))
        self.runner.assert_all_called()


class ReplicaCommandLineTests(SynchronousTestCase):
    def test_each_replica_names_itself_first_then_the_other_and_gets_the_password_in_a_file(self) -> None:
        mesh = ReplicaMeshLab(MemoryReactorClock(), FakeProcessRunner())
        self.addCleanup(shutil.rmtree, mesh._workdir, True)
        mesh.replicas = {
            "a": Replica("a", "server", "https://198.18.0.2:8787", "/w/server"),
            "b": Replica("b", "server-b", "https://198.18.0.3:8787", "/w/server-b"),
        }
        mesh.postgres.layout = ClusterLayout("/pg/bin", "/pg", "198.18.0.4", 5432)
        for name, (first, second) in {"a": ("2", "3"), "b": ("3", "2")}.items():
            argv = mesh.replica_argv(name)
            urls = [word.split("=", 1)[1] for word in argv if word.startswith("--public-url=")]
            self.assertEqual(urls, [f"https://198.18.0.{first}:8787", f"https://198.18.0.{second}:8787"])
            self.assertIn(f"--replica-name={name}", argv)
            self.assertIn(f"--data-dir={mesh.replicas[name].data_dir}", argv)
            self.assertIn("--database=postgresql://wire@198.18.0.4:5432/wire", argv)
            self.assertIn(f"--database-password-file={mesh._password_file}", argv)
            self.assertNotIn("--open", argv)
