import json

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from wire.policy import DirectoryNode, PolicyError, PolicyIndex, check_against, parse_policy
from wire.protocol.filter import FilterRule, PortRange, parse_filter_rules, resolve_peers


def node(node_id, name, ip, *tags):
    return DirectoryNode(node_id, name, ip, frozenset(tags))


DIRECTORY = [
    node("n-web1", "web1", "10.99.0.1", "tag:web"),
    node("n-web2", "web2", "10.99.0.2", "tag:web"),
    node("n-db1", "db1", "10.99.0.3", "tag:db"),
    node("n-alice", "alice", "10.99.0.4"),
    node("n-ci1", "ci1", "10.99.0.5", "tag:ci"),
    node("n-nas", "nasbox", "10.99.0.50"),
    node("n-lab", "labbox", "10.99.8.7"),
    node("n-v6", "six", ("10.99.0.9", "fd7a::9"), "tag:web", "tag:db"),
]

BASE = {
    "groups": {"group:ops": ["alice", "tag:ci"]},
    "hosts": {"nas": "10.99.0.50", "lab": "10.99.8.0/24", "six6": "fd7a::9"},
    "tagOwners": {"tag:web": [], "tag:db": [], "tag:ci": []},
}


def policy_text(acls, tests=(), **extra):
    body = dict(BASE, acls=list(acls), **extra)
    if tests:
        body["tests"] = list(tests)
    return json.dumps(body)


def accept(src, dst, proto=None):
    rule = {"action": "accept", "src": src, "dst": dst}
    if proto:
        rule["proto"] = proto
    return rule


def index(acls, directory=DIRECTORY):
    policy = parse_policy(policy_text(acls))
    check_against(policy, directory)
    return PolicyIndex(policy, directory)


class ExplainTests(unittest.TestCase):
    """Each case: the rules, then (src, dst, port, proto, the index of the rule that accepts or None)."""

    cases = [
        ([accept(["tag:web"], ["tag:db:5432"], "tcp")], [
            ("web1", "db1", 5432, "tcp", 0), ("web1", "db1", 22, "tcp", None), ("web1", "db1", 5432, "udp", None),
            ("db1", "web1", 5432, "tcp", None), ("six", "db1", 5432, "tcp", 0), ("alice", "db1", 5432, "tcp", None)]),
        ([accept(["group:ops"], ["*:22"])], [  # a group of a node and a tag; no proto: tcp and udp
            ("alice", "db1", 22, "tcp", 0), ("ci1", "web2", 22, "udp", 0), ("ci1", "web2", 22, "icmp", None),
            ("web1", "db1", 22, "tcp", None), ("alice", "db1", 23, "tcp", None)]),
        ([accept(["*"], ["*:*"])], [  # everything, every protocol
            ("web1", "db1", 1, "tcp", 0), ("web1", "db1", None, "icmp", 0), ("10.1.2.3", "db1", 9, "udp", 0)]),
        ([accept(["lab"], ["nas:80,443"], "tcp")], [  # hosts: a CIDR source, an address destination
            ("labbox", "nasbox", 443, "tcp", 0), ("10.99.8.200", "10.99.0.50", 80, "tcp", 0),
            ("labbox", "nasbox", 81, "tcp", None), ("web1", "nasbox", 80, "tcp", None)]),
        ([accept(["10.99.0.0/30"], ["10.99.0.0/16:8000-8999,22"], "udp")], [
            ("web1", "alice", 8500, "udp", 0), ("web1", "alice", 22, "udp", 0), ("web1", "alice", 9000, "udp", None),
            ("ci1", "alice", 8000, "udp", None), ("web1", "alice", 8500, "tcp", None)]),
        ([accept(["tag:ci"], ["tag:web:*"], "icmp")], [
            ("ci1", "web1", None, "icmp", 0), ("ci1", "web1", 22, "tcp", None)]),
        ([accept(["tag:web"], ["db1:22"], "tcp"), accept(["web1"], ["tag:db:*"])], [  # overlapping: the first wins
            ("web1", "db1", 22, "tcp", 0), ("web1", "db1", 23, "tcp", 1), ("web2", "db1", 23, "tcp", None),
            ("web1", "six", None, "icmp", 1)]),
        ([accept(["*"], ["[fd7a::9]:22", "six6:80"], "tcp")], [  # IPv6 in brackets and as a host
            ("web1", "six", 22, "tcp", 0), ("web1", "fd7a::9", 80, "tcp", 0), ("web1", "six", 81, "tcp", None)]),
        ([accept(["fd7a::/64"], ["fd7a::/48:443"], "tcp")], [
            ("six", "six", 443, "tcp", 0), ("web1", "six", 443, "tcp", None)]),
    ]

    def test_cases(self):
        for acls, questions in self.cases:
            built = index(acls)
            for src, dst, port, proto, rule in questions:
                decision = built.explain(src, dst, port, proto)
                self.assertEqual((decision.allowed, decision.rule_index), (rule is not None, rule),
                                 f"{acls}: {src} -> {dst}:{port}/{proto}")
                if rule is not None:
                    self.assertEqual(json.loads(decision.rule_text), acls[rule])
                    self.assertEqual(decision.reason, f"accepted by acls[{rule}]")

    def test_no_policy_allows_everything(self):
        built = PolicyIndex.open(DIRECTORY)
        self.assertTrue(built.explain("web1", "db1", 22).allowed)
        self.assertTrue(built.may_reach("n-db1", "n-web1"))
        self.assertEqual(built.peers_of("n-db1"), frozenset(n.node_id for n in DIRECTORY))
        self.assertEqual(built.filter_for("n-db1"), (FilterRule(sources=("0.0.0.0/0", "::/0")),))

    def test_unknown_endpoint(self):
        with self.assertRaises(PolicyError) as caught:
            index([]).explain("nobody", "db1", 22)
        self.assertIn("unknown node 'nobody'", str(caught.exception))

    def test_empty_acls_deny_everything(self):
        built = index([])
        self.assertFalse(built.explain("web1", "db1", 22).allowed)
        self.assertEqual(built.peers_of("n-web1"), frozenset())
        self.assertEqual(built.filter_for("n-web1"), ())


