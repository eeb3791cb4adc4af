"""Tests for the node's packet filter (wire.node.firewall): the ruleset text,
the Firewall on a scripted runner, then real nftables between two network
namespaces with real sockets."""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.fakes import FakeProcessRunner, PassThroughRunner
from wire.node.firewall import (
    Firewall,
    FirewallError,
    _collapse,
    _network,
    InvalidFirewallConfig,
    check_interface,
    check_table,
    install_hint,
    ruleset,
    table_for,
)
from wire.protocol.filter import FilterRule, PortRange
from wire.runner import CommandNotFound, CommandTimeout, ProcessRunner, find_program

NFT = ["nft", "-f", "-"]
NFT_CHECK = ["nft", "--check", "-f", "-"]

HEAD = """\
add table inet wire_wire0
delete table inet wire_wire0
table inet wire_wire0 {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "wire0" jump from_mesh
\t}
\tchain from_mesh {
\t\tct state established,related accept
\t\tct state invalid drop
"""
TAIL = "\t\tdrop\n\t}\n}\n"


def expected(*lines: str) -> str:
    return HEAD + "".join(f"\t\t{line}\n" for line in lines) + TAIL


def text(rules, probe=()) -> str:
    return ruleset("wire_wire0", "wire0", rules, probe)


def run(coroutine) -> Deferred:
    return Deferred.fromCoroutine(coroutine)


