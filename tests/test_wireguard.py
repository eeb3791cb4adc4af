"""Tests for the WireGuard driver on Linux (wire.node.wireguard.linux and
.base): scripted commands first, then real tunnels in the lab."""

from __future__ import annotations

import glob
import os
import signal
from collections.abc import Callable, Mapping

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.fakes import FakeProcessRunner, FakeRunningProcess, PassThroughRunner, missing_programs
from tests.helpers import key_for
from tests.wgscript import (
    ALICE,
    BOB,
    CAROL,
    DUMP,
    FRESH_DUMP,
    IP_ADDRESS,
    IP_ADDRESSES,
    IP_LINK_ADD,
    IP_LINK_DELETE,
    IP_LINK_SHOW,
    IP_LINK_UP,
    NAME,
    NO_ANSWER,
    NO_DEVICE,
    NO_KERNEL,
    OTHER_PRIVATE,
    POLLING,
    POLLS,
    PRIVATE,
    WG_CHECK,
    WG_DUMP,
    WG_SET_KEY_PORT,
    WIREGUARD_GO,
    dump_output,
    ip_addresses_json,
    peer_line,
    run,
)
from wire.keys import generate_private_key, public_key_for
from wire.lab import Lab, LabUnavailable, check_requirements
from wire.node.wireguard import (
    InvalidWireGuardConfig,
    IWireGuard,
    LinuxWireGuard,
    MacWireGuard,
    PeerConfig,
    WireGuardError,
    WireGuardUnavailable,
    make_wireguard,
)
from wire.node.wireguard.diff import argv_batches
from wire.node.wireguard.linux import uapi_listening
from wire.runner import (
    CommandNotFound,
    ProcessRunner,
    find_program,
)


class Scripted(SynchronousTestCase):
    """A LinuxWireGuard on a scripted runner and a fake clock."""

    def setUp(self) -> None:
        self.runner = FakeProcessRunner()
        self.clock = Clock()
        self.lost: list[str] = []
        self.wg = LinuxWireGuard(self.runner, NAME, clock=self.clock, on_lost=self.lost.append, **POLLING)

    def up(self, wg: LinuxWireGuard | None = None, private: str = PRIVATE) -> Deferred:
        return run((wg or self.wg).up(private, 51820, "10.99.0.1", 16))

    def script_kernel_up(self, dump: bytes = FRESH_DUMP) -> None:
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD)
        self.runner.expect(WG_DUMP, stdout=dump)
        self.runner.expect(WG_SET_KEY_PORT)
        self.runner.expect(IP_ADDRESS)
        self.runner.expect(IP_LINK_UP)

    def script_userspace_up(self) -> FakeRunningProcess:
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD, rc=2, stderr=NO_KERNEL)
        process = self.runner.expect_start(WIREGUARD_GO)
        self.runner.expect(WG_DUMP, rc=1, stderr=NO_ANSWER)  # not ready yet
        self.runner.expect(WG_DUMP, stdout=FRESH_DUMP)
        self.runner.expect(WG_SET_KEY_PORT)
        self.runner.expect(IP_ADDRESS)
        self.runner.expect(IP_LINK_UP)
        return process

    def bring_up_kernel(self) -> None:
        self.script_kernel_up()
        self.successResultOf(self.up())

    def assert_key_only_on_stdin(self) -> None:
        for call in self.runner.calls:
            self.assertFalse(any(PRIVATE in word for word in call.argv), call.argv)
            self.assertNotIn(PRIVATE, repr(call.env))
        stdins = [call.stdin for call in self.runner.calls if call.stdin]
        self.assertEqual(stdins, [PRIVATE.encode() + b"\n"])