class ParseErrorTests(unittest.TestCase):
    def test_every_error_names_where(self):
        cases = [
            ([], {"acl": []}, 'policy: unknown key "acl" (did you mean "acls"?)'),
            ([{"action": "accept", "src": ["*"], "dst": ["*:*"], "dsts": []}], {}, 'acls[0]: unknown key "dsts" (did you mean "dst"?)'),
            ([{"action": "deny", "src": ["*"], "dst": ["*:*"]}], {}, 'acls[0].action: must be "accept"'),
            ([{"action": "accept", "dst": ["*:*"]}], {}, "acls[0]: src is missing"),
            ([accept([], ["*:*"])], {}, "acls[0].src: must name at least one source"),
            ([accept(["*"], [])], {}, "acls[0].dst: must name at least one destination"),
            ([accept(["*"], "*:*")], {}, "acls[0].dst: must be a list"),
            ([accept(["*"], ["*:*"], "sctp")], {}, "acls[0].proto: must be one of tcp, udp, icmp"),
            ([accept(["*"], ["*:*"]), accept(["*"], ["nas:22", "db1:70000"])], {}, "acls[1].dst[1]: port 70000 is out of range (0-65535)"),
            ([accept(["*"], ["db1:90-80"])], {}, 'acls[0].dst[0]: range "90-80" runs backwards'),
            ([accept(["*"], ["db1:http"])], {}, 'acls[0].dst[0]: "http" is not a port'),
            ([accept(["*"], ["db1:22,"])], {}, 'acls[0].dst[0]: "" is not a port'),
            ([accept(["*"], ["db1"])], {}, 'acls[0].dst[0]: "db1" needs ports'),
            ([accept(["*"], ["tag:db"])], {}, 'acls[0].dst[0]: "tag:db" needs ports'),
            ([accept(["*"], ["fd7a::1:22"])], {}, "acls[0].dst[0]: write an IPv6 address in brackets, such as [fd7a::1]:22"),
            ([accept(["*"], ["db1:22"], "icmp")], {}, "acls[0].dst[0]: icmp has no ports; write db1:*"),
            ([accept(["group:opz"], ["*:*"])], {}, 'acls[0].src[0]: unknown group "group:opz" (did you mean "group:ops"?)'),
            ([accept(["Web_1"], ["*:*"])], {}, 'acls[0].src[0]: "Web_1" is not a valid node name'),
            ([accept(["tag:"], ["*:*"])], {}, 'acls[0].src[0]: "" is not a valid tag name'),
            ([accept(["10.99.0.1/24"], ["*:*"])], {}, 'acls[0].src[0]: "10.99.0.1/24" has host bits set (did you mean 10.99.0.0/24?)'),
            ([accept(["10.99.0.300"], ["*:*"])], {}, 'acls[0].src[0]: "10.99.0.300" is not an address or network'),
            ([], {"groups": {"group:a": ["group:ops"]}}, 'groups["group:a"][0]: groups cannot contain groups'),
            ([], {"groups": {"group:a": ["alice", "nas"]}}, 'groups["group:a"][1]: a group holds node names and tags only, not "nas"'),
            ([], {"groups": {"group:a": ["10.0.0.1"]}}, "a group holds node names and tags only"),
            ([], {"groups": {"ops": []}}, 'groups["ops"]: a group\'s name starts with "group:"'),
            ([], {"hosts": {"nas": "nas.example"}}, 'hosts["nas"]: "nas.example" is not an address or network'),
            ([], {"hosts": {"tag:x": "10.0.0.1"}}, 'hosts["tag:x"]: a host name is a plain name'),
            ([], {"tagOwners": {"db": []}}, 'tagOwners["db"]: a tagOwners key is a tag'),
            ([], {"tests": [{"src": "web1"}]}, "tests[0]: needs accept or deny"),
            ([], {"tests": [{"src": "*", "accept": ["db1:22"]}]}, 'tests[0].src: a test names a node, tag, host or address, not "*"'),
            ([], {"tests": [{"src": "web1", "accept": ["db1:22-23"]}]}, "tests[0].accept[0]: a test names one port, such as db1:22"),
            ([], {"tests": [{"src": "lab", "accept": ["db1:22"]}]}, "tests[0].src: a test names one address, not the network 10.99.8.0/24"),
            ([], {"tests": [{"src": "web1", "acept": ["db1:22"]}]}, 'tests[0]: unknown key "acept" (did you mean "accept"?)'),
            ([], {"acls": {}}, "acls: must be a list"),
        ]
        for acls, extra, message in cases:
            body = dict(BASE, acls=acls)
            body.update(extra)
            with self.assertRaises(PolicyError, msg=message) as caught:
                parse_policy(json.dumps(body))
            self.assertIn(message, str(caught.exception))

    def test_top_level_must_be_an_object(self):
        self.assertRaises(PolicyError, parse_policy, "[]")

    def test_syntax_errors_name_line_and_column(self):
        with self.assertRaises(PolicyError) as caught:
            parse_policy('{\n  "acls": [\n    {"action": "accept" "src": ["*"]}\n  ]\n}')
        self.assertEqual(str(caught.exception), "policy line 3, column 25: expected ',' or '}', found '\"'")

    def test_ports_are_sorted_and_merged(self):
        policy = parse_policy(policy_text([accept(["*"], ["db1:443,22,80-90,85-100,101"])]))
        self.assertEqual(policy.rules[0].destinations[0].ports, (PortRange(22, 22), PortRange(80, 101), PortRange(443, 443)))

    def test_names_and_tags_are_matched_in_lower_case(self):
        built = index([accept(["TAG:Web"], ["DB1:22"])])
        self.assertTrue(built.explain("WEB1", "db1", 22).allowed)