class RulesetTests(SynchronousTestCase):
    def test_empty_rules_keep_replies_and_drop_the_rest(self) -> None:
        self.assertEqual(text([]), expected())

    def test_empty_rules_with_probe_sources(self) -> None:
        self.assertEqual(
            text([], ["10.99.0.8", "10.99.0.7/32", "fd7a::8"]),
            expected(
                "ip saddr { 10.99.0.7, 10.99.0.8 } udp dport 51819 accept",
                "ip6 saddr { fd7a::8 } udp dport 51819 accept",
            ),
        )

    def test_tcp_with_ports(self) -> None:
        rule = FilterRule(("10.99.1.0/24", "10.99.0.7/32"), "tcp", (PortRange(8000, 8999), PortRange(22, 22)))
        self.assertEqual(text([rule]), expected("ip saddr { 10.99.0.7, 10.99.1.0/24 } tcp dport { 22, 8000-8999 } accept"))

    def test_udp_without_ports(self) -> None:
        self.assertEqual(text([FilterRule(("10.99.0.7/32",), "udp")]), expected("ip saddr { 10.99.0.7 } meta l4proto udp accept"))

    def test_icmp_for_both_families(self) -> None:
        rule = FilterRule(("10.99.0.0/16", "fd7a:115c::/48"), "icmp")
        self.assertEqual(
            text([rule]),
            expected(
                "ip saddr { 10.99.0.0/16 } meta l4proto icmp accept",
                "ip6 saddr { fd7a:115c::/48 } meta l4proto ipv6-icmp accept",
            ),
        )

    def test_any_protocol_without_ports(self) -> None:
        self.assertEqual(text([FilterRule(("10.99.0.7/32", "fd7a::7/128"))]), expected("ip saddr { 10.99.0.7 } accept", "ip6 saddr { fd7a::7 } accept"))

    def test_any_protocol_with_ports_is_tcp_and_udp(self) -> None:
        rule = FilterRule(("10.99.0.7/32",), None, (PortRange(53, 53),))
        self.assertEqual(text([rule]), expected("ip saddr { 10.99.0.7 } meta l4proto { tcp, udp } th dport { 53 } accept"))

    def test_every_port_is_no_port_match(self) -> None:
        rule = FilterRule(("10.99.0.7/32",), "tcp", (PortRange(0, 65535),))
        self.assertEqual(text([rule]), expected("ip saddr { 10.99.0.7 } meta l4proto tcp accept"))

    def test_rules_alike_are_merged_and_sources_collapsed(self) -> None:
        rules = [
            FilterRule(("10.99.0.7/32",), "tcp", (PortRange(22, 22),)),
            FilterRule(("10.99.0.0/24", "10.99.1.0/24"), "tcp", (PortRange(22, 22),)),
            FilterRule(("10.99.0.9/32",), "tcp", (PortRange(22, 22), PortRange(22, 22))),
        ]
        self.assertEqual(text(rules), expected("ip saddr { 10.99.0.0/24, 10.99.1.0/24 } tcp dport { 22 } accept"))

    def test_overlapping_and_adjacent_ports_merge(self) -> None:
        # nft refuses overlapping intervals in one set.
        rule = FilterRule(("10.99.0.7/32",), "udp", (PortRange(20, 30), PortRange(25, 40), PortRange(41, 41), PortRange(50, 50)))
        self.assertEqual(text([rule]), expected("ip saddr { 10.99.0.7 } udp dport { 20-41, 50 } accept"))

    def test_whole_family_source(self) -> None:
        rule = FilterRule(("0.0.0.0/0", "10.99.0.7/32", "::/0"), "tcp", (PortRange(443, 443),))
        self.assertEqual(
            text([rule]),
            expected("meta nfproto ipv4 tcp dport { 443 } accept", "meta nfproto ipv6 tcp dport { 443 } accept"),
        )

    def test_order_is_probe_then_any_then_icmp_tcp_udp(self) -> None:
        rules = [
            FilterRule(("10.99.0.2/32",), "udp", (PortRange(53, 53),)),
            FilterRule(("10.99.0.3/32",), "tcp", (PortRange(22, 22),)),
            FilterRule(("10.99.0.4/32",), "icmp"),
            FilterRule(("10.99.0.5/32",)),
        ]
        self.assertEqual(
            text(rules, ["10.99.0.9"]),
            expected(
                "ip saddr { 10.99.0.9 } udp dport 51819 accept",
                "ip saddr { 10.99.0.5 } accept",
                "ip saddr { 10.99.0.4 } meta l4proto icmp accept",
                "ip saddr { 10.99.0.3 } tcp dport { 22 } accept",
                "ip saddr { 10.99.0.2 } udp dport { 53 } accept",
            ),
        )

    def test_deterministic_whatever_the_order(self) -> None:
        rules = [
            FilterRule(tuple(f"10.99.{i % 7}.{i}/32" for i in range(1, 200)), "tcp", (PortRange(22, 22), PortRange(80, 80))),
            FilterRule(("fd7a::1/128", "10.98.0.0/16"), "icmp"),
            FilterRule(("10.97.0.1/32",), None, (PortRange(53, 53),)),
        ]
        shuffled = [
            FilterRule(tuple(reversed(rules[0].sources)), "tcp", (PortRange(80, 80), PortRange(22, 22))),
            FilterRule(tuple(reversed(rules[1].sources)), "icmp"),
            rules[2],
        ]
        probe = [f"10.99.0.{i}" for i in range(1, 50)]
        self.assertEqual(text(rules, probe), text(list(reversed(shuffled)), list(reversed(probe))))

    def test_the_table_and_interface_are_the_ones_given(self) -> None:
        script = ruleset("mytable", "wg-mesh_1", [])
        self.assertIn("add table inet mytable\ndelete table inet mytable\ntable inet mytable {\n", script)
        self.assertIn('iifname "wg-mesh_1" jump from_mesh', script)


class CollapseTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(0, 255), st.integers(24, 32)).map(lambda t: f"10.0.{t[0] % 4}.{t[0]}/{t[1]}")
            | st.tuples(st.integers(0, 255), st.integers(120, 128)).map(lambda t: f"fd00::{t[0]:x}/{t[1]}"),
            min_size=1,
            max_size=30,
        )
    )
    def test_same_addresses_no_overlap(self, sources: list[str]) -> None:
        networks = [ipaddress.ip_network(s, strict=False) for s in sources]
        kept = [ipaddress.ip_network(n[3]) for n in _collapse(_network(s) for s in sources)]
        for family in (4, 6):
            mine = [n for n in kept if n.version == family]
            theirs = [n for n in networks if n.version == family]
            self.assertEqual(list(ipaddress.collapse_addresses(mine)), list(ipaddress.collapse_addresses(theirs)))  # type: ignore[type-var]
            for i, one in enumerate(mine):
                for other in mine[i + 1 :]:
                    self.assertFalse(one.overlaps(other), (one, other))
            self.assertEqual(mine, sorted(mine))


