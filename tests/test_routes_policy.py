"""The policy's ``autoApprovers`` (wire.policy): parsed strictly, errors
naming the entry, checked against the directory like every other section,
and which advertised routes they approve for a node."""

from __future__ import annotations

import json

from twisted.trial import unittest

from wire.policy import DirectoryNode, PolicyError, auto_approved, check_against, parse_policy

BASE = {
    "groups": {"group:ops": ["ops1", "tag:ci"]},
    "tagOwners": {"tag:router": [], "tag:exit": []},
    "acls": [],
}


def policy_with(auto_approvers) -> str:
    return json.dumps(dict(BASE, autoApprovers=auto_approvers))


class ParseTests(unittest.TestCase):
    def test_errors_name_the_entry(self):
        cases = [
            ({"route": {}}, 'autoApprovers: unknown key "route" (did you mean "routes"?)'),
            ([], "autoApprovers: must be an object"),
            ({"routes": []}, "autoApprovers.routes: must be an object"),
            ({"routes": {"192.168.1.1/24": ["tag:router"]}}, 'autoApprovers.routes["192.168.1.1/24"]: "192.168.1.1/24" has host bits set (did you mean 192.168.1.0/24?)'),
            ({"routes": {"192.168.1.1": ["tag:router"]}}, 'autoApprovers.routes["192.168.1.1"]: "192.168.1.1" is not a network such as 192.168.0.0/16'),
            ({"routes": {"lan": ["tag:router"]}}, 'autoApprovers.routes["lan"]: "lan" is not a network'),
            ({"routes": {"10.0.0.0/8": "tag:router"}}, 'autoApprovers.routes["10.0.0.0/8"]: must be a list'),
            ({"routes": {"10.0.0.0/8": ["*"]}}, 'autoApprovers.routes["10.0.0.0/8"][0]: an approver is a tag, a group or a node name, not "*"'),
            ({"routes": {"10.0.0.0/8": ["10.0.0.1"]}}, 'autoApprovers.routes["10.0.0.0/8"][0]: an approver is a tag, a group or a node name, not "10.0.0.1"'),
            ({"routes": {"10.0.0.0/8": ["group:opz"]}}, 'autoApprovers.routes["10.0.0.0/8"][0]: unknown group "group:opz" (did you mean "group:ops"?)'),
            ({"exitNode": ["tag:"]}, 'autoApprovers.exitNode[0]: "" is not a valid tag name'),
            ({"exitNode": [5]}, "autoApprovers.exitNode[0]: must be a string"),
            ({"exitNode": "tag:exit"}, "autoApprovers.exitNode: must be a list"),
        ]
        for value, message in cases:
            with self.assertRaises(PolicyError, msg=message) as caught:
                parse_policy(policy_with(value))
            self.assertIn(message, str(caught.exception))

    def test_a_valid_section(self):
        policy = parse_policy(policy_with({"routes": {"192.168.0.0/16": ["tag:router", "group:ops", "nas1"], "fd00:1::/48": ["tag:router"]}, "exitNode": ["tag:exit"]}))
        self.assertEqual([str(network) for network, _ in policy.auto_approvers.routes], ["192.168.0.0/16", "fd00:1::/48"])
        self.assertEqual([p.name for p in policy.auto_approvers.exit_node], ["tag:exit"])
        self.assertEqual(parse_policy(json.dumps(BASE)).auto_approvers.routes, ())

    def test_unknown_nodes_and_tags_are_refused_against_the_directory(self):
        directory = [DirectoryNode("n1", "ops1", "10.99.0.2", frozenset({"tag:ci"}))]
        for value, message in [
            ({"routes": {"10.0.0.0/8": ["nas9"]}}, 'autoApprovers.routes["10.0.0.0/8"][0]: unknown node or host "nas9"'),
            ({"exitNode": ["tag:nope"]}, 'autoApprovers.exitNode[0]: "tag:nope" is not declared in tagOwners and no node carries it'),
        ]:
            with self.assertRaises(PolicyError) as caught:
                check_against(parse_policy(policy_with(value)), directory)
            self.assertIn(message, str(caught.exception))


class EffectTests(unittest.TestCase):
    def setUp(self):
        self.policy = parse_policy(policy_with({
            "routes": {"192.168.0.0/16": ["tag:router"], "10.1.0.0/16": ["group:ops"], "0.0.0.0/0": ["nas1"]},
            "exitNode": ["tag:exit"],
        }))

    def test_a_route_inside_an_approved_network_for_a_matching_node(self):
        self.assertEqual(auto_approved(self.policy, "r1", ["tag:router"], ["192.168.1.0/24", "192.168.0.0/16", "192.0.0.0/8"]), ("192.168.1.0/24", "192.168.0.0/16"))
        self.assertEqual(auto_approved(self.policy, "r1", [], ["192.168.1.0/24"]), ())

    def test_groups_by_name_and_by_tag(self):
        self.assertEqual(auto_approved(self.policy, "ops1", [], ["10.1.2.0/24"]), ("10.1.2.0/24",))
        self.assertEqual(auto_approved(self.policy, "ci7", ["tag:ci"], ["10.1.2.0/24"]), ("10.1.2.0/24",))
        self.assertEqual(auto_approved(self.policy, "web1", [], ["10.1.2.0/24"]), ())

    def test_exit_routes_only_under_exit_node(self):
        exits = ["0.0.0.0/0", "::/0"]
        self.assertEqual(auto_approved(self.policy, "e1", ["tag:exit"], exits), ("0.0.0.0/0", "::/0"))
        # nas1 may have any IPv4 subnet route approved, not the exit.
        self.assertEqual(auto_approved(self.policy, "nas1", [], exits + ["172.16.0.0/12"]), ("172.16.0.0/12",))
        self.assertEqual(auto_approved(self.policy, "e1", ["tag:router"], exits), ())

    def test_no_policy_approves_nothing(self):
        self.assertEqual(auto_approved(None, "r1", ["tag:router"], ["192.168.1.0/24"]), ())
