"""What WireGuard needs on this platform, what is missing, how to install it."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from typing import Callable

from wire.runner import CommandNotFound, find_program

# The package that provides each program; the same name on every platform.
_PACKAGES = {"wg": "wireguard-tools", "wireguard-go": "wireguard-go", "ip": "iproute2", "nft": "nftables"}
# The package manager's install command, per distribution family.
_PACKAGE_COMMANDS = {
    "debian": ["apt-get", "install", "-y"],
    "fedora": ["dnf", "install", "-y"],
    "alpine": ["apk", "add"],
    "arch": ["pacman", "-S", "--noconfirm"],
    "macos": ["brew", "install"],
}


_FAMILIES = {"debian": "debian", "ubuntu": "debian", "fedora": "fedora", "rhel": "fedora", "centos": "fedora",
             "alpine": "alpine", "arch": "arch"}


def package_for(program: str) -> str | None:
    """The package that provides ``program`` (a name or a path), if it is one of ours."""
    return _PACKAGES.get(os.path.basename(program))


def install_command(platform: str, *packages: str) -> tuple[str, ...] | None:
    """The command that installs ``packages`` on ``platform``; None where wire does not know it."""
    command = _PACKAGE_COMMANDS.get(platform)
    return None if command is None else (*command, *packages)


@dataclass(frozen=True)
class InstallCheck:
    platform: str  # "debian", "fedora", "alpine", "arch", "macos" or "unknown"
    wg: str | None  # path of wg, if found
    wireguard_go: str | None
    kernel_module: bool
    missing: tuple[str, ...]  # programs to install
    command: tuple[str, ...]  # the command that installs them (empty when nothing is missing, or unknown)

    @property
    def ok(self) -> bool:
        return not self.missing

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "platform": self.platform,
            "wg": self.wg,
            "wireguard_go": self.wireguard_go,
            "kernel_wireguard": self.kernel_module,
            "missing": list(self.missing),
            "install_command": " ".join(self.command),
        }


def detect_platform(os_release: str = "/etc/os-release", system: str = sys.platform) -> str:
    """The distribution family from os-release's ID, then its ID_LIKE list."""
    if system == "darwin":
        return "macos"
    try:
        with open(os_release) as f:
            fields = _os_release_fields(f.read())
    except (OSError, UnicodeDecodeError):
        return "unknown"
    for name in [fields.get("ID", "")] + fields.get("ID_LIKE", "").split():
        family = _FAMILIES.get(name.lower())
        if family:
            return family
    return "unknown"


def _os_release_fields(text: str) -> dict[str, str]:
    """KEY=value lines; values may be shell-quoted (os-release(5))."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue  # an unbalanced quote: skip the line, not the file
        fields[key] = " ".join(words)
    return fields


def kernel_has_wireguard() -> bool:
    # Loaded, or built in; an unloaded module is loaded by "ip link add" itself.
    return os.path.exists("/sys/module/wireguard") or _module_file_exists()


def _module_file_exists() -> bool:
    release = os.uname().release
    for root, _, files in os.walk(f"/lib/modules/{release}/kernel/drivers/net/wireguard"):
        if any(f.startswith("wireguard.ko") for f in files):
            return True
    return False


def _which(program: str) -> str | None:
    try:
        return find_program(program)
    except CommandNotFound:
        return None


def check_install(
    platform: str | None = None,
    *,
    which: Callable[[str], str | None] = _which,
    kernel_module: Callable[[], bool] = kernel_has_wireguard,
) -> InstallCheck:
    """What this host has and lacks (``which`` and ``kernel_module`` look at the host)."""
    platform = platform or detect_platform()
    wg = which("wg")
    wireguard_go = which("wireguard-go")
    kernel = platform != "macos" and kernel_module()
    missing = []
    if wg is None:
        missing.append("wg")
    if wireguard_go is None and not kernel:
        missing.append("wireguard-go")
    if platform != "macos" and which("ip") is None:
        missing.append("ip")
    command: tuple[str, ...] = ()
    if missing and platform in _PACKAGE_COMMANDS:
        command = install_command(platform, *sorted({_PACKAGES[m] for m in missing})) or ()
    return InstallCheck(platform, wg, wireguard_go, kernel, tuple(missing), command)