class UpTests(Scripted):
    def test_kernel_path(self) -> None:
        self.script_kernel_up()
        self.successResultOf(self.up())
        self.runner.assert_all_called()
        self.assertEqual((self.wg.backend, self.wg.device), ("kernel", NAME))
        self.assertTrue(self.wg.is_alive())
        self.assert_key_only_on_stdin()

    def test_fallback_to_wireguard_go_polls_with_the_clock(self) -> None:
        process = self.script_userspace_up()
        d = self.up()
        self.assertNoResult(d)  # waiting for wireguard-go's interface
        self.clock.advance(0.25)
        self.successResultOf(d)
        self.runner.assert_all_called()
        self.assertEqual(self.wg.backend, "wireguard-go")
        self.assertTrue(self.wg.is_alive())
        self.assertTrue(process.running)
        self.assert_key_only_on_stdin()

    def test_wireguard_go_is_started_without_its_banner(self) -> None:
        # On a kernel with WireGuard it would box nine lines into the log at each start.
        self.script_userspace_up()
        d = self.up()
        self.clock.advance(0.25)
        self.successResultOf(d)
        [start] = [call for call in self.runner.calls if call.kind == "start"]
        self.assertEqual((start.argv, start.env), (tuple(WIREGUARD_GO), {"WG_PROCESS_FOREGROUND": "1"}))

    def test_use_kernel_false_goes_straight_to_wireguard_go(self) -> None:
        wg = LinuxWireGuard(self.runner, NAME, clock=self.clock, use_kernel=False, **POLLING)
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect_start(WIREGUARD_GO)
        self.runner.expect(WG_DUMP, stdout=FRESH_DUMP)
        self.runner.expect(WG_SET_KEY_PORT)
        self.runner.expect(IP_ADDRESS)
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up(wg))
        self.runner.assert_all_called()
        self.assertEqual(wg.backend, "wireguard-go")

    def test_wg_is_not_asked_before_the_uapi_socket_listens(self) -> None:
        # `wg` refused by a socket bound but not yet listening unlinks it, and
        # wireguard-go then exits ("Failed to listen on uapi socket").
        proc = self.mktemp()
        wg = LinuxWireGuard(self.runner, NAME, clock=self.clock, proc=proc, **POLLING)
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD, rc=2, stderr=NO_KERNEL)
        process = self.runner.expect_start(WIREGUARD_GO)
        self.runner.expect(WG_DUMP, stdout=FRESH_DUMP)
        self.runner.expect(WG_SET_KEY_PORT)
        self.runner.expect(IP_ADDRESS)
        self.runner.expect(IP_LINK_UP)
        table = os.path.join(proc, str(process.pid), "net", "unix")
        os.makedirs(os.path.dirname(table))
        header = "Num       RefCount Protocol Flags    Type St Inode Path\n"
        socket = f"/var/run/wireguard/{NAME}.sock"
        with open(table, "w") as f:
            f.write(header + f"0000000000000000: 00000002 00000000 00000000 0001 01 4711 {socket}\n")
        d = self.up(wg)
        self.clock.pump([0.25] * 3)
        self.assertNoResult(d)
        self.assertEqual([c.argv for c in self.runner.calls if c.argv == tuple(WG_DUMP)], [])
        with open(table, "w") as f:
            f.write(header + f"0000000000000000: 00000002 00000000 00010000 0001 01 4711 {socket}\n")
        self.clock.advance(0.25)
        self.successResultOf(d)
        self.runner.assert_all_called()

    def test_uapi_listening_reads_the_namespace_of_the_process(self) -> None:
        proc = self.mktemp()
        os.makedirs(os.path.join(proc, "7", "net"))
        with open(os.path.join(proc, "7", "net", "unix"), "w") as f:
            f.write(
                "Num       RefCount Protocol Flags    Type St Inode Path\n"
                "0000000000000000: 00000002 00000000 00010000 0001 01 1 /var/run/wireguard/wg1.sock\n"
                "0000000000000000: 00000002 00000000 00000000 0001 01 2 /var/run/wireguard/wg2.sock\n"
                "0000000000000000: 00000002 00000000 zz 0001 01 3 /var/run/wireguard/wg3.sock\n"
                "garbage\n"
            )
        self.assertIs(uapi_listening(7, "wg1", proc), True)
        self.assertIs(uapi_listening(7, "wg2", proc), False)  # bound, not listening
        self.assertIs(uapi_listening(7, "wg3", proc), False)
        self.assertIs(uapi_listening(7, "wg4", proc), False)
        self.assertIsNone(uapi_listening(8, "wg1", proc))  # no such process: cannot tell

    def test_wireguard_go_never_ready_is_stopped(self) -> None:
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD, rc=2, stderr=NO_KERNEL)
        process = self.runner.expect_start(WIREGUARD_GO)
        for _ in range(POLLS):
            self.runner.expect(WG_DUMP, rc=1, stderr=NO_ANSWER)
        d = self.up()
        self.clock.pump([0.25] * (POLLS - 1))
        error = self.failureResultOf(d, WireGuardError).value
        self.assertIn("not ready after 1s", str(error))
        self.assertIn("Protocol not supported", str(error))
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.runner.assert_all_called()
        self.assertEqual(self.wg.backend, "")
        self.assertEqual(self.lost, [])

    def test_wireguard_go_dying_at_start_is_an_error_not_a_loss(self) -> None:
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD, rc=2, stderr=NO_KERNEL)
        process = self.runner.expect_start(WIREGUARD_GO)
        self.runner.expect(WG_DUMP, rc=1, stderr=NO_ANSWER)
        d = self.up()
        process.tail = ["ERROR: (wire0) Failed to create TUN device: no such file or directory"]
        process.exit(1)
        self.clock.advance(0.25)
        error = self.failureResultOf(d, WireGuardError).value
        self.assertIn("exited with code 1", str(error))
        self.assertIn("Failed to create TUN device", str(error))
        self.assertEqual(self.lost, [])
        self.runner.assert_all_called()

    def test_no_wireguard_go_and_no_kernel_module(self) -> None:
        runner = PassThroughRunner(self.runner, inspect=missing_programs("wireguard-go"))
        wg = LinuxWireGuard(runner, NAME, clock=self.clock)
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD, rc=2, stderr=NO_KERNEL)
        error = self.failureResultOf(self.up(wg), WireGuardUnavailable).value
        message = str(error)
        self.assertIn("'wireguard-go' program is missing", message)
        self.assertIn("the kernel has no WireGuard module", message)
        self.assertIn("apt-get install wireguard-tools wireguard-go", message)
        self.assertIn("brew install wireguard-tools wireguard-go", message)
        self.runner.assert_all_called()

    def test_no_wg_removes_the_new_kernel_interface(self) -> None:
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD)
        self.runner.expect(WG_DUMP, error=CommandNotFound("wg"))
        self.runner.expect(IP_LINK_DELETE)
        error = self.failureResultOf(self.up(), WireGuardUnavailable).value
        self.assertIn("(package wireguard-tools)", str(error))
        self.assertIn("apt-get install", str(error))
        self.runner.assert_all_called()

    def test_no_ip(self) -> None:
        self.runner.expect(IP_LINK_SHOW, error=CommandNotFound("ip"))
        error = self.failureResultOf(self.up(), WireGuardUnavailable).value
        self.assertIn("package iproute2", str(error))

    def test_failed_configuration_removes_what_was_created(self) -> None:
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD)
        self.runner.expect(WG_DUMP, stdout=FRESH_DUMP)
        self.runner.expect(WG_SET_KEY_PORT)
        self.runner.expect(IP_ADDRESS, rc=2, stderr=b"Error: ipv4: Address already assigned.\n")
        self.runner.expect(IP_LINK_DELETE)
        error = self.failureResultOf(self.up(), WireGuardError).value
        self.assertIn("set address 10.99.0.1/16", str(error))
        self.runner.assert_all_called()
        self.assertFalse(self.wg.is_alive())

    def test_adopts_a_working_interface_without_deleting_it(self) -> None:
        existing = dump_output(
            PRIVATE,
            51820,
            peer_line(ALICE, "198.18.0.7:51820", "10.99.0.7/32", 1_700_000_000, 2048, 4096, "25"),
        )
        self.runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1380\n")
        self.runner.expect(WG_DUMP, stdout=existing)
        self.runner.expect(IP_ADDRESSES, stdout=ip_addresses_json(("10.99.0.1", 16)))
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up())
        self.runner.assert_all_called()
        self.assertEqual(self.wg.backend, "adopted")
        for call in self.runner.calls:
            self.assertNotIn("delete", call.argv)
            self.assertNotIn("add", call.argv)
            self.assertNotEqual(call.argv[:2], ("wg", "set"))  # same key and port: nothing to set
        # The peers were read from the interface: the same netmap is no change.
        calls = len(self.runner.calls)
        same = {ALICE: PeerConfig(ALICE, ("10.99.0.7/32",), "198.18.0.7:51820", 25)}
        self.assertEqual(self.successResultOf(run(self.wg.apply(same))), 0)
        self.assertEqual(len(self.runner.calls), calls)

    def test_adoption_fixes_key_port_and_address(self) -> None:
        self.runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <POINTOPOINT,NOARP> mtu 1380\n")
        self.runner.expect(WG_DUMP, stdout=dump_output(OTHER_PRIVATE, 40000))
        self.runner.expect(WG_SET_KEY_PORT)
        self.runner.expect(IP_ADDRESSES, stdout=ip_addresses_json(("10.98.0.5", 16), ("fe80::1", 64)))
        self.runner.expect(["ip", "address", "del", "10.98.0.5/16", "dev", NAME])
        self.runner.expect(IP_ADDRESS)
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up())
        self.runner.assert_all_called()
        self.assert_key_only_on_stdin()

    def test_something_else_by_that_name_is_left_alone(self) -> None:
        for _ in range(POLLS):
            self.runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <BROADCAST,MULTICAST,UP> mtu 1500\n")
            self.runner.expect(WG_DUMP, rc=1, stderr=NO_ANSWER)
        d = self.up()
        self.clock.pump([0.25] * (POLLS - 1))
        error = self.failureResultOf(d, WireGuardError).value
        self.assertIn("exists but does not answer `wg`", str(error))
        self.assertIn("ip link delete wire0", str(error))  # advice, not an action
        self.runner.assert_all_called()
        self.assertFalse(any("delete" in call.argv for call in self.runner.calls))

    def test_interface_of_a_dying_wireguard_go_is_waited_out(self) -> None:
        self.runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <POINTOPOINT,NOARP> mtu 1380\n")
        self.runner.expect(WG_DUMP, rc=1, stderr=NO_ANSWER)
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)  # gone with its process
        self.runner.expect(IP_LINK_ADD)
        self.runner.expect(WG_DUMP, stdout=FRESH_DUMP)
        self.runner.expect(WG_SET_KEY_PORT)
        self.runner.expect(IP_ADDRESS)
        self.runner.expect(IP_LINK_UP)
        d = self.up()
        self.clock.advance(0.25)
        self.successResultOf(d)
        self.runner.assert_all_called()
        self.assertEqual(self.wg.backend, "kernel")

    def test_up_again_is_harmless(self) -> None:
        process = self.script_userspace_up()
        d = self.up()
        self.clock.advance(0.25)
        self.successResultOf(d)
        peers = {ALICE: PeerConfig(ALICE, ("10.99.0.7/32",), "198.18.0.7:51820")}
        self.runner.expect(["wg", "set", NAME, "peer", ALICE, "endpoint", "198.18.0.7:51820",
                            "allowed-ips", "10.99.0.7/32", "persistent-keepalive", "25"])  # fmt: skip
        self.successResultOf(run(self.wg.apply(peers)))
        self.runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1380\n")
        self.runner.expect(
            WG_DUMP, stdout=dump_output(PRIVATE, 51820, peer_line(ALICE, "198.18.0.7:51820", "10.99.0.7/32", keepalive="25"))
        )
        self.runner.expect(IP_ADDRESSES, stdout=ip_addresses_json(("10.99.0.1", 16)))
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up())
        self.runner.assert_all_called()
        self.assertEqual(self.wg.backend, "wireguard-go")  # still our child, not "adopted"
        self.assertTrue(process.running)
        self.assertEqual(self.successResultOf(run(self.wg.apply(peers))), 0)
        process.exit(2)  # and still supervised
        self.assertEqual(len(self.lost), 1)

    def test_bad_arguments_are_refused_before_any_command(self) -> None:
        for key, port, address, prefixlen in [
            ("not a key", 51820, "10.99.0.1", 16),
            (PRIVATE, 70000, "10.99.0.1", 16),
            (PRIVATE, True, "10.99.0.1", 16),
            (PRIVATE, 51820, "10.99.0.1; rm -rf /", 16),
            (PRIVATE, 51820, "10.99.0.1", 33),
            (PRIVATE, 51820, "10.99.0.1/16", 16),
            (PRIVATE, 51820, "wire.example", 16),
        ]:
            error = self.failureResultOf(run(self.wg.up(key, port, address, prefixlen)), InvalidWireGuardConfig).value
            self.assertNotIn(PRIVATE, str(error))
        self.assertEqual(self.runner.calls, [])

    def test_bad_interface_names(self) -> None:
        for name in ["", "wire 0", "a" * 16, "wire0;reboot", "..", "wïre0", "wire0\n"]:
            self.assertRaises(InvalidWireGuardConfig, LinuxWireGuard, self.runner, name, clock=self.clock)

    def test_private_key_never_logged(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.script_kernel_up(dump=dump_output(OTHER_PRIVATE, 0))
        self.successResultOf(self.up())
        self.runner.expect(WG_DUMP, stdout=dump_output(PRIVATE, 51820))
        status = self.successResultOf(run(self.wg.status()))
        self.assertNotIn(PRIVATE, repr(status))
        self.assertGreater(len(events), 0)
        for event in events:
            self.assertNotIn(PRIVATE, formatEvent(event))
            self.assertNotIn(PRIVATE, repr(event))



IP6 = ("fd7a:115c:a1e0::1", 48)
IP6_ADDRESS = ["ip", "-6", "address", "replace", "fd7a:115c:a1e0::1/48", "dev", NAME]


class IPv6AddressTests(Scripted):
    """The IPv6 mesh address beside the IPv4 one: set, kept exact on adoption, best effort."""

    def up6(self, address6: str = IP6[0], prefixlen6: int = IP6[1]) -> Deferred:
        return run(self.wg.up(PRIVATE, 51820, "10.99.0.1", 16, address6=address6, prefixlen6=prefixlen6))

    def test_a_fresh_interface_gets_both_addresses(self) -> None:
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD)
        self.runner.expect(WG_DUMP, stdout=FRESH_DUMP)
        self.runner.expect(WG_SET_KEY_PORT)
        self.runner.expect(IP_ADDRESS)
        self.runner.expect(IP6_ADDRESS)
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up6())
        self.runner.assert_all_called()

    def test_adoption_replaces_an_old_ipv6_address_and_keeps_a_right_one(self) -> None:
        self.runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <POINTOPOINT,NOARP> mtu 1380\n")
        self.runner.expect(WG_DUMP, stdout=dump_output(PRIVATE, 51820))
        self.runner.expect(IP_ADDRESSES, stdout=ip_addresses_json(("10.99.0.1", 16), ("fd00:9::1", 48)))
        self.runner.expect(["ip", "address", "del", "fd00:9::1/48", "dev", NAME])
        self.runner.expect(IP6_ADDRESS)
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up6())
        self.runner.assert_all_called()
        # Up again with the same addresses: nothing to change.
        self.runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <POINTOPOINT,NOARP,UP> mtu 1380\n")
        self.runner.expect(WG_DUMP, stdout=dump_output(PRIVATE, 51820))
        self.runner.expect(IP_ADDRESSES, stdout=ip_addresses_json(("10.99.0.1", 16), IP6))
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up6())
        self.runner.assert_all_called()

    def test_no_ipv6_given_removes_one_left_behind(self) -> None:
        self.runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <POINTOPOINT,NOARP> mtu 1380\n")
        self.runner.expect(WG_DUMP, stdout=dump_output(PRIVATE, 51820))
        self.runner.expect(IP_ADDRESSES, stdout=ip_addresses_json(("10.99.0.1", 16), IP6))
        self.runner.expect(["ip", "address", "del", "fd7a:115c:a1e0::1/48", "dev", NAME])
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up())
        self.runner.assert_all_called()

    def test_a_host_refusing_ipv6_keeps_the_interface_up_on_ipv4(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.runner.expect(IP_LINK_SHOW, rc=1, stderr=NO_DEVICE)
        self.runner.expect(IP_LINK_ADD)
        self.runner.expect(WG_DUMP, stdout=FRESH_DUMP)
        self.runner.expect(WG_SET_KEY_PORT)
        self.runner.expect(IP_ADDRESS)
        self.runner.expect(IP6_ADDRESS, rc=2, stderr=b"RTNETLINK answers: Permission denied\n")
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up6())
        self.runner.assert_all_called()
        self.assertTrue(self.wg.is_alive())
        told = [formatEvent(e) for e in logged if e["log_level"] == LogLevel.warn]
        self.assertTrue(any("no IPv6 mesh address" in t and "Permission denied" in t for t in told), told)

    def test_a_bad_ipv6_address_is_refused_before_any_command(self) -> None:
        for address6, prefixlen6 in (("10.99.0.9", 16), ("fd00::1; reboot", 64), ("fd00::1", 129), ("fd00::1/64", 64)):
            self.failureResultOf(self.up6(address6, prefixlen6), InvalidWireGuardConfig)
        self.assertEqual(self.runner.calls, [])


