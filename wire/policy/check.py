"""Checks only the node directory can settle, and the policy's own ``tests``.

Run before a policy is accepted (and again when nodes change, if the server
wants to warn): a name that is neither a node nor a host, or a tag nobody
declared or carries, is almost always a typo, and the ``tests`` are the
admin's own statement of what must and must not be reachable.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable

from wire.policy.directory import DirectoryNode, Endpoint
from wire.policy.errors import PolicyError
from wire.policy.evaluate import decide, describe
from wire.policy.model import NETWORK, NODE, TAG, Destination, Policy, PolicyTest, Principal


def check_against(policy: Policy, directory: Iterable[DirectoryNode], known_tags: Iterable[str] = ()) -> None:
    """PolicyError if ``policy`` names an unknown node or tag, or one of its tests fails.

    A tag is known if tagOwners declares it, a node in ``directory`` carries
    it, or it is in ``known_tags`` (the tags join keys will hand out)."""
    nodes = list(directory)
    by_name = {node.name: node for node in nodes}
    tags = set(policy.tag_owners) | {t.lower() for t in known_tags}
    for node in nodes:
        tags |= node.tags
    for principal in policy.principals():
        if principal.kind == NODE and principal.name not in by_name:
            close = difflib.get_close_matches(principal.name, list(by_name) + list(policy.hosts), n=1)
            hint = f" (did you mean {json.dumps(close[0])}?)" if close else ""
            raise PolicyError(f"{principal.where}: unknown node or host {json.dumps(principal.text)}{hint}")
        if principal.kind == TAG and principal.name not in tags:
            raise PolicyError(f"{principal.where}: {json.dumps(principal.text)} is not declared in tagOwners and no node carries it")
    if policy.tests:
        resolver = _TestEndpoints(policy, nodes)
        for test in policy.tests:
            _run_test(policy, test, resolver)


class _TestEndpoints:
    """Who a test's principal stands for: the node, every node with the tag (the
    tag itself if none has it yet), or the node with that address (else the address).

    Nodes the policy cannot tell apart (same referenced tags, not named, in
    the same networks) are judged once: a test of tag:web against tag:db over
    thousands of nodes stays a handful of decisions."""

    def __init__(self, policy: Policy, nodes: list[DirectoryNode]):
        self.nodes = nodes
        principals = policy.principals()
        self.names = {p.name for p in principals if p.kind == NODE}
        self.tags = {p.name for p in principals if p.kind == TAG}
        self.networks = {p.network for p in principals if p.kind == NETWORK}

    def _distinct(self, nodes: Iterable[DirectoryNode]) -> list[Endpoint]:
        seen: dict[object, Endpoint] = {}
        for n in nodes:
            key = (n.name if n.name in self.names else None, n.tags & self.tags,
                   frozenset(net for net in self.networks if net is not None and any(a in net for a in n.addresses)))
            seen.setdefault(key, Endpoint.of_node(n))
        return list(seen.values())

    def resolve(self, principal: Principal) -> list[Endpoint]:
        if principal.kind == NODE:
            return [Endpoint.of_node(n) for n in self.nodes if n.name == principal.name]
        if principal.kind == TAG:
            carriers = self._distinct(n for n in self.nodes if principal.name in n.tags)
            return carriers or [Endpoint(principal.name, None, frozenset({principal.name}))]
        assert principal.kind == NETWORK and principal.network is not None
        address = principal.network.network_address
        owners = [Endpoint.of_node(n) for n in self.nodes if address in n.addresses]
        return owners or [Endpoint.of_address(address)]


def _run_test(policy: Policy, test: PolicyTest, resolver: _TestEndpoints) -> None:
    sources = resolver.resolve(test.source)
    for expected, destinations in ((True, test.accept), (False, test.deny)):
        for destination in destinations:
            _expect(policy, test, sources, destination, expected, resolver)


def _expect(policy: Policy, test: PolicyTest, sources: list[Endpoint], destination: Destination,
            expected: bool, resolver: _TestEndpoints) -> None:
    port = destination.ports[0].first if destination.ports else None
    targets = resolver.resolve(destination.principal)
    for src in sources:
        for dst in targets:
            decision = decide(policy, src, dst, port, test.proto)
            if decision.allowed == expected:
                continue
            connection = describe(src, dst, port, test.proto)
            if decision.allowed:
                raise PolicyError(f"{test.where}: {connection} is {decision.reason}, expected denied")
            raise PolicyError(f"{test.where}: {connection} is denied (no rule accepts it), expected accepted")
