"""Tests for the node's routes to other nodes' networks (wire.node.routes):
the planner's decisions, the ``ip -j`` parsers on captured output, MeshRoutes
on a scripted runner, then the real kernel in a network namespace."""

from __future__ import annotations

import ipaddress
import json
import secrets

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.fakes import FakeProcessRunner, PassThroughRunner
from tests.helpers import namespace_skip_reason
from wire.node.firewall import InvalidFirewallConfig
from wire.node.routes import (
    EXIT_TABLE,
    ROUTE_PROTO,
    Gateway,
    LocalNetwork,
    MeshRoutes,
    RouteError,
    RoutePlan,
    Underlay,
    parse_gateways,
    parse_local_networks,
    parse_our_routes,
    parse_our_rules,
    plan_routes,
    read_gateways,
    read_local_networks,
    wanted_from_peers,
)
from wire.protocol.peers import PeerView
from wire.runner import CommandNotFound, ProcessRunner

MESH = ("100.64.0.0/10", "fd7a:115c:a1e0::/48")
LAN = LocalNetwork("eth0", ipaddress.ip_interface("192.168.1.10/24"))
LAN6 = LocalNetwork("eth0", ipaddress.ip_interface("2001:db8:1::10/64"))
DOCKER = LocalNetwork("docker0", ipaddress.ip_interface("172.17.0.1/16"))
SERVER = Underlay.server("203.0.113.5")
GATEWAY = Gateway("eth0", ipaddress.ip_address("192.168.1.1"), 4)


def plan(wanted, *, local=(LAN,), underlay=(SERVER,), exit_peer=None, allow_lan=False, gateways=(GATEWAY,)) -> RoutePlan:
    return plan_routes(
        wanted,
        mesh_subnets=MESH,
        local_networks=local,
        underlay_addresses=underlay,
        exit_peer=exit_peer,
        exit_allow_lan=allow_lan,
        gateways=gateways,
    )


def run(coroutine) -> Deferred:
    return Deferred.fromCoroutine(coroutine)