class NameTests(SynchronousTestCase):
    def test_table_for_interface(self) -> None:
        self.assertEqual(table_for("wire0"), "wire_wire0")

    def test_good_names(self) -> None:
        for name in ("wire0", "a", "wg-mesh_1", "x" * 15):
            self.assertEqual(check_interface(name), name)
        for name in ("wire_wire0", "T", "a" * 64, "a-b_c9"):
            self.assertEqual(check_table(name), name)

    def test_bad_interfaces(self) -> None:
        for bad in ("", "x" * 16, 'wire0" accept', "wire*", "wire 0", "wire.0", "wire0\n", "wïre", None, 7):
            with self.assertRaises(InvalidFirewallConfig, msg=repr(bad)):
                check_interface(bad)
            with self.assertRaises(InvalidFirewallConfig, msg=repr(bad)):
                ruleset("wire_x", bad, [])  # type: ignore[arg-type]

    def test_bad_tables(self) -> None:
        for bad in ("", "a" * 65, "0wire", "_wire", "wire;flush ruleset", "wire table", "wire{", "wire\n", None):
            with self.assertRaises(InvalidFirewallConfig, msg=repr(bad)):
                check_table(bad)
            with self.assertRaises(InvalidFirewallConfig, msg=repr(bad)):
                ruleset(bad, "wire0", [])  # type: ignore[arg-type]

    def test_message_names_the_field_and_bounds_the_value(self) -> None:
        error = self.assertRaises(InvalidFirewallConfig, check_interface, "x" * 1000)
        self.assertIn("interface", str(error))
        self.assertLess(len(str(error)), 200)

    def test_unvalidated_rules_are_refused(self) -> None:
        # A FilterRule built in code, not parsed: still nothing unchecked reaches the text.
        for rule in (
            FilterRule(('10.99.0.7/32" accept',), "tcp"),
            FilterRule(("10.99.0.7/32",), "sctp"),
            FilterRule(("10.99.0.7/32",), "tcp", (PortRange(5, 70000),)),
            FilterRule(("10.99.0.7/32",), "tcp", (PortRange(9, 5),)),
            FilterRule(("10.99.0.7/32",), "icmp", (PortRange(1, 1),)),
            FilterRule(("10.99.0.7/32",), "tcp", peers=("tag:web",)),  # names the node must resolve first
        ):
            with self.assertRaises(InvalidFirewallConfig, msg=repr(rule)):
                text([rule])

    def test_bad_probe_source(self) -> None:
        self.assertRaises(InvalidFirewallConfig, text, [], ["10.99.0.7; drop"])

    def test_firewall_checks_its_names(self) -> None:
        self.assertRaises(InvalidFirewallConfig, Firewall, FakeProcessRunner(), "wire 0")
        self.assertRaises(InvalidFirewallConfig, Firewall, FakeProcessRunner(), "wire0", table="9")
        self.assertEqual(Firewall(FakeProcessRunner(), "wire0").table, "wire_wire0")
        self.assertEqual(Firewall(FakeProcessRunner(), "wire0", table="mine").table, "mine")


SSH = [FilterRule(("10.99.0.7/32",), "tcp", (PortRange(22, 22),))]
WEB = [FilterRule(("10.99.0.7/32",), "tcp", (PortRange(80, 80),))]
PEERS = ["10.99.0.7", "10.99.0.8"]
REMOVAL = b"add table inet wire_wire0\ndelete table inet wire_wire0\n"


class FirewallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = FakeProcessRunner()
        self.firewall = Firewall(self.runner, "wire0", timeout=7)

    def apply(self, rules=SSH, probe=PEERS) -> bool:
        return self.successResultOf(run(self.firewall.apply(rules, probe)))

    def test_apply_feeds_the_ruleset_on_stdin(self) -> None:
        self.runner.expect(NFT)
        self.assertTrue(self.apply())
        self.runner.assert_all_called()
        self.assertEqual(self.runner.calls[0].stdin, text(SSH, PEERS).encode())

    def test_unchanged_is_not_run_again(self) -> None:
        self.runner.expect(NFT)
        self.assertTrue(self.apply())
        self.assertFalse(self.apply())
        self.assertFalse(self.apply(SSH, list(reversed(PEERS))))
        self.runner.assert_all_called()
        self.assertEqual(len(self.runner.calls), 1)

    def test_same_addresses_written_otherwise_are_unchanged(self) -> None:
        self.runner.expect(NFT)
        self.assertTrue(self.apply(SSH, ["10.99.0.7", "10.99.0.8"]))
        self.assertFalse(self.apply(list(SSH), ["10.99.0.8/32", "10.99.0.7"]))
        self.runner.assert_all_called()

    def test_a_change_is_run(self) -> None:
        self.runner.expect(NFT)
        self.runner.expect(NFT)
        self.runner.expect(NFT)
        self.assertTrue(self.apply(SSH))
        self.assertTrue(self.apply(WEB))
        self.assertTrue(self.apply(WEB, PEERS[:1]))
        self.runner.assert_all_called()
        self.assertEqual(self.runner.calls[1].stdin, text(WEB, PEERS).encode())

    def test_refused_ruleset_is_a_firewall_error_with_nfts_stderr(self) -> None:
        stderr = (
            b"/dev/stdin:11:3-9: Error: Could not process rule: No such file or directory\n"
            + b"ip saddr { " + b", ".join(b"10.99.0.%d" % i for i in range(250)) + b" } accept\n"
            + b"^^^^^^^\n" * 10
        )
        self.runner.expect(NFT, rc=1, stderr=stderr)
        failure = self.failureResultOf(run(self.firewall.apply(SSH, PEERS)), FirewallError)
        message = str(failure.value)
        self.assertIn("Could not process rule: No such file or directory", message)
        self.assertIn("more lines", message)
        self.assertLess(len(message), 1200)
        self.runner.assert_all_called()

    def test_after_a_failure_the_same_rules_run_again(self) -> None:
        self.runner.expect(NFT)
        self.runner.expect(NFT, rc=1, stderr=b"Error: boom\n")
        self.runner.expect(NFT)
        self.assertTrue(self.apply(SSH))
        self.failureResultOf(run(self.firewall.apply(WEB, PEERS)), FirewallError)
        self.assertTrue(self.apply(SSH))  # the old table stayed, but we no longer know it
        self.runner.assert_all_called()

    def test_timeout_is_a_firewall_error(self) -> None:
        self.runner.expect(NFT, error=CommandTimeout(NFT, 7, 4242))
        failure = self.failureResultOf(run(self.firewall.apply(SSH, PEERS)), FirewallError)
        self.assertIn("timed out after 7s", str(failure.value))

    def test_missing_nft_says_how_to_install_it(self) -> None:
        self.runner.expect(NFT, error=CommandNotFound("nft"))
        failure = self.failureResultOf(run(self.firewall.apply(SSH, PEERS)), FirewallError)
        self.assertIn("nftables", str(failure.value))

    def test_invalid_rules_run_nothing(self) -> None:
        self.failureResultOf(run(self.firewall.apply([FilterRule(("nonsense",))], PEERS)), InvalidFirewallConfig)
        self.assertEqual(self.runner.calls, [])

    def test_remove_is_one_idempotent_transaction(self) -> None:
        self.runner.expect(NFT)
        self.runner.expect(NFT)
        self.successResultOf(run(self.firewall.remove()))
        self.successResultOf(run(self.firewall.remove()))
        self.runner.assert_all_called()
        self.assertEqual([call.stdin for call in self.runner.calls], [REMOVAL, REMOVAL])

    def test_after_remove_apply_runs_again(self) -> None:
        self.runner.expect(NFT)
        self.runner.expect(NFT)
        self.runner.expect(NFT)
        self.assertTrue(self.apply())
        self.successResultOf(run(self.firewall.remove()))
        self.assertTrue(self.apply())
        self.runner.assert_all_called()

    def test_remove_failure(self) -> None:
        self.runner.expect(NFT, rc=1, stderr=b"Error: Could not process rule: Operation not permitted\n")
        failure = self.failureResultOf(run(self.firewall.remove()), FirewallError)
        self.assertIn("Operation not permitted", str(failure.value))

    def test_a_thousand_peers_are_one_nft(self) -> None:
        sources = [f"10.99.{i // 250}.{1 + i % 250}/32" for i in range(1000)]
        rules = [FilterRule(tuple(sources[i::10]), "tcp", (PortRange(1000 + i, 1000 + i),)) for i in range(10)]
        self.runner.expect(NFT)
        self.assertTrue(self.apply(rules, [s.split("/")[0] for s in sources]))
        self.runner.assert_all_called()
        self.assertEqual(len(self.runner.calls), 1)

    def test_logs_counts_never_the_ruleset(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.runner.expect(NFT)
        self.apply([FilterRule(("10.99.0.7/32", "10.99.0.9/32"), "tcp", (PortRange(22, 22),))], PEERS)
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "wire.node.firewall"]
        self.assertEqual(len(lines), 1)
        self.assertIn("1 rules from 2 sources, probes from 2 peers", lines[0])
        self.assertNotIn("saddr", lines[0])
        self.assertNotIn("10.99.0.9", lines[0])

    def test_available(self) -> None:
        self.runner.expect(NFT_CHECK)
        self.assertIsNone(self.successResultOf(run(self.firewall.available())))
        self.assertEqual(self.runner.calls[0].stdin, REMOVAL)

    def test_available_without_nft(self) -> None:
        self.runner.expect(NFT_CHECK, error=CommandNotFound("nft"))
        message = self.successResultOf(run(self.firewall.available(platform="debian")))
        self.assertIn("'nft' program is missing", message)
        self.assertIn("apt-get install -y nftables", message)

    def test_available_without_permission(self) -> None:
        self.runner.expect(NFT_CHECK, rc=1, stderr=b"Error: Could not process rule: Operation not permitted\n")
        message = self.successResultOf(run(self.firewall.available()))
        self.assertIn("root or CAP_NET_ADMIN", message)
        self.assertIn("Operation not permitted", message)

    def test_install_hints(self) -> None:
        self.assertIn("dnf install -y nftables", install_hint("fedora"))
        self.assertIn("macOS", install_hint("macos"))
        self.assertEqual(install_hint("unknown"), "install the nftables package")


