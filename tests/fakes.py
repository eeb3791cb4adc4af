"""In-memory stand-ins for wire's seams, shared by the tests: processes
(a scripted IProcessRunner), WireGuard, NAT probing, a reactor turn."""

from __future__ import annotations

import os
import shlex
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from wire.keys import public_key_for
from wire.node.wireguard import InterfaceStatus, IWireGuard, PeerConfig, PeerStatus
from wire.protocol import NatType
from wire.runner import (
    CommandError,
    CommandNotFound,
    ExitNotifier,
    IProcessRunner,
    IRunningProcess,
    ProcessResult,
)
from wire.stun import MappedAddress, NatReport


@implementer(IWireGuard)
class FakeWireGuard:
    """Records what the daemon asks of WireGuard.

    Peers handshake at once (each status shows a handshake just now), unless
    built with ``auto_handshake=False``: then a peer has handshaken only when
    the test says so, ``fake.handshake(public_key, at=clock.seconds())``.
    """

    def __init__(self, name: str = "wire0", clock=None, auto_handshake: bool = True):
        self.name = name
        self.auto_handshake = auto_handshake
        self.handshakes: dict[str, float] = {}  # public key -> latest handshake
        self.backend = ""
        self.clock = clock
        self.ups: list[tuple] = []
        self.ups6: list[tuple[str, int]] = []
        self.applies: list[dict[str, PeerConfig]] = []
        self.peers: dict[str, PeerConfig] = {}
        self.is_down = False
        self.on_lost = None
        self._private_key = ""
        self.listen_port = 0
        self.device = name
        self.detached = False
        self.reasserted: list[str] = []
        # Traffic each peer has carried (public key -> rx, tx), and endpoints
        # WireGuard roamed to on its own (until the next apply sets it).
        self.traffic: dict[str, tuple[int, int]] = {}
        self.roamed: dict[str, str] = {}

    def count(self, public_key: str, rx: int = 0, tx: int = 0) -> None:
        """The peer sent us ``rx`` more bytes and we sent it ``tx`` more."""
        old_rx, old_tx = self.traffic.get(public_key, (100, 200))
        self.traffic[public_key] = (old_rx + rx, old_tx + tx)

    def roam(self, public_key: str, endpoint: str) -> None:
        """WireGuard followed the peer to ``endpoint`` (a packet came from there)."""
        self.roamed[public_key] = endpoint

    async def up(
        self, private_key: str, listen_port: int, address: str, prefixlen: int, address6: str = "", prefixlen6: int = 0
    ) -> None:
        self.backend = "fake"
        self._private_key = private_key
        self.listen_port = listen_port
        self.ups.append((listen_port, address, prefixlen))
        self.ups6.append((address6, prefixlen6))  # beside each up: its IPv6 address ("", 0: none)
        self.is_down = False

    def handshake(self, public_key: str, at: float | None = None) -> None:
        """A handshake with this peer happened ``at`` (now, by default)."""
        if self.auto_handshake:
            raise AssertionError("handshakes are told only to FakeWireGuard(auto_handshake=False)")
        self.handshakes[public_key] = self.clock.seconds() if at is None else at

    def latest_handshake(self, public_key: str, now: float) -> float:
        return now if self.auto_handshake else self.handshakes.get(public_key, 0.0)

    async def apply(self, desired, reassert=()) -> int:
        changed = sum(1 for k, v in desired.items() if self.peers.get(k) != v or k in reassert)
        changed += sum(1 for k in self.peers if k not in desired)
        self.reasserted.extend(sorted(reassert))
        self.peers = dict(desired)
        self.roamed = {k: v for k, v in self.roamed.items() if k in desired and k not in reassert}
        if changed:
            self.applies.append(dict(desired))
        return changed

    async def status(self) -> InterfaceStatus:
        now = self.clock.seconds() if self.clock else 0.0
        return InterfaceStatus(
            name=self.name,
            public_key=public_key_for(self._private_key) if self._private_key else "",
            listen_port=self.listen_port,
            peers=tuple(
                PeerStatus(
                    public_key=p.public_key,
                    endpoint=self.roamed.get(p.public_key, p.endpoint),
                    allowed_ips=p.allowed_ips,
                    latest_handshake=self.latest_handshake(p.public_key, now),
                    rx_bytes=self.traffic.get(p.public_key, (100, 200))[0],
                    tx_bytes=self.traffic.get(p.public_key, (100, 200))[1],
                    persistent_keepalive=p.persistent_keepalive,
                )
                for p in self.peers.values()
            ),
            backend=self.backend,
        )

    def is_alive(self) -> bool:
        return bool(self.backend) and not self.is_down

    async def check(self) -> bool:
        return self.is_alive()

    def detach(self) -> None:
        self.detached = True

    async def down(self) -> None:
        self.is_down = True
        self.peers = {}


