"""What WireGuard needs on this platform, what is missing, how to install it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from wire.runner import CommandNotFound, find_program

# Package manager command lines, per distribution family.
_PACKAGE_COMMANDS = {
    "debian": (["apt-get", "install", "-y"], {"wg": "wireguard-tools", "wireguard-go": "wireguard-go"}),
    "fedora": (["dnf", "install", "-y"], {"wg": "wireguard-tools", "wireguard-go": "wireguard-go"}),
    "alpine": (["apk", "add"], {"wg": "wireguard-tools", "wireguard-go": "wireguard-go"}),
    "arch": (["pacman", "-S", "--noconfirm"], {"wg": "wireguard-tools", "wireguard-go": "wireguard-go"}),
    "macos": (["brew", "install"], {"wg": "wireguard-tools", "wireguard-go": "wireguard-go"}),
}
_FAMILIES = {"debian": "debian", "ubuntu": "debian", "fedora": "fedora", "rhel": "fedora", "centos": "fedora",
             "alpine": "alpine", "arch": "arch"}


@dataclass(frozen=True)
class InstallCheck:
    platform: str  # "debian", "fedora", "alpine", "arch", "macos" or "unknown"
    wg: str | None  # path of wg, if found
    wireguard_go: str | None
    kernel_module: bool
    missing: tuple[str, ...]  # programs to install
    command: tuple[str, ...]  # the command that installs them ("" when nothing is missing)

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
    if system == "darwin":
        return "macos"
    try:
        with open(os_release) as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return "unknown"
    for name in [fields.get("ID", "")] + fields.get("ID_LIKE", "").split():
        family = _FAMILIES.get(name.strip('"').lower())
        if family:
            return family
    return "unknown"


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


def check_install(platform: str | None = None) -> InstallCheck:
    platform = platform or detect_platform()
    wg = _which("wg")
    wireguard_go = _which("wireguard-go")
    kernel = platform != "macos" and kernel_has_wireguard()
    missing = []
    if wg is None:
        missing.append("wg")
    if wireguard_go is None and not kernel:
        missing.append("wireguard-go")
    command: tuple[str, ...] = ()
    if missing and platform in _PACKAGE_COMMANDS:
        base, packages = _PACKAGE_COMMANDS[platform]
        command = tuple(base + sorted({packages[m] for m in missing}))
    return InstallCheck(platform, wg, wireguard_go, kernel, tuple(missing), command)
