"""The "systemd-resolved" mode: per-link DNS on the wire interface, through resolvectl.

resolved routes a query to the links whose domains match it, so the wire
link gets the mesh resolver as its DNS server and the mesh domain as its
domain: a search domain (which also routes) when short names should work,
else the routing-only ``~domain``. ``default-route false`` keeps every other
query off the link, so nothing else about the machine's DNS changes (and the
mesh resolver's forwarding cannot come back to itself). ``revert`` on `wire
down` drops it all; the link's settings also vanish with the interface,
so there is nothing to recover after a crash.

The domains and default-route are set before the server (as systemd's
docs/RESOLVED-VPNS.md advises): a link with a server and no domain would,
for a moment, be a default route for every query. The mesh networks'
reverse zones (``~99.10.in-addr.arpa``) route PTR lookups to the mesh
resolver too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger
from zope.interface import implementer

from wire.runner import CommandError, CommandNotFound, IProcessRunner, ProcessResult

from .checks import NOTHING_WANTED, Wanted, check_interface, wanted
from .errors import OsDnsError
from .inplace import read_file
from .interface import DEFAULT_DOMAIN, RESOLVED_STUB, IOsDns, OsDnsPaths
from .resolvconf import parse_resolv_conf

log = Logger()

RESOLVECTL_TIMEOUT = 10.0
_STDERR_CHARS = 300
# What resolvectl says when the link is gone (and its settings with it).
_NO_LINK = ("No such device", "Unknown interface", "Failed to resolve interface")


def domain_arguments(given: Wanted) -> list[str]:
    """`resolvectl domain` words: searched domains as they are (a search
    domain routes too), the mesh domain routing-only when it is not
    searched, the mesh networks' reverse zones routing-only."""
    routed = [] if given.domain in given.search else [f"~{given.domain}"]
    return routed + list(given.search) + [f"~{zone}" for zone in given.reverse_zones]


@implementer(IOsDns)
class ResolvedDns:
    mode = "systemd-resolved"

    def __init__(
        self,
        runner: IProcessRunner,
        interface: str,
        paths: OsDnsPaths,
        reason: str = "",
        *,
        timeout: float = RESOLVECTL_TIMEOUT,
    ) -> None:
        self.interface = check_interface(interface)
        self.reason = reason
        self.recovery: str | None = None  # what choose() found left over from a crash
        self._runner = runner
        self._paths = paths
        self._timeout = timeout
        self._lock = DeferredLock()
        self._given: Wanted | None = None
        self._problem: str | None = None
        self._note: str | None = None
        self.upstreams: tuple[str, ...] = self._machine_upstreams(None)

    async def apply(
        self,
        vpn_address: str,
        domain: str = DEFAULT_DOMAIN,
        search: Sequence[str] | None = None,
        networks: Sequence[str] = (),
    ) -> None:
        given = wanted(vpn_address, domain, search, networks)
        async with self._lock:
            self._given = None
            try:
                await self._resolvectl("domain", self.interface, *domain_arguments(given))
                self._note = await self._no_default_route()
                await self._resolvectl("dns", self.interface, given.nameserver)
            except OsDnsError as e:
                self._problem = str(e)
                await self._revert(quiet=True)  # no half configuration left behind
                raise
            self._given, self._problem = given, None
            self.upstreams = self._machine_upstreams(given.nameserver)
        log.info(
            "systemd-resolved: {domain} goes to {address} on {interface}",
            domain=given.domain,
            address=given.nameserver,
            interface=self.interface,
        )

    async def restore(self) -> None:
        async with self._lock:
            self._given = None
            try:
                await self._revert(quiet=False)
            except OsDnsError as e:
                self._problem = str(e)
                raise
            self._problem = None

    async def check(self) -> bool:
        return False  # resolved keeps a link's settings for the link's life

    def status(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "interface": self.interface,
            "applied": self._given is not None,
            **(self._given.shown() if self._given else NOTHING_WANTED),
            "upstreams": list(self.upstreams),
            "note": self._note,
            "recovery": self.recovery,
            "problem": self._problem,
        }

    def _machine_upstreams(self, own: str | None) -> tuple[str, ...]:
        """resolved's own upstream list (it keeps one in its run dir), else its stub."""
        try:
            data = read_file(os.path.join(self._paths.resolved_run_dir, "resolv.conf"))
        except OsDnsError:
            data = None
        found = tuple(ns for ns in parse_resolv_conf(data or b"").nameservers if ns != own)
        return found or (RESOLVED_STUB,)

    async def _no_default_route(self) -> str | None:
        # Older resolvectl (systemd < 240) lacks the verb; resolved then keeps
        # the link off the default route on its own, as it has a domain.
        try:
            await self._resolvectl("default-route", self.interface, "false")
        except OsDnsError as e:
            return f"could not take {self.interface} off resolved's default route ({e}); resolved decides from its domains"
        return None

    async def _revert(self, *, quiet: bool) -> None:
        try:
            await self._resolvectl("revert", self.interface)
        except OsDnsError as e:
            if quiet:
                log.warn("systemd-resolved: revert on {interface} failed too: {error}", interface=self.interface, error=str(e))
            else:
                raise

    async def _resolvectl(self, *arguments: str) -> ProcessResult:
        argv = ["resolvectl", *arguments]
        try:
            result = await self._runner.run(argv, timeout=self._timeout)
        except CommandNotFound:
            raise OsDnsError("resolvectl failed: the 'resolvectl' program is missing (package systemd-resolved)") from None
        except CommandError as e:
            raise OsDnsError(f"resolvectl failed: {e}") from None
        if result.rc != 0:
            stderr = _shown(result.stderr)
            if arguments[0] == "revert" and any(marker in stderr for marker in _NO_LINK):
                return result  # the link is gone, and its settings with it
            raise OsDnsError(f"resolvectl failed: `resolvectl {' '.join(arguments)}` exited with code {result.rc}: {stderr}")
        return result


def _shown(stderr: bytes) -> str:
    text = " | ".join(line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip())
    text = "".join(c if c.isprintable() else "?" for c in text) or "(nothing on stderr)"
    return text if len(text) <= _STDERR_CHARS else text[:_STDERR_CHARS] + "…"
