"""Starting the coordination server, in memory: options, the config file,
the public URL and first-join.txt, listen failures, and the server's layering
(what it imports, which reactor times its sites)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers import make_coordinator
from wire.relayproto import enlarge_socket_buffers
from wire.server.admin import Admin, build_admin_site
from wire.server.api import build_site
from wire.server.auth import Authority
from wire.server.metrics import ServerMetrics, exposition

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str) -> str:
    """Run code in a fresh interpreter (a clean sys.modules); its stdout."""
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=CHECKOUT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout


class LayeringTests(unittest.TestCase):
    def test_the_server_imports_no_node_module(self):
        loaded = run_python(
            """
            import sys
            import wire.server.tap
            print(" ".join(sorted(m for m in sys.modules if m.startswith("wire."))))
            """
        ).split()
        self.assertIn("wire.server.tap", loaded)
        self.assertEqual([m for m in loaded if m.startswith(("wire.node", "wire.ops", "wire.cli"))], [])

    def test_metrics_change_no_global_state_at_import(self):
        changed = run_python(
            """
            import prometheus_client, prometheus_client.metrics as m
            before = (m._use_created, sorted(prometheus_client.REGISTRY._names_to_collectors))
            import wire.server.metrics
            after = (m._use_created, sorted(prometheus_client.REGISTRY._names_to_collectors))
            print(before != after)
            """
        )
        self.assertEqual(changed.strip(), "False")

    def test_a_scrape_has_no_created_series(self):
        metrics = ServerMetrics()
        metrics.registrations.labels("new").inc()
        text = exposition(metrics).decode()
        self.assertIn('wire_registrations_total{outcome="new"} 1.0', text)
        self.assertNotIn("_created", text)

    def test_sites_are_timed_by_the_coordinators_clock(self):
        clock = Clock()
        coordinator = make_coordinator(self, clock=clock)
        self.assertIs(build_site(coordinator).reactor, clock)
        coordinator.authority = Authority(coordinator.store, clock)
        self.assertIs(build_admin_site(Admin(coordinator, "https://vpn.example:8787", "")).reactor, clock)

    def test_socket_buffers_are_set_through_get_handle(self):
        class Socket:
            def __init__(self):
                self.options = []

            def setsockopt(self, level, option, value):
                self.options.append(value)

        class Port:  # only the public API: no .socket attribute
            def __init__(self, sock):
                self._sock = sock

            def getHandle(self):
                return self._sock

        sock = Socket()
        enlarge_socket_buffers(Port(sock), size=12345)
        self.assertEqual(sock.options, [12345, 12345])
