"""The access policy for routed destinations: forwarding rules for subnet
routers (index), their wire format and the node's checks (protocol), and the
router's forward chain (nft text)."""

import json

from twisted.trial import unittest

from wire.node.router import InvalidRouterConfig, router_ruleset
from wire.policy import DirectoryNode, PolicyIndex, check_against, parse_policy
from wire.protocol import NetmapAnswer
from wire.protocol.errors import ProtocolError
from wire.protocol.filter import PortRange
from wire.protocol.routefilter import (
    ForwardRule,
    check_destinations,
    parse_route_filter,
    resolve_forward_peers,
    route_filter_json,
)
from tests.helpers import settled

LAN = "192.168.1.0/24"


def node(node_id, name, ip, *tags, routes=()):
    return DirectoryNode(node_id, name, ip, frozenset(tags), tuple(routes))


DIRECTORY = [
    node("n-web", "web1", "10.99.0.1", "tag:web"),
    node("n-other", "other", "10.99.0.2"),
    node("n-alice", "alice", "10.99.0.4"),
    node("n-ci", "ci1", "10.99.0.5", "tag:ci"),
    node("n-router", "router", "10.99.0.10", "tag:router", routes=(LAN, "10.20.0.0/16")),
    node("n-exit", "exit1", "10.99.0.11", "tag:exit", routes=("0.0.0.0/0", "::/0")),
]


def index(acls, directory=DIRECTORY, **extra):
    body = {
        "groups": {"group:ops": ["alice", "tag:ci"]},
        "hosts": {"nas": "192.168.1.10", "lab": "10.20.8.0/24", "far": "172.16.0.0/12"},
        "tagOwners": {"tag:web": [], "tag:router": [], "tag:exit": [], "tag:ci": []},
        "acls": list(acls),
        **extra,
    }
    policy = parse_policy(json.dumps(body))
    check_against(policy, directory)
    return PolicyIndex(policy, directory)


def accept(src, dst, proto=None):
    rule = {"action": "accept", "src": src, "dst": dst}
    if proto:
        rule["proto"] = proto
    return rule