def fixed_nat(ip: str = "198.51.100.7", port: int = 40000, nat_type: str = "easy"):
    async def probe() -> NatReport:
        mapped = MappedAddress(ip, port)
        return NatReport(nat_type=NatType(nat_type), mapped_a=mapped, mapped_b=mapped, latency_ms=1.0, local_port=51820)

    return probe


class TurnClock(Clock):
    """A fake clock that can run one reactor turn: the calls due now, not the
    ones those calls add (as the real reactor leaves them for its next turn;
    ``Clock.advance`` runs them too)."""

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            if call in self.calls:  # not cancelled by an earlier one
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class MemoryUDPPort:
    """A UDP port of :class:`UDPClock`: what is written to it is recorded."""

    def __init__(self, reactor: UDPClock, protocol, host: str, port: int):
        self.reactor = reactor
        self.protocol = protocol
        self.host = host
        self.port = port
        self.written: list[tuple[bytes, tuple]] = []
        self.listening = True

    def getHost(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", self.host, self.port)

    def write(self, data: bytes, addr) -> None:
        self.written.append((bytes(data), addr))

    def stopListening(self):
        from twisted.internet.defer import succeed

        self.listening = False
        self.protocol.doStop()
        return succeed(None)


class UDPClock(Clock):
    """A fake clock that also opens UDP ports in memory (enough for the relay shim)."""

    def __init__(self) -> None:
        super().__init__()
        self.udp_ports: list[MemoryUDPPort] = []
        self._next_port = 40000

    def listenUDP(self, port: int, protocol, interface: str = "", maxPacketSize: int = 8192) -> MemoryUDPPort:
        if port == 0:
            self._next_port += 1
            port = self._next_port
        udp = MemoryUDPPort(self, protocol, interface or "0.0.0.0", port)
        self.udp_ports.append(udp)
        protocol.makeConnection(udp)
        return udp

    def listening(self) -> list[MemoryUDPPort]:
        return [port for port in self.udp_ports if port.listening]


# -- the scripted process runner ---------------------------------------------


class UnexpectedCommand(AssertionError):
    """FakeProcessRunner was asked for a command the test did not script."""


@dataclass(frozen=True)
class RecordedCall:
    """One request FakeProcessRunner received, expected or not."""

    kind: str  # "run" or "start"
    argv: tuple[str, ...]
    stdin: bytes | None
    env: Mapping[str, str] | None


@dataclass(frozen=True)
class _Expectation:
    kind: str
    argv: tuple[str, ...]
    result: ProcessResult | None = None
    error: Exception | None = None
    process: FakeRunningProcess | None = None
    then: Callable[[], object] | None = None

    def describe(self) -> str:
        return f"{self.kind} `{shlex.join(self.argv)}`"


@implementer(IRunningProcess)
class FakeRunningProcess:
    """A pretend long-running process whose life the test controls."""

    def __init__(self, argv: tuple[str, ...], pid: int) -> None:
        self.argv = argv
        self.pid = pid
        self.tail: list[str] = []  # tests may fill it in
        self.signals: list[int] = []  # every signal it was sent, in order
        self._exit = ExitNotifier()

    @property
    def rc(self) -> int | None:
        return self._exit.rc

    @property
    def running(self) -> bool:
        return self._exit.rc is None

    def when_exited(self) -> Deferred[int]:
        return self._exit.wait()

    def exit(self, rc: int) -> None:
        """Make the process exit now (as if it had crashed or finished)."""
        if self.running:
            self._exit.fire(rc)

    def kill(self, signal_number: int) -> None:
        """Record the signal; SIGTERM and SIGKILL end it, like a tame daemon."""
        if not self.running:
            return
        self.signals.append(signal_number)
        if signal_number in (signal.SIGTERM, signal.SIGKILL):
            self.exit(-signal_number)

    def stop(self, timeout: float = 5.0) -> Deferred[int]:
        self.kill(signal.SIGTERM)
        return self.when_exited()


@implementer(IProcessRunner)
class FakeProcessRunner:
    """
    An IProcessRunner that answers from a script, in order::

        runner.expect(["wg", "show", "wire0", "dump"], stdout=b"...")
        ...code under test...
        runner.assert_all_called()

    A command that is not the next one scripted fails with UnexpectedCommand
    (and is remembered, so assert_all_called fails even if the code under
    test swallowed the error).  Every call is kept in ``calls`` with the
    stdin and env it was given.
    """

    def __init__(self) -> None:
        self.calls: list[RecordedCall] = []
        self._script: deque[_Expectation] = deque()
        self._unexpected: list[str] = []
        # Above any pid Linux can give (PID_MAX_LIMIT), so /proc never has them.
        self._next_pid = 4_194_305

    def expect(
        self,
        argv: Sequence[str],
        *,
        stdout: bytes = b"",
        stderr: bytes = b"",
        rc: int = 0,
        error: Exception | None = None,
        then: Callable[[], object] | None = None,
    ) -> None:
        """Script the next run(): it gives this result, or fails with error.

        ``then`` is called when the command runs, before its result is
        given: what the program would have done (a daemon it started)."""
        argv = tuple(argv)
        result = None if error else ProcessResult(argv, rc, stdout, stderr)
        self._script.append(_Expectation("run", argv, result=result, error=error, then=then))

    def expect_start(self, argv: Sequence[str]) -> FakeRunningProcess:
        """Script the next start(); returns the process it will hand out."""
        argv = tuple(argv)
        process = FakeRunningProcess(argv, self._next_pid)
        self._next_pid += 1
        self._script.append(_Expectation("start", argv, process=process))
        return process

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 30,
    ) -> Deferred[ProcessResult]:
        try:
            expectation = self._take("run", tuple(argv), stdin, env)
        except UnexpectedCommand:
            return fail()
        if expectation.then is not None:
            expectation.then()
        if expectation.error is not None:
            return fail(expectation.error)
        assert expectation.result is not None
        return succeed(expectation.result)

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_prefix: str | None = None,
    ) -> FakeRunningProcess:
        expectation = self._take("start", tuple(argv), None, env)
        assert expectation.process is not None
        return expectation.process

    def assert_all_called(self) -> None:
        """Fail unless every scripted command was asked for, and nothing else."""
        problems = list(self._unexpected)
        if self._script:
            problems.append(
                "scripted but never called:\n" + "\n".join(f"  {e.describe()}" for e in self._script)
            )
        if problems:
            raise AssertionError("\n".join(problems))

    def _take(
        self, kind: str, argv: tuple[str, ...], stdin: bytes | None, env: Mapping[str, str] | None
    ) -> _Expectation:
        self.calls.append(RecordedCall(kind, argv, stdin, env))
        expected = self._script[0] if self._script else None
        if expected is not None and (expected.kind, expected.argv) == (kind, argv):
            return self._script.popleft()
        message = (
            "unexpected command\n"
            f"  expected: {expected.describe() if expected else 'nothing more'}\n"
            f"  got:      {kind} `{shlex.join(argv)}`"
        )
        self._unexpected.append(message)
        raise UnexpectedCommand(message)