class PlanTests(SynchronousTestCase):
    def test_a_plain_route_is_installed_for_its_peer(self) -> None:
        result = plan({"router": ("10.20.0.0/16",)})
        self.assertEqual(result.routes, ("10.20.0.0/16",))
        self.assertEqual(dict(result.allowed_ips), {"router": ("10.20.0.0/16",)})
        self.assertEqual(result.skipped, ())
        self.assertIsNone(result.exit)

    def test_skips_with_reasons(self) -> None:
        endpoint = Underlay.endpoint("laptop", "198.51.100.7")
        cases = [
            ("192.168.0.0/16", "192.168.0.0/16 from peer r overlaps this node's own LAN (eth0 192.168.1.10/24): not installed"),
            ("192.168.1.128/25", "192.168.1.128/25 from peer r overlaps this node's own LAN (eth0 192.168.1.10/24): not installed"),
            ("100.64.5.0/24", "100.64.5.0/24 from peer r overlaps the mesh (100.64.0.0/10): not installed"),
            ("fd7a:115c:a1e0:5::/64", "fd7a:115c:a1e0:5::/64 from peer r overlaps the mesh (fd7a:115c:a1e0::/48): not installed"),
            (
                "203.0.113.0/24",
                "203.0.113.0/24 from peer r contains the server's address 203.0.113.5 (the path to the server would loop): not installed",
            ),
            (
                "198.51.100.0/24",
                "198.51.100.0/24 from peer r contains peer laptop's endpoint 198.51.100.7 (the path to laptop would loop): not installed",
            ),
        ]
        for prefix, reason in cases:
            with self.subTest(prefix=prefix):
                result = plan({"r": (prefix,)}, underlay=(SERVER, endpoint))
                self.assertEqual(result.routes, ())
                self.assertEqual([s.reason for s in result.skipped], [reason])
                self.assertEqual(dict(result.allowed_ips), {})

    def test_other_links_count_as_local(self) -> None:
        result = plan({"r": ("172.17.0.0/24",)}, local=(LAN, DOCKER))
        self.assertIn("(docker0 172.17.0.1/16)", result.skipped[0].reason)

    def test_two_peers_one_prefix_first_peer_wins_whatever_the_order(self) -> None:
        for wanted in ({"b": ("10.9.0.0/16",), "a": ("10.9.0.0/16",)}, {"a": ("10.9.0.0/16",), "b": ("10.9.0.0/16",)}):
            result = plan(wanted)
            self.assertEqual(dict(result.allowed_ips), {"a": ("10.9.0.0/16",)})
            self.assertEqual(
                [s.reason for s in result.skipped],
                ["10.9.0.0/16 from peer b is also routed by peer a, which came first: not installed"],
            )

    def test_reasons_name_peers_by_name(self) -> None:
        result = plan_routes(
            {"n-1": ("10.9.0.0/16",), "n-2": ("10.9.0.0/16",)}, mesh_subnets=MESH, local_networks=(), underlay_addresses=(),
            exit_peer="n-2", exit_allow_lan=False, peer_names={"n-1": "home", "n-2": "office"},
        )  # fmt: skip
        self.assertEqual(result.skipped[0].reason, "10.9.0.0/16 from peer office is also routed by peer home, which came first: not installed")
        self.assertEqual(result.skipped[0].peer, "n-2")
        self.assertEqual(result.exit_problem, "peer office offers no exit node: the default route stays as it is")

    def test_nested_prefixes_of_two_peers_both_go(self) -> None:
        # WireGuard picks the longest match, as the kernel does.
        result = plan({"a": ("10.9.0.0/16",), "b": ("10.9.8.0/24",)})
        self.assertEqual(result.routes, ("10.9.0.0/16", "10.9.8.0/24"))

    def test_ipv6_route(self) -> None:
        result = plan({"r": ("2001:db8:5::/48", "10.1.0.0/24")})
        self.assertEqual(result.routes, ("10.1.0.0/24", "2001:db8:5::/48"))

    def test_ipv6_lan_overlap(self) -> None:
        result = plan({"r": ("2001:db8:1::/48",)}, local=(LAN, LAN6))
        self.assertIn("overlaps this node's own LAN (eth0 2001:db8:1::10/64)", result.skipped[0].reason)

    def test_exit_routes_are_ignored_unless_chosen(self) -> None:
        result = plan({"exit": ("0.0.0.0/0", "::/0")})
        self.assertEqual((result.routes, dict(result.allowed_ips), result.skipped, result.exit), ((), {}, (), None))

    def test_exit_without_lan_access(self) -> None:
        endpoint = Underlay.endpoint("vps", "198.51.100.7")
        result = plan({"vps": ("0.0.0.0/0", "::/0", "10.8.0.0/24")}, underlay=(SERVER, endpoint), local=(LAN, DOCKER), exit_peer="vps")
        self.assertEqual(dict(result.allowed_ips), {"vps": ("10.8.0.0/24", "0.0.0.0/0", "::/0")})
        assert result.exit is not None
        self.assertEqual(result.exit.versions, (4, 6))
        # The server, the endpoint and the gateway stay out; the uplink LAN goes in, docker stays local.
        self.assertEqual(result.exit.bypass, ("192.168.1.1/32", "198.51.100.7/32", "203.0.113.5/32"))
        self.assertEqual(result.exit.tunnel_lan, ("192.168.1.0/24",))
        self.assertIsNone(result.exit_problem)

    def test_exit_with_lan_access(self) -> None:
        result = plan({"vps": ("0.0.0.0/0",)}, local=(LAN, LAN6, DOCKER), exit_peer="vps", allow_lan=True)
        assert result.exit is not None
        self.assertEqual(result.exit.versions, (4,))
        self.assertEqual(result.exit.bypass, ("172.17.0.0/16", "192.168.1.0/24", "203.0.113.5/32"))
        self.assertEqual(result.exit.tunnel_lan, ())

    def test_exit_ipv6_bypass(self) -> None:
        server6 = Underlay.server("2001:db8:99::5")
        result = plan({"vps": ("::/0",)}, underlay=(SERVER, server6), local=(LAN, LAN6), exit_peer="vps", allow_lan=True)
        assert result.exit is not None
        self.assertEqual(result.exit.bypass, ("2001:db8:1::/64", "2001:db8:99::5/128"))

    def test_exit_peer_that_offers_none(self) -> None:
        result = plan({"laptop": ("10.3.0.0/24",)}, exit_peer="laptop")
        self.assertIsNone(result.exit)
        self.assertEqual(result.exit_problem, "peer laptop offers no exit node: the default route stays as it is")
        self.assertEqual(plan({}, exit_peer="gone").exit_problem, "peer gone offers no exit node: the default route stays as it is")

    def test_wanted_from_peers(self) -> None:
        key = "x" * 43 + "="
        peers = [
            PeerView(node_id="a", node_name="a", vpn_ip="100.64.0.2", wg_public_key=key, routes=("10.1.0.0/24",)),
            PeerView(node_id="b", node_name="b", vpn_ip="100.64.0.3", wg_public_key=key, exit_node=True),
            PeerView(node_id="c", node_name="c", vpn_ip="100.64.0.4", wg_public_key=key),
        ]
        self.assertEqual(wanted_from_peers(peers), {"a": ("10.1.0.0/24",), "b": ("0.0.0.0/0", "::/0")})

    @given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 255), st.integers(8, 24)), max_size=12))
    def test_deterministic_and_never_one_prefix_twice(self, entries) -> None:
        wanted: dict[str, list[str]] = {}
        for peer, octet, length in entries:
            wanted.setdefault(peer, []).append(str(ipaddress.ip_network(f"10.{octet}.0.0/{length}", strict=False)))
        one = plan(wanted)
        other = plan(dict(reversed(list(wanted.items()))))
        self.assertEqual(one, other)
        given_out = [p for prefixes in one.allowed_ips.values() for p in prefixes]
        self.assertEqual(len(given_out), len(set(given_out)))
        self.assertEqual(sorted(given_out), sorted(one.routes))


