"""MacWireGuard: ``wireguard-go -f utun``, its utunN name learned from
``WG_TUN_NAME_FILE``, addressed with ifconfig and routed with route."""

from __future__ import annotations

import errno
import ipaddress
import os
import re
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from wire.node.wireguard.base import WG_TIMEOUT, WireGuardBase, missing_program
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
from wire.runner import CommandError, CommandFailed, CommandNotFound, IProcessRunner

log = Logger()


# wireguard-go keeps its UAPI sockets (and, on macOS, wg-quick's name files) here.
WIREGUARD_RUN_DIR = "/var/run/wireguard"


_UTUN_NAME = re.compile(r"utun[0-9]{1,5}\Z")


@implementer(IWireGuard)
class MacWireGuard(WireGuardBase):
    """
    macOS: ``wireguard-go -f utun`` names its own utunN and writes the name to
    ``WG_TUN_NAME_FILE``; we keep that file where wg-quick does
    (/var/run/wireguard/NAME.name), so a restarted daemon finds and adopts
    the utun of a wireguard-go that outlived it.  -f keeps wireguard-go in
    the foreground, as our supervised child, instead of daemonising.
    """

    def __init__(
        self, runner: IProcessRunner, name: str, *, clock: IReactorTime, run_dir: str = WIREGUARD_RUN_DIR, **options: Any
    ) -> None:
        super().__init__(runner, name, clock=clock, **options)
        self._run_dir = run_dir
        self._routes: list[tuple[str, str]] = []  # (family flag, subnet) of each route we added

    @property
    def name_file(self) -> str:
        return os.path.join(self._run_dir, f"{self.name}.name")

    async def up(
        self, private_key: str, listen_port: int, address: str, prefixlen: int, address6: str = "", prefixlen6: int = 0
    ) -> None:
        private_key = check_private_key(private_key)
        listen_port = check_listen_port(listen_port)
        interface = check_address(address, prefixlen)
        interface6 = check_address6(address6, prefixlen6)
        async with self._lock:
            self._pause()
            device = self._read_name_file()
            found = await self._try_dump(device) if device else None
            created = not isinstance(found, Dump)
            if isinstance(found, Dump):
                assert device is not None
                dump = found
                backend = "wireguard-go" if self._process is not None else "adopted"
                if backend == "adopted":
                    log.info("adopting {device}, the WireGuard interface of {name}", device=device, name=self.name)
            else:
                await self._stop_own()
                self._remove_file(self.name_file)  # stale: its wireguard-go is gone
                os.makedirs(self._run_dir, exist_ok=True)
                process = self._start_wireguard_go(
                    ["wireguard-go", "-f", "utun"], env={"WG_TUN_NAME_FILE": self.name_file}
                )
                device, dump = await self._wait_ready(process, self._read_name_file)
                self._own(process)
                backend = "wireguard-go"
            try:
                await self._set_key_and_port(device, private_key, listen_port, dump)
                await self._configure_address(device, interface)
                if interface6 is not None:
                    await self._configure_address6(device, interface6)
                self._established(backend, device, dump)
            except BaseException:
                if created:
                    await self._stop_own()
                    self._remove_file(self.name_file)
                    self.backend = ""
                raise
        log.info(
            "WireGuard interface {name} up as {device} ({backend}): {address}",
            name=self.name,
            device=device,
            backend=backend,
            address=str(interface),
        )

    async def down(self) -> None:
        async with self._lock:
            self._pause()
            device = self.device or self._read_name_file()
            if device:
                for family, subnet in self._routes:
                    await self._best_effort(["route", "-q", "-n", "delete", family, subnet, "-interface", device])
            if self._process is not None:
                await self._stop_own()  # wireguard-go takes its utun with it
            elif device:
                # Not our child: wireguard-go exits when its UAPI socket is removed (wg-quick's way).
                self._remove_file(os.path.join(self._run_dir, f"{device}.sock"))
            self._remove_file(self.name_file)
            self._routes = []
            self.backend = ""
            self.device = ""
        log.info("WireGuard interface {name} removed", name=self.name)

    async def _configure_address(
        self, device: str, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> None:
        address = str(interface.ip)
        if interface.version == 4:
            argv = ["ifconfig", device, "inet", address, address, "netmask", str(interface.netmask), "up"]
            family = "-inet"
        else:
            argv = ["ifconfig", device, "inet6", address, "prefixlen", str(interface.network.prefixlen), "alias", "up"]
            family = "-inet6"
        await self._run_checked(argv, what=f"set address {interface} on {device}")
        await self._run_checked(["ifconfig", device, "mtu", str(MTU)], what=f"set the MTU of {device}")
        subnet = str(interface.network)
        try:
            result = await self._runner.run(["route", "-q", "-n", "add", family, subnet, "-interface", device])
        except CommandNotFound as e:
            raise WireGuardUnavailable(missing_program(e)) from None
        if result.rc != 0 and b"File exists" not in result.stderr:  # already routed: adopted
            raise WireGuardError(f"cannot route {subnet} to {device}: {CommandFailed(result)}")
        if (family, subnet) not in self._routes:
            self._routes.append((family, subnet))

    async def _configure_address6(self, device: str, interface: ipaddress.IPv6Interface) -> None:
        """The IPv6 mesh address beside the IPv4 one: best effort, the mesh works over IPv4 without it."""
        try:
            await self._configure_address(device, interface)
        except WireGuardError as e:
            log.warn("{device}: no IPv6 mesh address ({error}); the mesh works over IPv4", device=device, error=e)

    def _read_name_file(self) -> str | None:
        try:
            with open(self.name_file) as f:
                device = f.read().strip()
        except OSError:
            return None
        if not _UTUN_NAME.match(device):
            log.warn("{path} holds no utun name; ignoring it", path=self.name_file)
            return None
        return device

    def _remove_file(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warn("cannot remove {path}: {error}", path=path, error=e)

    async def _best_effort(self, argv: list[str]) -> None:
        try:
            result = await self._runner.run(argv, timeout=WG_TIMEOUT)
        except CommandError as e:
            log.warn("{command} failed: {error}", command=" ".join(argv), error=e)
            return
        if result.rc != 0:
            log.info("{error} (the route goes with the interface anyway)", error=CommandFailed(result))
