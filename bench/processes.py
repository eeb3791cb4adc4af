"""The processes a bench run starts: the wire-server under test and the load processes.

Both are pinned with ``taskset`` (the server to one core, the load to the
others) so the server's CPU figure is its own and the load never steals it.
Each is spawned through reactor.spawnProcess with an argument list, never a
shell, and reaped (SIGKILL if need be) when the bench ends.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sys

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

BENCH_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDERR_KEEP = 64 * 1024


class _Process(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred = Deferred()
        self.exit_code: int | None = None
        self.stderr = bytearray()
        self.transport = None

    @property
    def pid(self) -> int:
        return self.transport.pid

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        if len(self.stderr) > 2 * STDERR_KEEP:
            del self.stderr[:-STDERR_KEEP]

    def processEnded(self, reason) -> None:
        self.exit_code = reason.value.exitCode
        if not self.ended.called:
            self.ended.callback(self.exit_code)

    async def kill(self, sig: int = signal.SIGKILL, grace: float = 0.0, reactor=None) -> None:
        if self.transport is None or self.ended.called:
            return
        try:
            self.transport.signalProcess(sig)
        except ProcessExitedAlready:
            return
        if grace and reactor is not None:
            for _ in range(int(grace / 0.1) + 1):
                if self.ended.called:
                    return
                await deferLater(reactor, 0.1, lambda: None)
            try:
                self.transport.signalProcess(signal.SIGKILL)
            except ProcessExitedAlready:
                pass
        await self.ended


def pinned(cpus: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


class CollectingProcess(_Process):
    """A process whose whole stdout is kept (a benchmark script's JSON)."""

    def __init__(self) -> None:
        super().__init__()
        self.stdout = bytearray()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data


class ServerProcess(_Process):
    """``twistd -n wire-server`` on 127.0.0.1, logging to a file in its data dir."""

    def __init__(self, reactor, checkout: str, data_dir: str, port: int, cpus: str, extra_args=(), fd_soft_limit=None):
        super().__init__()
        self.reactor = reactor
        self.checkout = os.path.abspath(checkout)
        self.data_dir = os.path.abspath(data_dir)
        self.port = port
        self.cpus = cpus
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = os.path.join(self.data_dir, "server.log")
        self.extra_args = list(extra_args)
        # Start the server with this soft RLIMIT_NOFILE (as under systemd's
        # default 1024) instead of the bench's own: does it cope by itself?
        self.fd_soft_limit = fd_soft_limit
        self.stdout = bytearray()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data[-STDERR_KEEP:]

    def argv(self) -> list[str]:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        command = [twistd] if os.path.exists(twistd) else [sys.executable, "-m", "twisted", "twistd"]
        if self.fd_soft_limit:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            command = ["prlimit", f"--nofile={self.fd_soft_limit}:{hard}", *command]
        return pinned(
            self.cpus,
            [
                *command,
                "-n",
                "--pidfile=",
                f"--logfile={self.log_path}",
                "wire-server",
                "--interface=127.0.0.1",
                f"--port={self.port}",
                f"--data-dir={self.data_dir}",
                *self.extra_args,
            ],
        )

    def spawn(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=self.checkout)
        argv = self.argv()
        # The server inherits our RLIMIT_NOFILE (run_all raises it to the hard limit).
        self.reactor.spawnProcess(self, shutil.which(argv[0]) or argv[0], argv, env=env, path=self.checkout)


class WorkerProcess(_Process):
    """A load process (bench/loadgen.py or bench/stunload.py) speaking JSON lines."""

    def __init__(self, reactor, name: str, argv: list[str], cpus: str):
        super().__init__()
        self.reactor = reactor
        self.name = name
        self._argv = pinned(cpus, [sys.executable, *argv])
        self._buffer = bytearray()
        self._pending: dict[int, Deferred] = {}
        self._next_id = 1
        self.on_event = None
        self.lines: list[dict] = []

    def spawn(self) -> None:
        env = dict(os.environ, PYTHONPATH=BENCH_CHECKOUT)
        self.reactor.spawnProcess(self, shutil.which(self._argv[0]) or self._argv[0], self._argv, env=env, path=BENCH_CHECKOUT)

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            try:
                message = json.loads(line)
            except ValueError:
                self.errReceived(b"[stdout] " + line + b"\n")
                continue
            self._dispatch(message)

    def _dispatch(self, message: dict) -> None:
        if "event" in message:
            if self.on_event is not None:
                self.on_event(self, message)
            return
        if "id" not in message:
            self.lines.append(message)
            return
        d = self._pending.pop(message["id"], None)
        if d is None or d.called:  # unknown, or already timed out
            return
        if "error" in message:
            d.errback(RuntimeError(f"{self.name}: {message['error']}"))
        else:
            d.callback(message.get("result"))

    def processEnded(self, reason) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(RuntimeError(f"{self.name} exited: {self.stderr[-2000:].decode(errors='replace')}"))
        super().processEnded(reason)

    def call(self, cmd: str, timeout: float = 600, **arguments) -> Deferred:
        if self.ended.called:
            raise RuntimeError(f"{self.name} has exited: {self.stderr[-2000:].decode(errors='replace')}")
        message_id = self._next_id
        self._next_id += 1
        d: Deferred = Deferred()
        self._pending[message_id] = d
        self.transport.write(json.dumps({"id": message_id, "cmd": cmd, **arguments}).encode() + b"\n")
        d.addTimeout(timeout, self.reactor)
        return d
