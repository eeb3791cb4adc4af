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
