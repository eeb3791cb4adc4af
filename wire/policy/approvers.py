"""Which of a node's advertised routes the policy's ``autoApprovers`` approve.

Pure, like the rest of wire.policy: the server asks at registration, when
the policy changes and when a node's tags change, and approves the answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from wire.policy.model import GROUP, NODE, TAG, Policy, Principal
from wire.protocol.routes import is_exit_route


def auto_approved(policy: Policy | None, name: str, tags: Iterable[str], advertised: Iterable[str]) -> tuple[str, ...]:
    """The routes among ``advertised`` a node named ``name`` with ``tags`` has
    approved by the policy: a subnet route inside a network one of whose
    approvers matches the node, an exit route when an ``exitNode`` approver does."""
    if policy is None:
        return ()
    approvers = policy.auto_approvers
    tag_set = frozenset(tags)

    def matches(principals: tuple[Principal, ...]) -> bool:
        return any(_matches(policy, p, name, tag_set) for p in principals)

    exit_approved = matches(approvers.exit_node) if approvers.exit_node else False
    approved = []
    for route in advertised:
        if is_exit_route(route):
            if exit_approved:
                approved.append(route)
            continue
        network = ipaddress.ip_network(route)
        for within, principals in approvers.routes:
            if within.version == network.version and network.subnet_of(within) and matches(principals):  # type: ignore[arg-type]
                approved.append(route)
                break
    return tuple(approved)


def _matches(policy: Policy, principal: Principal, name: str, tags: frozenset[str]) -> bool:
    if principal.kind == TAG:
        return principal.name in tags
    if principal.kind == NODE:
        return principal.name == name
    if principal.kind == GROUP:
        return any(_matches(policy, member, name, tags) for member in policy.groups.get(principal.name, ()))
    return False