@implementer(IProcessRunner)
class PassThroughRunner:
    """
    An IProcessRunner that hands every command on to another (a real one)::

        PassThroughRunner(runner, prefix=("ip", "netns", "exec", namespace))
        PassThroughRunner(runner, inspect=fail_nft)

    ``prefix`` goes before every command line (to run it inside a network
    namespace).  ``inspect`` sees each command line as the caller gave it,
    before it is handed on, and may raise a CommandError to fail it as the
    real runner would (a run's Deferred fails; start raises).
    """

    def __init__(
        self,
        inner: IProcessRunner,
        *,
        prefix: Sequence[str] = (),
        inspect: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        self.inner = inner
        self.prefix = tuple(prefix)
        self._inspect = inspect

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 30,
    ) -> Deferred[ProcessResult]:
        try:
            self._look(argv)
        except CommandError:
            return fail()
        return self.inner.run((*self.prefix, *argv), stdin=stdin, env=env, timeout=timeout)

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, log_prefix: str | None = None
    ) -> IRunningProcess:
        self._look(argv)
        return self.inner.start((*self.prefix, *argv), env=env, log_prefix=log_prefix or os.path.basename(argv[0]))

    def _look(self, argv: Sequence[str]) -> None:
        if self._inspect is not None:
            self._inspect(tuple(argv))