class ForwardingRulesTests(unittest.SynchronousTestCase):
    def test_an_address_and_port_in_a_routed_prefix(self) -> None:
        built = index([accept(["tag:web"], ["192.168.1.10:443"])])
        self.assertEqual(
            built.route_filter_for("n-router"),
            (ForwardRule(("192.168.1.10/32",), peers=("tag:web",), ports=(PortRange(443, 443),), rules=(0,)),),
        )

    def test_a_routed_destination_makes_source_and_router_peers_and_no_one_else(self) -> None:
        built = index([accept(["tag:web"], ["192.168.1.10:443"])])
        self.assertIn("n-router", built.peers_of("n-web"))
        self.assertIn("n-web", built.peers_of("n-router"))
        self.assertNotIn("n-router", built.peers_of("n-other"))
        self.assertNotIn("n-exit", built.peers_of("n-web"))  # a network inside an exit route: not the exit's
        # Forwarding through the router is not reaching it: its own filter lets no one in.
        self.assertEqual(built.filter_for("n-router"), ())
        self.assertFalse(built.may_reach("n-web", "n-router"))

    def test_a_hosts_entry_with_ports_and_proto(self) -> None:
        built = index([accept(["other"], ["nas:80,8000-8080"], proto="tcp")])
        self.assertEqual(
            built.route_filter_for("n-router"),
            (ForwardRule(("192.168.1.10/32",), proto="tcp", peers=("other",),
                         ports=(PortRange(80, 80), PortRange(8000, 8080)), rules=(0,)),),
        )

    def test_a_wider_network_is_cut_to_the_routes_and_a_narrower_route_kept_whole(self) -> None:
        built = index([accept(["tag:web"], ["192.168.0.0/16:22", "lab:*"])])
        self.assertEqual(
            built.route_filter_for("n-router"),
            (ForwardRule(("10.20.8.0/24",), peers=("tag:web",), rules=(0,)),
             ForwardRule(("192.168.1.0/24",), peers=("tag:web",), ports=(PortRange(22, 22),), rules=(0,))),
        )

    def test_groups_and_networks_as_sources_and_rules_merged(self) -> None:
        built = index([
            accept(["group:ops"], ["192.168.1.10:443"]),
            accept(["10.99.0.2", "tag:web"], ["nas:443"]),
        ])
        self.assertEqual(
            built.route_filter_for("n-router"),
            (ForwardRule(("192.168.1.10/32",), sources=("10.99.0.2/32",), peers=("alice", "tag:ci", "tag:web"),
                         ports=(PortRange(443, 443),), rules=(0, 1)),),
        )
        self.assertIn("n-router", built.peers_of("n-alice"))
        self.assertIn("n-router", built.peers_of("n-ci"))

    def test_star_covers_every_route_exit_routes_too(self) -> None:
        built = index([accept(["tag:web"], ["*:*"])])
        self.assertEqual(
            built.route_filter_for("n-router"),
            (ForwardRule(("10.20.0.0/16", "192.168.1.0/24"), peers=("tag:web",), rules=(0,)),),
        )
        self.assertEqual(
            built.route_filter_for("n-exit"),
            (ForwardRule(("0.0.0.0/0", "::/0"), peers=("tag:web",), rules=(0,)),),
        )

    def test_an_exit_forwards_only_for_star(self) -> None:
        built = index([accept(["tag:web"], ["8.8.8.8:53", "10.99.0.2:22"])])
        self.assertEqual(built.route_filter_for("n-exit"), ())
        self.assertEqual(built.route_filter_for("n-router"), ())

    def test_no_rule_covering_the_routes_forwards_nothing(self) -> None:
        built = index([accept(["tag:web"], ["far:*", "other:22"])])
        self.assertEqual(built.route_filter_for("n-router"), ())
        self.assertNotIn("n-router", built.peers_of("n-web"))

    def test_no_policy_or_no_routes_no_forwarding_rules(self) -> None:
        self.assertIsNone(PolicyIndex(None, DIRECTORY).route_filter_for("n-router"))
        self.assertIsNone(index([accept(["*"], ["*:*"])]).route_filter_for("n-web"))

    def test_routes_approved_later_change_who_sees_the_router(self) -> None:
        before = [n for n in DIRECTORY if n.node_id != "n-router"] + [node("n-router", "router", "10.99.0.10", "tag:router")]
        built = index([accept(["tag:web"], ["192.168.1.10:443"])], directory=before)
        self.assertNotIn("n-router", built.peers_of("n-web"))
        self.assertIsNone(built.route_filter_for("n-router"))
        changed = built.with_node(node("n-router", "router", "10.99.0.10", "tag:router", routes=(LAN,)))
        self.assertIn("n-router", changed.peers_of("n-web"))
        self.assertEqual(len(changed.route_filter_for("n-router")), 1)
        self.assertNotIn("n-router", built.peers_of("n-web"))  # the old index is unchanged

    def test_explain_names_the_router(self) -> None:
        built = index([accept(["tag:web"], ["192.168.1.10:443"])])
        allowed = built.explain("web1", "192.168.1.10", 443)
        self.assertTrue(allowed.allowed)
        self.assertIn("routed by router (192.168.1.0/24)", allowed.reason)
        self.assertFalse(built.explain("web1", "192.168.1.10", 22).allowed)
        self.assertFalse(built.explain("other", "192.168.1.10", 443).allowed)
        self.assertIn("only exit node exit1", built.explain("web1", "8.8.8.8", 53).reason)


