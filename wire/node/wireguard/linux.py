"""LinuxWireGuard: kernel WireGuard when ``ip link add NAME type wireguard``
works, else a ``wireguard-go -f NAME`` started and supervised by the daemon."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from wire.node.wireguard.base import WireGuardBase, is_missing_device, missing_program
from wire.node.wireguard.dump import Dump
from wire.node.wireguard.interface import IWireGuard
from wire.node.wireguard.model import (
    MTU,
    WireGuardError,
    WireGuardUnavailable,
    check_address,
    check_address6,
    check_listen_port,
    check_private_key,
)
from wire.runner import CommandFailed, CommandNotFound, IProcessRunner, describe_exit

log = Logger()

# Where wireguard-go binds NAME.sock, and the /proc/net/unix flag of a listening socket.
UAPI_DIRECTORY = "/var/run/wireguard"
_SO_ACCEPTCON = 0x10000


@implementer(IWireGuard)
class LinuxWireGuard(WireGuardBase):
    """
    Kernel WireGuard when the kernel has it, else a supervised wireguard-go.

    Pass use_kernel=False to go straight to wireguard-go.
    """

    def __init__(
        self,
        runner: IProcessRunner,
        name: str,
        *,
        clock: IReactorTime,
        use_kernel: bool = True,
        proc: str = "/proc",
        **options: Any,
    ) -> None:
        super().__init__(runner, name, clock=clock, **options)
        self._use_kernel = use_kernel
        self._proc = proc

    async def up(
        self, private_key: str, listen_port: int, address: str, prefixlen: int, address6: str = "", prefixlen6: int = 0
    ) -> None:
        private_key = check_private_key(private_key)
        listen_port = check_listen_port(listen_port)
        interface = check_address(address, prefixlen)
        interface6 = check_address6(address6, prefixlen6)
        async with self._lock:
            kept = self.backend if self._up and self.backend == "kernel" else "adopted"
            self._pause()
            dump = await self._existing()
            created = dump is None
            if dump is None:
                await self._stop_own()  # whatever it served is gone: start afresh
                backend, dump = await self._create()
            else:
                backend = "wireguard-go" if self._process is not None else kept
            try:
                await self._set_key_and_port(self.name, private_key, listen_port, dump)
                await self._set_addresses(interface, interface6, fresh=created)
                await self._run_checked(
                    ["ip", "link", "set", "dev", self.name, "mtu", str(MTU), "up"], what=f"bring {self.name} up"
                )
                self._established(backend, self.name, dump)
            except BaseException:
                if created:  # never undo an adopted interface: it may carry live tunnels
                    await self._remove()
                raise
        log.info(
            "WireGuard interface {device} up ({backend}): {address}, port {port}, {peers} peers",
            device=self.name,
            backend=backend,
            address=f"{interface} and {interface6}" if interface6 else str(interface),
            port=listen_port or dump.status.listen_port,
            peers=len(dump.status.peers),
        )

    async def down(self) -> None:
        async with self._lock:
            self._pause()
            await self._stop_own()  # wireguard-go removes its interface as it exits
            await self._delete_link()
            self.backend = ""
            self.device = ""
        log.info("WireGuard interface {device} removed", device=self.name)

    async def _existing(self) -> Dump | None:
        """The dump of an existing interface of our name, None if there is none."""
        deadline = self._clock.seconds() + self._ready_timeout
        while True:
            try:
                result = await self._runner.run(["ip", "link", "show", "dev", self.name])
            except CommandNotFound as e:
                raise WireGuardUnavailable(missing_program(e)) from None
            if result.rc != 0:
                if is_missing_device(result.stderr):
                    return None
                raise WireGuardError(f"cannot look for interface {self.name}: {CommandFailed(result)}")
            dump = await self._try_dump(self.name)
            if isinstance(dump, Dump):
                log.info("found WireGuard interface {device}; adopting it", device=self.name)
                return dump
            if self._clock.seconds() >= deadline:
                # Something else by that name, or a hung wireguard-go: not ours to delete.
                raise WireGuardError(
                    f"interface {self.name} exists but does not answer `wg` ({dump}); it is not a "
                    f"WireGuard interface or its wireguard-go has hung: remove it (`ip link delete "
                    f"{self.name}`) or configure another interface name"
                )
            # A wireguard-go that has just died leaves its interface behind for a moment.
            await deferLater(self._clock, self._poll_interval)

    async def _create(self) -> tuple[str, Dump]:
        """Create the interface: its backend and its dump."""
        if self._use_kernel:
            try:
                result = await self._runner.run(["ip", "link", "add", "dev", self.name, "type", "wireguard"])
            except CommandNotFound as e:
                raise WireGuardUnavailable(missing_program(e)) from None
            if result.rc == 0:
                try:
                    dump = await self._dump(self.name)
                except BaseException:
                    await self._remove()
                    raise
                return "kernel", dump
            reason = " | ".join(line.strip() for line in result.stderr.decode("utf-8", "replace").splitlines())
            log.info(
                "no kernel WireGuard for {device} ({reason}); starting wireguard-go",
                device=self.name,
                reason=reason or describe_exit(result.rc),
            )
        try:
            # WG_PROCESS_FOREGROUND=1 (what -f means) also spares the daemon's
            # log wireguard-go's nine-line "not required" banner at every start.
            process = self._start_wireguard_go(["wireguard-go", "-f", self.name], env={"WG_PROCESS_FOREGROUND": "1"})
        except WireGuardUnavailable as e:
            if self._use_kernel:
                raise WireGuardUnavailable(f"{e.missing}, and the kernel has no WireGuard module") from None
            raise
        # Ask `wg` only once the UAPI socket listens: a `wg` that connects
        # between wireguard-go's bind() and listen() is refused, takes the
        # socket for a dead one's and unlinks it, and wireguard-go then exits.
        def listening_device() -> str | None:
            return None if uapi_listening(process.pid, self.name, self._proc) is False else self.name

        _, dump = await self._wait_ready(process, listening_device)
        self._own(process)
        return "wireguard-go", dump

    async def _set_addresses(
        self,
        interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
        interface6: ipaddress.IPv6Interface | None,
        *,
        fresh: bool,
    ) -> None:
        """Give the interface exactly these addresses (an adopted one may hold old ones).

        The IPv6 one is best effort: a host with IPv6 disabled keeps the mesh on IPv4."""
        present: list[str] = []
        if not fresh:
            present = await self._addresses()
        wanted = [str(interface)] + ([str(interface6)] if interface6 is not None else [])
        for stale in present:
            if stale not in wanted:
                await self._run_checked(
                    ["ip", "address", "del", stale, "dev", self.name], what=f"remove old address {stale}"
                )
        if wanted[0] not in present:
            await self._run_checked(
                ["ip", "address", "replace", wanted[0], "dev", self.name], what=f"set address {wanted[0]}"
            )
        if interface6 is not None and str(interface6) not in present:
            try:
                await self._run_checked(
                    ["ip", "-6", "address", "replace", str(interface6), "dev", self.name],
                    what=f"set IPv6 address {interface6}",
                )
            except WireGuardError as e:
                log.warn("{device}: no IPv6 mesh address ({error}); the mesh works over IPv4", device=self.name, error=e)

    async def _addresses(self) -> list[str]:
        """Global addresses of the interface, as "addr/prefixlen" (link-local ones left out)."""
        try:
            result = await self._runner.run(["ip", "-j", "address", "show", "dev", self.name])
        except CommandNotFound as e:
            raise WireGuardUnavailable(missing_program(e)) from None
        if result.rc != 0:
            raise WireGuardError(f"cannot list the addresses of {self.name}: {CommandFailed(result)}")
        try:
            links = json.loads(result.stdout or b"[]")
            found = []
            for link in links:
                for info in link.get("addr_info", []):
                    address = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
                    if not address.ip.is_link_local:
                        found.append(str(address))
            return found
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise WireGuardError(f"cannot read the addresses of {self.name} from `ip -j address`: {e}") from None

    async def _remove(self) -> None:
        """Undo a creation that failed halfway (never used on an adopted interface)."""
        try:
            await self._stop_own()
            await self._delete_link()
        except Exception as e:
            log.warn("{device}: cleaning up after a failed up(): {error}", device=self.name, error=e)
        self.backend = ""

    async def _delete_link(self) -> None:
        try:
            result = await self._runner.run(["ip", "link", "delete", "dev", self.name])
        except CommandNotFound as e:
            raise WireGuardUnavailable(missing_program(e)) from None
        if result.rc != 0 and not is_missing_device(result.stderr):
            raise WireGuardError(f"cannot remove interface {self.name}: {CommandFailed(result)}")


def uapi_listening(pid: int, device: str, proc: str = "/proc") -> bool | None:
    """
    Whether the UAPI socket of ``device`` listens, as seen in the network
    namespace of process ``pid`` (a socket's visibility is per namespace).

    None when that cannot be told (no such process, no procfs): the caller
    then asks `wg` as it would without this check.
    """
    path = f"{UAPI_DIRECTORY}/{device}.sock"
    try:
        with open(f"{proc}/{pid}/net/unix", "rb") as table:
            lines = table.read().decode("utf-8", "replace").splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # Num RefCount Protocol Flags Type St Inode Path
        if len(fields) >= 8 and fields[7] == path:
            try:
                if int(fields[3], 16) & _SO_ACCEPTCON:
                    return True
            except ValueError:
                continue
    return False