# -- the real thing -------------------------------------------------------------


def real_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    try:
        for program in ("ip", "nft"):
            find_program(program)
    except CommandNotFound as e:
        return f"needs ip (iproute2) and nft (nftables): {e}"
    if not os.path.exists("/proc/self/ns/net"):
        return "needs network namespace support in the kernel"
    return None


# A listener for the ports in argv[2:] on address argv[1] (TCP; UDP echo on
# 51819), accepting and closing forever; prints "ready" once bound.
LISTEN = """\
import selectors, socket, sys
host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[2:]):
    kind = socket.SOCK_DGRAM if port == 51819 else socket.SOCK_STREAM
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s.type == socket.SOCK_DGRAM:
            data, peer = s.recvfrom(100)
            s.sendto(data, peer)
        else:
            s.accept()[0].close()
"""

# Prints "ok", "timeout" or "refused": a TCP connect (or a UDP echo on 51819).
CONNECT = """\
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM if port == 51819 else socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
try:
    if port == 51819:
        s.sendto(b"probe", (host, port))
        s.recvfrom(100)
    else:
        s.connect((host, port))
    print("ok")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"""

ALLOWED, BLOCKED, OUTSIDE = 8022, 8023, 8024
BLOCKED_WAIT = 1.0


class RealFirewallTests(TestCase):
    """Two namespaces joined by a veth pair: "node" enforces the filter on its
    end (as if the veth were its wire interface), "peer" connects to it."""

    skip = real_skip_reason()
    timeout = 60

    async def setUp(self) -> None:
        self.root = ProcessRunner(reactor)
        tag = secrets.token_hex(3)
        self.ns = {"node": f"wfw{tag}n", "peer": f"wfw{tag}p"}
        self.dev = {"node": f"wfn{tag}", "peer": f"wfp{tag}"}
        self.v4 = {"node": "10.251.0.1", "peer": "10.251.0.2"}
        self.v6 = {"node": "fd00:251::1", "peer": "fd00:251::2"}
        for side, namespace in self.ns.items():
            await self.sh(["ip", "netns", "add", namespace])
            self.addCleanup(self.sh, ["ip", "netns", "delete", namespace])
        await self.sh(["ip", "-n", self.ns["node"], "link", "add", self.dev["node"], "type", "veth",
                       "peer", "name", self.dev["peer"], "netns", self.ns["peer"]])  # fmt: skip
        for side, namespace in self.ns.items():
            dev = self.dev[side]
            await self.sh(["ip", "-n", namespace, "link", "set", "lo", "up"])
            await self.sh(["ip", "-n", namespace, "address", "add", f"{self.v4[side]}/24", "dev", dev])
            await self.sh(["ip", "-n", namespace, "address", "add", f"{self.v6[side]}/64", "dev", dev, "nodad"])
            await self.sh(["ip", "-n", namespace, "link", "set", dev, "up"])
        # A veth needs IPv6 neighbour discovery, which the filter drops (a
        # WireGuard interface has no link layer, so the filter never needs
        # it): the neighbours are made permanent instead.
        for side, other in (("node", "peer"), ("peer", "node")):
            mac = await self.sh(["ip", "netns", "exec", self.ns[other], "cat", f"/sys/class/net/{self.dev[other]}/address"])
            await self.sh(["ip", "-n", self.ns[side], "neigh", "replace", self.v6[other], "lladdr", mac.strip(),
                           "dev", self.dev[side], "nud", "permanent"])  # fmt: skip
        self.runner = PassThroughRunner(self.root, prefix=("ip", "netns", "exec", self.ns["node"]))
        self.firewall = Firewall(self.runner, self.dev["node"])
        for side in self.ns:
            for address in (self.v4[side], self.v6[side]):
                await self.listen(side, address, ALLOWED, BLOCKED, OUTSIDE, 51819)

    async def sh(self, argv: list[str]) -> str:
        return (await self.root.run(argv, timeout=10)).check().stdout.decode()

    async def listen(self, side: str, address: str, *ports: int) -> None:
        process = self.root.start(
            ["ip", "netns", "exec", self.ns[side], sys.executable, "-c", LISTEN, address, *map(str, ports)],
            log_prefix=f"listen-{side}",
        )
        self.addCleanup(process.stop, 2.0)  # before the namespaces go (cleanups run last first)
        deadline = reactor.seconds() + 10
        while "ready" not in process.tail:
            if not process.running or reactor.seconds() > deadline:
                raise AssertionError(f"listener in {side} did not start: {process.tail}")
            await deferLater(reactor, 0.02)

    async def connect(self, side: str, address: str, port: int, wait: float = 5.0) -> str:
        argv = ["ip", "netns", "exec", self.ns[side], sys.executable, "-c", CONNECT, address, str(port), str(wait)]
        return (await self.root.run(argv, timeout=wait + 10)).check().stdout.decode().strip()

    async def tables(self) -> str:
        return (await self.runner.run(["nft", "list", "tables"])).check().stdout.decode()

    async def test_available(self) -> None:
        self.assertIsNone(await self.firewall.available())

    async def test_allowed_port_passes_and_the_rest_is_dropped(self) -> None:
        peer, node = self.v4["peer"], self.v4["node"]
        self.assertEqual(await self.connect("peer", node, BLOCKED), "ok")  # no filter yet
        rules = [FilterRule((f"{peer}/32",), "tcp", (PortRange(ALLOWED, ALLOWED),))]
        self.assertTrue(await self.firewall.apply(rules, []))
        self.assertEqual(await self.connect("peer", node, ALLOWED), "ok")
        self.assertEqual(await self.connect("peer", node, BLOCKED, BLOCKED_WAIT), "timeout")
        self.assertEqual(await self.connect("peer", self.v6["node"], ALLOWED, BLOCKED_WAIT), "timeout")  # v4 rule only
        # The filtered node's own connections out come back as replies.
        self.assertEqual(await self.connect("node", peer, OUTSIDE), "ok")
        self.assertEqual(await self.connect("node", self.v6["peer"], OUTSIDE), "ok")
        # Other interfaces are none of the filter's business.
        self.assertEqual(await self.connect("node", node, BLOCKED), "ok")
        self.assertFalse(await self.firewall.apply(rules, []))

    async def test_ipv6_and_any_protocol_rules(self) -> None:
        rules = [FilterRule((f"{self.v6['peer']}/128",), None, (PortRange(BLOCKED, BLOCKED),))]
        await self.firewall.apply(rules, [])
        self.assertEqual(await self.connect("peer", self.v6["node"], BLOCKED), "ok")
        self.assertEqual(await self.connect("peer", self.v6["node"], ALLOWED, BLOCKED_WAIT), "timeout")
        self.assertEqual(await self.connect("peer", self.v4["node"], BLOCKED, BLOCKED_WAIT), "timeout")

    async def test_peers_probes_are_let_in(self) -> None:
        await self.firewall.apply([], [self.v4["peer"], self.v6["peer"]])
        self.assertEqual(await self.connect("peer", self.v4["node"], 51819), "ok")
        self.assertEqual(await self.connect("peer", self.v6["node"], 51819), "ok")
        self.assertEqual(await self.connect("peer", self.v4["node"], ALLOWED, BLOCKED_WAIT), "timeout")
        await self.firewall.apply([], [])
        self.assertEqual(await self.connect("peer", self.v4["node"], 51819, BLOCKED_WAIT), "timeout")
        # The node's own probes: answered by the peer, let back in as replies.
        self.assertEqual(await self.connect("node", self.v4["peer"], 51819), "ok")

    async def test_replace_and_remove(self) -> None:
        node = self.v4["node"]
        ssh = [FilterRule((f"{self.v4['peer']}/32",), "tcp", (PortRange(ALLOWED, ALLOWED),))]
        web = [FilterRule((f"{self.v4['peer']}/32",), "tcp", (PortRange(BLOCKED, BLOCKED),))]
        await self.firewall.apply(ssh, [])
        await self.firewall.apply(web, [])
        self.assertEqual(await self.connect("peer", node, BLOCKED), "ok")
        self.assertEqual(await self.connect("peer", node, ALLOWED, BLOCKED_WAIT), "timeout")
        self.assertEqual(await self.tables(), f"table inet {self.firewall.table}\n")
        await self.firewall.remove()
        self.assertEqual(await self.tables(), "")
        self.assertEqual(await self.connect("peer", node, ALLOWED), "ok")
        await self.firewall.remove()  # nothing there: fine
        self.assertEqual(await self.tables(), "")

    async def test_a_refused_ruleset_leaves_the_old_one(self) -> None:
        await self.firewall.apply([FilterRule((f"{self.v4['peer']}/32",), "tcp", (PortRange(ALLOWED, ALLOWED),))], [])
        # A table named like an nft keyword passes our check but not nft's parser.
        keyword = Firewall(self.runner, self.dev["node"], table="counter")
        self.assertIn("syntax error", await keyword.available() or "")
        with self.assertRaises(FirewallError) as caught:
            await keyword.apply([], [])
        self.assertIn("syntax error", str(caught.exception))
        self.assertEqual(await self.tables(), f"table inet {self.firewall.table}\n")
        self.assertEqual(await self.connect("peer", self.v4["node"], ALLOWED), "ok")
        self.assertEqual(await self.connect("peer", self.v4["node"], BLOCKED, BLOCKED_WAIT), "timeout")
