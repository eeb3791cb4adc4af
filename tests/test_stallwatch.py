"""wire.stallwatch: a timer's lateness measured, stalls counted and logged
sparingly; in memory on a fake clock, and on a real twistd wire-server's
/metrics."""

from __future__ import annotations

import shutil
import tempfile
import time

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from tests.serverproc import ServerProcess
from wire.stallwatch import INTERVAL, LOG_EVERY, StallWatch


class StallWatchTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.lateness: list[float] = []
        self.stalls: list[float] = []
        self.watch = StallWatch(self.clock, on_lateness=self.lateness.append, on_stall=self.stalls.append)
        self.watch.startService()
        self.addCleanup(self.watch.stopService)

    def test_a_reactor_on_time_is_late_by_nothing(self):
        self.clock.pump([INTERVAL] * 8)
        self.assertEqual(self.lateness, [0.0] * 8)
        self.assertEqual(self.stalls, [])

    def test_a_stall_is_measured_counted_and_logged_once_a_minute(self):
        with capturedLogs() as events:
            self.clock.advance(INTERVAL + 3.0)  # the reactor held for 3 s past the timer
            self.clock.pump([INTERVAL] * 4)
            self.clock.advance(INTERVAL + 2.0)  # again, soon after: counted, not logged
            self.clock.advance(LOG_EVERY)
        self.assertEqual(self.stalls, [3.0, 2.0, LOG_EVERY - INTERVAL])
        self.assertEqual(self.watch.worst, LOG_EVERY - INTERVAL)
        lines = [e for e in events if "late" in e.get("log_format", "")]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[0]["late"], 3.0)
        self.assertEqual(lines[1]["more"], " (1 more since the last such line)")

    def test_stopped_it_leaves_no_timer(self):
        self.watch.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ServerStallTests(unittest.TestCase):
    """A real server, its reactor held by SIGSTOP: /metrics shows the stall."""

    timeout = 60

    async def test_a_held_reactor_shows_in_metrics(self):
        data_dir = tempfile.mkdtemp(prefix="wire-stall-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        server = ServerProcess(self, data_dir, extra_args=("--open",))
        await server.start()
        self.addCleanup(server.stop)
        server.pause()
        self.addCleanup(server.resume)
        time.sleep(1.5)  # the whole process, its reactor with it, stands still
        server.resume()
        response = await server.client().get(f"{server.url}/metrics", timeout=10)
        text = (await response.content()).decode()
        stalls = [line for line in text.splitlines() if line.startswith("wire_reactor_stalls_total ")]
        self.assertEqual(len(stalls), 1, text[-2000:])
        self.assertGreaterEqual(float(stalls[0].split()[1]), 1.0)
        self.assertIn("wire_reactor_lateness_seconds", text)
