"""make_wireguard: the IWireGuard backend for this platform."""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.interfaces import IReactorTime

from wire.node.wireguard.interface import IWireGuard
from wire.node.wireguard.linux import LinuxWireGuard
from wire.node.wireguard.macos import MacWireGuard
from wire.node.wireguard.model import WireGuardUnavailable
from wire.runner import IProcessRunner


def make_wireguard(
    runner: IProcessRunner, name: str, clock: IReactorTime, platform: str = sys.platform, **options: Any
) -> IWireGuard:
    """The IWireGuard for this platform."""
    if platform.startswith("linux"):
        return LinuxWireGuard(runner, name, clock=clock, **options)
    if platform == "darwin":
        return MacWireGuard(runner, name, clock=clock, **options)
    raise WireGuardUnavailable(f"wire drives WireGuard on Linux and macOS, not on {platform!r}")
