"""The "none" mode (`--accept-dns=false`): the machine's resolver is left alone.

The mesh resolver still answers on the VPN address, and still forwards to
the machine's own nameservers, read from resolv.conf.
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from .checks import NOTHING_WANTED, Wanted, check_interface, wanted
from .errors import OsDnsError
from .inplace import read_file
from .interface import DEFAULT_DOMAIN, IOsDns, OsDnsPaths
from .resolvconf import parse_resolv_conf


@implementer(IOsDns)
class NoOsDns:
    mode = "none"

    def __init__(self, interface: str, paths: OsDnsPaths, reason: str = "--accept-dns=false") -> None:
        self.interface = check_interface(interface)
        self.reason = reason
        self.recovery: str | None = None  # what choose() found left over from a crash
        self._paths = paths
        self._given: Wanted | None = None
        self.upstreams: tuple[str, ...] = self._machine_upstreams(None)

    async def apply(
        self,
        vpn_address: str,
        domain: str = DEFAULT_DOMAIN,
        search: Sequence[str] | None = None,
        networks: Sequence[str] = (),
    ) -> None:
        self._given = wanted(vpn_address, domain, search, networks)
        self.upstreams = self._machine_upstreams(self._given.nameserver)

    async def restore(self) -> None:
        self._given = None

    async def check(self) -> bool:
        return False

    def status(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "interface": self.interface,
            "applied": False,  # by design: nothing of the machine's changes
            **(self._given.shown() if self._given else NOTHING_WANTED),
            "upstreams": list(self.upstreams),
            "recovery": self.recovery,
            "problem": None,
        }

    def _machine_upstreams(self, own: str | None) -> tuple[str, ...]:
        try:
            data = read_file(self._paths.resolv_conf)
        except OsDnsError:
            data = None
        return tuple(ns for ns in parse_resolv_conf(data or b"").nameservers if ns != own)