# -- ip -j output ----------------------------------------------------------------

ADDR_SAMPLE = json.dumps(
    [
        {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP"], "addr_info": [
            {"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
        {"ifindex": 2, "ifname": "eth0", "flags": ["BROADCAST", "UP"], "addr_info": [
            {"family": "inet", "local": "192.168.1.10", "prefixlen": 24, "scope": "global"},
            {"family": "inet6", "local": "2001:db8:1::10", "prefixlen": 64, "scope": "global"},
            {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]},
        {"ifindex": 3, "ifname": "wire0", "flags": ["POINTOPOINT", "UP"], "addr_info": [
            {"family": "inet", "local": "100.64.0.7", "prefixlen": 10, "scope": "global"}]},
        {"ifindex": 4, "ifname": "odd", "addr_info": [
            {"family": "inet", "local": "not-an-address", "prefixlen": 24, "scope": "global"},
            {"family": "inet", "local": "10.0.0.1", "scope": "global"},
            "junk",
            {"family": "inet", "local": "10.0.0.2", "prefixlen": "x", "scope": "global"}]},
        "junk",
        {"ifname": 5},
    ]
)  # fmt: skip


class ParseTests(SynchronousTestCase):
    def test_local_networks(self) -> None:
        networks = parse_local_networks(ADDR_SAMPLE.encode(), exclude=("wire0",))
        self.assertEqual([str(n) for n in networks], ["eth0 192.168.1.10/24", "eth0 2001:db8:1::10/64"])

    def test_local_networks_of_garbage(self) -> None:
        for output in (b"", b"not json", b"{}", b"[1, 2]", b'{"ifname": "eth0"}', b"\xff\xfe", b"null"):
            self.assertEqual(parse_local_networks(output), [])

    def test_gateways(self) -> None:
        output = json.dumps([
            {"dst": "default", "gateway": "192.168.1.1", "dev": "eth0", "protocol": "dhcp"},
            {"dst": "default", "dev": "ppp0"},
            {"dst": "10.0.0.0/8", "gateway": "192.168.1.2", "dev": "eth0"},
            {"dst": "default", "gateway": "nonsense", "dev": "eth1"},
            {"dst": "default", "gateway": "fe80::1", "dev": "eth1"},
            {"dst": "default"},
        ])  # fmt: skip
        self.assertEqual(
            parse_gateways(output, 4),
            [Gateway("eth0", ipaddress.ip_address("192.168.1.1"), 4), Gateway("ppp0", None, 4)],
        )
        self.assertEqual(parse_gateways(b"garbage", 4), [])

    def test_our_routes(self) -> None:
        output = json.dumps([
            {"dst": "default", "dev": "wire0", "table": "5287"},
            {"dst": "10.5.0.0/24", "dev": "wire0", "scope": "link"},
            {"dst": "10.6.0.0/24", "dev": "wire1", "scope": "link"},
            {"dev": "wire0"},
        ])  # fmt: skip
        self.assertEqual(parse_our_routes(output, 4, "wire0"), {(4, "default", "5287"), (4, "10.5.0.0/24", "main")})

    def test_our_rules(self) -> None:
        # Captured from iproute2 6.1, plus junk.
        output = (
            '[{"priority":0,"src":"all","table":"local"},'
            '{"priority":5280,"src":"all","fwmark":"0x5287","table":"main","protocol":"87"},'
            '{"priority":5281,"src":"all","dst":"203.0.113.5","table":"main","protocol":"87"},'
            '{"priority":5282,"src":"all","dst":"192.168.1.0","dstlen":24,"table":"5287","protocol":"87"},'
            '{"priority":5283,"src":"all","table":"main","suppress_prefixlen":0,"protocol":"87"},'
            '{"priority":5284,"src":"all","table":"5287","protocol":"87"},'
            '{"priority":"x","protocol":"87"},'
            '{"priority":32766,"src":"all","table":"main"}]'
        )
        self.assertEqual(
            parse_our_rules(output, 4),
            {
                (4, 5280, "", "0x5287", "main", -1),
                (4, 5281, "203.0.113.5", "", "main", -1),
                (4, 5282, "192.168.1.0/24", "", "5287", -1),
                (4, 5283, "", "", "main", 0),
                (4, 5284, "", "", "5287", -1),
            },
        )

    @given(st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["eth0", "default", "global", "87", "inet"]),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.sampled_from(["ifname", "flags", "addr_info", "local", "prefixlen", "scope", "dst", "dev", "gateway",
                             "table", "priority", "protocol", "dstlen", "suppress_prefixlen", "fwmark"]),
            inner, max_size=6),
        max_leaves=20,
    ))  # fmt: skip
    def test_no_output_makes_a_parser_raise(self, value) -> None:
        output = json.dumps(value)
        parse_local_networks(output)
        parse_gateways(output, 4)
        parse_our_routes(output, 6, "eth0")
        parse_our_rules(output, 4)

    def test_read_from_the_runner(self) -> None:
        runner = FakeProcessRunner()
        runner.expect(["ip", "-j", "addr", "show"], stdout=ADDR_SAMPLE.encode())
        runner.expect(["ip", "-j", "-4", "route", "show", "default"], stdout=b'[{"dst":"default","gateway":"192.168.1.1","dev":"eth0"}]')
        runner.expect(["ip", "-j", "-6", "route", "show", "default"], stdout=b"")
        networks = self.successResultOf(run(read_local_networks(runner, exclude=("wire0",))))
        gateways = self.successResultOf(run(read_gateways(runner)))
        runner.assert_all_called()
        self.assertEqual(len(networks), 2)
        self.assertEqual(gateways, [GATEWAY])