class ApplyTests(Scripted):
    def setUp(self) -> None:
        super().setUp()
        self.bring_up_kernel()

    def apply(self, desired: Mapping[str, PeerConfig]) -> int:
        return self.successResultOf(run(self.wg.apply(desired)))

    def test_add_change_remove_in_one_spawn(self) -> None:
        first = {
            ALICE: PeerConfig(ALICE, ("10.99.0.7/32",), "198.18.0.7:51820"),
            BOB: PeerConfig(BOB, ("10.99.0.8/32",), None, 0),
        }
        self.runner.expect(
            ["wg", "set", NAME,
             "peer", ALICE, "endpoint", "198.18.0.7:51820", "allowed-ips", "10.99.0.7/32", "persistent-keepalive", "25",
             "peer", BOB, "allowed-ips", "10.99.0.8/32"]
        )  # fmt: skip
        self.assertEqual(self.apply(first), 2)
        second = {
            ALICE: PeerConfig(ALICE, ("10.99.0.7/32",), "[2001:DB8::7]:51821"),  # moved
            CAROL: PeerConfig(CAROL, ("10.99.0.9/32", "fd00::9/128"), "198.18.0.9:41641", 25),  # new
        }  # and bob left
        self.runner.expect(
            ["wg", "set", NAME,
             "peer", ALICE, "endpoint", "[2001:db8::7]:51821",
             "peer", CAROL, "endpoint", "198.18.0.9:41641", "allowed-ips", "10.99.0.9/32,fd00::9/128",
             "persistent-keepalive", "25",
             "peer", BOB, "remove"]
        )  # fmt: skip
        self.assertEqual(self.apply(second), 3)
        self.runner.assert_all_called()

    def test_nothing_to_do_spawns_nothing(self) -> None:
        peers = {ALICE: PeerConfig(ALICE, ("10.99.0.7/32",), "198.18.0.7:51820")}
        self.runner.expect(["wg", "set", NAME, "peer", ALICE, "endpoint", "198.18.0.7:51820",
                            "allowed-ips", "10.99.0.7/32", "persistent-keepalive", "25"])  # fmt: skip
        self.apply(peers)
        calls = len(self.runner.calls)
        self.assertEqual(self.apply(dict(peers)), 0)
        # An unknown endpoint leaves the current (maybe roamed) one alone.
        self.assertEqual(self.apply({ALICE: PeerConfig(ALICE, ("10.99.0.7",), None)}), 0)
        self.assertEqual(len(self.runner.calls), calls)
        self.runner.assert_all_called()

    def test_only_what_differs_is_sent(self) -> None:
        self.runner.expect(["wg", "set", NAME, "peer", ALICE, "allowed-ips", "10.99.0.7/32"])
        self.apply({ALICE: PeerConfig(ALICE, ("10.99.0.7/32",), None, 0)})
        self.runner.expect(["wg", "set", NAME, "peer", ALICE, "allowed-ips", "10.99.0.7/32,10.200.0.0/24"])
        self.assertEqual(self.apply({ALICE: PeerConfig(ALICE, ("10.200.0.0/24", "10.99.0.7/32"), None, 0)}), 1)
        self.runner.expect(["wg", "set", NAME, "peer", ALICE, "persistent-keepalive", "15"])
        self.assertEqual(self.apply({ALICE: PeerConfig(ALICE, ("10.200.0.0/24", "10.99.0.7/32"), None, 15)}), 1)
        self.runner.expect(["wg", "set", NAME, "peer", ALICE, "allowed-ips", ""])
        self.assertEqual(self.apply({ALICE: PeerConfig(ALICE, (), None, 15)}), 1)
        self.runner.assert_all_called()

    def test_everything_removed(self) -> None:
        self.runner.expect(["wg", "set", NAME, "peer", ALICE, "allowed-ips", "10.99.0.7/32",
                            "peer", BOB, "allowed-ips", "10.99.0.8/32"])  # fmt: skip
        self.apply({k: PeerConfig(k, (ip,), None, 0) for k, ip in [(ALICE, "10.99.0.7"), (BOB, "10.99.0.8")]})
        self.runner.expect(["wg", "set", NAME, "peer", ALICE, "remove", "peer", BOB, "remove"])
        self.assertEqual(self.apply({}), 2)
        self.runner.assert_all_called()

    def test_a_thousand_peers_in_one_spawn(self) -> None:
        peers, words = {}, []
        for i in range(1000):
            key, host = key_for(f"peer {i}"), f"{i // 250}.{i % 250 + 1}"
            peers[key] = PeerConfig(key, (f"10.99.{host}/32",), f"198.18.{host}:51820", 0)
            words += ["peer", key, "endpoint", f"198.18.{host}:51820", "allowed-ips", f"10.99.{host}/32"]
        self.runner.expect(["wg", "set", NAME, *words])
        self.assertEqual(self.apply(peers), 1000)
        self.runner.assert_all_called()

    def test_a_huge_netmap_is_split_only_when_argv_would_overflow(self) -> None:
        groups = [["peer", key_for(str(i)), "allowed-ips", f"10.99.0.{i}/32"] for i in range(10)]
        (one,) = argv_batches(["wg", "set", NAME], groups)
        self.assertEqual(one, ["wg", "set", NAME, *[word for group in groups for word in group]])
        several = argv_batches(["wg", "set", NAME], groups, limit=400)
        self.assertGreater(len(several), 1)
        self.assertEqual([word for argv in several for word in argv[3:]], one[3:])
        self.assertTrue(all(argv[:3] == ["wg", "set", NAME] and argv[3] == "peer" for argv in several))
        self.assertEqual(argv_batches(["wg", "set", NAME], []), [])

    def test_failure_rereads_the_interface(self) -> None:
        peers = {ALICE: PeerConfig(ALICE, ("10.99.0.7/32",), "198.18.0.7:51820")}
        self.runner.expect(
            ["wg", "set", NAME, "peer", ALICE, "endpoint", "198.18.0.7:51820", "allowed-ips", "10.99.0.7/32",
             "persistent-keepalive", "25"],
            rc=1,
            stderr=b"Unable to modify interface: Protocol not supported\n",
        )
        # What the interface holds now decides the next diff.
        self.runner.expect(WG_DUMP, stdout=dump_output(PRIVATE, 51820, peer_line(ALICE, "(none)", "10.99.0.7/32")))
        error = self.failureResultOf(run(self.wg.apply(peers)), WireGuardError).value
        self.assertIn("Unable to modify interface", str(error))
        self.runner.expect(["wg", "set", NAME, "peer", ALICE, "endpoint", "198.18.0.7:51820",
                            "persistent-keepalive", "25"])  # fmt: skip
        self.assertEqual(self.apply(peers), 1)
        self.runner.assert_all_called()

    def test_bad_peer_data_is_rejected(self) -> None:
        bad: list[Callable[[], object]] = [
            lambda: PeerConfig("not-a-key", ("10.99.0.7/32",)),
            lambda: PeerConfig(ALICE + " ", ("10.99.0.7/32",)),
            lambda: PeerConfig(ALICE, ("10.99.0.7/32 ",)),
            lambda: PeerConfig(ALICE, ("10.99.0.7/32,0.0.0.0/0",)),
            lambda: PeerConfig(ALICE, ("10.99.0.7/32\npeer x",)),
            lambda: PeerConfig(ALICE, ("10.99.0.300/32",)),
            lambda: PeerConfig(ALICE, "10.99.0.7/32"),  # a string is not a list of networks
            lambda: PeerConfig(ALICE, (7,)),
            lambda: PeerConfig(ALICE, (), "198.18.0.7"),
            lambda: PeerConfig(ALICE, (), "198.18.0.7:0"),
            lambda: PeerConfig(ALICE, (), "198.18.0.7:65536"),
            lambda: PeerConfig(ALICE, (), "198.18.0.7:51820 "),
            lambda: PeerConfig(ALICE, (), "wire.example:51820"),
            lambda: PeerConfig(ALICE, (), "2001:db8::1:51820"),
            lambda: PeerConfig(ALICE, (), "[fe80::1%eth0]:51820"),
            lambda: PeerConfig(ALICE, (), "[::1]:51820 persistent-keepalive 1"),
            lambda: PeerConfig(ALICE, (), "198.18.0.7:51820", -1),
            lambda: PeerConfig(ALICE, (), "198.18.0.7:51820", True),
            lambda: PeerConfig(ALICE, (), "198.18.0.7:51820", 65536),
        ]
        for make in bad:
            self.assertRaises(InvalidWireGuardConfig, make)
        calls = len(self.runner.calls)
        good = PeerConfig(ALICE, ("10.99.0.7/32",))
        self.failureResultOf(run(self.wg.apply({BOB: good})), InvalidWireGuardConfig)
        self.failureResultOf(run(self.wg.apply({ALICE: ("10.99.0.7/32",)})), InvalidWireGuardConfig)  # type: ignore[dict-item]
        self.assertEqual(len(self.runner.calls), calls)

    def test_apply_before_up(self) -> None:
        wg = LinuxWireGuard(FakeProcessRunner(), NAME, clock=self.clock)
        self.failureResultOf(run(wg.apply({})), WireGuardError)