class WireFormatTests(unittest.SynchronousTestCase):
    RULE = ForwardRule(("192.168.1.10/32",), sources=("10.99.0.2/32",), peers=("tag:web",),
                       proto="tcp", ports=(PortRange(443, 443),), rules=(0,))

    def test_round_trip(self) -> None:
        self.assertEqual(parse_route_filter(route_filter_json((self.RULE,))), (self.RULE,))
        self.assertEqual(self.RULE.to_json()["destinations"], ["192.168.1.10/32"])

    def test_refusals(self) -> None:
        good = self.RULE.to_json()
        for bad, field in (
            ({**good, "destinations": []}, "destinations"),
            ({k: v for k, v in good.items() if k != "destinations"}, "destinations"),
            ({**good, "destinations": ["192.168.1.10/24"]}, "destinations"),
            ({**good, "destinations": ["nas"]}, "destinations"),
            ({**good, "destinations": [7]}, "destinations"),
            ({"destinations": ["192.168.1.0/24"]}, "sources"),
            ({**good, "proto": "sctp"}, "proto"),
        ):
            error = self.assertRaises(ProtocolError, parse_route_filter, [bad])
            self.assertIn(field, str(error))
        self.assertRaises(ProtocolError, parse_route_filter, {"destinations": []})

    def test_destinations_must_be_inside_the_advertised_routes(self) -> None:
        check_destinations((self.RULE,), ["10.0.0.0/8", LAN])
        check_destinations((ForwardRule(("8.8.8.8/32",), sources=("0.0.0.0/0",)),), ["0.0.0.0/0"])
        outside = ForwardRule(("192.168.2.0/24",), sources=("10.99.0.2/32",))
        error = self.assertRaises(ProtocolError, check_destinations, (self.RULE, outside), [LAN])
        self.assertIn("route_filter[1].destinations", str(error))
        self.assertIn("192.168.2.0/24 is outside the routes this node advertises (192.168.1.0/24)", str(error))
        wider = ForwardRule(("192.168.0.0/16",), sources=("10.99.0.2/32",))
        self.assertRaises(ProtocolError, check_destinations, (wider,), [LAN])

    def test_the_answer_key(self) -> None:
        base = {"cursor": "e:1", "full": True, "upserts": [], "removals": []}
        absent = NetmapAnswer.from_json(base)
        self.assertFalse(absent.route_filter_given or absent.route_filter_refused)
        null = NetmapAnswer.from_json({**base, "route_filter": None})
        self.assertTrue(null.route_filter_given)
        self.assertIsNone(null.route_filter)
        given = NetmapAnswer.from_json({**base, "route_filter": route_filter_json((self.RULE,))})
        self.assertEqual(given.route_filter, (self.RULE,))
        self.assertEqual(given.filter, None)
        self.assertFalse(given.filter_given)  # never taken for the filter of traffic to the node
        bad = NetmapAnswer.from_json({**base, "route_filter": [{"destinations": ["x"], "sources": ["10.0.0.1"]}]})
        self.assertTrue(bad.route_filter_refused)
        self.assertFalse(bad.route_filter_given)
        self.assertTrue(any("forwarding filter" in s for s in bad.skipped))

    def test_peers_resolved_to_mesh_addresses(self) -> None:
        peers = [("web1", ("tag:web",), ("10.99.0.1", "fd7a::1")), ("other", (), ("10.99.0.2",))]
        resolved = resolve_forward_peers((self.RULE, ForwardRule((LAN,), peers=("tag:nobody",))), peers)
        self.assertEqual(
            resolved,
            (ForwardRule(("192.168.1.10/32",), sources=("10.99.0.1/32", "10.99.0.2/32", "fd7a::1/128"),
                         proto="tcp", ports=(PortRange(443, 443),), rules=(0,)),),
        )


HEAD = """\
add table inet wire_wire0_route
delete table inet wire_wire0_route
table inet wire_wire0_route {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
"""
MESH = ("100.64.0.0/10", "fd7a:115c:a1e0::/48")


