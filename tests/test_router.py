"""Tests for the node as a subnet router or exit node (wire.node.router): the
ruleset text, forwarding saved and put back on a scripted runner (crashes
included), then real nftables and sysctls in a network namespace."""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.fakes import FakeProcessRunner, PassThroughRunner
from tests.helpers import namespace_skip_reason
from wire.node.firewall import InvalidFirewallConfig
from wire.node.router import (
    InvalidRouterConfig,
    RouterError,
    SubnetRouter,
    forward_conflicts,
    route_table_for,
    router_ruleset,
)
from wire.runner import CommandNotFound, ProcessRunner

MESH = ("100.64.0.0/10", "fd7a:115c:a1e0::/48")
NFT = ["nft", "-f", "-"]
LIST_CHAINS = ["nft", "-j", "list", "chains"]
V4, V6 = "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"

HEAD = """\
add table inet wire_wire0_route
delete table inet wire_wire0_route
table inet wire_wire0_route {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
"""
NAT = "\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"


def expected(forward: list[str], nat: list[str]) -> str:
    text = HEAD + "".join(f"\t\t{line}\n" for line in [*forward, 'iifname "wire0" ct status dnat accept', 'iifname "wire0" drop'])
    if nat:
        text += NAT + "".join(f"\t\t{line}\n" for line in nat)
    return text + "\t}\n}\n"


def run(coroutine) -> Deferred:
    return Deferred.fromCoroutine(coroutine)


class RulesetTests(SynchronousTestCase):
    def text(self, prefixes, snat=True, mesh=MESH) -> str:
        return router_ruleset("wire_wire0_route", "wire0", prefixes, snat=snat, mesh_subnets=mesh)

    def test_subnet_router_with_snat(self) -> None:
        self.assertEqual(
            self.text(["192.168.1.0/24", "10.2.0.0/16"]),
            expected(
                ['iifname "wire0" ip daddr { 10.2.0.0/16, 192.168.1.0/24 } accept'],
                ['ip saddr { 100.64.0.0/10 } ip daddr { 10.2.0.0/16, 192.168.1.0/24 } oifname != "wire0" masquerade'],
            ),
        )

    def test_without_snat_sources_are_kept(self) -> None:
        self.assertEqual(
            self.text(["192.168.1.0/24"], snat=False),
            expected(['iifname "wire0" ip daddr { 192.168.1.0/24 } accept'], []),
        )

    def test_ipv6_prefix(self) -> None:
        self.assertEqual(
            self.text(["2001:db8:5::/64"]),
            expected(
                ['iifname "wire0" ip6 daddr { 2001:db8:5::/64 } accept'],
                ['ip6 saddr { fd7a:115c:a1e0::/48 } ip6 daddr { 2001:db8:5::/64 } oifname != "wire0" masquerade'],
            ),
        )

    def test_exit_node_masquerades_to_the_uplink_even_without_snat(self) -> None:
        self.assertEqual(
            self.text(["0.0.0.0/0", "::/0", "192.168.1.0/24"], snat=False),
            expected(
                ['iifname "wire0" meta nfproto ipv4 accept', 'iifname "wire0" meta nfproto ipv6 accept'],
                ['ip saddr { 100.64.0.0/10 } oifname != "wire0" masquerade', 'ip6 saddr { fd7a:115c:a1e0::/48 } oifname != "wire0" masquerade'],
            ),
        )

    def test_deterministic(self) -> None:
        self.assertEqual(self.text(["10.2.0.0/16", "192.168.1.0/24", "10.2.0.0/16"]), self.text(["192.168.1.0/24", "10.2.0.0/16"]))

    def test_only_validated_values_reach_the_text(self) -> None:
        for bad in ('10.0.0.0/8" accept; #', "192.168.1.1/24", "nonsense", "", None, "10.0.0.0/8 }"):
            with self.subTest(bad=bad):
                self.assertRaises(InvalidRouterConfig, self.text, [bad])
                self.assertRaises(InvalidRouterConfig, self.text, ["10.0.0.0/8"], mesh=[bad])
        for bad_interface in ('wire0"', "wire 0", "x" * 16):
            self.assertRaises(InvalidFirewallConfig, router_ruleset, "t", bad_interface, ["10.0.0.0/8"], snat=True, mesh_subnets=MESH)
        self.assertRaises(InvalidFirewallConfig, router_ruleset, "t;", "wire0", ["10.0.0.0/8"], snat=True, mesh_subnets=MESH)

    def test_table_name(self) -> None:
        self.assertEqual(route_table_for("wire0"), "wire_wire0_route")
        self.assertRaises(InvalidFirewallConfig, route_table_for, "bad name")