# -- MeshRoutes on a scripted runner -----------------------------------------------

P = str(ROUTE_PROTO)
T = str(EXIT_TABLE)


def expect_listing(runner: FakeProcessRunner, routes4=b"[]", rules4=b"[]", routes6=b"[]", rules6=b"[]") -> None:
    for version, routes, rules in ((4, routes4, rules4), (6, routes6, rules6)):
        runner.expect(["ip", "-j", f"-{version}", "route", "show", "table", "all", "proto", P], stdout=routes)
        runner.expect(["ip", "-j", f"-{version}", "rule", "show"], stdout=rules)


def route(dst, table="main", verb="replace") -> str:
    return f"route {verb} {dst} dev wire0 table {table} proto {P}"


def rule(priority, *selector, verb="add") -> str:
    return " ".join(["rule", verb, "priority", str(priority), *selector, "proto", P])


class MeshRoutesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = FakeProcessRunner()
        self.routes = MeshRoutes(self.runner, "wire0")
        self.batches: list[tuple[tuple[str, ...], str]] = []

    def expect_batch(self, version: int, *lines: str, force: bool = False, **result) -> None:
        argv = ("ip", f"-{version}", *(["-force"] if force else []), "-batch", "-")
        self.runner.expect(argv, **result)
        self.batches.append((argv, "".join(f"{line}\n" for line in lines)))

    def check(self) -> None:
        self.runner.assert_all_called()
        given = [(c.argv, (c.stdin or b"").decode()) for c in self.runner.calls if "-batch" in c.argv]
        self.assertEqual(given, self.batches)

    def apply(self, result: RoutePlan) -> bool:
        return self.successResultOf(run(self.routes.apply(result)))

    def test_subnet_routes_in_one_batch_per_family(self) -> None:
        expect_listing(self.runner)
        self.expect_batch(4, route("10.5.0.0/24"), route("10.6.0.0/24"))
        self.expect_batch(6, route("2001:db8:5::/48"))
        self.assertTrue(self.apply(plan({"r": ("10.5.0.0/24", "2001:db8:5::/48"), "s": ("10.6.0.0/24",)})))
        self.check()
        self.assertEqual(self.routes.status().routes, ("10.5.0.0/24", "10.6.0.0/24", "2001:db8:5::/48"))

    def test_the_same_plan_again_runs_nothing(self) -> None:
        expect_listing(self.runner)
        self.expect_batch(4, route("10.5.0.0/24"))
        self.assertTrue(self.apply(plan({"r": ("10.5.0.0/24",)})))
        self.assertFalse(self.apply(plan({"r": ("10.5.0.0/24",)})))
        self.check()

    def test_a_kernel_already_as_planned_gets_no_batch(self) -> None:
        expect_listing(self.runner, routes4=b'[{"dst":"10.5.0.0/24","dev":"wire0"}]')
        self.assertTrue(self.apply(plan({"r": ("10.5.0.0/24",)})))
        self.check()

    def test_what_is_there_is_kept_and_what_is_not_planned_goes(self) -> None:
        listed = json.dumps([{"dst": "10.5.0.0/24", "dev": "wire0"}, {"dst": "10.6.0.0/24", "dev": "wire0"},
                             {"dst": "10.7.0.0/24", "dev": "other0"}]).encode()  # fmt: skip
        expect_listing(self.runner, routes4=listed)
        self.expect_batch(4, route("10.8.0.0/24"), route("10.6.0.0/24", verb="del"))
        self.apply(plan({"r": ("10.5.0.0/24", "10.8.0.0/24")}))
        self.check()

    def test_exit_rules_top_down_after_the_table(self) -> None:
        expect_listing(self.runner)
        self.expect_batch(
            4,
            route("default", T),
            rule(5280, "fwmark", "0x5287", "lookup", "main"),
            rule(5281, "to", "192.168.1.1", "lookup", "main"),
            rule(5281, "to", "203.0.113.5", "lookup", "main"),
            rule(5282, "to", "192.168.1.0/24", "lookup", T),
            rule(5283, "lookup", "main", "suppress_prefixlength", "0"),
            rule(5284, "lookup", T),
        )
        self.apply(plan({"vps": ("0.0.0.0/0",)}, exit_peer="vps"))
        self.check()
        self.assertEqual(self.routes.status().exit_peer, "vps")

    def test_exit_for_both_families(self) -> None:
        expect_listing(self.runner)
        common = (rule(5280, "fwmark", "0x5287", "lookup", "main"),)
        tail = (rule(5283, "lookup", "main", "suppress_prefixlength", "0"), rule(5284, "lookup", T))
        self.expect_batch(4, route("default", T), *common, rule(5281, "to", "203.0.113.5", "lookup", "main"), *tail)
        self.expect_batch(6, route("default", T), *common, rule(5281, "to", "2001:db8:99::5", "lookup", "main"), *tail)
        underlay = (SERVER, Underlay.server("2001:db8:99::5"))
        self.apply(plan({"vps": ("0.0.0.0/0", "::/0")}, exit_peer="vps", underlay=underlay, local=(), gateways=()))
        self.check()

    def test_leaving_the_exit_removes_the_catch_all_first(self) -> None:
        expect_listing(self.runner)
        self.expect_batch(4, route("default", T), rule(5280, "fwmark", "0x5287", "lookup", "main"),
                          rule(5281, "to", "203.0.113.5", "lookup", "main"),
                          rule(5283, "lookup", "main", "suppress_prefixlength", "0"), rule(5284, "lookup", T))  # fmt: skip
        self.apply(plan({"vps": ("0.0.0.0/0",)}, exit_peer="vps", allow_lan=True, local=(), gateways=()))
        rules = json.dumps([
            {"priority": 5280, "fwmark": "0x5287", "table": "main", "protocol": "87"},
            {"priority": 5281, "dst": "203.0.113.5", "table": "main", "protocol": "87"},
            {"priority": 5283, "table": "main", "suppress_prefixlen": 0, "protocol": "87"},
            {"priority": 5284, "table": T, "protocol": "87"},
        ]).encode()  # fmt: skip
        expect_listing(self.runner, routes4=json.dumps([{"dst": "default", "dev": "wire0", "table": T}]).encode(), rules4=rules)
        self.expect_batch(
            4,
            rule(5284, "lookup", T, verb="del"),
            rule(5283, "lookup", "main", "suppress_prefixlength", "0", verb="del"),
            rule(5281, "to", "203.0.113.5", "lookup", "main", verb="del"),
            rule(5280, "fwmark", "0x5287", "lookup", "main", verb="del"),
            route("default", T, verb="del"),
        )
        self.apply(plan({}))
        self.check()

    def test_clear_removes_leftovers_by_proto(self) -> None:
        # A crashed run left a route and a rule; nothing was applied by this one.
        expect_listing(
            self.runner,
            routes4=b'[{"dst":"10.5.0.0/24","dev":"wire0"}]',
            rules6=b'[{"priority":5284,"src":"all","table":"5287","protocol":"87"},{"priority":100,"table":"main"}]',
            routes6=b'[{"dst":"default","dev":"wire0","table":"5287","metric":1024}]',
        )
        self.expect_batch(4, route("10.5.0.0/24", verb="del"), force=True)
        self.expect_batch(6, rule(5284, "lookup", T, verb="del"), route("default", T, verb="del"), force=True)
        self.successResultOf(run(self.routes.clear()))
        self.check()

    def test_clear_with_nothing_there(self) -> None:
        expect_listing(self.runner)
        self.successResultOf(run(self.routes.clear()))
        self.check()

    def test_after_clear_apply_runs_again(self) -> None:
        expect_listing(self.runner)
        self.expect_batch(4, route("10.5.0.0/24"))
        self.apply(plan({"r": ("10.5.0.0/24",)}))
        expect_listing(self.runner, routes4=b'[{"dst":"10.5.0.0/24","dev":"wire0"}]')
        self.expect_batch(4, route("10.5.0.0/24", verb="del"), force=True)
        self.successResultOf(run(self.routes.clear()))
        expect_listing(self.runner)
        self.expect_batch(4, route("10.5.0.0/24"))
        self.assertTrue(self.apply(plan({"r": ("10.5.0.0/24",)})))
        self.check()

    def test_a_refusal_is_a_route_error_quoting_the_line_and_ip(self) -> None:
        expect_listing(self.runner)
        self.expect_batch(4, route("10.5.0.0/24"), route("10.6.0.0/24"), rc=1,
                          stderr=b"Error: Device for nexthop is not up.\nCommand failed -:2\n")  # fmt: skip
        failure = self.failureResultOf(run(self.routes.apply(plan({"r": ("10.5.0.0/24", "10.6.0.0/24")}))), RouteError)
        self.assertEqual(
            str(failure.value),
            "cannot change the routes of wire0: `ip -4 route replace 10.6.0.0/24 dev wire0 table main proto 87` "
            "failed: Error: Device for nexthop is not up. | Command failed -:2",
        )
        # Nothing is assumed in force after a failure: the next apply lists again.
        expect_listing(self.runner, routes4=b'[{"dst":"10.5.0.0/24","dev":"wire0"}]')
        self.expect_batch(4, route("10.6.0.0/24"))
        self.assertTrue(self.apply(plan({"r": ("10.5.0.0/24", "10.6.0.0/24")})))
        self.check()

    def test_a_refusal_without_a_line_number(self) -> None:
        expect_listing(self.runner)
        self.expect_batch(4, route("10.5.0.0/24"), rc=1, stderr=b"Segmentation fault\n")
        failure = self.failureResultOf(run(self.routes.apply(plan({"r": ("10.5.0.0/24",)}))), RouteError)
        self.assertEqual(str(failure.value), "cannot change the routes of wire0: `ip -4 -batch -` failed: Segmentation fault")

    def test_missing_ip(self) -> None:
        self.runner.expect(["ip", "-j", "-4", "route", "show", "table", "all", "proto", P], error=CommandNotFound("ip"))
        failure = self.failureResultOf(run(self.routes.clear()), RouteError)
        self.assertIn("the 'ip' program is missing (package iproute2)", str(failure.value))

    def test_a_kernel_without_ipv6(self) -> None:
        self.runner.expect(["ip", "-j", "-4", "route", "show", "table", "all", "proto", P])
        self.runner.expect(["ip", "-j", "-4", "rule", "show"])
        self.runner.expect(["ip", "-j", "-6", "route", "show", "table", "all", "proto", P], rc=255,
                           stderr=b"RTNETLINK answers: Address family not supported by protocol")  # fmt: skip
        self.expect_batch(4, route("10.5.0.0/24"))
        self.apply(plan({"r": ("10.5.0.0/24",)}))
        self.check()

    def test_many_endpoints_are_one_process(self) -> None:
        underlay = [SERVER] + [Underlay.endpoint(f"p{i}", f"198.51.{i // 250}.{i % 250 + 1}") for i in range(1000)]
        expect_listing(self.runner)
        self.runner.expect(["ip", "-4", "-batch", "-"])
        self.apply(plan({"vps": ("0.0.0.0/0",)}, exit_peer="vps", underlay=underlay))
        self.runner.assert_all_called()
        self.assertEqual(len(self.runner.calls[-1].stdin.splitlines()), 1 + 1 + 1001 + 1 + 1 + 1 + 1)

    def test_interface_is_validated(self) -> None:
        for bad in ("wire 0", 'wi"re', "", "x" * 16, None):
            self.assertRaises(InvalidFirewallConfig, MeshRoutes, self.runner, bad)

    def test_status_tells_the_skips(self) -> None:
        expect_listing(self.runner)
        self.apply(plan({"r": ("192.168.1.0/24",)}, exit_peer="r"))
        status = self.routes.status()
        self.assertEqual(status.routes, ())
        self.assertEqual([s.reason for s in status.skipped],
                         ["192.168.1.0/24 from peer r overlaps this node's own LAN (eth0 192.168.1.10/24): not installed"])  # fmt: skip
        self.assertEqual(status.exit_problem, "peer r offers no exit node: the default route stays as it is")


