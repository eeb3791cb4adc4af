"""The node daemon's log file: what the network says reaches it escaped, one
event a line; a traceback stays readable."""

from __future__ import annotations

import io
import os
import sys

from twisted.logger import Logger
from twisted.trial import unittest

from wire.node import logfile

# Clears the screen, forges a line of its own, reverses what follows.
HOSTILE = "db1\x1b[2J\r\nFAKE LINE\u202e\tx"
SHOWN = "db1\\x1b[2J\\r\\nFAKE LINE\\u202e\tx"


class LogFileEscapingTests(unittest.TestCase):
    def setUp(self):
        self.out = io.StringIO()
        self.log = Logger(namespace="wire.node.daemon", observer=logfile.log_observer(self.out))

    def test_a_hostile_name_is_escaped_into_one_line(self):
        self.log.info("peer {name} joined", name=HOSTILE)
        text = self.out.getvalue()
        self.assertTrue(text.endswith(f" [wire.node.daemon#info] peer {SHOWN} joined\n"), text)
        self.assertEqual(text.count("\n"), 1, "one event, one line")
        for control in "\x1b\r\u202e":
            self.assertNotIn(control, text)

    def test_a_traceback_keeps_its_lines_each_escaped(self):
        try:
            raise RuntimeError(f"the server said {HOSTILE}")
        except RuntimeError:
            self.log.failure("netmap sync failed for {name}", name=HOSTILE)
        self.flushLoggedErrors(RuntimeError)
        first, *rest = self.out.getvalue().split("\n")
        self.assertTrue(first.endswith(f" [wire.node.daemon#critical] netmap sync failed for {SHOWN}"), first)
        self.assertEqual(rest[0], "\tTraceback (most recent call last):")
        self.assertEqual(rest[-1], "", "the event ends with its newline")
        self.assertTrue(all(line.startswith("\t") for line in rest[:-1]), "every line of the traceback is a continuation")
        # The exception's own newline stays a line of the traceback: indented, it forges no event.
        self.assertEqual(rest[-3:-1], ["\tbuiltins.RuntimeError: the server said db1\\x1b[2J\\r", "\tFAKE LINE\\u202e\tx"])
        self.assertNotIn("\x1b", self.out.getvalue())

    def test_the_observer_twistd_starts_writes_the_escaped_form(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "wire-node.log")
        self.patch(os, "environ", {**os.environ, logfile.LOG_PATH_VARIABLE: path})
        Logger(namespace="wire.node.daemon", observer=logfile.observer()).warn("node name {name} refused", name=HOSTILE)
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].endswith(f"node name {SHOWN} refused"), lines)

    def test_an_event_without_text_writes_nothing(self):
        logfile.log_observer(self.out)({"log_namespace": "x"})
        self.assertEqual(self.out.getvalue(), "")

    def test_a_daemon_in_the_foreground_logs_escaped_to_stdout(self):
        # Under systemd the journal reads stdout: the same lines as the file.
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        Logger(namespace="wire.node.daemon", observer=logfile.stdout_observer()).info("peer {name}", name=HOSTILE)
        self.assertTrue(out.getvalue().endswith(f"peer {SHOWN}\n"), out.getvalue())