class ConflictTests(SynchronousTestCase):
    def test_drop_policies_elsewhere_are_named(self) -> None:
        listing = json.dumps({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "inet", "table": "wire_wire0_route", "name": "forward", "hook": "forward", "policy": "accept"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "host", "name": "input", "hook": "input", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "host", "name": "fwd", "hook": "forward", "policy": "accept"}},
        ]})  # fmt: skip
        self.assertEqual(
            forward_conflicts(listing, "wire_wire0_route"),
            [
                "table ip filter chain FORWARD drops forwarded packets by default (policy drop): the routed traffic must "
                "also be accepted there, since nftables forwards a packet only when every forward chain accepts it"
            ],
        )

    def test_garbage(self) -> None:
        for listing in (b"", b"nonsense", b"[]", b'{"nftables": 5}', b'{"nftables": [1, {"chain": 2}]}'):
            self.assertEqual(forward_conflicts(listing, "t"), [])


    @given(st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["forward", "drop", "inet"]),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.sampled_from(["nftables", "chain", "family", "table", "name", "hook", "policy"]), inner, max_size=6),
        max_leaves=20,
    ))  # fmt: skip
    def test_no_listing_makes_it_raise(self, value) -> None:
        forward_conflicts(json.dumps(value), "t")


class SubnetRouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = self.mktemp()
        os.makedirs(self.state)
        self.runner = FakeProcessRunner()
        self.router = SubnetRouter(self.runner, "wire0", self.state)
        self.saved_path = os.path.join(self.state, "forwarding-wire0.json")

    def saved(self):
        with open(self.saved_path) as f:
            return json.load(f)

    def expect_apply(self, prefixes, found=(("net.ipv4.ip_forward", b"0\n"),), chains=b"{}") -> None:
        for key, value in found:
            self.runner.expect(["sysctl", "-n", key], stdout=value)
        for key, value in found:
            if value.strip() != b"1":
                self.runner.expect(["sysctl", "-q", "-w", f"{key}=1"], then=lambda key=key: self.assertIn(key, self.saved()))  # saved before written
        self.runner.expect(NFT)
        self.runner.expect(LIST_CHAINS, stdout=chains)

    def apply(self, prefixes, **kwargs) -> bool:
        return self.successResultOf(run(self.router.apply(prefixes, mesh_subnets=MESH, **kwargs)))

    def test_apply_saves_then_enables_then_installs(self) -> None:
        self.expect_apply(["192.168.1.0/24"])
        self.assertTrue(self.apply(["192.168.1.0/24"]))
        self.runner.assert_all_called()
        self.assertEqual(self.saved(), {V4: "0"})
        self.assertEqual(stat.S_IMODE(os.stat(self.saved_path).st_mode), 0o600)
        self.assertEqual(self.runner.calls[2].stdin.decode(), router_ruleset("wire_wire0_route", "wire0", ["192.168.1.0/24"], snat=True, mesh_subnets=MESH))
        status = self.router.status()
        self.assertEqual((status.prefixes, status.snat, status.originals, status.warnings), (("192.168.1.0/24",), True, {V4: "0"}, ()))

    def test_the_same_again_runs_nothing(self) -> None:
        self.expect_apply(["192.168.1.0/24"])
        self.apply(["192.168.1.0/24"])
        self.assertFalse(self.apply(["192.168.1.0/24"]))
        self.runner.assert_all_called()

    def test_forwarding_already_on_is_saved_as_on_and_not_written(self) -> None:
        self.expect_apply(["192.168.1.0/24"], found=((V4, b"1\n"),))
        self.apply(["192.168.1.0/24"])
        self.runner.assert_all_called()
        self.assertEqual(self.saved(), {V4: "1"})

    def test_ipv6_prefix_enables_ipv6_forwarding_and_warns_about_router_advertisements(self) -> None:
        self.expect_apply(["10.1.0.0/24", "2001:db8:5::/64"], found=((V4, b"0\n"), (V6, b"0\n")))
        self.apply(["10.1.0.0/24", "2001:db8:5::/64"])
        self.runner.assert_all_called()
        self.assertEqual(self.saved(), {V4: "0", V6: "0"})
        self.assertIn("accept_ra=2", self.router.status().warnings[0])

    def test_a_second_apply_keeps_the_first_originals(self) -> None:
        self.expect_apply(["10.1.0.0/24"])
        self.apply(["10.1.0.0/24"])
        # Now forwarding is on (ours): the saved original must stay "0".
        self.expect_apply(["10.2.0.0/24"], found=((V4, b"1\n"),))
        self.apply(["10.2.0.0/24"])
        self.runner.assert_all_called()
        self.assertEqual(self.saved(), {V4: "0"})

    def test_a_family_no_longer_routed_gets_its_value_back(self) -> None:
        self.expect_apply([], found=((V4, b"0\n"), (V6, b"0\n")))
        self.apply(["10.1.0.0/24", "2001:db8:5::/64"])
        self.runner.expect(["sysctl", "-n", V4], stdout=b"1\n")
        self.runner.expect(["sysctl", "-q", "-w", f"{V6}=0"])
        self.runner.expect(NFT)
        self.runner.expect(LIST_CHAINS)
        self.apply(["10.1.0.0/24"])
        self.runner.assert_all_called()
        self.assertEqual(self.saved(), {V4: "0"})

    def test_clear_removes_the_table_then_restores_then_forgets(self) -> None:
        self.expect_apply(["10.1.0.0/24"])
        self.apply(["10.1.0.0/24"])
        self.runner.expect(NFT)
        self.runner.expect(["sysctl", "-q", "-w", f"{V4}=0"], then=lambda: self.assertTrue(os.path.exists(self.saved_path)))
        self.successResultOf(run(self.router.clear()))
        self.runner.assert_all_called()
        self.assertEqual(self.runner.calls[-2].stdin, b"add table inet wire_wire0_route\ndelete table inet wire_wire0_route\n")
        self.assertFalse(os.path.exists(self.saved_path))
        self.assertEqual(self.router.status().prefixes, ())

    def test_recover_after_a_crash(self) -> None:
        self.expect_apply(["10.1.0.0/24", "2001:db8:5::/64"], found=((V4, b"0\n"), (V6, b"1\n")))
        self.apply(["10.1.0.0/24", "2001:db8:5::/64"])
        # The process dies here; the next start builds a new router.
        after = SubnetRouter(self.runner, "wire0", self.state)
        self.assertEqual(after.status().originals, {V4: "0", V6: "1"})
        self.runner.expect(NFT)
        self.runner.expect(["sysctl", "-q", "-w", f"{V4}=0"])
        self.runner.expect(["sysctl", "-q", "-w", f"{V6}=1"])
        self.assertTrue(self.successResultOf(run(after.recover())))
        self.runner.assert_all_called()
        self.assertFalse(os.path.exists(self.saved_path))

    def test_recover_with_nothing_left_still_removes_the_table(self) -> None:
        self.runner.expect(NFT)
        self.assertFalse(self.successResultOf(run(self.router.recover())))
        self.runner.assert_all_called()

    def test_a_crash_between_save_and_write_is_recoverable(self) -> None:
        self.runner.expect(["sysctl", "-n", V4], stdout=b"0\n")
        self.runner.expect(["sysctl", "-q", "-w", f"{V4}=1"], rc=1, stderr=b"sysctl: permission denied on key 'net.ipv4.ip_forward'\n")
        failure = self.failureResultOf(run(self.router.apply(["10.1.0.0/24"], mesh_subnets=MESH)), RouterError)
        self.assertEqual(
            str(failure.value),
            "cannot set net.ipv4.ip_forward to 1: `sysctl -q -w net.ipv4.ip_forward=1` exited with code 1: "
            "sysctl: permission denied on key 'net.ipv4.ip_forward'",
        )
        self.assertEqual(self.saved(), {V4: "0"})
        self.runner.assert_all_called()

    def test_a_refused_ruleset_is_a_router_error(self) -> None:
        self.runner.expect(["sysctl", "-n", V4], stdout=b"1\n")
        self.runner.expect(NFT, rc=1, stderr=b"Error: Could not process rule: No such file or directory\n")
        failure = self.failureResultOf(run(self.router.apply(["10.1.0.0/24"], mesh_subnets=MESH)), RouterError)
        self.assertIn("cannot install the router's table wire_wire0_route: `nft -f -` exited with code 1: Error: Could not process", str(failure.value))
        # Not assumed in force: the same apply runs again.
        self.expect_apply(["10.1.0.0/24"], found=((V4, b"1\n"),))
        self.assertTrue(self.apply(["10.1.0.0/24"]))
        self.runner.assert_all_called()

    def test_missing_programs(self) -> None:
        self.runner.expect(["sysctl", "-n", V4], error=CommandNotFound("sysctl"))
        failure = self.failureResultOf(run(self.router.apply(["10.1.0.0/24"], mesh_subnets=MESH)), RouterError)
        self.assertIn("the 'sysctl' program is missing (package procps)", str(failure.value))
        self.runner.expect(NFT, error=CommandNotFound("nft"))
        failure = self.failureResultOf(run(self.router.clear()), RouterError)
        self.assertIn("the 'nft' program is missing (package nftables)", str(failure.value))

    def test_odd_sysctl_output(self) -> None:
        self.runner.expect(["sysctl", "-n", V4], stdout=b"\x1bnope\n")
        failure = self.failureResultOf(run(self.router.apply(["10.1.0.0/24"], mesh_subnets=MESH)), RouterError)
        self.assertEqual(str(failure.value), "cannot read net.ipv4.ip_forward: sysctl said '?nope', not a number")
        self.assertFalse(os.path.exists(self.saved_path))

    def test_a_tampered_saved_file_is_refused(self) -> None:
        with open(self.saved_path, "w") as f:
            f.write('{"kernel.core_pattern": "|/bin/sh"}')
        self.runner.expect(NFT)
        failure = self.failureResultOf(run(self.router.recover()), RouterError)
        self.assertIn("does not hold saved forwarding settings", str(failure.value))

    def test_invalid_prefixes_run_nothing(self) -> None:
        self.failureResultOf(run(self.router.apply(["10.1.0.1/24"], mesh_subnets=MESH)), InvalidRouterConfig)
        self.runner.assert_all_called()

    def test_no_prefixes_is_clear(self) -> None:
        self.runner.expect(NFT)
        self.apply([])
        self.runner.assert_all_called()

    def test_drop_policies_elsewhere_are_in_status(self) -> None:
        chains = json.dumps({"nftables": [{"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"}}]})
        self.expect_apply(["10.1.0.0/24"], chains=chains.encode())
        self.apply(["10.1.0.0/24"])
        self.assertIn("table ip filter chain FORWARD drops forwarded packets", self.router.status().warnings[0])


