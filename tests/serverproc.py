"""A real ``twistd -n wire-server`` process for tests, on 127.0.0.1."""

from __future__ import annotations

import os
import signal

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from wire.twistd import twistd_argv

from tests.ports import free_port_triple  # noqa: F401  (tests import it from here too)

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def http_client() -> HTTPClient:
    """treq without a persistent pool, so no connection outlives a test."""
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class _Collector(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred = Deferred()
        self.exit_code: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        # exitCode is None when a signal ended the process.
        self.exit_code = reason.value.exitCode
        self.ended.callback(self.exit_code)


class ServerProcess:
    """Start, stop and SIGKILL a wire-server; always reaped by the test's cleanup."""

    def __init__(
        self,
        test,
        data_dir: str,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        config: str | None = None,
        tls: bool | None = None,
    ):
        """With ``config``, the server is started with ``--config config`` (and
        ``extra_args``) alone: the file must give its port, interface and data
        dir, and ``tls`` says whether it serves HTTPS."""
        self.data_dir = os.path.abspath(data_dir)
        self.port = port or free_port_triple()
        self.extra_args = list(extra_args)
        self.config = config
        self._tls = tls
        self._proto: _Collector | None = None
        self._transport = None
        test.addCleanup(self.kill)

    @property
    def tls(self) -> bool:
        if self._tls is not None:
            return self._tls
        return not ({"--open", "--plain-http"} & set(self.extra_args))

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def fingerprint(self) -> str:
        """The self-signed certificate's fingerprint ("" over plain HTTP)."""
        if not self.tls:
            return ""
        from wire.tls import CERT_FILE, read_fingerprint

        return read_fingerprint(os.path.join(self.data_dir, CERT_FILE))

    def client(self):
        """An HTTP client that trusts this server (pinned, as a node would)."""
        from wire.client import make_http_client

        return make_http_client(reactor, persistent=False, tls_fingerprint=self.fingerprint)

    def argv(self) -> list[str]:
        if self.config is not None:
            return twistd_argv() + ["-n", "--pidfile=", "wire-server", f"--config={self.config}", *self.extra_args]
        return twistd_argv() + [
            "-n",
            "--pidfile=",
            "wire-server",
            "--interface=127.0.0.1",
            f"--port={self.port}",
            f"--data-dir={self.data_dir}",
            *self.extra_args,
        ]

    def spawn(self) -> _Collector:
        self._proto = _Collector()
        env = dict(os.environ, PYTHONPATH=CHECKOUT)
        self._transport = reactor.spawnProcess(self._proto, self.argv()[0], self.argv(), env=env, path=CHECKOUT)
        return self._proto

    async def start(self) -> None:
        proto = self.spawn()
        for _ in range(200):
            if proto.ended.called:
                raise AssertionError(f"wire-server exited ({proto.exit_code}):\n{proto.output.decode(errors='replace')}")
            try:
                response = await self.client().get(f"{self.url}/health", timeout=1)
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"wire-server did not answer /health:\n{proto.output.decode(errors='replace')}")

    @property
    def output(self) -> str:
        return self._proto.output.decode(errors="replace") if self._proto else ""

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self._proto is None or self._proto.ended.called:
            return
        try:
            self._transport.signalProcess(sig)
        except ProcessExitedAlready:
            pass
        await self._proto.ended

    async def stop(self) -> None:
        await self.kill(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the process reads nothing (its kernel still queues connections) until :meth:`resume`."""
        self._transport.signalProcess(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proto is not None and not self._proto.ended.called:
            self._transport.signalProcess(signal.SIGCONT)