class ForwardChainTests(unittest.SynchronousTestCase):
    def text(self, prefixes, forwarding):
        return router_ruleset("wire_wire0_route", "wire0", prefixes, snat=True, mesh_subnets=MESH, forwarding=forwarding)

    def forward_lines(self, text):
        self.assertTrue(text.startswith(HEAD))
        return text[len(HEAD):].split("\t}\n")[0].strip("\n").replace("\t\t", "").split("\n")

    def test_rules_replace_accept_everything(self) -> None:
        rules = (
            ForwardRule(("192.168.1.10/32",), sources=("100.64.0.1/32", "fd7a:115c:a1e0::1/128"), proto="tcp",
                        ports=(PortRange(443, 443),)),
            ForwardRule(("192.168.1.0/24",), sources=("100.64.0.2/32",), ports=(PortRange(53, 53),)),
            ForwardRule(("192.168.1.20/32",), sources=("0.0.0.0/0",), proto="icmp"),
        )
        text = self.text([LAN], rules)
        self.assertEqual(self.forward_lines(text), [
            'iifname "wire0" ip saddr { 100.64.0.1/32 } ip daddr { 192.168.1.10/32 } tcp dport { 443 } accept',
            'iifname "wire0" ip saddr { 100.64.0.2/32 } ip daddr { 192.168.1.0/24 } meta l4proto { tcp, udp } th dport { 53 } accept',
            'iifname "wire0" meta nfproto ipv4 ip daddr { 192.168.1.20/32 } meta l4proto icmp accept',
            'iifname "wire0" ct status dnat accept',
            'iifname "wire0" drop',
        ])
        # Masquerade as without a policy.
        self.assertIn('ip saddr { 100.64.0.0/10 } ip daddr { 192.168.1.0/24 } oifname != "wire0" masquerade', text)

    def test_no_rules_forward_nothing_from_the_mesh(self) -> None:
        self.assertEqual(self.forward_lines(self.text([LAN], ())), ['iifname "wire0" ct status dnat accept', 'iifname "wire0" drop'])

    def test_no_policy_forwards_everything_as_before(self) -> None:
        self.assertEqual(self.forward_lines(self.text([LAN], None))[0], 'iifname "wire0" ip daddr { 192.168.1.0/24 } accept')

    def test_exit_under_a_policy(self) -> None:
        rules = (ForwardRule(("0.0.0.0/0", "::/0"), sources=("100.64.0.1/32", "fd7a:115c:a1e0::1/128")),)
        text = self.text(["0.0.0.0/0", "::/0"], rules)
        self.assertEqual(self.forward_lines(text)[:2], [
            'iifname "wire0" ip saddr { 100.64.0.1/32 } accept',
            'iifname "wire0" ip6 saddr { fd7a:115c:a1e0::1/128 } accept',
        ])
        self.assertIn('ip saddr { 100.64.0.0/10 } oifname != "wire0" masquerade', text)

    def test_refused(self) -> None:
        self.assertRaises(InvalidRouterConfig, self.text, [LAN], (ForwardRule(("192.168.2.0/24",), sources=("100.64.0.1/32",)),))
        self.assertRaises(InvalidRouterConfig, self.text, [LAN], (ForwardRule((LAN,), peers=("tag:web",)),))