# -- the real thing --------------------------------------------------------------


def real_skip_reason() -> str | None:
    return namespace_skip_reason(("ip", "nft", "sysctl"), "a network namespace of its own, nftables, sysctls")


class RealSubnetRouterTests(TestCase):
    """The router's table and forwarding inside a namespace of the test's own
    (forwarding sysctls are per namespace, so the host's are never touched)."""

    skip = real_skip_reason()
    timeout = 60

    async def setUp(self) -> None:
        self.root = ProcessRunner(reactor)
        tag = secrets.token_hex(3)
        self.namespace = f"wire-rt-{tag}"
        self.wire = f"wrt{tag}"
        await self.sh("ip", "netns", "add", self.namespace)
        self.addCleanup(self.sh, "ip", "netns", "delete", self.namespace)
        self.runner = PassThroughRunner(self.root, prefix=("ip", "netns", "exec", self.namespace))
        await self.ns("ip", "link", "add", self.wire, "type", "veth", "peer", "name", f"wrl{tag}")
        self.state = self.mktemp()
        os.makedirs(self.state)

    async def sh(self, *argv: str) -> str:
        return (await self.root.run(list(argv))).check().stdout.decode()

    async def ns(self, *argv: str) -> str:
        return (await self.runner.run(list(argv))).check().stdout.decode()

    async def forwarding(self) -> tuple[str, str]:
        return (
            (await self.ns("sysctl", "-n", "net.ipv4.ip_forward")).strip(),
            (await self.ns("sysctl", "-n", "net.ipv6.conf.all.forwarding")).strip(),
        )

    async def test_apply_and_clear(self) -> None:
        self.assertEqual(await self.forwarding(), ("0", "0"))
        router = SubnetRouter(self.runner, self.wire, self.state)
        await router.apply(["192.168.50.0/24", "2001:db8:50::/64"], mesh_subnets=MESH)
        self.assertEqual(await self.forwarding(), ("1", "1"))
        self.assertIn(f"table inet wire_{self.wire}_route", await self.ns("nft", "list", "tables"))
        listed = await self.ns("nft", "list", "table", "inet", f"wire_{self.wire}_route")
        self.assertIn("masquerade", listed)
        self.assertIn("192.168.50.0/24", listed)
        await router.apply(["0.0.0.0/0", "::/0"], mesh_subnets=MESH)  # now an exit
        self.assertIn("meta nfproto ipv4", await self.ns("nft", "list", "table", "inet", f"wire_{self.wire}_route"))
        await router.clear()
        self.assertEqual(await self.forwarding(), ("0", "0"))
        self.assertNotIn(f"wire_{self.wire}_route", await self.ns("nft", "list", "tables"))

    async def test_recover_after_a_crash_and_a_drop_policy_elsewhere(self) -> None:
        host_firewall = b"table ip hostfw {\n\tchain hostforward {\n\t\ttype filter hook forward priority 0; policy drop;\n\t}\n}\n"
        (await self.runner.run(["nft", "-f", "-"], stdin=host_firewall)).check()
        router = SubnetRouter(self.runner, self.wire, self.state)
        await router.apply(["192.168.50.0/24"], mesh_subnets=MESH)
        self.assertIn("table ip hostfw chain hostforward drops forwarded packets", router.status().warnings[0])
        self.assertEqual(await self.forwarding(), ("1", "0"))
        # The daemon dies; the next start recovers.
        self.assertTrue(await SubnetRouter(self.runner, self.wire, self.state).recover())
        self.assertEqual(await self.forwarding(), ("0", "0"))
        tables = await self.ns("nft", "list", "tables")
        self.assertNotIn(f"wire_{self.wire}_route", tables)
        self.assertIn("table ip hostfw", tables)  # the host's own is left alone


