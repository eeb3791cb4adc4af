"""Routine commands stay out of the log unless WIRE_DEBUG asks for them."""

from __future__ import annotations

import os
import sys
from unittest import mock

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from wire.debuglog import DEBUG_VARIABLE, logger
from wire.runner import ProcessRunner


def _levels(events: EventLoggingObserver) -> list[tuple[LogLevel, str]]:
    return [(e["log_level"], e["log_format"]) for e in events]


class DebugLoggerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.log = logger("wire.test")

    def test_debug_is_dropped_by_default_other_levels_pass(self) -> None:
        with mock.patch.dict(os.environ, {DEBUG_VARIABLE: ""}):
            self.log.debug("routine")
            self.log.info("state change")
            self.log.warn("trouble")
        self.assertEqual(_levels(self.events), [(LogLevel.info, "state change"), (LogLevel.warn, "trouble")])
        self.assertEqual(self.events[0]["log_namespace"], "wire.test")

    def test_wire_debug_lets_debug_through(self) -> None:
        with mock.patch.dict(os.environ, {DEBUG_VARIABLE: "1"}):
            self.log.debug("routine {what}", what="poll")
        self.assertEqual(_levels(self.events), [(LogLevel.debug, "routine {what}")])

    def test_zero_means_off(self) -> None:
        with mock.patch.dict(os.environ, {DEBUG_VARIABLE: "0"}):
            self.log.debug("routine")
        self.assertEqual(len(self.events), 0)


class RunnerLoggingTests(TestCase):
    """The runner: a command run is debug; a process started is info."""

    async def run_and_start(self) -> EventLoggingObserver:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        runner = ProcessRunner(reactor)
        (await runner.run([sys.executable, "-c", "pass"])).check()
        process = runner.start([sys.executable, "-c", "pass"], log_prefix="quick")
        await process.when_exited()
        return events

    async def test_a_routine_command_is_not_logged(self) -> None:
        with mock.patch.dict(os.environ, {DEBUG_VARIABLE: ""}):
            events = await self.run_and_start()
        formats = [e["log_format"] for e in events]
        self.assertNotIn("running {command}", formats)
        self.assertIn("started {prefix} (pid {pid}): {command}", formats)
        self.assertTrue(all(e["log_level"] is not LogLevel.debug for e in events))

    async def test_with_wire_debug_every_command_is(self) -> None:
        with mock.patch.dict(os.environ, {DEBUG_VARIABLE: "1"}):
            events = await self.run_and_start()
        [running] = [e for e in events if e["log_format"] == "running {command}"]
        self.assertIs(running["log_level"], LogLevel.debug)
        self.assertIn("-c pass", running["command"])
