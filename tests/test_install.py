"""Platform detection and the WireGuard install check, on sample hosts."""

from __future__ import annotations

import os

from twisted.trial import unittest

from wire.install import check_install, detect_platform, package_for
from wire.node.wireguard import WireGuardUnavailable
from wire.node.wireguard.base import missing_program
from wire.runner import CommandNotFound

# Trimmed from each distribution's real /etc/os-release.
OS_RELEASES = {
    "debian": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n',
    "ubuntu": 'PRETTY_NAME="Ubuntu 24.04 LTS"\nNAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n',
    "mint": 'NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n',
    "fedora": "NAME=\"Fedora Linux\"\nVERSION_ID=40\nID=fedora\n",
    "rocky": 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\n',
    "alpine": 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\n',
    "arch": 'NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling\n',
    "manjaro": "NAME='Manjaro Linux'\nID='manjaro'\nID_LIKE='arch'\n",
    "gentoo": 'NAME=Gentoo\nID=gentoo\n',
    "broken": '# a comment\nID="debian\nID_LIKE=\n',
}


class DetectPlatformTests(unittest.TestCase):
    def detect(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return detect_platform(path, system="linux")

    def test_families(self):
        expected = {
            "debian": "debian",
            "ubuntu": "debian",
            "mint": "debian",
            "fedora": "fedora",
            "rocky": "fedora",
            "alpine": "alpine",
            "arch": "arch",
            "manjaro": "arch",
            "gentoo": "unknown",
            "broken": "unknown",
        }
        self.assertEqual({name: self.detect(text) for name, text in OS_RELEASES.items()}, expected)

    def test_macos_needs_no_os_release(self):
        self.assertEqual(detect_platform("/nonexistent", system="darwin"), "macos")

    def test_missing_or_unreadable_file(self):
        self.assertEqual(detect_platform("/nonexistent/os-release", system="linux"), "unknown")
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"ID=\xff\xfe\n")
        self.assertEqual(detect_platform(path, system="linux"), "unknown")


class PackageForTests(unittest.TestCase):
    def test_the_one_package_list(self):
        self.assertEqual(package_for("wg"), "wireguard-tools")
        self.assertEqual(package_for("/usr/bin/wireguard-go"), "wireguard-go")
        self.assertEqual(package_for("/sbin/ip"), "iproute2")
        self.assertEqual(package_for("nft"), "nftables")  # the packet filter of an access policy
        self.assertIsNone(package_for("ls"))

    def test_the_driver_names_the_package_from_it(self):
        message = str(WireGuardUnavailable(missing_program(CommandNotFound("/usr/bin/wg"))))
        self.assertIn("'/usr/bin/wg' program is missing (package wireguard-tools)", message)


class CheckInstallTests(unittest.TestCase):
    def check(self, platform: str, have: set[str], kernel: bool = False):
        return check_install(
            platform,
            which=lambda program: f"/usr/bin/{program}" if program in have else None,
            kernel_module=lambda: kernel,
        )

    def test_everything_there(self):
        result = self.check("debian", {"wg", "wireguard-go", "ip"})
        self.assertEqual((result.ok, result.missing, result.command), (True, (), ()))
        self.assertEqual((result.wg, result.wireguard_go), ("/usr/bin/wg", "/usr/bin/wireguard-go"))

    def test_kernel_module_stands_in_for_wireguard_go(self):
        result = self.check("fedora", {"wg", "ip"}, kernel=True)
        self.assertEqual((result.ok, result.kernel_module), (True, True))

    def test_command_lines_per_platform(self):
        expected = {
            "debian": ("apt-get", "install", "-y", "wireguard-go", "wireguard-tools"),
            "fedora": ("dnf", "install", "-y", "wireguard-go", "wireguard-tools"),
            "alpine": ("apk", "add", "wireguard-go", "wireguard-tools"),
            "arch": ("pacman", "-S", "--noconfirm", "wireguard-go", "wireguard-tools"),
            "macos": ("brew", "install", "wireguard-go", "wireguard-tools"),
        }
        for platform, command in expected.items():
            result = self.check(platform, {"ip"})
            self.assertEqual((result.missing, result.command), (("wg", "wireguard-go"), command), platform)

    def test_only_what_is_missing(self):
        result = self.check("debian", {"wireguard-go", "ip"})
        self.assertEqual((result.missing, result.command), (("wg",), ("apt-get", "install", "-y", "wireguard-tools")))
        result = self.check("alpine", {"wg", "wireguard-go"})
        self.assertEqual((result.missing, result.command), (("ip",), ("apk", "add", "iproute2")))

    def test_macos_ignores_kernel_and_ip(self):
        result = self.check("macos", {"wg"}, kernel=True)
        self.assertEqual((result.kernel_module, result.missing), (False, ("wireguard-go",)))

    def test_unknown_platform_has_no_command(self):
        result = self.check("unknown", set())
        self.assertEqual((result.ok, result.missing, result.command), (False, ("wg", "wireguard-go", "ip"), ()))
        self.assertEqual(result.as_dict()["install_command"], "")

    def test_as_dict(self):
        self.assertEqual(
            self.check("debian", {"ip"}).as_dict(),
            {
                "ok": False,
                "platform": "debian",
                "wg": None,
                "wireguard_go": None,
                "kernel_wireguard": False,
                "missing": ["wg", "wireguard-go"],
                "install_command": "apt-get install -y wireguard-go wireguard-tools",
            },
        )

    def test_this_host(self):
        # Whatever the host has, the check runs and agrees with itself.
        result = check_install()
        self.assertEqual(result.ok, not result.missing)
        self.assertEqual(result.wg is None, "wg" in result.missing)
        if os.path.exists("/etc/os-release"):
            self.assertEqual(result.platform, detect_platform())
