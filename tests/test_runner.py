"""Tests for wire.runner: real processes, clock-driven protocol logic, the fake."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.fakes import FakeProcessRunner, FakeRunningProcess, PassThroughRunner, UnexpectedCommand, missing_programs
from wire.runner import (
    CommandFailed,
    CommandNotFound,
    CommandTimeout,
    IProcessRunner,
    IRunningProcess,
    ProcessResult,
    ProcessRunner,
    describe_exit,
)

# A child that cannot be ended politely: it says so once its handler is in.
IGNORE_TERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(60)\n"
)


def process_gone(pid: int) -> bool:
    """True once pid no longer exists or is only a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll predicate every 20 ms; fail after timeout seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"still waiting after {timeout}s for {what}")
        await deferLater(reactor, 0.02)


class ProcessResultTests(SynchronousTestCase):
    def test_check_passes_success_through(self) -> None:
        result = ProcessResult(("true",), 0, b"", b"")
        self.assertIs(result.check(), result)

    def test_check_names_command_code_and_stderr_tail(self) -> None:
        result = ProcessResult(("ip", "link", "add", "x"), 2, b"", b"one\ntwo\n\nthree\nfour\n")
        error = self.assertRaises(CommandFailed, result.check)
        self.assertEqual(str(error), "command `ip link add x` exited with code 2: two | three | four")
        self.assertIs(error.result, result)

    def test_describe_exit_by_signal(self) -> None:
        self.assertEqual(describe_exit(-9), "was killed by SIGKILL")
        self.assertEqual(describe_exit(0), "exited with code 0")


class ProcessRunnerTests(TestCase):
    """The real runner, on real programs."""

    def setUp(self) -> None:
        self.runner = ProcessRunner(reactor, kill_after=1.0)

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IProcessRunner, self.runner))

    async def test_true(self) -> None:
        result = await self.runner.run(["true"])
        self.assertEqual(result, ProcessResult(("true",), 0, b"", b""))

    async def test_false(self) -> None:
        result = await self.runner.run(["false"])
        self.assertEqual(result.rc, 1)
        self.assertRaises(CommandFailed, result.check)

    async def test_failure_message_quotes_stderr(self) -> None:
        script = "import sys; sys.stderr.write('warming up\\nno such device\\n'); sys.exit(3)"
        result = await self.runner.run([sys.executable, "-c", script])
        error = self.assertRaises(CommandFailed, result.check)
        self.assertIn("exited with code 3", str(error))
        self.assertIn("no such device", str(error))

    async def test_stdin_is_fed_then_closed(self) -> None:
        result = await self.runner.run(["cat"], stdin=b"private key\n")
        self.assertEqual(result.stdout, b"private key\n")

    async def test_no_stdin_means_eof(self) -> None:
        result = await self.runner.run(["cat"], timeout=5)
        self.assertEqual((result.rc, result.stdout), (0, b""))

    async def test_env_adds_to_inherited_environment(self) -> None:
        result = await self.runner.run(["env"], env={"WIRE_TEST_VARIABLE": "42"})
        lines = result.stdout.decode().splitlines()
        self.assertIn("WIRE_TEST_VARIABLE=42", lines)
        self.assertIn(f"PATH={os.environ['PATH']}", lines)

    async def test_missing_program(self) -> None:
        with self.assertRaises(CommandNotFound) as caught:
            await self.runner.run(["wire-no-such-program", "--help"])
        self.assertIn("wire-no-such-program", str(caught.exception))

    async def test_timeout_ends_process(self) -> None:
        with self.assertRaises(CommandTimeout) as caught:
            await self.runner.run(["sleep", "10"], timeout=0.5)
        self.assertIn("sleep 10", str(caught.exception))
        self.assertTrue(process_gone(caught.exception.pid))

    async def test_start_and_stop(self) -> None:
        process = self.runner.start(["sleep", "30"])
        self.addCleanup(process.kill, signal.SIGKILL)
        self.assertTrue(verifyObject(IRunningProcess, process))
        self.assertTrue(process.running)
        rc = await process.stop(timeout=5)
        self.assertEqual(rc, -signal.SIGTERM)
        self.assertEqual(process.rc, -signal.SIGTERM)
        self.assertFalse(process.running)
        self.assertTrue(process_gone(process.pid))

    async def test_stop_kills_process_that_ignores_term(self) -> None:
        process = self.runner.start([sys.executable, "-c", IGNORE_TERM])
        self.addCleanup(process.kill, signal.SIGKILL)
        await wait_for(lambda: "ignoring SIGTERM" in process.tail, "the child's SIGTERM handler")
        rc = await process.stop(timeout=0.5)
        self.assertEqual(rc, -signal.SIGKILL)
        self.assertTrue(process_gone(process.pid))

    async def test_output_goes_to_log_and_tail(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        script = "import sys; print('hello'); print('world', file=sys.stderr)"
        process = self.runner.start([sys.executable, "-c", script], log_prefix="greeter")
        rc = await process.when_exited()
        self.assertEqual(rc, 0)
        self.assertEqual(sorted(process.tail), ["hello", "world"])
        lines = {(e["stream"], e["line"]) for e in events if e.get("prefix") == "greeter" and "line" in e}
        self.assertEqual(lines, {("stdout", "hello"), ("stderr", "world")})

    async def test_unexpected_exit_is_a_warning(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        process = self.runner.start([sys.executable, "-c", "print('bye'); raise SystemExit(4)"])
        self.assertEqual(await process.when_exited(), 4)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn and e.get("pid") == process.pid]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["tail"], ["bye"])

    def test_start_missing_program(self) -> None:
        self.assertRaises(CommandNotFound, self.runner.start, ["wire-no-such-daemon"])