class CheckAgainstTests(unittest.TestCase):
    def check(self, acls, tests=(), known_tags=(), **extra):
        check_against(parse_policy(policy_text(acls, tests, **extra)), DIRECTORY, known_tags)

    def test_directory_errors(self):
        cases = [
            ([accept(["*"], ["nass:80"])], {}, 'acls[0].dst[0]: unknown node or host "nass" (did you mean "nas"?)'),
            ([accept(["web9"], ["*:*"])], {}, 'acls[0].src[0]: unknown node or host "web9" (did you mean "web'),
            ([accept(["tag:dbb"], ["*:*"])], {}, 'acls[0].src[0]: "tag:dbb" is not declared in tagOwners and no node carries it'),
            ([], {"groups": {"group:x": ["bob"]}}, 'groups["group:x"][0]: unknown node or host "bob"'),
        ]
        for acls, extra, message in cases:
            with self.assertRaises(PolicyError, msg=message) as caught:
                self.check(acls, **extra)
            self.assertIn(message, str(caught.exception))

    def test_tags_known_by_nodes_join_keys_or_tag_owners(self):
        self.check([accept(["tag:web"], ["tag:db:*"])], tagOwners={})  # carried by nodes
        self.check([accept(["tag:new"], ["*:*"])], tagOwners={"tag:new": []})
        self.check([accept(["tag:soon"], ["*:*"])], known_tags=["tag:soon"], tagOwners={})

    def test_tests_that_hold(self):
        self.check([accept(["tag:web"], ["tag:db:5432"], "tcp"), accept(["*"], ["*:*"], "icmp")], [
            {"src": "web1", "accept": ["db1:5432"], "deny": ["db1:22", "alice:5432"]},
            {"src": "tag:web", "proto": "udp", "deny": ["db1:5432"]},
            {"src": "10.99.0.2", "accept": ["10.99.0.3:5432"]},
            {"src": "nas", "proto": "icmp", "accept": ["web1:*"], "deny": []},
            {"src": "10.1.2.3", "deny": ["db1:5432"]},  # an address that is no node
        ])

    def test_tag_with_no_node_yet_is_tested_as_itself(self):
        self.check([accept(["tag:future"], ["db1:22"])], [{"src": "tag:future", "accept": ["db1:22"]}],
                   tagOwners={"tag:future": []})

    def test_failing_tests_are_named(self):
        acls = [accept(["tag:web"], ["tag:db:*"], "tcp")]
        cases = [
            ({"src": "web1", "accept": ["db1:5432"], "deny": ["db1:22"]},
             "tests[1]: web1 -> db1:22/tcp is accepted by acls[0], expected denied"),
            ({"src": "web1", "proto": "udp", "accept": ["db1:53"]},
             "tests[1]: web1 -> db1:53/udp is denied (no rule accepts it), expected accepted"),
            ({"src": "tag:web", "accept": ["alice:22"]},
             "tests[1]: web1 -> alice:22/tcp is denied (no rule accepts it), expected accepted"),
            ({"src": "alice", "proto": "icmp", "accept": ["db1:*"]},
             "tests[1]: alice -> db1/icmp is denied (no rule accepts it), expected accepted"),
        ]
        for test, message in cases:
            with self.assertRaises(PolicyError) as caught:
                self.check(acls, [{"src": "web2", "accept": ["db1:1"]}, test])
            self.assertEqual(str(caught.exception), message)


