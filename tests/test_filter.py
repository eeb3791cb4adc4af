"""The packet filter as the netmap carries it (wire.protocol.filter): what a
node accepts, what it refuses and why, and how it resolves the peers a rule
names into the addresses its nftables table admits."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from wire.protocol import ProtocolError
from wire.protocol.filter import (
    FilterRule,
    admitted,
    PortRange,
    filter_digest,
    filter_json,
    parse_filter_digest,
    parse_filter_rules,
    resolve_peers,
)


class ParseTests(unittest.TestCase):
    def test_a_rule_round_trips(self):
        rules = (
            FilterRule(("10.99.0.0/16",), "tcp", (PortRange(22, 22), PortRange(8000, 8999)), peers=("alice", "tag:web"), rules=(0, 3)),
            FilterRule(peers=("tag:ci",), proto="icmp"),
            FilterRule(sources=("0.0.0.0/0", "::/0")),
        )
        self.assertEqual(parse_filter_rules(json.loads(json.dumps(filter_json(rules)))), rules)

    def test_values_are_normalised(self):
        (rule,) = parse_filter_rules([{"sources": ["10.99.0.7"], "peers": ["Tag:Web", "ALICE", "alice"]}])
        self.assertEqual(rule.sources, ("10.99.0.7/32",))
        self.assertEqual(rule.peers, ("alice", "tag:web"))

    def test_every_refusal_names_what_was_wrong(self):
        cases = [
            ("not a list", "filter"),
            ([5], "filter rule"),
            ([{}], "sources: a rule must name sources (addresses or networks) or peers (tags or node names)"),
            ([{"sources": []}], "a rule must name sources"),
            ([{"sources": "10.0.0.0/8"}], "sources"),
            ([{"sources": [7]}], "sources: each entry must be an address or network as a string"),
            ([{"sources": ["10.0.0.300"]}], "sources: '10.0.0.300' is not an address or network"),
            ([{"peers": ["bad name!"]}], "peers: 'bad name!' is not a DNS label"),
            ([{"peers": ["tag:"]}], "peers: 'tag:' is not a tag"),
            ([{"peers": [None]}], "peers"),
            ([{"peers": ["a"], "proto": "sctp"}], "proto: must be one of tcp, udp, icmp"),
            ([{"peers": ["a"], "proto": "icmp", "ports": [[1, 1]]}], "ports: icmp has no ports"),
            ([{"peers": ["a"], "ports": [[9, 5]]}], "ports: each entry must be [FIRST, LAST]"),
            ([{"peers": ["a"], "ports": [[1, 70000]]}], "ports: each entry must be [FIRST, LAST]"),
            ([{"peers": ["a"], "rules": [-1]}], "rules: must list at most"),
            ([{"peers": ["a"], "rules": [True]}], "rules: must list at most"),
            ([{"peers": ["a"], "rules": "0"}], "rules"),
        ]
        for value, message in cases:
            with self.assertRaises(ProtocolError, msg=value) as caught:
                parse_filter_rules(value)
            self.assertIn(message, str(caught.exception), value)

    def test_sizes_are_bounded(self):
        with self.assertRaises(ProtocolError) as caught:
            parse_filter_rules([{"sources": ["10.0.0.1"] * 10_001}])
        self.assertIn("at most 10000", str(caught.exception))
        with self.assertRaises(ProtocolError):
            parse_filter_rules([{"peers": ["a"], "ports": [[1, 1]] * 101}])
        with self.assertRaises(ProtocolError):
            parse_filter_rules([{"peers": ["a"]}] * 10_001)

    @settings(max_examples=300, deadline=None)
    @given(st.recursive(
        st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(["tag:a", "a", "10.0.0.1", "::1", "tcp", "icmp", "", ":"]),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["sources", "peers", "proto", "ports", "rules"]), children, max_size=5),
        max_leaves=20,
    ))
    def test_anything_parses_or_is_refused_cleanly(self, value):
        try:
            rules = parse_filter_rules(value)
        except ProtocolError:
            return
        self.assertEqual(parse_filter_rules(filter_json(rules)), rules)

    def test_digest(self):
        rules = filter_json((FilterRule(peers=("tag:web",), proto="tcp", ports=(PortRange(22, 22),)),))
        self.assertEqual(filter_digest(rules), filter_digest(json.loads(json.dumps(rules))))
        self.assertNotEqual(filter_digest(rules), filter_digest([]))
        self.assertEqual(filter_digest(None), "none")
        self.assertEqual(parse_filter_digest(filter_digest(rules)), filter_digest(rules))
        self.assertRaises(ProtocolError, parse_filter_digest, "ABC")


class ResolveTests(unittest.TestCase):
    PEERS = [
        ("web1", ("tag:web",), ("10.99.0.1",)),
        ("web2", ("tag:web", "tag:prod"), ("10.99.0.2", "fd7a::2")),
        ("alice", (), ("10.99.0.4",)),
        ("tag:web", (), ("10.99.0.66",)),  # a name no DNS label: names nothing
    ]

    def test_names_and_tags_become_the_peers_addresses(self):
        rules = (
            FilterRule(peers=("tag:web",), proto="tcp", ports=(PortRange(5432, 5432),), rules=(0,)),
            FilterRule(sources=("192.168.1.0/24",), peers=("alice", "tag:prod"), rules=(1,)),
        )
        self.assertEqual(resolve_peers(rules, self.PEERS), (
            FilterRule(("10.99.0.1/32", "10.99.0.2/32", "fd7a::2/128"), "tcp", (PortRange(5432, 5432),), rules=(0,)),
            FilterRule(("10.99.0.2/32", "10.99.0.4/32", "192.168.1.0/24", "fd7a::2/128"), rules=(1,)),
        ))

    def test_rules_without_peers_pass_unchanged(self):
        rule = FilterRule(sources=("0.0.0.0/0", "::/0"))
        self.assertIs(resolve_peers((rule,), self.PEERS)[0], rule)

    def test_a_rule_naming_only_absent_peers_admits_nothing(self):
        self.assertEqual(resolve_peers((FilterRule(peers=("bob", "tag:db")),), self.PEERS), ())
        self.assertEqual(resolve_peers((FilterRule(peers=("alice",)),), []), ())


class AdmittedTests(unittest.TestCase):
    def test_what_an_address_may_open_and_by_which_rule(self):
        rules = (
            FilterRule(("10.99.0.0/24",), "tcp", (PortRange(22, 22), PortRange(8000, 8999)), rules=(1, 4)),
            FilterRule(("10.99.0.7/32",), "icmp", rules=(2,)),
            FilterRule(("10.99.0.7/32",), None, (PortRange(53, 53),)),
            FilterRule(("0.0.0.0/0", "::/0"), rules=(3,)),
            FilterRule(("10.98.0.0/16",), "udp", rules=(5,)),
        )
        self.assertEqual(admitted(rules, "10.99.0.7"), [
            "tcp 22,8000-8999 (acls[1], acls[4])", "icmp (acls[2])", "tcp and udp 53", "everything (acls[3])",
        ])
        self.assertEqual(admitted(rules, "fd7a::1"), ["everything (acls[3])"])
        self.assertEqual(admitted(rules[:1], "10.97.0.1"), [])
