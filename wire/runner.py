"""Running external programs: the one way wire starts a process.

Every program wire drives (``ip``, ``wg``, ``nft``, ``wireguard-go``, the lab's
servers) goes through an IProcessRunner: an argument list handed to
``reactor.spawnProcess``, never a shell, with secrets fed on stdin rather than
on a command line.  ``run`` is for short commands whose output the caller
wants; ``start`` supervises a long-running one whose output goes to the log.

The scripted stand-in for unit tests, FakeProcessRunner, lives in tests/fakes.py.
"""

from __future__ import annotations

import os
import shlex
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import cast

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.python.procutils import which
from zope.interface import Attribute, Interface, implementer

from wire.debuglog import logger

# Each command run is a debug event (a node runs `wg show` on every status
# poll); start, exit and failures are info and warn.
log = logger(__name__)

# Administration tools (ip, nft, sysctl) live in sbin, which a non-root PATH
# often lacks.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

# Lines of stderr quoted in a CommandFailed message.
_STDERR_LINES_QUOTED = 3


class CommandError(Exception):
    """A program could not be run to a successful end."""


class CommandNotFound(CommandError):
    """The program is neither on PATH nor in an sbin directory."""

    def __init__(self, program: str) -> None:
        super().__init__(f"program {program!r} not found on PATH or in {', '.join(_SBIN_DIRS)}")
        self.program = program


def shown_argv(argv: Sequence[str], limit: int = 300) -> str:
    """An argv as a message shows it: whole when short, else its start and
    its size (a `wg set` for 10,000 peers is a megabyte no log should hold)."""
    joined = shlex.join(argv)
    if len(joined) <= limit:
        return joined
    return f"{joined[:limit]}… ({len(argv)} words, {len(joined)} bytes)"


class CommandFailed(CommandError):
    """The program ran and exited with a non-zero code (or was killed)."""

    def __init__(self, result: ProcessResult) -> None:
        message = f"command `{shown_argv(result.argv)}` {describe_exit(result.rc)}"
        tail = _last_lines(result.stderr, _STDERR_LINES_QUOTED)
        if tail:
            message += ": " + " | ".join(tail)
        super().__init__(message)
        self.result = result


class CommandTimeout(CommandError):
    """The program outlived its timeout and was ended; it has exited since."""

    def __init__(self, argv: Sequence[str], timeout: float, pid: int | None) -> None:
        super().__init__(f"command `{shown_argv(argv)}` timed out after {timeout:g}s (pid {pid}, ended)")
        self.argv = tuple(argv)
        self.timeout = timeout
        self.pid = pid


@dataclass(frozen=True)
class ProcessResult:
    """What a finished command left behind."""

    argv: tuple[str, ...]
    rc: int  # the exit code, or minus the number of the signal that ended it
    stdout: bytes
    stderr: bytes

    def check(self) -> ProcessResult:
        """Return self, or raise CommandFailed when the command did not succeed."""
        if self.rc != 0:
            raise CommandFailed(self)
        return self


def describe_exit(rc: int) -> str:
    """Say how a process ended, from an rc as ProcessResult holds it."""
    if rc >= 0:
        return f"exited with code {rc}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    return f"was killed by {name}"


def find_program(name: str) -> str:
    """Return the path of the executable for argv[0], or raise CommandNotFound."""
    if os.sep in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        raise CommandNotFound(name)
    found = which(name)
    if found:
        return found[0]
    for directory in _SBIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CommandNotFound(name)


class IRunningProcess(Interface):
    """A supervised long-running process."""

    argv = Attribute("tuple[str, ...]: the command line it was started with")
    pid = Attribute("int: its process id, kept after it has exited")
    rc = Attribute("int | None: how it ended (as ProcessResult.rc), None while running")
    running = Attribute("bool: True until it has exited")
    tail = Attribute("list[str]: its last lines of output, for error messages")

    def when_exited() -> Deferred[int]:
        """A new Deferred that fires with rc once the process has exited."""

    def kill(signal_number: int) -> None:
        """Send a signal, if the process is still running."""

    def stop(timeout: float = 5.0) -> Deferred[int]:
        """SIGTERM, then SIGKILL after timeout seconds; fires with rc on exit."""


class IProcessRunner(Interface):
    """Runs external programs from argument lists, never through a shell."""

    def run(
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 30,
    ) -> Deferred[ProcessResult]:
        """
        Run a command to its end and collect its output.

        stdin is written to the program and then closed (the program sees
        EOF at once when it is None); env adds to the inherited environment.
        The Deferred fails with CommandNotFound, or with CommandTimeout once
        a program that outlived timeout has been ended.  A non-zero exit is
        not an error here: call result.check().
        """

    def start(
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_prefix: str | None = None,
    ) -> IRunningProcess:
        """
        Start a long-running program and supervise it.

        Its output goes to the log line by line, prefixed with log_prefix
        (argv[0]'s name by default).  Raises CommandNotFound.
        """


