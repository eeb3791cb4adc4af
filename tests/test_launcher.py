"""Starting and stopping the node daemon: twistd or systemd, scripted; and
the pidfile handling against real child processes."""

from __future__ import annotations

import os
import shlex
import signal
import sys

from twisted.internet import reactor
from twisted.trial import unittest

from tests.test_daemon import eventually
from tests.fakes import FakeProcessRunner
from wire.node import launcher
from wire.runner import ProcessRunner
from wire.twistd import twistd_argv

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CommandLineTests(unittest.TestCase):
    def test_background_twistd_keeps_pid_and_log_in_the_config_dir(self):
        self.assertEqual(
            launcher.node_argv("/srv/n1", foreground=False),
            twistd_argv() + ["--pidfile=/srv/n1/wire-node.pid", "--logger=wire.node.logfile.observer", "wire-node", "--config-dir=/srv/n1"],
        )

    def test_the_log_rotates_and_keeps_five_old_files_at_most(self):
        from wire.node.logfile import LOG_KEEP, LOG_ROTATE_BYTES, open_log

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        log = open_log(os.path.join(directory, "wire-node.log"))
        line = "x" * 999 + "\n"
        for _ in range(12 * LOG_ROTATE_BYTES // len(line)):
            log.write(line)
        log.close()
        names = sorted(os.listdir(directory))
        self.assertEqual(names, ["wire-node.log"] + [f"wire-node.log.{i}" for i in range(1, LOG_KEEP + 1)])
        self.assertEqual(os.stat(os.path.join(directory, "wire-node.log")).st_mode & 0o777, 0o600)

    def test_foreground_for_systemd(self):
        self.assertEqual(
            launcher.node_argv("/etc/wire", foreground=True),
            twistd_argv() + ["--nodaemon", "--pidfile=", "--logger=wire.node.logfile.stdout_observer", "wire-node", "--config-dir=/etc/wire"],
        )

    def test_unit_file(self):
        text = launcher.unit_text("/etc/wire")
        lines = text.splitlines()
        self.assertIn("ExecStart=" + shlex.join(launcher.node_argv("/etc/wire", foreground=True)), lines)
        self.assertIn("Restart=always", lines)
        self.assertIn("KillMode=process", lines, "wireguard-go outlives a daemon restart")
        self.assertIn("WantedBy=multi-user.target", lines)
        (environment,) = [line for line in lines if line.startswith("Environment=")]
        # systemd's environment is bare: the unit says where wire is.
        self.assertIn(CHECKOUT, shlex.split(environment.removeprefix("Environment="))[0])


class SystemdDetectionTests(unittest.TestCase):
    def comm(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_pid_1(self):
        self.assertTrue(launcher.systemd_is_init(self.comm("systemd\n")))
        self.assertFalse(launcher.systemd_is_init(self.comm("init\n")))
        self.assertFalse(launcher.systemd_is_init("/nonexistent/comm"))

    def test_only_the_system_config_dir_gets_a_unit(self):
        self.patch(launcher, "systemd_is_init", lambda: True)
        self.assertTrue(launcher.uses_systemd("/etc/wire"))
        self.assertTrue(launcher.uses_systemd("/etc/wire/"))
        self.assertFalse(launcher.uses_systemd("/tmp/lab/node1"))
        self.patch(launcher, "systemd_is_init", lambda: False)
        self.assertFalse(launcher.uses_systemd("/etc/wire"))


class StartTests(unittest.TestCase):
    def setUp(self):
        self.runner = FakeProcessRunner()
        self.config_dir = self.mktemp()

    async def test_twistd(self):
        self.runner.expect(launcher.node_argv(self.config_dir, foreground=False))
        self.assertEqual(await launcher.start_daemon(self.runner, self.config_dir), "twistd")
        self.runner.assert_all_called()
        self.assertIn(CHECKOUT, self.runner.calls[0].env["PYTHONPATH"].split(os.pathsep))

    async def test_twistd_failure_says_why(self):
        self.runner.expect(launcher.node_argv(self.config_dir, foreground=False), rc=1, stderr=b"Another twistd server is running, PID 42\n")
        with self.assertRaises(launcher.LaunchError) as caught:
            await launcher.start_daemon(self.runner, self.config_dir)
        self.assertEqual(str(caught.exception), "the node daemon did not start: Another twistd server is running, PID 42")
        self.runner.expect(launcher.node_argv(self.config_dir, foreground=False), rc=1)
        with self.assertRaises(launcher.LaunchError) as caught:
            await launcher.start_daemon(self.runner, self.config_dir)
        self.assertEqual(str(caught.exception), "the node daemon did not start: exit code 1")

    async def test_systemd_installs_and_enables_a_unit(self):
        self.patch(launcher, "systemd_is_init", lambda: True)
        unit_path = self.mktemp()
        self.runner.expect(["systemctl", "daemon-reload"])
        self.runner.expect(["systemctl", "enable", "--now", "wire-node.service"])
        self.assertEqual(await launcher.start_daemon(self.runner, "/etc/wire", unit_path=unit_path), "systemd")
        self.runner.assert_all_called()
        with open(unit_path) as f:
            self.assertEqual(f.read(), launcher.unit_text("/etc/wire"))
        self.assertEqual(os.stat(unit_path).st_mode & 0o777, 0o644)

    async def test_systemctl_failure_says_why(self):
        self.patch(launcher, "systemd_is_init", lambda: True)
        self.runner.expect(["systemctl", "daemon-reload"])
        self.runner.expect(["systemctl", "enable", "--now", "wire-node.service"], rc=1, stderr=b"Failed to enable unit: Access denied\n")
        with self.assertRaises(launcher.LaunchError) as caught:
            await launcher.start_daemon(self.runner, "/etc/wire", unit_path=self.mktemp())
        self.assertEqual(str(caught.exception), "systemctl enable --now wire-node.service failed: Failed to enable unit: Access denied")

    async def test_systemd_stop_disables_the_unit_even_when_there_is_none(self):
        self.patch(launcher, "systemd_is_init", lambda: True)
        self.runner.expect(["systemctl", "disable", "--now", "wire-node.service"], rc=1, stderr=b"Unit file wire-node.service does not exist.\n")
        await launcher.stop_daemon(self.runner, reactor, "/etc/wire")
        self.runner.assert_all_called()


class PidfileTests(unittest.TestCase):
    """daemon_pid and stop_daemon against real child processes."""

    timeout = 30

    def setUp(self):
        self.config_dir = self.mktemp()
        os.makedirs(self.config_dir)

    def write_pidfile(self, pid) -> None:
        with open(os.path.join(self.config_dir, launcher.PIDFILE), "w") as f:
            f.write(f"{pid}\n")

    def start_child(self, ignore_sigterm: bool = False):
        """A process whose command line says wire-node, like the daemon's."""
        code = "import signal, sys\n"
        if ignore_sigterm:
            code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        code += "print('ready', flush=True)\nsignal.pause()\n"
        process = ProcessRunner(reactor).start([sys.executable, "-c", code, "wire-node"], log_prefix="fake-daemon")
        self.addCleanup(process.stop, 1.0)
        self.write_pidfile(process.pid)
        return process

    def test_no_pidfile_or_garbage(self):
        self.assertIsNone(launcher.daemon_pid(self.config_dir))
        self.write_pidfile("not a pid")
        self.assertIsNone(launcher.daemon_pid(self.config_dir))

    def test_stale_pid_of_another_program_is_not_ours(self):
        self.write_pidfile(os.getpid())  # alive, but trial, not wire-node
        self.assertIsNone(launcher.daemon_pid(self.config_dir))

    async def test_stop_sends_sigterm_and_waits(self):
        process = self.start_child()
        await eventually(lambda: process.tail == ["ready"])
        self.assertEqual(launcher.daemon_pid(self.config_dir), process.pid)
        await launcher.stop_daemon(FakeProcessRunner(), reactor, self.config_dir)
        self.assertEqual(await process.when_exited(), -signal.SIGTERM)
        self.assertIsNone(launcher.daemon_pid(self.config_dir))

    async def test_a_daemon_that_ignores_sigterm_is_killed(self):
        process = self.start_child(ignore_sigterm=True)
        await eventually(lambda: process.tail == ["ready"])
        self.assertFalse(await launcher.wait_for_exit(reactor, self.config_dir, timeout=0.2))
        self.assertEqual(await process.when_exited(), -signal.SIGKILL)

    def test_log_tail(self):
        self.assertEqual(launcher.log_tail(self.config_dir), "")
        with open(os.path.join(self.config_dir, launcher.LOGFILE), "w") as f:
            f.write("".join(f"line {i}\n" for i in range(20)))
        self.assertEqual(launcher.log_tail(self.config_dir, lines=2), "line 18\nline 19\n")
