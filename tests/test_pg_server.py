"""A real ``twistd wire-server --database postgresql://...`` on a throw-away
PostgreSQL (tests.pgcluster): what it acknowledged survives ``kill -9``, and
a database it cannot use stops it with one clear line, never its password."""

from __future__ import annotations

import json
import os
import signal

from twisted.internet import reactor
from twisted.trial import unittest

from tests import pgcluster
from tests.helpers import body_for, short_dir
from tests.serverproc import ServerProcess, http_client


class PostgresServerTests(unittest.TestCase):
    skip = pgcluster.skip_reason()
    timeout = 90

    def setUp(self):
        self.pg, self.database = pgcluster.database(self)
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.password_file = os.path.join(self.data_dir, "db-password")
        with open(self.password_file, "w") as f:
            f.write(pgcluster.PASSWORD + "\n")
        self.http = http_client()

    def server(self, url: str | None = None, password_file: bool = True) -> ServerProcess:
        args = ["--open", f"--database={url or self.pg.url(self.database, password=False)}"]
        if password_file:
            args.append(f"--database-password-file={self.password_file}")
        return ServerProcess(self, self.data_dir, extra_args=tuple(args))

    async def post(self, server: ServerProcess, path: str, body: dict):
        response = await self.http.post(server.url + path, data=json.dumps(body).encode(), timeout=5)
        return response.code, json.loads(await response.content())

    async def test_a_registration_survives_kill_9_and_a_restart_on_the_same_database(self):
        server = self.server()
        await server.start()
        code, answer = await self.post(server, "/register", body_for("web1"))
        self.assertEqual(code, 200, answer)
        # Killed the instant after it answered: the answer must still hold.
        await server.kill(signal.SIGKILL)
        self.assertEqual(
            self.pg.psql("SELECT node_name, vpn_ip FROM nodes", self.database).split(), [f"web1|{answer['vpn_ip']}"]
        )
        await server.start()
        response = await self.http.get(f"{server.url}/status", timeout=5)
        status = json.loads(await response.content())
        self.assertEqual([(n["node_name"], n["vpn_ip"]) for n in status["nodes"]], [("web1", answer["vpn_ip"])])
        code, again = await self.post(server, "/register", body_for("web1"))
        self.assertEqual((again["vpn_ip"], again["vpn_ip6"]), (answer["vpn_ip"], answer["vpn_ip6"]))
        await server.stop()
        self.assertIn(f"registry in postgresql://wire@127.0.0.1:{self.pg.port}/{self.database}", server.output)
        self.assertNotIn(pgcluster.PASSWORD, server.output)

    async def test_a_wrong_password_stops_it_with_one_clear_line(self):
        url = self.pg.url(self.database).replace(pgcluster.PASSWORD, "not-the-password")
        server = self.server(url, password_file=False)
        process = server.spawn()
        exit_code = await process.ended
        output = server.output
        self.assertNotEqual(exit_code, 0)
        self.assertIn('password authentication failed for user "wire"', output)
        self.assertIn("cannot reach the PostgreSQL database postgresql://wire:***@127.0.0.1", output)
        self.assertNotIn("not-the-password", output)
        self.assertNotIn("Traceback", output)

    async def test_a_url_that_is_no_postgresql_url_is_a_usage_error(self):
        server = self.server("mysql://wire@127.0.0.1/wire", password_file=False)
        process = server.spawn()
        self.assertEqual(await process.ended, 2)
        self.assertIn("--database: mysql://wire@127.0.0.1/wire is not a PostgreSQL URL", server.output)
        self.assertNotIn("Traceback", server.output)


