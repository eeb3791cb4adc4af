"""What every way of wiring the OS resolver offers the daemon, and where it keeps things."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from zope.interface import Attribute, Interface

DEFAULT_DOMAIN = "wire.internal"
# systemd-resolved's stub listener: /etc/resolv.conf names it alone when
# every lookup goes through resolved.
RESOLVED_STUB = "127.0.0.53"
SAVE_FILE = "resolv.conf.wire-original.json"


@dataclass(frozen=True)
class OsDnsPaths:
    """The files the integration reads and writes; tests point them at temp dirs."""

    state_dir: str  # the node's own; the saved original lives there
    resolv_conf: str = "/etc/resolv.conf"
    resolved_run_dir: str = "/run/systemd/resolve"  # present while systemd-resolved runs

    @property
    def save_file(self) -> str:
        return os.path.join(self.state_dir, SAVE_FILE)


class IOsDns(Interface):
    """The machine's resolver, pointed at the mesh resolver for the mesh domain."""

    mode = Attribute("str: 'systemd-resolved', 'resolv.conf' or 'none'")
    interface = Attribute("str: the wire interface")
    upstreams = Attribute(
        "tuple[str, ...]: the resolvers the mesh resolver should forward other queries to "
        "(the machine's own, from before wire)"
    )

    async def apply(
        vpn_address: str,
        domain: str = DEFAULT_DOMAIN,
        search: Sequence[str] | None = None,
        networks: Sequence[str] = (),
    ) -> None:
        """Send queries under ``domain`` (and short names, through the search
        list: ``search`` or just ``domain`` when None) to ``vpn_address``, and
        reverse lookups of addresses in the mesh ``networks`` (CIDRs) too.

        Called on `wire up` and on every netmap change; it may be called again
        with other values. Raises OsDnsError, a sentence; the mesh runs on.
        """

    async def restore() -> None:
        """Leave the machine's resolver as it was before apply (`wire down`). Raises OsDnsError."""

    async def check() -> bool:
        """Put the configuration back if another program undid it; True when it had to."""

    def status() -> dict[str, object]:
        """What it did and any problem, for `wire status` / `wire diagnose` (JSON-able)."""