# -- the real kernel ------------------------------------------------------------------


def real_skip_reason() -> str | None:
    return namespace_skip_reason()


class RealMeshRoutesTests(TestCase):
    """MeshRoutes in a namespace of the test's own: a veth end named like a
    wire interface, its peer end the "LAN" with a default gateway."""

    skip = real_skip_reason()
    timeout = 60

    async def setUp(self) -> None:
        self.root = ProcessRunner(reactor)
        tag = secrets.token_hex(3)
        self.namespace = f"wire-rt-{tag}"
        self.wire, self.lan = f"wrt{tag}", f"wrl{tag}"
        await self.sh("ip", "netns", "add", self.namespace)
        self.addCleanup(self.sh, "ip", "netns", "delete", self.namespace)
        self.runner = PassThroughRunner(self.root, prefix=("ip", "netns", "exec", self.namespace))
        await self.ns("ip", "link", "add", self.wire, "type", "veth", "peer", "name", self.lan)
        for device in (self.wire, self.lan):
            await self.ns("ip", "link", "set", device, "up")
        await self.ns("ip", "addr", "add", "192.168.77.10/24", "dev", self.lan)
        await self.ns("ip", "-6", "addr", "add", "2001:db8:77::10/64", "dev", self.lan, "nodad")
        await self.ns("ip", "route", "add", "default", "via", "192.168.77.1", "dev", self.lan)

    async def sh(self, *argv: str) -> str:
        return (await self.root.run(list(argv))).check().stdout.decode()

    async def ns(self, *argv: str) -> str:
        return (await self.runner.run(list(argv))).check().stdout.decode()

    async def where(self, address: str) -> str:
        return await self.ns("ip", "route", "get", address)

    async def plan(self, wanted, **kwargs) -> RoutePlan:
        local = await read_local_networks(self.runner, exclude=(self.wire,))
        gateways = await read_gateways(self.runner)
        return plan_routes(
            wanted, mesh_subnets=MESH, local_networks=local, underlay_addresses=(SERVER,), gateways=gateways, **kwargs
        )

    async def test_subnet_routes_applied_and_cleared(self) -> None:
        routes = MeshRoutes(self.runner, self.wire)
        result = await self.plan({"r": ("10.55.0.0/24", "2001:db8:55::/48", "192.168.77.0/25")}, exit_peer=None, exit_allow_lan=False)
        self.assertEqual(len(result.skipped), 1)  # the LAN's own
        await routes.apply(result)
        shown = await self.ns("ip", "route", "show", "proto", P)
        self.assertIn(f"10.55.0.0/24 dev {self.wire}", shown)
        self.assertIn(f"2001:db8:55::/48 dev {self.wire}", await self.ns("ip", "-6", "route", "show", "proto", P))
        self.assertFalse(await routes.apply(result))
        await routes.clear()
        self.assertEqual(await self.ns("ip", "route", "show", "table", "all", "proto", P), "")
        self.assertEqual(await self.ns("ip", "-6", "route", "show", "table", "all", "proto", P), "")

    async def test_exit_node_and_crash_cleanup(self) -> None:
        routes = MeshRoutes(self.runner, self.wire)
        result = await self.plan({"vps": ("0.0.0.0/0", "::/0")}, exit_peer="vps", exit_allow_lan=False)
        await routes.apply(result)
        self.assertIn(f"dev {self.wire} table {T}", await self.where("8.8.8.8"))
        self.assertIn(f"via 192.168.77.1 dev {self.lan}", await self.where("203.0.113.5"))  # the server stays out
        self.assertIn(f"dev {self.lan}", await self.where("192.168.77.1"))  # and the gateway
        self.assertIn(f"dev {self.wire} table {T}", await self.where("192.168.77.20"))  # no LAN access
        self.assertIn(f"dev {self.wire} table {T}", await self.where("2606:4700::1111"))
        # With LAN access, the LAN is local again.
        await routes.apply(await self.plan({"vps": ("0.0.0.0/0", "::/0")}, exit_peer="vps", exit_allow_lan=True))
        self.assertNotIn(self.wire, await self.where("192.168.77.20"))
        self.assertIn(f"dev {self.wire} table {T}", await self.where("8.8.8.8"))
        # A new run (after a crash) finds and removes what the first left.
        await MeshRoutes(self.runner, self.wire).clear()
        for version in ("-4", "-6"):
            self.assertNotIn(f"proto {P}", await self.ns("ip", version, "rule", "show"))
            self.assertEqual(await self.ns("ip", version, "route", "show", "table", "all", "proto", P), "")
        self.assertIn(f"via 192.168.77.1 dev {self.lan}", await self.where("8.8.8.8"))