class ExitNotifier:
    """Hands out Deferreds that all fire with the exit code, once it is known."""

    def __init__(self) -> None:
        self.rc: int | None = None
        self._waiters: list[Deferred[int]] = []

    def wait(self) -> Deferred[int]:
        if self.rc is not None:
            return succeed(self.rc)
        waiter: Deferred[int] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def fire(self, rc: int) -> None:
        self.rc = rc
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:  # a waiter may have been cancelled
                waiter.callback(rc)


def _last_lines(data: bytes, count: int) -> list[str]:
    lines = data.decode("utf-8", "replace").splitlines()
    return [line.strip() for line in lines if line.strip()][-count:]


def _exit_code(reason: Failure) -> int:
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.exitCode is None:
        return -(value.signal or 0)
    return value.exitCode or 0


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(env or {})}


def _send_signal(transport: IProcessTransport, signal_number: int) -> None:
    try:
        transport.signalProcess(signal_number)
    except ProcessExitedAlready:
        pass  # it got there first; processEnded will tell


def _terminate(clock: IReactorTime, transport: IProcessTransport, grace: float) -> IDelayedCall:
    """SIGTERM now and SIGKILL after grace seconds; cancel the result on exit."""
    _send_signal(transport, signal.SIGTERM)
    return clock.callLater(grace, _send_signal, transport, signal.SIGKILL)


class _CommandProtocol(ProcessProtocol):
    """Feeds one command its stdin, collects its output, ends it on timeout."""

    def __init__(
        self,
        clock: IReactorTime,
        argv: tuple[str, ...],
        stdin: bytes | None,
        timeout: float | None,
        kill_after: float,
    ) -> None:
        # Cancelling the Deferred ends the process (it fails at once).
        self.result: Deferred[ProcessResult] = Deferred(lambda _: self._end())
        self._clock = clock
        self._argv = argv
        self._stdin = stdin
        self._timeout = timeout
        self._kill_after = kill_after
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._timers: list[IDelayedCall] = []
        self._timed_out = False
        self._pid: int | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None  # makeConnection has just set it
        self._pid = self.transport.pid
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()  # after the buffered stdin has been written
        if self._timeout is not None:
            self._timers.append(self._clock.callLater(self._timeout, self._expire))

    def outReceived(self, data: bytes) -> None:
        self._stdout.append(data)

    def errReceived(self, data: bytes) -> None:
        self._stderr.append(data)

    def processEnded(self, reason: Failure) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        if self.result.called:  # cancelled: the caller has moved on
            return
        if self._timed_out:
            assert self._timeout is not None
            self.result.errback(CommandTimeout(self._argv, self._timeout, self._pid))
            return
        self.result.callback(
            ProcessResult(self._argv, _exit_code(reason), b"".join(self._stdout), b"".join(self._stderr))
        )

    def _expire(self) -> None:
        log.warn(
            "command {command} still running after {timeout}s; ending it",
            command=shown_argv(self._argv),
            timeout=self._timeout,
        )
        self._timed_out = True
        self._end()

    def _end(self) -> None:
        # Only once connected: the process is spawned (and connected) before
        # its Deferred is handed out to be cancelled, and before any timer.
        assert self.transport is not None
        self._timers.append(_terminate(self._clock, self.transport, self._kill_after))