def missing_programs(*names: str) -> Callable[[tuple[str, ...]], None]:
    """A PassThroughRunner ``inspect`` for a machine without these programs."""

    def inspect(argv: tuple[str, ...]) -> None:
        if argv and argv[0] in names:
            raise CommandNotFound(argv[0])

    return inspect


class FakeFirewall:
    """wire.node.firewall.Firewall in memory: what it was given, in order with
    a FakeWireGuard's applies when both note into one ``journal``."""

    def __init__(self, journal: list | None = None):
        self.journal = journal if journal is not None else []
        self.rules = None  # the rules in force; None: no table
        self.probe_sources: frozenset = frozenset()
        self.applies = 0
        self.removals = 0
        self.fail_with: str | None = None

    async def apply(self, rules, probe_sources=()) -> bool:
        from wire.node.firewall import FirewallError, InvalidFirewallConfig

        if any(rule.peers for rule in rules):
            raise InvalidFirewallConfig("peers: a rule's peers must be resolved to addresses first")
        if self.fail_with is not None:
            raise FirewallError(self.fail_with)
        given = (tuple(rules), frozenset(probe_sources))
        if self.rules is not None and given == (self.rules, self.probe_sources):
            return False
        self.rules, self.probe_sources = given
        self.applies += 1
        self.journal.append(("filter", self.rules))
        return True

    async def remove(self) -> None:
        self.rules = None
        self.removals += 1
        self.journal.append(("filter removed", None))


def started_daemon(test, *, clock, config_dir: str, config, wireguard, client, lan_ip: str = "192.168.1.10", **options):
    """A NodeDaemon for ``config`` (keys made in ``config_dir``), its STUN a
    fixed easy NAT, started, and stopped at the test's end."""
    from wire.keys import load_or_create_keys
    from wire.node.daemon import NodeDaemon

    options.setdefault("probe_nat", fixed_nat())
    daemon = NodeDaemon(
        clock=clock,
        config_dir=config_dir,
        config=config,
        keys=load_or_create_keys(config_dir),
        wireguard=wireguard,
        client=client,
        lan_ip=lambda: lan_ip,
        **options,
    )
    daemon.startService()
    test.addCleanup(daemon.stopService)
    return daemon


class FakeRawSender:
    """A wire.stun.rawport.RawUdpSender that keeps what it was asked to send
    (``sent``: source port, destination, payload)."""

    def __init__(self, available: bool = True) -> None:
        self.error = "" if available else "no raw socket (a test)"
        self.sent: list[tuple[int, tuple[str, int], bytes]] = []

    @property
    def available(self) -> bool:
        return not self.error

    def send(self, source_port: int, destination: tuple[str, int], payload: bytes) -> bool:
        self.sent.append((source_port, destination, payload))
        return True
