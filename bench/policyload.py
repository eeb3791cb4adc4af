"""The access policy a coordination run can carry (``--plan wire/tls/1000/policy``).

- :func:`policy_text`: TAGS tags (tag:t0..), GROUPS groups of tags and RULES
  rules: mostly tag -> tag:ports, some group -> tag:*, a few ``*`` -> tag:port.
  Principals are tags, groups and ``*`` only, so who may see whom follows
  from the nodes' tags alone.
- :func:`changed_policy_text`: the same and one rule more (the change whose
  wave the bench times).
- :class:`Expectation`: what the server should tell each node under a
  policy (whom it may see, the digest of its filter), computed with the
  server's own wire.policy from the directory the admin API lists.

Each simulated node carries one tag: node ``i`` enrolls with join key
``i % TAGS``, a reusable key made with ``tags=("tag:t<i % TAGS>",)``.
"""

from __future__ import annotations

import json
import random

from wire.policy import DirectoryNode, PolicyIndex, parse_policy
from wire.protocol.filter import filter_digest, filter_json

TAGS = 20
GROUPS = 5
RULES = 50
PORTS = ("22", "80,443", "5432", "8000-8999", "53", "3000-3100,9090")
# The rule the change adds: t1 may reach t2 on a port no other rule names.
ADDED_RULE = {"action": "accept", "src": ["tag:t1"], "proto": "tcp", "dst": ["tag:t2:7777"]}


def tag_of(index: int, tags: int = TAGS) -> str:
    return f"tag:t{index % tags}"


def _body(tags: int, groups: int, rules: int, seed: int) -> dict:
    rng = random.Random(seed)
    group_body = {f"group:g{g}": sorted({f"tag:t{rng.randrange(tags)}" for _ in range(3)}) for g in range(groups)}
    acls = []
    for r in range(rules):
        kind = r % 10
        if r % 16 == 5:
            # A few rules for everyone: each makes its destination visible to all.
            acls.append({"action": "accept", "src": ["*"], "proto": "tcp", "dst": [f"tag:t{rng.randrange(tags)}:443"]})
            continue
        if kind < 7:
            src = [f"tag:t{rng.randrange(tags)}"]
            dst = [f"tag:t{rng.randrange(tags)}:{rng.choice(PORTS)}" for _ in range(rng.choice((1, 2)))]
        else:
            src = [f"group:g{rng.randrange(groups)}"]
            dst = [f"tag:t{rng.randrange(tags)}:*"]
        rule = {"action": "accept", "src": src, "dst": dst}
        if r % 3 == 0:
            rule["proto"] = "tcp"
        acls.append(rule)
    return {"groups": group_body, "tagOwners": {f"tag:t{t}": [] for t in range(tags)}, "acls": acls}


def policy_text(tags: int = TAGS, groups: int = GROUPS, rules: int = RULES, seed: int = 1) -> str:
    return "// wire bench: bench/policyload.py\n" + json.dumps(_body(tags, groups, rules, seed), indent=1)


def changed_policy_text(tags: int = TAGS, groups: int = GROUPS, rules: int = RULES, seed: int = 1) -> str:
    body = _body(tags, groups, rules, seed)
    body["acls"].append(ADDED_RULE)
    return "// wire bench: bench/policyload.py, one rule added\n" + json.dumps(body, indent=1)


class Expectation:
    """What the policy ``text`` means for the nodes of ``directory`` (the
    admin API's ``nodes`` list: node_id, node_name, vpn_ip, tags)."""

    def __init__(self, text: str, directory: list[dict]):
        nodes = [DirectoryNode(n["node_id"], n["node_name"], n["vpn_ip"], frozenset(n.get("tags") or ())) for n in directory]
        self.index = PolicyIndex(parse_policy(text), nodes)
        self.node_ids = [n.node_id for n in nodes]

    def viewers_of(self, node_id: str) -> frozenset[str]:
        """The nodes that may see ``node_id`` (either may reach the other)."""
        return self.index.peers_of(node_id)

    def viewers_of_newcomer(self, node_id: str, name: str, tag: str, k: int) -> frozenset[str]:
        """Who may see a node not in the directory yet, carrying ``tag``."""
        newcomer = DirectoryNode(node_id, name, f"10.255.{(k >> 8) & 255}.{1 + k % 250}", frozenset({tag}))
        return self.index.with_node(newcomer).peers_of(node_id)

    def digest_of(self, node_id: str) -> str:
        return filter_digest(filter_json(self.index.filter_for(node_id)))

    def digests(self) -> dict[str, str]:
        return {node_id: self.digest_of(node_id) for node_id in self.node_ids}


def view_changes(before: Expectation, after: Expectation, id_of: dict[int, str]) -> dict:
    """What each node should be told of a policy change's effect on its view:
    the peers it gains and loses, worked out once per pair of classes. The
    form ``Fleet.mark_wave`` takes, plus the median number gained."""
    sets: dict[str, dict[str, list[str]]] = {}
    nodes: dict[str, str] = {}
    gained_counts = []
    for i, node_id in id_of.items():
        if before.index.node(node_id) is None or after.index.node(node_id) is None:
            continue
        key = f"{before.index.class_of(node_id)}-{after.index.class_of(node_id)}"
        if key not in sets:
            old, new = before.viewers_of(node_id), after.viewers_of(node_id)
            sets[key] = {"gained": sorted(new - old), "lost": sorted(old - new)}
        change = sets[key]
        # A node is never its own peer (a class may reach itself).
        if set(change["gained"]) - {node_id} or set(change["lost"]) - {node_id}:
            nodes[str(i)] = key
            gained_counts.append(len(change["gained"]))
    used = set(nodes.values())
    gained_counts.sort()
    return {
        "sets": {k: v for k, v in sets.items() if k in used},
        "nodes": nodes,
        "gained_p50": gained_counts[len(gained_counts) // 2] if gained_counts else 0,
    }
