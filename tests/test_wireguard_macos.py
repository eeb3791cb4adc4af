"""wire.node.wireguard.macos: the macOS command sequence, against the scripted runner."""

from __future__ import annotations

import os
import signal

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeProcessRunner, FakeRunningProcess
from tests.wgscript import (
    ALICE,
    FRESH_DUMP,
    NAME,
    POLLING,
    POLLS,
    PRIVATE,
    dump_output,
    run,
)
from wire.node.wireguard import (
    MTU,
    MacWireGuard,
    PeerConfig,
    WireGuardError,
)


class MacTests(SynchronousTestCase):
    """The macOS command sequence, against the scripted runner only."""

    def setUp(self) -> None:
        self.runner = FakeProcessRunner()
        self.clock = Clock()
        self.run_dir = self.mktemp()
        self.lost: list[str] = []
        self.wg = MacWireGuard(
            self.runner, NAME, clock=self.clock, run_dir=self.run_dir, on_lost=self.lost.append, **POLLING
        )
        self.name_file = os.path.join(self.run_dir, "wire0.name")

    def script_configuration(self, dump: bytes = FRESH_DUMP) -> None:
        self.runner.expect(["wg", "set", "utun4", "private-key", "/dev/stdin", "listen-port", "51820"])
        self.runner.expect(["ifconfig", "utun4", "inet", "10.99.0.1", "10.99.0.1", "netmask", "255.255.0.0", "up"])
        self.runner.expect(["ifconfig", "utun4", "mtu", str(MTU)])
        self.runner.expect(["route", "-q", "-n", "add", "-inet", "10.99.0.0/16", "-interface", "utun4"])

    def start(self) -> FakeRunningProcess:
        process = self.runner.expect_start(["wireguard-go", "-f", "utun"])
        self.runner.expect(["wg", "show", "utun4", "dump"], stdout=FRESH_DUMP)
        self.script_configuration()
        d = run(self.wg.up(PRIVATE, 51820, "10.99.0.1", 16))
        self.assertNoResult(d)  # no name file yet
        with open(self.name_file, "w") as f:
            f.write("utun4\n")  # as wireguard-go does
        self.clock.advance(0.25)
        self.successResultOf(d)
        return process

    def test_up_sequence(self) -> None:
        self.start()
        self.runner.assert_all_called()
        started = [call for call in self.runner.calls if call.kind == "start"][0]
        self.assertEqual(started.env, {"WG_TUN_NAME_FILE": self.name_file})
        self.assertEqual((self.wg.backend, self.wg.device), ("wireguard-go", "utun4"))
        for call in self.runner.calls:
            self.assertFalse(any(PRIVATE in word for word in call.argv))
        self.runner.expect(["wg", "set", "utun4", "peer", ALICE, "allowed-ips", "10.99.0.7/32"])
        self.assertEqual(self.successResultOf(run(self.wg.apply({ALICE: PeerConfig(ALICE, ("10.99.0.7",), None, 0)}))), 1)
        self.runner.assert_all_called()

    def test_down_sequence(self) -> None:
        process = self.start()
        self.runner.expect(["route", "-q", "-n", "delete", "-inet", "10.99.0.0/16", "-interface", "utun4"])
        self.successResultOf(run(self.wg.down()))
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.assertFalse(os.path.exists(self.name_file))
        self.assertEqual(self.lost, [])
        self.runner.assert_all_called()

    def test_death_is_reported(self) -> None:
        process = self.start()
        process.exit(2)
        self.assertEqual(len(self.lost), 1)

    def test_restarted_daemon_adopts_the_utun(self) -> None:
        os.makedirs(self.run_dir)
        with open(self.name_file, "w") as f:
            f.write("utun4\n")
        socket = os.path.join(self.run_dir, "utun4.sock")
        open(socket, "w").close()
        self.runner.expect(["wg", "show", "utun4", "dump"], stdout=dump_output(PRIVATE, 51820))
        self.runner.expect(["ifconfig", "utun4", "inet", "10.99.0.1", "10.99.0.1", "netmask", "255.255.0.0", "up"])
        self.runner.expect(["ifconfig", "utun4", "mtu", str(MTU)])
        self.runner.expect(
            ["route", "-q", "-n", "add", "-inet", "10.99.0.0/16", "-interface", "utun4"],
            rc=1,
            stderr=b"route: writing to routing socket: File exists\n",
        )
        self.successResultOf(run(self.wg.up(PRIVATE, 51820, "10.99.0.1", 16)))
        self.assertEqual(self.wg.backend, "adopted")
        self.runner.assert_all_called()
        # Not our child: it is checked, and told to go by removing its socket.
        self.runner.expect(["wg", "show", "utun4", "listen-port"], stdout=b"51820\n")
        self.clock.advance(5)
        self.runner.expect(["route", "-q", "-n", "delete", "-inet", "10.99.0.0/16", "-interface", "utun4"])
        self.successResultOf(run(self.wg.down()))
        self.assertFalse(os.path.exists(socket))
        self.assertFalse(os.path.exists(self.name_file))
        self.runner.assert_all_called()

    def test_stale_name_file_starts_afresh(self) -> None:
        os.makedirs(self.run_dir)
        with open(self.name_file, "w") as f:
            f.write("utun9\n")
        self.runner.expect(["wg", "show", "utun9", "dump"], rc=1, stderr=b"Unable to access interface: No such file or directory\n")
        self.runner.expect_start(["wireguard-go", "-f", "utun"])
        d = run(self.wg.up(PRIVATE, 51820, "10.99.0.1", 16))
        self.assertFalse(os.path.exists(self.name_file))
        with open(self.name_file, "w") as f:
            f.write("utun4\n")
        self.runner.expect(["wg", "show", "utun4", "dump"], stdout=FRESH_DUMP)
        self.script_configuration()
        self.clock.advance(0.25)
        self.successResultOf(d)
        self.runner.assert_all_called()

    def test_odd_name_file_is_not_trusted(self) -> None:
        os.makedirs(self.run_dir)
        with open(self.name_file, "w") as f:
            f.write("utun4; reboot\n")
        self.runner.expect_start(["wireguard-go", "-f", "utun"])
        d = run(self.wg.up(PRIVATE, 51820, "10.99.0.1", 16))
        self.clock.pump([0.25] * POLLS)
        self.assertIn("not ready after 1s", str(self.failureResultOf(d, WireGuardError).value))
        self.runner.assert_all_called()