class ServerTests(unittest.TestCase):
    """The coordinator's answers: ``route_filter`` for a router that asks, under a policy."""

    POLICY = json.dumps({
        "tagOwners": {"tag:web": [], "tag:router": []},
        "acls": [
            {"action": "accept", "src": ["tag:web"], "dst": ["192.168.1.10:443"]},
            {"action": "accept", "src": ["other"], "dst": ["tag:router:22"]},
        ],
    })

    def setUp(self):
        from twisted.internet.defer import Deferred

        from tests.helpers import registration_for
        from tests.test_policy_server import Mesh

        self.mesh = Mesh(self)
        for name, tags in (("web1", ("tag:web",)), ("other", ())):
            self.mesh.enroll(name, *tags)
        _, secret = settled(self.mesh.authority.create_key(tags=("tag:router",)))
        d = Deferred.fromCoroutine(self.mesh.coordinator.enroll(
            secret, registration_for("router", advertise_routes=[LAN]), "203.0.113.9"))
        self.mesh.ids["router"] = self.successResultOf(d)[0].record.node_id
        settled(self.mesh.admin.approve_route("router", LAN))

    def poll(self, name, holds_route_filter):
        from wire.protocol import Cursor

        d = self.mesh.coordinator.netmap(str(Cursor("x", 0)), 0, self.mesh.ids[name], holds_route_filter=holds_route_filter)
        return json.loads(json.dumps(dict(self.successResultOf(d))))

    def test_no_policy_no_route_filter(self):
        self.assertNotIn("route_filter", self.poll("router", "none"))

    def test_a_router_gets_its_rules_once_and_older_nodes_never(self):
        from wire.protocol.filter import filter_digest

        settled(self.mesh.admin.set_policy(self.POLICY))
        answer = self.poll("router", "none")
        self.assertEqual(answer["route_filter"], [
            {"destinations": ["192.168.1.10/32"], "peers": ["tag:web"], "ports": [[443, 443]], "rules": [0]},
        ])
        # The router's own filter (traffic to it) holds only what reaches it.
        self.assertEqual([r.get("peers") for r in answer["filter"]], [["other"]])
        # Web and router see each other; other sees the router (rule 1), not via the LAN rule.
        self.assertIn(self.mesh.ids["web1"], {u["node_id"] for u in answer["upserts"]})
        web = self.poll("web1", "none")
        self.assertIn(self.mesh.ids["router"], {u["node_id"] for u in web["upserts"]})
        self.assertEqual(web["route_filter"], [], "a policy and no served routes: forward nothing (never everything)")
        self.assertNotIn("route_filter", self.poll("router", filter_digest(answer["route_filter"])))
        self.assertNotIn("route_filter", self.poll("router", None))  # a node that never asks
        # The policy goes: the router is told to forward as before.
        settled(self.mesh.admin.clear_policy())
        self.assertIsNone(self.poll("router", filter_digest(answer["route_filter"]))["route_filter"])

    def test_rejecting_the_route_takes_the_router_out_of_view(self):
        settled(self.mesh.admin.set_policy(self.POLICY))
        web = self.mesh.ids["web1"]
        self.assertTrue(self.mesh.coordinator.may_see(web, self.mesh.ids["router"]))
        settled(self.mesh.admin.reject_route("router", LAN))
        self.assertFalse(self.mesh.coordinator.may_see(web, self.mesh.ids["router"]))
        # Its table is built from what it advertises: it must forward nothing, not everything.
        self.assertEqual(self.poll("router", "none")["route_filter"], [])


class RecordingRouter:
    def __init__(self):
        self.applied = []

    async def apply(self, prefixes, *, snat=True, mesh_subnets, forwarding=None):
        self.applied.append((tuple(prefixes), forwarding))
        return True

    async def clear(self):
        self.applied.append(((), None))