class StatusTests(SynchronousTestCase):
    def test_status_is_one_spawn(self) -> None:
        runner = FakeProcessRunner()
        wg = LinuxWireGuard(runner, NAME, clock=Clock())
        runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1380\n")
        runner.expect(WG_DUMP, stdout=DUMP)
        runner.expect(IP_ADDRESSES, stdout=ip_addresses_json(("10.99.0.1", 16)))
        runner.expect(IP_LINK_UP)
        self.successResultOf(run(wg.up(PRIVATE, 51820, "10.99.0.1", 16)))
        calls = len(runner.calls)
        runner.expect(WG_DUMP, stdout=DUMP)
        status = self.successResultOf(run(wg.status()))
        self.assertEqual(len(runner.calls), calls + 1)
        self.assertEqual(status.backend, "adopted")
        self.assertEqual(len(status.peers), 3)


class SupervisionTests(Scripted):
    def bring_up_userspace(self) -> FakeRunningProcess:
        process = self.script_userspace_up()
        d = self.up()
        self.clock.advance(0.25)
        self.successResultOf(d)
        return process

    def test_wireguard_go_dying_is_reported_and_up_restores(self) -> None:
        process = self.bring_up_userspace()
        peers = {ALICE: PeerConfig(ALICE, ("10.99.0.7/32",), "198.18.0.7:51820")}
        set_alice = ["wg", "set", NAME, "peer", ALICE, "endpoint", "198.18.0.7:51820",
                     "allowed-ips", "10.99.0.7/32", "persistent-keepalive", "25"]  # fmt: skip
        self.runner.expect(set_alice)
        self.successResultOf(run(self.wg.apply(peers)))
        process.tail = ["panic: runtime error"]
        process.exit(-signal.SIGKILL)
        self.assertEqual(len(self.lost), 1)
        self.assertIn("was killed by SIGKILL", self.lost[0])
        self.assertIn("panic: runtime error", self.lost[0])
        self.assertFalse(self.wg.is_alive())
        self.failureResultOf(run(self.wg.apply(peers)), WireGuardError)
        # The daemon's answer: up() and apply() again.
        replacement = self.bring_up_userspace()
        self.runner.expect(set_alice)
        self.assertEqual(self.successResultOf(run(self.wg.apply(peers))), 1)
        self.runner.assert_all_called()
        self.assertTrue(self.wg.is_alive())
        self.assertTrue(replacement.running)

    def test_adopted_interface_is_checked_periodically(self) -> None:
        self.runner.expect(IP_LINK_SHOW, stdout=b"7: wire0: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1380\n")
        self.runner.expect(WG_DUMP, stdout=dump_output(PRIVATE, 51820))
        self.runner.expect(IP_ADDRESSES, stdout=ip_addresses_json(("10.99.0.1", 16)))
        self.runner.expect(IP_LINK_UP)
        self.successResultOf(self.up())
        self.runner.expect(WG_CHECK, stdout=b"51820\n")
        self.clock.advance(5)
        self.assertEqual(self.lost, [])
        self.runner.expect(WG_CHECK, rc=1, stderr=NO_ANSWER)
        self.clock.advance(5)
        self.assertEqual(len(self.lost), 1)
        self.assertIn("no longer answers", self.lost[0])
        self.assertFalse(self.wg.is_alive())
        self.clock.advance(50)  # supervision of that life has ended
        self.runner.assert_all_called()

    def test_child_is_not_polled(self) -> None:
        self.bring_up_userspace()
        self.clock.advance(60)
        self.runner.assert_all_called()  # its exit tells us; no `wg show` every few seconds

    def test_down_stops_wireguard_go_and_is_idempotent(self) -> None:
        process = self.bring_up_userspace()
        self.runner.expect(IP_LINK_DELETE, rc=1, stderr=b'Cannot find device "wire0"\n')
        self.successResultOf(run(self.wg.down()))
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.assertEqual(self.lost, [])  # an exit we asked for is no loss
        self.assertEqual(self.wg.backend, "")
        self.assertFalse(self.wg.is_alive())
        self.runner.expect(IP_LINK_DELETE, rc=1, stderr=b'Cannot find device "wire0"\n')
        self.successResultOf(run(self.wg.down()))
        self.runner.assert_all_called()

    def test_down_of_kernel_interface(self) -> None:
        self.bring_up_kernel()
        self.runner.expect(IP_LINK_DELETE)
        self.successResultOf(run(self.wg.down()))
        self.clock.advance(60)  # no checks after down
        self.runner.assert_all_called()

    def test_detach_leaves_everything_running(self) -> None:
        process = self.bring_up_userspace()
        self.wg.detach()
        self.assertTrue(process.running)
        self.assertEqual(process.signals, [])
        process.exit(1)
        self.clock.advance(60)
        self.assertEqual(self.lost, [])  # no longer ours to report
        self.runner.assert_all_called()

    def test_a_failing_on_lost_does_not_break_supervision(self) -> None:
        def broken(reason: str) -> None:
            raise RuntimeError("daemon bug")

        self.wg.on_lost = broken
        process = self.bring_up_userspace()
        process.exit(1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(self.wg.is_alive())

    def test_an_async_on_lost_failure_is_logged(self) -> None:
        restoring: Deferred = Deferred()
        self.wg.on_lost = lambda reason: restoring
        process = self.bring_up_userspace()
        process.exit(1)
        restoring.errback(RuntimeError("restore failed"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class InterfaceTests(SynchronousTestCase):
    def test_implementations_provide_iwireguard(self) -> None:
        clock = Clock()
        for wg in (
            LinuxWireGuard(FakeProcessRunner(), NAME, clock=clock),
            MacWireGuard(FakeProcessRunner(), NAME, clock=clock),
        ):
            self.assertTrue(verifyObject(IWireGuard, wg))

    def test_factory(self) -> None:
        clock, runner = Clock(), FakeProcessRunner()
        self.assertIsInstance(make_wireguard(runner, NAME, clock, platform="linux"), LinuxWireGuard)
        self.assertIsInstance(make_wireguard(runner, NAME, clock, platform="darwin"), MacWireGuard)
        error = self.assertRaises(WireGuardUnavailable, make_wireguard, runner, NAME, clock, platform="win32")
        self.assertIn("win32", str(error))


# -- the real thing -------------------------------------------------------------


def real_skip_reason() -> str | None:
    try:
        check_requirements()
        for program in ("wg", "wireguard-go", "ping"):
            find_program(program)
    except (LabUnavailable, CommandNotFound) as e:
        return f"needs root, ip, nft, sysctl, ping, wg (wireguard-tools) and wireguard-go: {e}"
    return None


async def poll_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"still waiting after {timeout:g}s for {what}")
        await deferLater(reactor, 0.02)


def wireguard_go_pids(interface: str) -> list[int]:
    """Pids of wireguard-go serving interface (read from /proc, nothing killed)."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                words = f.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(words[0]) == b"wireguard-go" and interface.encode() in words:
            found.append(int(path.split("/")[2]))
    return found


class RealWireGuardTests(TestCase):
    """Two lab hosts, real WireGuard between them, real pings. Needs root; CI runs these."""

    skip = real_skip_reason()
    timeout = 120

    async def setUp(self) -> None:
        self.runner = ProcessRunner(reactor)
        self.lab = Lab(self.runner)
        self.addCleanup(self.lab.teardown)  # runs last: namespaces, strays, stale sockets
        await self.lab.setup()
        for name in ("alpha", "beta"):
            await self.lab.add_public_node(name)
        self.keys = {name: generate_private_key() for name in ("alpha", "beta")}
        self.ports = {"alpha": 51820, "beta": 51821}
        self.tunnel = {"alpha": "10.77.0.1", "beta": "10.77.0.2"}

    def wireguard(self, host: str, **options) -> LinuxWireGuard:
        wg = LinuxWireGuard(
            PassThroughRunner(self.runner, prefix=("ip", "netns", "exec", self.lab.hosts[host].namespace)), self.lab.hosts[host].wireguard_interface, clock=reactor, **options
        )
        self.addCleanup(self.quietly_down, wg)
        return wg

    async def quietly_down(self, wg: LinuxWireGuard) -> None:
        wg.on_lost = None
        try:
            await wg.down()
        except Exception:
            pass  # the namespace may be gone; teardown has the last word

    async def up(self, wg: LinuxWireGuard, host: str) -> None:
        await wg.up(self.keys[host], self.ports[host], self.tunnel[host], 24)

    def peers_of(self, host: str) -> dict[str, PeerConfig]:
        other = "beta" if host == "alpha" else "alpha"
        key = public_key_for(self.keys[other])
        endpoint = f"{self.lab.hosts[other].address}:{self.ports[other]}"
        return {key: PeerConfig(key, (f"{self.tunnel[other]}/32",), endpoint)}

    async def assert_ping(self, source: str, target: str) -> None:
        # The first packet waits for the handshake; allow a retry or two for a busy CI machine.
        outputs = []
        for attempt in range(3):
            result = await self.lab.run(source, ["ping", "-c", "1", "-W", "2", self.tunnel[target]])
            if result.rc == 0:
                return
            outputs.append(result.stdout.decode() + result.stderr.decode())
        self.fail(f"{source} cannot ping {target} over WireGuard: {outputs}")

    async def link_index(self, host: str) -> str:
        name = self.lab.hosts[host].wireguard_interface
        output = (await self.lab.run(host, ["ip", "-o", "link", "show", "dev", name])).check().stdout.decode()
        return output.split(":")[0]

    async def assert_gone(self, host: str) -> None:
        name = self.lab.hosts[host].wireguard_interface
        links = (await self.lab.run(host, ["ip", "-o", "link", "show"])).check().stdout.decode()
        self.assertNotIn(name, links)
        await poll_until(lambda: not wireguard_go_pids(name), f"wireguard-go {name} to exit")
        await poll_until(
            lambda: not os.path.exists(f"/var/run/wireguard/{name}.sock"), f"the UAPI socket of {name} to go"
        )

    async def test_tunnel_on_the_default_backend(self) -> None:
        alpha, beta = self.wireguard("alpha"), self.wireguard("beta")
        await self.up(alpha, "alpha")
        await self.up(beta, "beta")
        self.assertIn(alpha.backend, ("kernel", "wireguard-go"))
        self.assertEqual(await alpha.apply(self.peers_of("alpha")), 1)
        self.assertEqual(await beta.apply(self.peers_of("beta")), 1)
        self.assertEqual(await alpha.apply(self.peers_of("alpha")), 0)
        await self.assert_ping("alpha", "beta")
        await self.assert_ping("beta", "alpha")
        status = await alpha.status()
        self.assertEqual(status.public_key, public_key_for(self.keys["alpha"]))
        self.assertEqual(status.listen_port, 51820)
        (peer,) = status.peers
        self.assertGreater(peer.latest_handshake, 0)
        self.assertGreater(peer.rx_bytes, 0)
        await alpha.down()
        await beta.down()
        await self.assert_gone("alpha")
        await self.assert_gone("beta")
        await alpha.down()  # idempotent

    async def test_ipv6_mesh_addresses_over_a_real_tunnel(self) -> None:
        tunnel6 = {"alpha": "fd7a:115c:a1e0::1", "beta": "fd7a:115c:a1e0::2"}
        wgs = {host: self.wireguard(host) for host in ("alpha", "beta")}
        for host, wg in wgs.items():
            await wg.up(self.keys[host], self.ports[host], self.tunnel[host], 24, address6=tunnel6[host], prefixlen6=48)
            other = "beta" if host == "alpha" else "alpha"
            peers = self.peers_of(host)
            (key,) = peers
            peers[key] = PeerConfig(key, (f"{self.tunnel[other]}/32", f"{tunnel6[other]}/128"), peers[key].endpoint)
            await wg.apply(peers)
        name = self.lab.hosts["alpha"].wireguard_interface
        shown = (await self.lab.run("alpha", ["ip", "-6", "-o", "address", "show", "dev", name])).check().stdout.decode()
        self.assertIn("fd7a:115c:a1e0::1/48", shown)
        outputs = []
        for attempt in range(3):
            result = await self.lab.run("alpha", ["ping", "-6", "-c", "1", "-W", "2", tunnel6["beta"]])
            if result.rc == 0:
                break
            outputs.append(result.stdout.decode() + result.stderr.decode())
        else:
            self.fail(f"alpha cannot ping beta over its IPv6 mesh address: {outputs}")
        await self.assert_ping("alpha", "beta")  # and IPv4 beside it
        # Up again without IPv6 (the server gives none now): the address goes, IPv4 stays.
        await wgs["alpha"].up(self.keys["alpha"], self.ports["alpha"], self.tunnel["alpha"], 24)
        shown = (await self.lab.run("alpha", ["ip", "-6", "-o", "address", "show", "dev", name])).check().stdout.decode()
        self.assertNotIn("fd7a:115c:a1e0::1", shown)
        await self.assert_ping("alpha", "beta")
        for wg in wgs.values():
            await wg.down()
        await self.assert_gone("alpha")

    async def test_restart_adopts_and_a_crash_is_restored(self) -> None:
        lost: list[str] = []
        first = self.wireguard("alpha", use_kernel=False)
        beta = self.wireguard("beta", use_kernel=False)
        await self.up(first, "alpha")
        await self.up(beta, "beta")
        self.assertEqual((first.backend, beta.backend), ("wireguard-go", "wireguard-go"))
        await first.apply(self.peers_of("alpha"))
        await beta.apply(self.peers_of("beta"))
        await self.assert_ping("alpha", "beta")

        # A daemon restart: a new object for the same interface adopts it, deleting nothing.
        name = self.lab.hosts["alpha"].wireguard_interface
        index, pids = await self.link_index("alpha"), wireguard_go_pids(name)
        self.assertEqual(len(pids), 1)
        first.on_lost = None  # the old daemon is gone; its process lives on
        second = self.wireguard("alpha", check_interval=0.2, on_lost=lost.append)
        await self.up(second, "alpha")
        self.assertEqual(second.backend, "adopted")
        self.assertEqual(await self.link_index("alpha"), index)
        self.assertEqual(wireguard_go_pids(name), pids)
        self.assertEqual(await second.apply(self.peers_of("alpha")), 0)  # read from the interface
        await self.up(second, "alpha")  # and again: harmless
        self.assertEqual((second.backend, wireguard_go_pids(name)), ("adopted", pids))
        await self.assert_ping("alpha", "beta")

        # The adopted wireguard-go dies: the periodic check notices; up()+apply() restore.
        (await self.runner.run(["kill", "-KILL", str(pids[0])])).check()
        await poll_until(lambda: bool(lost), "on_lost after killing the adopted wireguard-go")
        self.assertFalse(second.is_alive())
        await self.up(second, "alpha")
        self.assertEqual(second.backend, "wireguard-go")
        self.assertEqual(await second.apply(self.peers_of("alpha")), 1)
        await self.assert_ping("alpha", "beta")

        # Our own child dies: its exit is noticed at once.
        lost.clear()
        (child,) = wireguard_go_pids(name)
        self.assertNotEqual(child, pids[0])
        (await self.runner.run(["kill", "-KILL", str(child)])).check()
        await poll_until(lambda: bool(lost), "on_lost after killing our wireguard-go", timeout=5)
        self.assertIn("SIGKILL", lost[0])
        await self.up(second, "alpha")
        await second.apply(self.peers_of("alpha"))
        await self.assert_ping("alpha", "beta")

        await second.down()
        await beta.down()
        await self.assert_gone("alpha")
        await self.assert_gone("beta")