# Answers each TCP connection on argv[1]:argv[2] with the address it came
# from; prints "ready" once bound.
WHO = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""

# Prints the address the server saw us come from, or "timeout".
ASK = """\
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print(s.recv(100).decode())
except (socket.timeout, OSError):
    print("timeout")
"""

WHO_PORT = 8031


class RealForwardingTests(TestCase):
    """Packets through the router: a "mesh" namespace reaches a "lan" host
    through a "router" namespace whose end of the mesh link is named like a
    wire interface. The LAN host has no route back to the mesh, so only
    masquerade makes the answer come back."""

    skip = real_skip_reason()
    timeout = 60

    async def setUp(self) -> None:
        self.root = ProcessRunner(reactor)
        tag = secrets.token_hex(3)
        self.ns = {side: f"wire-rt-{tag}{side[0]}" for side in ("mesh", "router", "lan")}
        for namespace in self.ns.values():
            await self.sh("ip", "netns", "add", namespace)
            self.addCleanup(self.sh, "ip", "netns", "delete", namespace)
        self.wire = f"wrt{tag}"
        links = [("mesh", f"wrm{tag}", "100.64.0.2/10", "router", self.wire, "100.64.0.1/10"),
                 ("router", f"wrr{tag}", "192.168.60.1/24", "lan", f"wrl{tag}", "192.168.60.20/24")]  # fmt: skip
        for side, device, address, other, other_device, other_address in links:
            await self.sh("ip", "-n", self.ns[side], "link", "add", device, "type", "veth",
                          "peer", "name", other_device, "netns", self.ns[other])  # fmt: skip
            for where, name, addr in ((side, device, address), (other, other_device, other_address)):
                await self.sh("ip", "-n", self.ns[where], "addr", "add", addr, "dev", name)
                await self.sh("ip", "-n", self.ns[where], "link", "set", name, "up")
        await self.sh("ip", "-n", self.ns["mesh"], "route", "add", "192.168.60.0/24", "via", "100.64.0.1")
        self.runner = PassThroughRunner(self.root, prefix=("ip", "netns", "exec", self.ns["router"]))
        self.state = self.mktemp()
        os.makedirs(self.state)
        server = self.root.start(["ip", "netns", "exec", self.ns["lan"], sys.executable, "-c", WHO, "192.168.60.20", str(WHO_PORT)])
        self.addCleanup(server.stop, 2.0)  # before the namespaces go (cleanups run last first)
        deadline = reactor.seconds() + 10
        while "ready" not in server.tail:
            if not server.running or reactor.seconds() > deadline:
                raise AssertionError(f"the LAN host's server did not start: {server.tail}")
            await deferLater(reactor, 0.02)

    async def sh(self, *argv: str) -> str:
        return (await self.root.run(list(argv))).check().stdout.decode()

    async def ask(self, wait: float = 3.0) -> str:
        argv = ["ip", "netns", "exec", self.ns["mesh"], sys.executable, "-c", ASK, "192.168.60.20", str(WHO_PORT), str(wait)]
        return (await self.root.run(argv, timeout=wait + 10)).check().stdout.decode().strip()

    async def test_masquerade_and_only_advertised_prefixes(self) -> None:
        self.assertEqual(await self.ask(1.0), "timeout")  # no forwarding yet
        router = SubnetRouter(self.runner, self.wire, self.state)
        await router.apply(["192.168.60.0/24"], mesh_subnets=MESH)
        self.assertEqual(await self.ask(), "192.168.60.1")  # the LAN sees the router
        await router.apply(["192.168.60.0/28"], mesh_subnets=MESH)  # .20 is no longer advertised
        self.assertEqual(await self.ask(1.0), "timeout")
        await router.apply(["192.168.60.0/24"], snat=False, mesh_subnets=MESH)
        await self.sh("ip", "-n", self.ns["lan"], "route", "add", "100.64.0.0/10", "via", "192.168.60.1")
        self.assertEqual(await self.ask(), "100.64.0.2")  # sources kept
        await router.clear()
        self.assertEqual(await self.ask(1.0), "timeout")