class _LineSplitter:
    """Cuts a byte stream into text lines, holding at most max_line bytes back."""

    def __init__(self, emit: Callable[[str], None], max_line: int = 4096) -> None:
        self._emit = emit
        self._max_line = max_line
        self._pending = b""

    def feed(self, data: bytes) -> None:
        *lines, self._pending = (self._pending + data).split(b"\n")
        if len(self._pending) > self._max_line:
            lines.append(self._pending)
            self._pending = b""
        for line in lines:
            self._emit_pieces(line)

    def flush(self) -> None:
        if self._pending:
            self._emit_pieces(self._pending)
            self._pending = b""

    def _emit_pieces(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        for start in range(0, max(len(line), 1), self._max_line):
            self._emit(line[start : start + self._max_line].decode("utf-8", "replace"))


@implementer(IRunningProcess)
class RunningProcess:
    """A long-running child: output to the log, a bounded tail kept for errors."""

    def __init__(
        self,
        clock: IReactorTime,
        transport: IProcessTransport,
        argv: tuple[str, ...],
        log_prefix: str,
        tail_lines: int = 20,
    ) -> None:
        self.argv = argv
        self.pid: int = transport.pid
        self.log_prefix = log_prefix
        self._clock = clock
        self._transport = transport
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._exit = ExitNotifier()
        self._kill_timer: IDelayedCall | None = None

    @property
    def rc(self) -> int | None:
        return self._exit.rc

    @property
    def running(self) -> bool:
        return self._exit.rc is None

    @property
    def tail(self) -> list[str]:
        return list(self._tail)

    def when_exited(self) -> Deferred[int]:
        return self._exit.wait()

    def kill(self, signal_number: int) -> None:
        if self.running:
            _send_signal(self._transport, signal_number)

    def stop(self, timeout: float = 5.0) -> Deferred[int]:
        if self.running and self._kill_timer is None:
            self._kill_timer = _terminate(self._clock, self._transport, timeout)
        return self.when_exited()

    def _on_output(self, stream: str, line: str) -> None:
        self._tail.append(line)
        log.info("[{prefix}] {line}", prefix=self.log_prefix, line=line, stream=stream, pid=self.pid)

    def _on_exit(self, rc: int) -> None:
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        fields = dict(prefix=self.log_prefix, pid=self.pid, how=describe_exit(rc))
        if self._kill_timer is None and rc != 0:
            log.warn("{prefix} (pid {pid}) {how}; last output: {tail}", tail=self.tail, **fields)
        else:
            log.info("{prefix} (pid {pid}) {how}", **fields)
        self._exit.fire(rc)


class _SupervisedProtocol(ProcessProtocol):
    """Connects a spawned process to its RunningProcess."""

    def __init__(self, clock: IReactorTime, argv: tuple[str, ...], log_prefix: str) -> None:
        self._clock = clock
        self._argv = argv
        self._log_prefix = log_prefix
        self.process: RunningProcess | None = None
        self._streams: dict[str, _LineSplitter] = {}

    def connectionMade(self) -> None:
        assert self.transport is not None  # makeConnection has just set it
        self.transport.closeStdin()  # nothing to say; let the child see EOF
        self.process = RunningProcess(self._clock, self.transport, self._argv, self._log_prefix)
        self._streams = {
            name: _LineSplitter(partial(self.process._on_output, name)) for name in ("stdout", "stderr")
        }

    def outReceived(self, data: bytes) -> None:
        self._streams["stdout"].feed(data)

    def errReceived(self, data: bytes) -> None:
        self._streams["stderr"].feed(data)

    def processEnded(self, reason: Failure) -> None:
        for splitter in self._streams.values():
            splitter.flush()
        assert self.process is not None
        self.process._on_exit(_exit_code(reason))


@implementer(IProcessRunner)
class ProcessRunner:
    """IProcessRunner on a reactor's spawnProcess and callLater."""

    def __init__(self, reactor: IReactorProcess, *, kill_after: float = 5.0) -> None:
        """
        @param reactor: provides IReactorProcess and IReactorTime.
        @param kill_after: seconds between SIGTERM and SIGKILL when a command
            outlives its timeout or is cancelled.
        """
        self._reactor = reactor
        # An object providing two interfaces has no type of its own to
        # declare, so the IReactorTime half of the contract is a cast.
        self._clock = cast(IReactorTime, reactor)
        self._kill_after = kill_after

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 30,
    ) -> Deferred[ProcessResult]:
        return maybeDeferred(self._spawn_command, tuple(argv), stdin, env, timeout)

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_prefix: str | None = None,
    ) -> RunningProcess:
        argv = tuple(argv)
        executable = _executable(argv)
        protocol = _SupervisedProtocol(self._clock, argv, log_prefix or os.path.basename(argv[0]))
        self._reactor.spawnProcess(protocol, executable, argv, env=_environment(env))
        assert protocol.process is not None  # connectionMade ran inside spawnProcess
        log.info(
            "started {prefix} (pid {pid}): {command}",
            prefix=protocol.process.log_prefix,
            pid=protocol.process.pid,
            command=shown_argv(argv),
        )
        return protocol.process

    def _spawn_command(
        self,
        argv: tuple[str, ...],
        stdin: bytes | None,
        env: Mapping[str, str] | None,
        timeout: float | None,
    ) -> Deferred[ProcessResult]:
        executable = _executable(argv)
        log.debug("running {command}", command=shown_argv(argv))
        protocol = _CommandProtocol(self._clock, argv, stdin, timeout, self._kill_after)
        self._reactor.spawnProcess(protocol, executable, argv, env=_environment(env))
        return protocol.result


def _executable(argv: tuple[str, ...]) -> str:
    if not argv:
        raise ValueError("empty command line")
    return find_program(argv[0])