class IndexTests(unittest.TestCase):
    def test_filter_for_content(self):
        built = index([
            accept(["tag:web"], ["tag:db:5432"], "tcp"),
            accept(["group:ops"], ["tag:db:22", "tag:db:80,443"], "tcp"),  # same sources: one rule, ports joined
            accept(["lab", "alice"], ["db1:*"], "icmp"),
            accept(["ci1"], ["tag:db:22"], "tcp"),  # same kind as rule 1's: sources merged
        ])
        # Networks as networks; tags and node names (groups expanded) as names the node resolves.
        self.assertEqual(built.filter_for("n-db1"), (
            FilterRule(sources=("10.99.8.0/24",), proto="icmp", peers=("alice",), rules=(2,)),
            FilterRule(proto="tcp", ports=(PortRange(22, 22),), peers=("alice", "ci1", "tag:ci"), rules=(1, 3)),
            FilterRule(proto="tcp", ports=(PortRange(80, 80), PortRange(443, 443)), peers=("alice", "tag:ci"), rules=(1,)),
            FilterRule(proto="tcp", ports=(PortRange(5432, 5432),), peers=("tag:web",), rules=(0,)),
        ))
        self.assertEqual(built.filter_for("n-alice"), ())
        # What the server sends, the node accepts.
        for n in DIRECTORY:
            rules = built.filter_for(n.node_id)
            self.assertEqual(parse_filter_rules([r.to_json() for r in rules]), rules)

    def test_any_source_is_everywhere(self):
        built = index([accept(["*"], ["alice:22"], "tcp")])
        self.assertEqual(built.filter_for("n-alice"), (FilterRule(sources=("0.0.0.0/0", "::/0"), proto="tcp", ports=(PortRange(22, 22),), rules=(0,)),))

    def test_same_sources_join_ports_and_rules(self):
        built = index([accept(["tag:web"], ["tag:db:22"], "tcp"), accept(["tag:web"], ["db1:80"], "tcp")])
        self.assertEqual(built.filter_for("n-db1"), (
            FilterRule(proto="tcp", ports=(PortRange(22, 22), PortRange(80, 80)), peers=("tag:web",), rules=(0, 1)),
        ))

    def test_peers_and_reach(self):
        built = index([accept(["tag:web"], ["tag:db:5432"], "tcp"), accept(["alice"], ["nas:22"])])
        self.assertTrue(built.may_reach("n-web1", "n-db1"))
        self.assertFalse(built.may_reach("n-db1", "n-web1"))
        self.assertEqual(built.peers_of("n-db1"), {"n-web1", "n-web2", "n-v6"})
        self.assertEqual(built.peers_of("n-web1"), {"n-db1", "n-v6"})
        self.assertEqual(built.peers_of("n-alice"), {"n-nas"})
        self.assertEqual(built.peers_of("n-nas"), {"n-alice"})
        self.assertEqual(built.peers_of("n-ci1"), frozenset())
        self.assertRaises(PolicyError, built.peers_of, "n-nobody")

    def test_classes_share_peers_and_filters(self):
        many = DIRECTORY + [node(f"n-w{i}", f"w{i}", f"10.99.1.{i}", "tag:web") for i in range(1, 50)]
        built = index([accept(["tag:web"], ["tag:db:5432"], "tcp"), accept(["tag:db"], ["tag:web:80"], "tcp")], many)
        classes = {built.class_of(f"n-w{i}") for i in range(1, 50)} | {built.class_of("n-web1")}
        self.assertEqual(len(classes), 1)
        self.assertIs(built.peers_of("n-w1"), built.peers_of("n-w49"))
        self.assertIs(built.filter_for("n-w1"), built.filter_for("n-web2"))
        # Named individually: a class of its own.
        named = index([accept(["web1"], ["db1:22"])], many)
        self.assertNotEqual(named.class_of("n-web1"), named.class_of("n-web2"))

    def test_incremental_changes(self):
        acls = [accept(["tag:web"], ["tag:db:5432"], "tcp"), accept(["group:ops"], ["*:22"])]
        built = index(acls)
        newcomer = node("n-db2", "db2", "10.99.0.77", "tag:db")
        grown = built.with_node(newcomer)
        self.assertIn("n-db2", grown.peers_of("n-web1"))
        self.assertNotIn("n-db2", built.peers_of("n-web1"))  # the old index is unchanged
        self.assertEqual(grown.filter_for("n-db2"), grown.filter_for("n-db1"))
        # A filter names tags, not members: nobody's changes with a join.
        for n in DIRECTORY:
            self.assertIs(grown.filter_for(n.node_id), built.filter_for(n.node_id))
        retagged = grown.with_node(node("n-db2", "db2", "10.99.0.77", "tag:web"))
        self.assertIs(retagged.filter_for("n-db1"), built.filter_for("n-db1"))
        self.assertEqual(retagged.filter_for("n-db2"), retagged.filter_for("n-web1"))
        self.assertTrue(retagged.may_reach("n-db2", "n-db1"))
        gone = retagged.without_node("n-db2")
        for n in DIRECTORY:
            self.assertEqual(gone.peers_of(n.node_id), built.peers_of(n.node_id))
            self.assertEqual(gone.filter_for(n.node_id), built.filter_for(n.node_id))
        self.assertRaises(PolicyError, gone.class_of, "n-db2")

    def test_large_sources_are_split_for_the_node(self):
        networks = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{(i & 255)}" for i in range(0, 2 * 12_000, 2)]
        many = [node("t", "target", "192.168.0.1"), node("n-web1", "web1", "10.99.0.1", "tag:web")]
        acls = [accept(networks[:6_000] + ["tag:web"], ["target:22"], "tcp"), accept(networks[6_000:], ["target:22"], "tcp")]
        built = PolicyIndex(parse_policy(policy_text(acls)), many)
        rules = built.filter_for("t")
        self.assertEqual([len(r.sources) for r in rules], [10_000, 2_000])
        self.assertEqual([r.peers for r in rules], [("tag:web",), ()])
        self.assertEqual(parse_filter_rules([r.to_json() for r in rules]), rules)


