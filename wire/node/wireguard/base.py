"""What every WireGuard backend shares: up and adoption, peers, status, supervision.

A backend (wire.node.wireguard.linux, .macos) supplies how its interface is
created, addressed and removed; this module drives everything else through
the same IProcessRunner.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from twisted.internet.defer import DeferredLock, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from wire.install import package_for
from wire.node.wireguard.diff import argv_batches, check_desired, diff_peers
from wire.node.wireguard.dump import Dump, config_from_status, read_dump
from wire.node.wireguard.model import InterfaceStatus, PeerConfig, WireGuardError, WireGuardUnavailable, check_interface_name
from wire.runner import CommandError, CommandFailed, CommandNotFound, IProcessRunner, IRunningProcess, describe_exit

log = Logger()


WG_TIMEOUT = 30.0

# stderr of `ip` when a device is not there.
_NO_DEVICE = ("does not exist", "Cannot find device")


class WireGuardBase:
    """What every real platform shares: peers, status, supervision."""

    def __init__(
        self,
        runner: IProcessRunner,
        name: str,
        *,
        clock: IReactorTime,
        on_lost: Callable[[str], object] | None = None,
        ready_timeout: float = 5.0,
        poll_interval: float = 0.1,
        check_interval: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.name = check_interface_name(name)
        self.device = ""
        self.backend = ""
        self.on_lost = on_lost
        self._runner = runner
        self._clock = clock
        self._ready_timeout = ready_timeout
        self._poll_interval = poll_interval
        self._check_interval = check_interval
        self._stop_timeout = stop_timeout
        self._lock = DeferredLock()
        self._up = False
        self._applied: dict[str, PeerConfig | None] | None = None
        self._process: IRunningProcess | None = None
        self._checks: LoopingCall | None = None
        # Bumped by up(), down() and a loss, so late news of an old life is ignored.
        self._generation = 0

    # -- the IWireGuard operations shared by every platform -------------------

    async def apply(self, desired: Mapping[str, PeerConfig], reassert: Collection[str] = ()) -> int:
        checked = check_desired(desired)
        async with self._lock:
            if not self._up or self._applied is None:
                raise WireGuardError(f"WireGuard interface {self.name} is not up; call up() first")
            # A peer to set again counts as one whose settings we cannot tell.
            current = {key: (None if key in reassert else config) for key, config in self._applied.items()}
            groups, added, changed, removed = diff_peers(current, checked)
            if not groups:
                return 0
            argvs = argv_batches(["wg", "set", self.device], groups)
            try:
                for argv in argvs:
                    await self._wg(argv)
            except BaseException:
                # Part of it may have been applied: learn what the interface holds now.
                await self._resync()
                raise
            self._applied = {key: config for key, config in checked.items()}
            log.info(
                "{device}: {count} peer change(s) applied ({added} added, {changed} changed, "
                "{removed} removed) in {spawns} wg spawn(s); {total} peers",
                device=self.device,
                count=added + changed + removed,
                added=added,
                changed=changed,
                removed=removed,
                spawns=len(argvs),
                total=len(checked),
            )
            return added + changed + removed

    async def status(self) -> InterfaceStatus:
        if not self.device:
            raise WireGuardError(f"WireGuard interface {self.name} is not up")
        return (await self._dump(self.device)).status

    def is_alive(self) -> bool:
        if not self._up:
            return False
        return self._process is None or self._process.running

    async def check(self) -> bool:
        if not self._up:
            return False
        generation = self._generation
        if self._process is not None and not self._process.running:
            return False  # its exit has been (or is being) reported
        try:
            result = await self._runner.run(["wg", "show", self.device, "listen-port"], timeout=WG_TIMEOUT)
            problem: CommandError | None = None if result.rc == 0 else CommandFailed(result)
        except CommandError as e:
            problem = e
        if problem is None:
            return True
        if generation == self._generation:
            self._lose(f"`wg show {self.device}` no longer answers: {problem}")
        return False

    def detach(self) -> None:
        self._pause()
        self._process = None  # it outlives us; the next daemon adopts its interface
        if self.device:  # after down() nothing is left running to tell of
            log.info("{device}: no longer supervised; left running", device=self.device)

    # -- shared machinery -------------------------------------------------------

    async def _wg(self, argv: list[str], stdin: bytes | None = None) -> None:
        try:
            result = await self._runner.run(argv, stdin=stdin, timeout=WG_TIMEOUT)
        except CommandNotFound as e:
            raise WireGuardUnavailable(missing_program(e)) from None
        except CommandError as e:
            raise WireGuardError(str(e)) from e
        if result.rc != 0:
            raise WireGuardError(str(CommandFailed(result)))

    async def _dump(self, device: str) -> Dump:
        dump = await self._try_dump(device)
        if isinstance(dump, str):
            raise WireGuardError(dump)
        return dump

    async def _try_dump(self, device: str) -> Dump | str:
        """The interface's dump, or why `wg` could not give it (a message)."""
        try:
            result = await self._runner.run(["wg", "show", device, "dump"], timeout=WG_TIMEOUT)
        except CommandNotFound as e:
            raise WireGuardUnavailable(missing_program(e)) from None
        except CommandError as e:
            return str(e)
        if result.rc != 0:
            return str(CommandFailed(result))
        return read_dump(result.stdout, backend=self.backend, name=device)

    async def _resync(self) -> None:
        try:
            dump = await self._dump(self.device)
        except WireGuardError as e:
            log.warn("{device}: cannot re-read peers after a failed apply: {error}", device=self.device, error=e)
            self._applied = {}  # unknown: the next apply sends everything it wants
            return
        self._applied = _peers_of(dump)

    async def _set_key_and_port(self, device: str, private_key: str, listen_port: int, dump: Dump) -> None:
        """`wg set` the key (on stdin) and port, if they are not already so."""
        argv = ["wg", "set", device]
        if dump.private_key != private_key:
            argv += ["private-key", "/dev/stdin"]
        # Port 0 asks for any port: whatever the interface has will do.
        if listen_port and dump.status.listen_port != listen_port:
            argv += ["listen-port", str(listen_port)]
        if len(argv) > 3:
            await self._wg(argv, stdin=(private_key + "\n").encode())

    async def _run_checked(self, argv: list[str], *, what: str) -> None:
        try:
            result = await self._runner.run(argv, timeout=WG_TIMEOUT)
        except CommandNotFound as e:
            raise WireGuardUnavailable(missing_program(e)) from None
        except CommandError as e:
            raise WireGuardError(f"cannot {what}: {e}") from e
        if result.rc != 0:
            raise WireGuardError(f"cannot {what}: {CommandFailed(result)}")

    def _established(self, backend: str, device: str, dump: Dump) -> None:
        """Record a working interface and supervise it."""
        if backend == "wireguard-go" and self._process is None:
            raise WireGuardError(f"wireguard-go for {self.name} exited while its interface was being configured")
        self.backend = backend
        self.device = device
        self._applied = _peers_of(dump)
        self._up = True
        if self._process is None:  # not our child: nothing tells us when it dies, so ask
            self._checks = LoopingCall(self._periodic_check)
            self._checks.clock = self._clock
            self._checks.start(self._check_interval, now=False)

    def _own(self, process: IRunningProcess) -> None:
        """Take a started, ready wireguard-go as ours: its exit is a loss."""
        self._process = process
        process.when_exited().addCallback(self._process_exited, process)

    async def _stop_own(self) -> None:
        process, self._process = self._process, None  # an exit we asked for is no loss
        if process is not None and process.running:
            await process.stop(self._stop_timeout)

    async def _periodic_check(self) -> None:
        try:
            await self.check()
        except Exception:
            # A loop body that raises would stop supervision for good.
            log.failure("{device}: supervision check failed", device=self.device)

    def _stop_checks(self) -> None:
        if self._checks is not None and self._checks.running:
            self._checks.stop()
        self._checks = None

    def _process_exited(self, rc: int, process: IRunningProcess) -> None:
        if process is self._process:
            self._process = None
            self._lose(f"wireguard-go (pid {process.pid}) {describe_exit(rc)}; last output: {_tail(process)}")

    def _lose(self, reason: str) -> None:
        if not self._up:
            return  # not established (up() is at work, or down() was called): nothing to report
        self._pause()
        log.warn("WireGuard interface {device} lost: {reason}", device=self.device, reason=reason)
        if self.on_lost is not None:
            # The daemon's restore may be async: its failure is logged, never left unhandled.
            maybeDeferred(self.on_lost, reason).addErrback(
                lambda failure: log.failure("on_lost for {device} failed", failure, device=self.device)
            )

    def _pause(self) -> None:
        """End this life's supervision and state (a child process stays ours)."""
        self._generation += 1
        self._stop_checks()
        self._up = False
        self._applied = None

    async def _wait_ready(self, process: IRunningProcess, device_name: Callable[[], str | None]) -> tuple[str, Dump]:
        """Poll until wireguard-go's interface answers `wg`; stop it on failure."""
        deadline = self._clock.seconds() + self._ready_timeout
        problem = "it has not created its interface yet"
        while True:
            if not process.running:
                raise WireGuardError(
                    f"wireguard-go for {self.name} {describe_exit(process.rc or 0)} before its interface "
                    f"was ready; last output: {_tail(process)}"
                )
            device = device_name()
            if device is not None:
                try:
                    dump = await self._try_dump(device)
                except WireGuardUnavailable:
                    await process.stop(self._stop_timeout)
                    raise
                if isinstance(dump, Dump):
                    return device, dump
                problem = dump
            if self._clock.seconds() >= deadline:
                await process.stop(self._stop_timeout)
                raise WireGuardError(
                    f"wireguard-go for {self.name} was not ready after {self._ready_timeout:g}s "
                    f"({problem}); stopped it; last output: {_tail(process)}"
                )
            await deferLater(self._clock, self._poll_interval)

    def _start_wireguard_go(self, argv: list[str], env: Mapping[str, str] | None = None) -> IRunningProcess:
        try:
            return self._runner.start(argv, env=env, log_prefix=f"wireguard-go[{self.name}]")
        except CommandNotFound as e:
            raise WireGuardUnavailable(missing_program(e)) from None


def _peers_of(dump: Dump) -> dict[str, PeerConfig | None]:
    return {peer.public_key: config_from_status(peer) for peer in dump.status.peers}


def _tail(process: IRunningProcess) -> list[str]:
    """Its last output, without the boxed banner wireguard-go prints on a kernel with WireGuard."""
    return [line for line in process.tail if line[:1] not in ("┌", "│", "└")]


def missing_program(error: CommandNotFound) -> str:
    package = package_for(error.program)
    return f"the {error.program!r} program is missing" + (f" (package {package})" if package else "")


def is_missing_device(stderr: bytes) -> bool:
    text = stderr.decode("utf-8", "replace")
    return any(marker in text for marker in _NO_DEVICE)
