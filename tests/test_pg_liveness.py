"""The database hears of a vanished replica within seconds, on a real
PostgreSQL (tests.pgcluster): each of a replica's sessions asks the server
to probe its own end (TCP keepalive, a TCP user timeout), as the replica
probes the server's.

Without it a replica whose machine died, or that a partition cut off, keeps
its sessions open at the database for hours (the system's keepalive) or a
quarter of an hour of retransmissions: and with them the leader's advisory
lock, so no surviving replica takes the singleton jobs over (seen in
tests.test_replicas_lab, the silent machine).
"""

from __future__ import annotations

from twisted.trial import unittest

from tests import pgcluster
from wire.server.pgstore import PostgresEngine


class ServerSideLivenessTests(unittest.SynchronousTestCase):
    skip = pgcluster.skip_reason()

    def test_every_session_has_the_server_probe_its_end(self) -> None:
        pg, database = pgcluster.database(self)
        engine = PostgresEngine(pg.url(database, password=False), password=pgcluster.PASSWORD)
        for connection in (engine.session(), engine.connect()):
            self.addCleanup(connection.close)
            shown = {
                name: connection.execute(f"SHOW {name}").fetchone()[0]
                for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
            }
            # Ended within idle + interval * count = 4 s of silence, or 4 s of unacknowledged data.
            self.assertEqual(
                shown,
                {"tcp_keepalives_idle": "2", "tcp_keepalives_interval": "1", "tcp_keepalives_count": "2", "tcp_user_timeout": "4000"},
            )