# Random policies over a small directory: the index must agree with judging
# every pair rule by rule.
PRINCIPALS = ["*", "tag:a", "tag:b", "tag:c", "group:g", "group:h", "p0", "p3", "lab", "10.99.0.0/30", "fd7a::/126"]
PORTS = ["*", "22", "80,443", "1000-2000"]


@st.composite
def random_case(draw):
    nodes = []
    for i in range(draw(st.integers(1, 12))):
        tags = draw(st.sets(st.sampled_from(["tag:a", "tag:b", "tag:c"]), max_size=2))
        ip = (f"10.99.0.{i}", f"fd7a::{i}") if draw(st.booleans()) else f"10.99.0.{i}"
        nodes.append(DirectoryNode(f"id{i}", f"p{i}", ip, frozenset(tags)))
    names = {n.name for n in nodes}
    usable = [p for p in PRINCIPALS if not (p.startswith("p") and p not in names)]
    acls = []
    for _ in range(draw(st.integers(0, 6))):
        proto = draw(st.sampled_from([None, "tcp", "udp", "icmp"]))
        dst = [f"{draw(st.sampled_from(usable))}:{'*' if proto == 'icmp' else draw(st.sampled_from(PORTS))}"
               for _ in range(draw(st.integers(1, 3)))]
        acls.append(accept(draw(st.lists(st.sampled_from(usable), min_size=1, max_size=3)), dst, proto))
    groups = {"group:g": ["tag:a"] + (["p0"] if "p0" in names else []), "group:h": ["tag:b", "tag:c"]}
    text = json.dumps({"groups": groups, "hosts": {"lab": "10.99.0.4/30"}, "tagOwners": {"tag:a": [], "tag:b": [], "tag:c": []},
                       "acls": acls})
    return parse_policy(text), nodes