class FakeProcessTransport:
    """Just enough of a process transport for the protocols under test."""

    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.written: list[bytes] = []
        self.stdin_closed = False
        self.signals: list[int] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, signal_number: int) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(signal_number)


class FakeProcessReactor(Clock):
    """A Clock whose spawnProcess connects protocols to FakeProcessTransports."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[object, FakeProcessTransport, tuple[str, ...]]] = []

    def spawnProcess(self, protocol, executable, args=(), env=None, **kwargs):  # type: ignore[no-untyped-def]
        transport = FakeProcessTransport(pid=4000 + len(self.spawned))
        self.spawned.append((protocol, transport, tuple(args)))
        protocol.makeConnection(transport)
        return transport

    def end(self, index: int, reason: Exception) -> None:
        """Make spawned process number index exit."""
        protocol, transport, _ = self.spawned[index]
        transport.pid = None
        protocol.processEnded(Failure(reason))  # type: ignore[attr-defined]


class ClockDrivenTests(SynchronousTestCase):
    """Timeouts and escalation, with time in the test's hands."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.runner = ProcessRunner(self.reactor, kill_after=5)

    def test_stdin_written_then_closed(self) -> None:
        self.runner.run(["cat"], stdin=b"secret")
        _, transport, args = self.reactor.spawned[0]
        self.assertEqual((transport.written, transport.stdin_closed, args), ([b"secret"], True, ("cat",)))

    def test_timeout_sends_term_then_kill(self) -> None:
        result = self.runner.run(["sleep", "10"], timeout=3)
        _, transport, _ = self.reactor.spawned[0]
        self.reactor.advance(2.9)
        self.assertEqual(transport.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(transport.signals, [signal.SIGTERM])
        self.reactor.advance(5)
        self.assertEqual(transport.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertNoResult(result)  # not until the process is really gone
        self.reactor.end(0, ProcessTerminated(signal=signal.SIGKILL))
        error = self.failureResultOf(result, CommandTimeout).value
        self.assertEqual((error.timeout, error.pid), (3, 4000))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_exit_before_timeout_cancels_timer(self) -> None:
        result = self.runner.run(["true"], timeout=3)
        self.reactor.end(0, ProcessDone(0))
        self.assertEqual(self.successResultOf(result).rc, 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_kill_when_term_was_enough(self) -> None:
        result = self.runner.run(["sleep", "10"], timeout=1)
        self.reactor.advance(1)
        self.reactor.end(0, ProcessTerminated(signal=signal.SIGTERM))
        self.failureResultOf(result, CommandTimeout)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor.spawned[0][1].signals, [signal.SIGTERM])

    def test_cancel_ends_process(self) -> None:
        result = self.runner.run(["sleep", "10"], timeout=None)
        result.cancel()
        self.failureResultOf(result, CancelledError)
        _, transport, _ = self.reactor.spawned[0]
        self.assertEqual(transport.signals, [signal.SIGTERM])
        self.reactor.end(0, ProcessTerminated(signal=signal.SIGTERM))  # late exit is ignored
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_escalates_to_kill(self) -> None:
        process = self.runner.start(["sleep", "10"])
        _, transport, _ = self.reactor.spawned[0]
        stopped = process.stop(timeout=2)
        second = process.stop(timeout=2)  # stopping twice does not restart the clock
        self.assertEqual(transport.signals, [signal.SIGTERM])
        self.reactor.advance(2)
        self.assertEqual(transport.signals, [signal.SIGTERM, signal.SIGKILL])
        self.reactor.end(0, ProcessTerminated(signal=signal.SIGKILL))
        self.assertEqual(self.successResultOf(stopped), -signal.SIGKILL)
        self.assertEqual(self.successResultOf(second), -signal.SIGKILL)
        self.assertEqual(self.successResultOf(process.stop()), -signal.SIGKILL)

    def test_output_lines_are_bounded(self) -> None:
        process = self.runner.start(["yes"])
        protocol, _, _ = self.reactor.spawned[0]
        protocol.outReceived(b"x" * 10_000)  # type: ignore[attr-defined]
        protocol.outReceived(b"\r\nshort\npartial")  # type: ignore[attr-defined]
        self.assertEqual([len(line) for line in process.tail], [4096, 4096, 1808, 0, 5])
        self.reactor.end(0, ProcessDone(0))
        self.assertEqual(process.tail[-1], "partial")

    def test_tail_keeps_last_lines_only(self) -> None:
        process = self.runner.start(["yes"])
        protocol, _, _ = self.reactor.spawned[0]
        protocol.outReceived(b"".join(b"line %d\n" % n for n in range(100)))  # type: ignore[attr-defined]
        self.assertEqual(process.tail, [f"line {n}" for n in range(80, 100)])


class FakeProcessRunnerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = FakeProcessRunner()

    def test_provides_interfaces(self) -> None:
        self.assertTrue(verifyObject(IProcessRunner, self.runner))
        self.assertTrue(verifyObject(IRunningProcess, self.runner.expect_start(["wireguard-go", "-f", "wg0"])))

    def test_a_scripted_command_can_act(self) -> None:
        acted: list[str] = []
        self.runner.expect(["twistd", "wire-node"], then=lambda: acted.append("daemon started"))
        self.successResultOf(self.runner.run(["twistd", "wire-node"]))
        self.assertEqual(acted, ["daemon started"])
        self.runner.assert_all_called()

    def test_scripted_answers_in_order(self) -> None:
        self.runner.expect(["wg", "show", "wire0", "dump"], stdout=b"dump\n")
        self.runner.expect(["ip", "link", "del", "wire0"], stderr=b"Cannot find device", rc=1)
        first = self.successResultOf(self.runner.run(["wg", "show", "wire0", "dump"]))
        second = self.successResultOf(self.runner.run(("ip", "link", "del", "wire0")))
        self.assertEqual(first, ProcessResult(("wg", "show", "wire0", "dump"), 0, b"dump\n", b""))
        self.assertEqual((second.rc, second.stderr), (1, b"Cannot find device"))
        self.runner.assert_all_called()

    def test_unexpected_command_shows_expected_and_got(self) -> None:
        self.runner.expect(["wg", "show", "wire0", "dump"])
        failure = self.failureResultOf(self.runner.run(["wg", "show", "wire1", "dump"]), UnexpectedCommand)
        self.assertEqual(
            str(failure.value),
            "unexpected command\n"
            "  expected: run `wg show wire0 dump`\n"
            "  got:      run `wg show wire1 dump`",
        )

    def test_unexpected_command_fails_assert_all_called_even_if_swallowed(self) -> None:
        self.runner.run(["ip", "link"]).addErrback(lambda _: None)
        error = self.assertRaises(AssertionError, self.runner.assert_all_called)
        self.assertIn("expected: nothing more", str(error))
        self.assertIn("got:      run `ip link`", str(error))

    def test_assert_all_called_lists_what_was_not_called(self) -> None:
        self.runner.expect(["wg", "syncconf", "wire0", "/dev/stdin"])
        error = self.assertRaises(AssertionError, self.runner.assert_all_called)
        self.assertIn("run `wg syncconf wire0 /dev/stdin`", str(error))

    def test_records_stdin_and_env(self) -> None:
        self.runner.expect(["wg", "set", "wire0", "private-key", "/dev/stdin"])
        self.runner.run(["wg", "set", "wire0", "private-key", "/dev/stdin"], stdin=b"KEY", env={"A": "1"})
        [call] = self.runner.calls
        self.assertEqual((call.kind, call.stdin, call.env), ("run", b"KEY", {"A": "1"}))

    def test_scripted_error(self) -> None:
        self.runner.expect(["sleep", "10"], error=CommandTimeout(["sleep", "10"], 1, 77))
        self.failureResultOf(self.runner.run(["sleep", "10"]), CommandTimeout)

    def test_start_hands_out_scripted_process(self) -> None:
        scripted = self.runner.expect_start(["wireguard-go", "-f", "wg0"])
        process = self.runner.start(["wireguard-go", "-f", "wg0"], log_prefix="wg")
        self.assertIs(process, scripted)
        exited = process.when_exited()
        process.kill(signal.SIGHUP)
        self.assertNoResult(exited)
        self.assertEqual(self.successResultOf(process.stop()), -signal.SIGTERM)
        self.assertEqual(self.successResultOf(exited), -signal.SIGTERM)
        self.assertEqual(process.signals, [signal.SIGHUP, signal.SIGTERM])
        self.runner.assert_all_called()

    def test_fake_process_can_crash(self) -> None:
        process = self.runner.expect_start(["wireguard-go", "-f", "wg0"])
        self.assertIsInstance(process, FakeRunningProcess)
        process.exit(1)
        self.assertEqual((process.running, process.rc), (False, 1))
        self.assertEqual(self.successResultOf(process.when_exited()), 1)

    def test_start_instead_of_run_is_unexpected(self) -> None:
        self.runner.expect(["wireguard-go", "-f", "wg0"])
        error = self.assertRaises(UnexpectedCommand, self.runner.start, ["wireguard-go", "-f", "wg0"])
        self.assertIn("got:      start `wireguard-go -f wg0`", str(error))


class PassThroughRunnerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.inner = FakeProcessRunner()
        self.addCleanup(self.inner.assert_all_called)

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IProcessRunner, PassThroughRunner(self.inner)))

    def test_commands_go_to_the_inner_runner_behind_the_prefix(self) -> None:
        runner = PassThroughRunner(self.inner, prefix=("ip", "netns", "exec", "ns1"))
        self.inner.expect(["ip", "netns", "exec", "ns1", "wg", "show"], stdout=b"ok")
        started = self.inner.expect_start(["ip", "netns", "exec", "ns1", "wireguard-go", "-f", "wg0"])
        self.assertEqual(self.successResultOf(runner.run(["wg", "show"], stdin=b"in")).stdout, b"ok")
        self.assertIs(runner.start(["wireguard-go", "-f", "wg0"]), started)
        self.assertEqual(self.inner.calls[0].stdin, b"in")

    def test_inspect_sees_the_callers_argv_and_may_fail_it(self) -> None:
        seen: list[tuple[str, ...]] = []

        def inspect(argv: tuple[str, ...]) -> None:
            seen.append(argv)
            if argv[0] == "nft":
                raise CommandFailed(ProcessResult(argv, 1, b"", b"injected"))

        runner = PassThroughRunner(self.inner, prefix=("sudo",), inspect=inspect)
        self.failureResultOf(runner.run(["nft", "-f", "-"]), CommandFailed)
        self.assertEqual(seen, [("nft", "-f", "-")])
        self.assertEqual(self.inner.calls, [], "a failed command is not handed on")

    def test_missing_programs(self) -> None:
        runner = PassThroughRunner(self.inner, inspect=missing_programs("wireguard-go"))
        self.assertRaises(CommandNotFound, runner.start, ["wireguard-go", "-f", "wg0"])
        self.failureResultOf(runner.run(["wireguard-go", "--version"]), CommandNotFound)
        self.inner.expect(["wg", "show"])
        self.successResultOf(runner.run(["wg", "show"]))