class MacIPv6Tests(SynchronousTestCase):
    """The IPv6 mesh address on the utun too: ifconfig inet6 alias, its route, and both routes gone on down."""

    setUp = MacTests.setUp
    script_configuration = MacTests.script_configuration

    def test_up_and_down_with_an_ipv6_address(self) -> None:
        process = self.runner.expect_start(["wireguard-go", "-f", "utun"])
        self.runner.expect(["wg", "show", "utun4", "dump"], stdout=FRESH_DUMP)
        self.script_configuration()
        self.runner.expect(["ifconfig", "utun4", "inet6", "fd7a:115c:a1e0::1", "prefixlen", "48", "alias", "up"])
        self.runner.expect(["ifconfig", "utun4", "mtu", str(MTU)])
        self.runner.expect(["route", "-q", "-n", "add", "-inet6", "fd7a:115c:a1e0::/48", "-interface", "utun4"])
        d = run(self.wg.up(PRIVATE, 51820, "10.99.0.1", 16, address6="fd7a:115c:a1e0::1", prefixlen6=48))
        with open(self.name_file, "w") as f:
            f.write("utun4\n")
        self.clock.advance(0.25)
        self.successResultOf(d)
        self.runner.assert_all_called()
        self.runner.expect(["route", "-q", "-n", "delete", "-inet", "10.99.0.0/16", "-interface", "utun4"])
        self.runner.expect(["route", "-q", "-n", "delete", "-inet6", "fd7a:115c:a1e0::/48", "-interface", "utun4"])
        self.successResultOf(run(self.wg.down()))
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.runner.assert_all_called()

    def test_an_ipv6_address_the_system_refuses_leaves_ipv4_working(self) -> None:
        self.runner.expect_start(["wireguard-go", "-f", "utun"])
        self.runner.expect(["wg", "show", "utun4", "dump"], stdout=FRESH_DUMP)
        self.script_configuration()
        self.runner.expect(["ifconfig", "utun4", "inet6", "fd7a:115c:a1e0::1", "prefixlen", "48", "alias", "up"], rc=1,
                           stderr=b"ifconfig: ioctl (SIOCAIFADDR): Invalid argument\n")
        d = run(self.wg.up(PRIVATE, 51820, "10.99.0.1", 16, address6="fd7a:115c:a1e0::1", prefixlen6=48))
        with open(self.name_file, "w") as f:
            f.write("utun4\n")
        self.clock.advance(0.25)
        self.successResultOf(d)
        self.runner.assert_all_called()
        self.assertEqual(self.wg.backend, "wireguard-go")