def brute_reach(policy, a, b):
    from wire.policy.directory import Endpoint
    from wire.policy.evaluate import matches
    src, dst = Endpoint.of_node(a), Endpoint.of_node(b)
    return any(any(matches(p, src, policy) for p in rule.sources) and any(matches(d.principal, dst, policy) for d in rule.destinations)
               for rule in policy.rules)


class IndexAgreesWithRuleByRuleTests(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(random_case(), st.data())
    def test_reach_peers_filters(self, case, data):
        import ipaddress
        policy, nodes = case
        built = PolicyIndex(policy, nodes)
        for a in nodes:
            for b in nodes:
                reach = brute_reach(policy, a, b)
                self.assertEqual(built.may_reach(a.node_id, b.node_id), reach)
                # Symmetric: A sees B exactly when B sees A, and when either may reach the other.
                self.assertEqual(b.node_id in built.peers_of(a.node_id), reach or brute_reach(policy, b, a))
                self.assertEqual(b.node_id in built.peers_of(a.node_id), a.node_id in built.peers_of(b.node_id))
                # B's filter, resolved against B's peers as the node does, lets A in exactly when A may reach B.
                resolved = resolve_peers(built.filter_for(b.node_id), [
                    (p.name, p.tags, p.addresses) for p in nodes if p.node_id in built.peers_of(b.node_id)
                ])
                covered = any(any(address in ipaddress.ip_network(s) for s in rule.sources for address in a.addresses)
                              for rule in resolved)
                self.assertEqual(covered, reach, f"{a.name} -> {b.name}: {resolved}")
        # Adding and removing nodes one at a time gives what a rebuild gives.
        changed = built
        for n in data.draw(st.permutations(nodes))[:3]:
            changed = changed.without_node(n.node_id)
            rebuilt = PolicyIndex(policy, [m for m in nodes if m.node_id in changed._nodes])
            for m in nodes:
                if m.node_id in changed._nodes:
                    self.assertEqual(changed.peers_of(m.node_id), rebuilt.peers_of(m.node_id))
                    self.assertEqual(changed.filter_for(m.node_id), rebuilt.filter_for(m.node_id))
            changed = changed.with_node(n)
        for m in nodes:
            self.assertEqual(changed.peers_of(m.node_id), built.peers_of(m.node_id))
            self.assertEqual(changed.filter_for(m.node_id), built.filter_for(m.node_id))


WORDS = ["*", "tag:a", "group:g", "group:nope", "p0", "nas", "10.99.0.0/30", "[fd7a::1]", "fd7a::1", "x:22", "tag:a:80,443",
         "nas:1-2", "*:*", "p0:70000", "tcp", "icmp", "accept", "", ":"]
KEYS = ["action", "src", "dst", "proto", "accept", "deny", "groups", "hosts", "tagOwners", "acls", "tests", "group:g", "tag:a", "nas"]
anything = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 70000) | st.sampled_from(WORDS),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    max_leaves=25,
)


class HostileInputTests(unittest.TestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.dictionaries(st.sampled_from(["groups", "hosts", "tagOwners", "acls", "tests"]), anything))
    def test_any_body_is_accepted_or_refused_cleanly(self, body):
        try:
            policy = parse_policy(json.dumps(body))
            check_against(policy, DIRECTORY)
            built = PolicyIndex(policy, DIRECTORY)
            for n in DIRECTORY:
                built.peers_of(n.node_id)
                built.filter_for(n.node_id)
        except PolicyError as e:
            self.assertNotIn("Traceback", str(e))