class NodeTests(unittest.TestCase):
    """The node: the netmap keeps the forwarding filter, the routing checks it
    against what this node advertises and fails closed."""

    def routing(self, **settings):
        from twisted.internet.task import Clock

        from wire.node.config import NodeConfig
        from wire.node.routing import NodeRouting

        config = NodeConfig(server_url="https://203.0.113.5:8787", node_name="router", node_id="a" * 32, advertise_routes=(LAN,), **settings)
        routing = NodeRouting(Clock(), None, "wire0", "/nonexistent", lambda: config)
        routing.router = RecordingRouter()  # type: ignore[assignment]
        return routing

    def set(self, routing, rules, problem=None):
        from twisted.internet.defer import ensureDeferred

        self.successResultOf(ensureDeferred(routing.set_forwarding(rules, problem)))

    def test_rules_inside_the_advertised_routes_are_applied(self):
        routing = self.routing()
        rules = (ForwardRule(("192.168.1.10/32",), sources=("10.99.0.1/32",)),)
        self.set(routing, rules)
        self.set(routing, rules)  # the same again: nothing to do
        self.set(routing, None)
        self.assertEqual(routing.router.applied, [((LAN,), rules), ((LAN,), None)])
        self.assertIsNone(routing.forwarding_problem)

    def test_a_destination_outside_is_refused_whole_and_nothing_forwarded(self):
        routing = self.routing()
        rules = (ForwardRule(("192.168.1.10/32",), sources=("10.99.0.1/32",)),
                 ForwardRule(("10.0.0.0/8",), sources=("10.99.0.1/32",)))
        self.set(routing, rules)
        self.assertEqual(routing.router.applied, [((LAN,), ())])
        self.assertIn("10.0.0.0/8 is outside the routes this node advertises (192.168.1.0/24)", routing.forwarding_problem)
        self.assertIn("forwarding_problem", routing.status())

    def test_before_the_first_netmap_nothing_new_is_forwarded(self):
        from twisted.internet.defer import ensureDeferred

        routing = self.routing()
        self.successResultOf(ensureDeferred(routing.advertise()))
        self.set(routing, None)  # no policy, once the server said so: everything
        self.assertEqual(routing.router.applied, [((LAN,), ()), ((LAN,), None)])

    def test_unreadable_forwards_nothing(self):
        routing = self.routing()
        self.set(routing, None, "unreadable")
        self.assertEqual(routing.router.applied, [((LAN,), ())])

    def test_a_node_that_advertises_nothing_runs_nothing(self):
        from dataclasses import replace

        routing = self.routing()
        config = replace(routing._config(), advertise_routes=())
        routing._config = lambda: config
        self.set(routing, ())
        self.assertEqual(routing.router.applied, [])

    def test_the_netmap_keeps_it_and_its_digest(self):
        from wire.node.netmap import NodeNetmap
        from wire.protocol.routefilter import route_filter_digest

        netmap = NodeNetmap("me")
        self.assertEqual(netmap.route_filter_digest, "none")
        base = {"cursor": "e:1", "full": True, "upserts": [], "removals": []}
        rule = ForwardRule(("192.168.1.10/32",), sources=("10.99.0.1/32",))
        netmap.apply(NetmapAnswer.from_json({**base, "route_filter": route_filter_json((rule,))}))
        self.assertEqual((netmap.route_filter, netmap.route_filter_digest), ((rule,), route_filter_digest((rule,))))
        problems = netmap.apply(NetmapAnswer.from_json({**base, "route_filter": [{}]}))
        self.assertTrue(netmap.route_filter_unreadable)
        self.assertTrue(any("forwarding filter" in p for p in problems))
        netmap.apply(NetmapAnswer.from_json({**base, "route_filter": None}))
        self.assertEqual((netmap.route_filter, netmap.route_filter_unreadable, netmap.route_filter_digest), (None, False, "none"))


class TellingTests(unittest.SynchronousTestCase):
    def test_wire_status_names_a_forwarding_problem(self):
        from wire.ops.troubles import daemon_troubles

        self.assertEqual(daemon_troubles({"routing": {"forwarding_problem": "refused"}}), ["routes: refused"])

    def test_wire_explain_names_the_router_of_an_address(self):
        from wire.ops.explain import routed_by

        nodes = [{"node_name": "gw1", "routes": ["192.168.0.0/16"]}, {"node_name": "gw2", "routes": [LAN]}, {"node_name": "web1"}]
        self.assertEqual(routed_by("192.168.1.10", nodes), ("gw2", LAN))
        self.assertEqual(routed_by("192.168.7.1", nodes), ("gw1", "192.168.0.0/16"))
        self.assertIsNone(routed_by("10.0.0.1", nodes))
        self.assertIsNone(routed_by("web1", nodes))