class SharedIdentityProcessTests(unittest.TestCase):
    """Two real HTTPS replicas on one database present one certificate:
    a node pinned to the first's reaches the second (wire.server.sharedtls)."""

    skip = pgcluster.skip_reason()
    timeout = 90

    async def test_both_replicas_serve_the_first_ones_certificate(self):
        from wire.client import make_http_client

        pg, database = pgcluster.database(self)
        password_file = os.path.abspath(self.mktemp())
        with open(password_file, "w") as f:
            f.write(pgcluster.PASSWORD + "\n")
        args = (f"--database={pg.url(database, password=False)}", f"--database-password-file={password_file}")
        first = ServerProcess(self, short_dir(self), extra_args=args)
        await first.start()
        second = ServerProcess(self, short_dir(self), extra_args=args)
        await second.start()
        self.assertEqual(second.fingerprint, first.fingerprint)
        pinned = make_http_client(reactor, persistent=False, tls_fingerprint=first.fingerprint)
        response = await pinned.get(second.url + "/health", timeout=5)
        self.assertEqual(response.code, 200)
        await response.content()
        self.assertNotIn(pgcluster.PASSWORD, first.output + second.output)


class SqliteImportProcessTests(unittest.TestCase):
    """``--import-sqlite``: a server that ran on SQLite moves into PostgreSQL;
    its enrolled node keeps its credential, address and pinned certificate."""

    skip = pgcluster.skip_reason()
    timeout = 120

    def setUp(self):
        self.pg, self.database = pgcluster.database(self)
        self.password_file = os.path.abspath(self.mktemp())
        with open(self.password_file, "w") as f:
            f.write(pgcluster.PASSWORD + "\n")
        self.data_dir = short_dir(self)

    def database_args(self, *more: str) -> tuple[str, ...]:
        return (f"--database={self.pg.url(self.database, password=False)}", f"--database-password-file={self.password_file}", *more)

    async def call(self, server: ServerProcess, path: str, body: dict, credential: str | None = None):
        from wire.client import make_http_client

        http = make_http_client(reactor, persistent=False, tls_fingerprint=server.fingerprint)
        headers = {"Authorization": [f"Bearer {credential}"]} if credential else None
        response = await http.post(server.url + path, data=json.dumps(body).encode(), headers=headers, timeout=5)
        return response.code, json.loads(await response.content())

    async def test_an_enrolled_node_needs_no_rejoin(self):
        from wire.jointoken import decode_join_token

        old = ServerProcess(self, self.data_dir)
        await old.start()
        with open(os.path.join(self.data_dir, "first-join.txt")) as f:
            (command,) = [line for line in f.read().splitlines() if line and not line.startswith("#")]
        token = decode_join_token(command.rsplit(" ", 1)[1])
        code, enrolled = await self.call(old, "/enroll", {**body_for("web1"), "join_key": token.secret})
        self.assertEqual(code, 200, enrolled)
        fingerprint = old.fingerprint
        await old.kill(signal.SIGKILL)

        moved = ServerProcess(self, self.data_dir, port=old.port, extra_args=self.database_args(f"--import-sqlite={self.data_dir}"))
        await moved.start()
        self.assertIn("imported", moved.output)
        self.assertEqual(moved.fingerprint, fingerprint, "the certificate nodes pinned")
        code, again = await self.call(moved, "/register", body_for("web1"), credential=enrolled["credential"])
        self.assertEqual(code, 200, again)
        self.assertEqual((again["vpn_ip"], again["node_name"]), (enrolled["vpn_ip"], "web1"))
        await moved.stop()

        # The same command again: nothing to do, and it serves.
        again_server = ServerProcess(self, self.data_dir, port=old.port, extra_args=self.database_args(f"--import-sqlite={self.data_dir}"))
        await again_server.start()
        self.assertIn("was imported before: nothing to do", again_server.output)
        await again_server.stop()

        # Another registry into this database, which holds a mesh now: refused in one line.
        other_dir = short_dir(self)
        other = ServerProcess(self, other_dir, extra_args=("--open",))
        await other.start()
        await other.stop()
        refused = ServerProcess(self, short_dir(self), extra_args=self.database_args(f"--import-sqlite={other_dir}"))
        exit_code = await refused.spawn().ended
        self.assertNotEqual(exit_code, 0)
        self.assertIn("the database already holds a mesh (1 nodes, 1 join_keys, 1 credentials)", refused.output)
        self.assertNotIn("Traceback", refused.output)
        self.assertNotIn(pgcluster.PASSWORD, moved.output + refused.output)