class ExitDnsTests(unittest.TestCase):
    """An exit node opens its mesh DNS to those the policy lets use the exit:
    their nodes ask it for names beyond the mesh while they use the exit."""

    EXIT_RULE = ForwardRule(("0.0.0.0/0", "::/0"), peers=("tag:web",), proto="tcp", ports=(PortRange(443, 443),), rules=(2,))
    LAN_RULE = ForwardRule(("192.168.1.10/32",), sources=("10.99.0.1/32",), rules=(1,))

    def test_only_the_exits_users_get_its_dns_port(self):
        from wire.protocol.filter import FilterRule
        from wire.protocol.routefilter import exit_dns_rules

        dns = (PortRange(53, 53),)
        self.assertEqual(
            exit_dns_rules((self.LAN_RULE, self.EXIT_RULE)),
            (
                FilterRule(proto="udp", ports=dns, peers=("tag:web",), rules=(2,)),
                FilterRule(proto="tcp", ports=dns, peers=("tag:web",), rules=(2,)),
            ),
        )
        self.assertEqual(exit_dns_rules((self.LAN_RULE,)), ())
        self.assertEqual(exit_dns_rules(None), ())

    def test_the_reconciler_adds_them_only_on_a_node_that_offers_an_exit(self):
        from types import SimpleNamespace

        from wire.node.reconciler import Reconciler
        from wire.protocol.filter import FilterRule

        own = (FilterRule(sources=("10.99.0.5/32",), proto="tcp", ports=(PortRange(22, 22),)),)
        reconciler = Reconciler.__new__(Reconciler)
        reconciler._exit_dns = None
        reconciler.netmap = SimpleNamespace(filter=own, route_filter=(self.EXIT_RULE,))
        offers = [True]
        reconciler.routing = SimpleNamespace(offers_exit=lambda: offers[0])
        combined = reconciler._filter_with_exit_dns()
        self.assertEqual(combined[:1], own)
        self.assertEqual([(r.proto, r.ports, r.peers) for r in combined[1:]],
                         [("udp", (PortRange(53, 53),), ("tag:web",)), ("tcp", (PortRange(53, 53),), ("tag:web",))])
        self.assertIs(reconciler._filter_with_exit_dns(), combined, "the same tuple while nothing changed: cached")
        offers[0] = False
        self.assertEqual(reconciler._filter_with_exit_dns(), own, "not an exit: its own filter alone")
        reconciler.netmap = SimpleNamespace(filter=None, route_filter=(self.EXIT_RULE,))
        self.assertIsNone(reconciler._filter_with_exit_dns(), "no policy: no filter")


class ReviewedTests(NodeTests):
    """Cases a review found: a refused set told once; wire down forgets what was allowed."""

    def test_a_refused_set_is_told_once_not_at_every_reconcile(self):
        from twisted.logger import globalLogPublisher

        errors = []

        def observe(event):
            if event.get("log_level") is not None and event["log_level"].name == "error":
                errors.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        routing = self.routing()
        rules = (ForwardRule(("10.0.0.0/8",), sources=("10.99.0.1/32",)),)
        for _ in range(5):  # five reconciles with the same netmap
            self.set(routing, rules)
        self.assertEqual(len(errors), 1)
        self.assertEqual(len(routing.router.applied), 1, "checked and applied once")
        self.assertIn("10.0.0.0/8 is outside", routing.forwarding_problem)

    def test_wire_down_then_up_forwards_nothing_until_the_first_netmap(self):
        from twisted.internet.defer import ensureDeferred

        routing = self.routing()
        self.set(routing, None)  # no policy: everything

        class NoRoutes:
            async def clear(self):
                pass

        routing.routes = NoRoutes()  # type: ignore[assignment]
        self.successResultOf(ensureDeferred(routing.clear()))
        self.successResultOf(ensureDeferred(routing.advertise()))
        self.assertEqual(routing.router.applied[-1], ((LAN,), ()), "closed until told")


class WakeTests(unittest.TestCase):
    def test_a_policy_change_wakes_each_router_whose_own_forwarding_changed(self):
        from types import SimpleNamespace

        from wire.server.coordinator import Coordinator

        directory = [
            node("n-web", "web1", "10.99.0.1", "tag:web"),
            node("r1", "r1", "10.99.0.10", "tag:router", routes=("192.168.1.0/24", "192.168.2.0/24")),
            node("r2", "r2", "10.99.0.11", "tag:router", routes=("192.168.1.0/24",)),
        ]

        def index(dst):
            policy = parse_policy(json.dumps({"tagOwners": {"tag:web": [], "tag:router": []},
                                              "acls": [{"action": "accept", "src": ["tag:web"], "dst": [dst]}]}))
            check_against(policy, directory)
            return PolicyIndex(policy, directory)

        before, now = index("192.168.0.0/16:443"), index("192.168.1.0/24:443")
        coordinator = SimpleNamespace(policy=SimpleNamespace(index=now), _filter_of=Coordinator._filter_of)
        compared: dict = {}
        woken = {viewer: Coordinator._view_changed(coordinator, viewer, before, compared) for viewer in ("r2", "r1")}
        self.assertEqual(woken, {"r2": False, "r1": True}, "r1 lost 192.168.2.0/24, whatever order the polls come in")
