"""The compiled policy the server asks per node: who its peers are and which
packet-filter rules it gets.

Nothing here is evaluated per pair of nodes. Each node's *signature* is the
set of rule slots it matches (in rule r's sources, in destination d of rule
r); nodes with equal signatures form a *class* and have, by construction,
the same peers and the same filter. With 10,000 nodes and a policy written
over tags and groups there are a few hundred classes at most, so peers and
filters are computed per class, lazily, cached, and shared as one object by
every node of the class (and by classes that come out equal).

``with_node`` / ``without_node`` return a new index that shares everything
the change does not touch; the old index stays valid (readers need no lock).

Routed destinations: a ``dst`` network (an address, a CIDR, a ``hosts``
entry) that overlaps a subnet route a node serves puts that node in a third
kind of slot, "routes for destination d": the rule's sources become its
peers (it must hold them, and they it, or the route is of no use), but its
packet filter (traffic *to* it) is untouched. What it may forward is
:meth:`PolicyIndex.route_filter_for`, which depends on the policy and the
node's routes alone. ``*`` in ``dst`` covers routed networks too, exit
routes included; an exit route (``0.0.0.0/0``, ``::/0``) is covered by
``*`` only, not by a network that happens to lie inside it (so naming a
mesh address in ``dst`` makes no node an exit for it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from wire.policy.directory import Address, DirectoryNode, Endpoint
from wire.policy.errors import PolicyError
from wire.policy.evaluate import Decision, decide
from wire.policy.model import ANY, GROUP, NETWORK, NODE, PROTOCOLS, TAG, Network, Policy, Principal
from wire.policy.networks import cidr_texts, interval_of, merge
from wire.policy.parse import merge_ports
from wire.protocol.filter import MAX_SOURCES, FilterRule, PortRange
from wire.protocol.routefilter import ForwardRule

EVERYWHERE = ("0.0.0.0/0", "::/0")
OPEN_FILTER = (FilterRule(sources=EVERYWHERE),)

# A node's signature is a frozenset of small ints: 2*r if it is among rule r's
# sources by identity (name, tag, group, *), 2*r+1 if only by address (its
# address then already sits in the filter as the policy's network), and
# 2*len(rules)+k for the k-th destination slot (rule, dst entry), and
# 2*len(rules)+len(dst slots)+k when the node routes for the k-th slot's network.
Signature = frozenset[int]


@dataclass(frozen=True)
class _Slot:
    rule: int
    proto: str | None
    ports: tuple[PortRange, ...]
    principal: Principal | None = None


class _Compiled:
    """What depends on the policy alone: which principal feeds which slot."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.rule_count = len(policy.rules)
        self.any_slots: set[int] = set()
        self.tag_slots: dict[str, set[int]] = {}
        self.name_slots: dict[str, set[int]] = {}
        self.network_slots: dict[Network, set[int]] = {}
        self.dst_slots: list[_Slot] = []
        self.rule_networks: list[list[Network]] = []  # the networks each rule names among its sources
        self.rule_from_anywhere: list[bool] = []
        self.rule_peers: list[frozenset[str]] = []  # the tags and node names each rule's sources name
        for rule in policy.rules:
            networks: list[Network] = []
            anywhere = False
            for principal in rule.sources:
                self._feed(principal, 2 * rule.index)
                if principal.kind == NETWORK and principal.network is not None:
                    networks.append(principal.network)
                anywhere = anywhere or principal.kind == ANY
            self.rule_networks.append(networks)
            self.rule_from_anywhere.append(anywhere)
            self.rule_peers.append(frozenset(self._identities(rule.sources)))
        for rule in policy.rules:
            for destination in rule.destinations:
                slot = 2 * self.rule_count + len(self.dst_slots)
                self.dst_slots.append(_Slot(rule.index, rule.proto, destination.ports, destination.principal))
                self._feed(destination.principal, slot)
        self.dst_count = len(self.dst_slots)
        # The dst networks a router's subnet routes may overlap, and their route slots.
        self.routed_slots: list[tuple[Network, int]] = [
            (slot.principal.network, 2 * self.rule_count + self.dst_count + k)
            for k, slot in enumerate(self.dst_slots)
            if slot.principal is not None and slot.principal.kind == NETWORK and slot.principal.network is not None
        ]
        self._tags_cache: dict[frozenset[str], frozenset[int]] = {}

    def _feed(self, principal: Principal, slot: int) -> None:
        if principal.kind == ANY:
            self.any_slots.add(slot)
        elif principal.kind == TAG:
            self.tag_slots.setdefault(principal.name, set()).add(slot)
        elif principal.kind == NODE:
            self.name_slots.setdefault(principal.name, set()).add(slot)
        elif principal.kind == NETWORK:
            assert principal.network is not None
            # A source slot matched by address only is marked odd (see Signature).
            is_source = slot < 2 * self.rule_count
            self.network_slots.setdefault(principal.network, set()).add(slot + 1 if is_source else slot)
        else:
            assert principal.kind == GROUP
            for member in self.policy.groups[principal.name]:
                self._feed(member, slot)

    def _identities(self, principals: Iterable[Principal]) -> Iterable[str]:
        """The tags and node names among some principals, groups expanded."""
        for principal in principals:
            if principal.kind in (TAG, NODE):
                yield principal.name
            elif principal.kind == GROUP:
                yield from self._identities(self.policy.groups[principal.name])

    def signature(self, node: DirectoryNode) -> Signature:
        base = self._tags_cache.get(node.tags)
        if base is None:
            slots = set(self.any_slots)
            for tag in node.tags:
                slots |= self.tag_slots.get(tag, set())
            base = self._tags_cache[node.tags] = frozenset(slots)
        extra = self.name_slots.get(node.name)
        by_address = [s for net, s in self.network_slots.items() if any(a in net for a in node.addresses)]
        subnets = [n for n in node.networks if n.prefixlen > 0]  # exit routes: only `*` covers them
        if subnets:
            routed = {slot for net, slot in self.routed_slots
                      if any(n.version == net.version and n.overlaps(net) for n in subnets)}
            if routed:
                by_address.append(routed)
        if extra is None and not by_address:
            return base
        slots = set(base)
        if extra:
            slots |= extra
        for found in by_address:
            slots |= found
        # An identity match of rule r's sources makes the address-only mark redundant.
        return frozenset(s for s in slots if not (s < 2 * self.rule_count and s % 2 and s - 1 in slots))


_OPEN_POLICY = Policy(groups={}, hosts={}, tag_owners=frozenset(), rules=())


class PolicyIndex:
    """Peers, reachability and packet filters for every node under one policy.

    ``PolicyIndex(None, directory)`` (or :meth:`open`) is the mesh with no
    policy: everything may reach everything, and every node's filter accepts all.

    ``peers_of(node_id)`` may contain ``node_id`` itself (when a node's class
    may reach its own class): nodes of a class share one set object, so the
    caller skips the node itself."""

    def __init__(self, policy: Policy | None, directory: Iterable[DirectoryNode]):
        self.policy = policy
        self._compiled = _Compiled(policy if policy is not None else _OPEN_POLICY)
        self._nodes: dict[str, DirectoryNode] = {}
        self._by_name: dict[str, str] = {}
        self._by_address: dict[Address, str] = {}
        self._node_class: dict[str, int] = {}
        self._class_of_signature: dict[Signature, int] = {}
        self._signature_of_class: dict[int, Signature] = {}
        self._members: dict[int, frozenset[str]] = {}
        self._next_class = 0
        pending: dict[Signature, list[str]] = {}
        for node in directory:
            self._remember(node)
            pending.setdefault(self._compiled.signature(node), []).append(node.node_id)
        for signature, ids in pending.items():
            cid = self._new_class(signature)
            self._members[cid] = frozenset(ids)
            for node_id in ids:
                self._node_class[node_id] = cid
        self._peers_cache: dict[frozenset[int], frozenset[str]] = {}
        self._filter_cache: dict[frozenset[int], tuple[FilterRule, ...]] = {}
        self._route_filter_cache: dict[tuple[str, ...], tuple[ForwardRule, ...]] = {}
        self._sources_cache: dict[frozenset[int], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._link_classes()

    @classmethod
    def open(cls, directory: Iterable[DirectoryNode]) -> PolicyIndex:
        return cls(None, directory)

    # -- building ---------------------------------------------------------

    def _remember(self, node: DirectoryNode) -> None:
        self._nodes[node.node_id] = node
        self._by_name[node.name] = node.node_id
        for address in node.addresses:
            self._by_address[address] = node.node_id

    def _new_class(self, signature: Signature) -> int:
        cid = self._next_class
        self._next_class += 1
        self._class_of_signature[signature] = cid
        self._signature_of_class[cid] = signature
        return cid

    def _link_classes(self) -> None:
        """The class graph: which classes each rule's sources and destinations hold,
        and from that each class's reach and peer classes. Cheap: classes x slots."""
        compiled = self._compiled
        rules = compiled.rule_count
        first_routed = 2 * rules + compiled.dst_count
        self._rule_sources: dict[int, set[int]] = {r: set() for r in range(rules)}
        self._rule_targets: dict[int, set[int]] = {r: set() for r in range(rules)}
        # The classes that route for a rule's dst networks: peers of its sources, not reached.
        self._rule_routers: dict[int, set[int]] = {r: set() for r in range(rules)}
        for cid, signature in self._signature_of_class.items():
            for slot in signature:
                if slot >= first_routed:
                    self._rule_routers[compiled.dst_slots[slot - first_routed].rule].add(cid)
                elif slot >= 2 * rules:
                    self._rule_targets[compiled.dst_slots[slot - 2 * rules].rule].add(cid)
                else:
                    self._rule_sources[slot // 2].add(cid)
        self._reach: dict[int, frozenset[int]] = {}
        self._peer_classes: dict[int, frozenset[int]] = {}
        open_mesh = self.policy is None
        every_class = frozenset(self._signature_of_class)
        for cid, signature in self._signature_of_class.items():
            if open_mesh:
                self._reach[cid] = self._peer_classes[cid] = every_class
                continue
            reach: set[int] = set()
            reached_by: set[int] = set()
            routers: set[int] = set()
            for slot in signature:
                if slot >= first_routed:
                    reached_by |= self._rule_sources[compiled.dst_slots[slot - first_routed].rule]
                elif slot >= 2 * rules:
                    reached_by |= self._rule_sources[compiled.dst_slots[slot - 2 * rules].rule]
                else:
                    reach |= self._rule_targets[slot // 2]
                    routers |= self._rule_routers[slot // 2]
            self._reach[cid] = frozenset(reach)
            self._peer_classes[cid] = frozenset(reach | reached_by | routers)
        # Classes come and go with incremental changes: keep only cached sets still in use.
        live_peers = set(self._peer_classes.values())
        for key in [k for k in self._peers_cache if k not in live_peers]:
            del self._peers_cache[key]
        live_filters = {self._targets(signature) for signature in self._signature_of_class.values()}
        for target_key in [k for k in self._filter_cache if k not in live_filters]:
            del self._filter_cache[target_key]

    # -- questions ----------------------------------------------------------

    def class_of(self, node_id: str) -> int:
        """The class a node belongs to (nodes of one class share peers and filter)."""
        try:
            return self._node_class[node_id]
        except KeyError:
            raise PolicyError(f"unknown node id {node_id!r}") from None

    def may_reach(self, src_node_id: str, dst_node_id: str) -> bool:
        """Does any rule let ``src`` open any connection to ``dst``?"""
        return self.class_of(dst_node_id) in self._reach[self.class_of(src_node_id)]

    def node(self, node_id: str) -> DirectoryNode | None:
        """The node as this index has it (None: not in it)."""
        return self._nodes.get(node_id)

    def peers_of(self, node_id: str) -> frozenset[str]:
        """The nodes ``node_id`` may reach or that may reach it (possibly including itself)."""
        peer_classes = self._peer_classes[self.class_of(node_id)]
        peers = self._peers_cache.get(peer_classes)
        if peers is None:
            peers = frozenset().union(*(self._members[c] for c in peer_classes))
            self._peers_cache[peer_classes] = peers
        return peers

    def filter_for(self, node_id: str) -> tuple[FilterRule, ...]:
        """The packet-filter rules about traffic *to* ``node_id``, merged and in a stable order."""
        if self.policy is None:
            self.class_of(node_id)
            return OPEN_FILTER
        targets = self._targets(self._signature_of_class[self.class_of(node_id)])
        rules = self._filter_cache.get(targets)
        if rules is None:
            rules = self._filter_cache[targets] = self._build_filter(targets)
        return rules

    def _targets(self, signature: Signature) -> frozenset[int]:
        """The destination slots of a signature: all a filter depends on."""
        first_dst = 2 * self._compiled.rule_count
        first_routed = first_dst + self._compiled.dst_count
        return frozenset(s for s in signature if first_dst <= s < first_routed)

    def _build_filter(self, targets: frozenset[int]) -> tuple[FilterRule, ...]:
        first_dst = 2 * self._compiled.rule_count
        rules_by_kind: dict[tuple[str, tuple[PortRange, ...]], set[int]] = {}
        for slot_id in targets:
            slot = self._compiled.dst_slots[slot_id - first_dst]
            rules_by_kind.setdefault((slot.proto or "", slot.ports), set()).add(slot.rule)
        # Kinds with equal sources become one rule over all their ports (a rule
        # for every port already covers the others).
        merged: dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple[tuple[PortRange, ...], set[int]]] = {}
        for (proto, ports), rules in rules_by_kind.items():
            networks, peers = self._sources_of(frozenset(rules))
            key = (proto, networks, peers)
            known = merged.get(key)
            if known is None:
                merged[key] = (ports, set(rules))
            else:
                joined = () if not ports or not known[0] else merge_ports(known[0] + ports)
                merged[key] = (joined, known[1] | rules)
        built = []
        for (proto, networks, peers), (ports, rules) in merged.items():
            # The node takes at most MAX_SOURCES networks per rule; more become several rules.
            for start in range(0, max(len(networks), 1), MAX_SOURCES):
                built.append(FilterRule(
                    sources=networks[start:start + MAX_SOURCES],
                    proto=proto or None,
                    ports=ports,
                    peers=peers if start == 0 else (),
                    rules=tuple(sorted(rules)),
                ))
        return tuple(sorted(built, key=lambda r: (r.proto or "", r.ports, r.sources, r.peers)))

    def route_filter_for(self, node_id: str) -> tuple[ForwardRule, ...] | None:
        """What ``node_id`` may forward from the mesh to the routes it serves:
        None without a policy, or for a node that serves none (it forwards
        nothing, the question does not arise); else the rules whose ``dst``
        covers part of its routes, each cut to that part (may be empty:
        nothing routed is reachable). Depends on the policy and the routes only."""
        node = self._nodes.get(node_id)
        if node is None:
            raise PolicyError(f"unknown node id {node_id!r}")
        if self.policy is None or not node.routes:
            return None
        key = tuple(sorted(str(n) for n in node.networks))
        rules = self._route_filter_cache.get(key)
        if rules is None:
            rules = self._route_filter_cache[key] = self._build_route_filter(node.networks)
        return rules

    def _build_route_filter(self, routes: tuple[Network, ...]) -> tuple[ForwardRule, ...]:
        # (rule, proto, ports) -> the routed networks its dst entries cover
        covered: dict[tuple[int, str, tuple[PortRange, ...]], list[Network]] = {}
        for slot in self._compiled.dst_slots:
            principal = slot.principal
            assert principal is not None
            if principal.kind == ANY:
                found = list(routes)
            elif principal.kind == NETWORK and principal.network is not None:
                wanted = principal.network
                found = [
                    # Two CIDR blocks that overlap: one holds the other; the smaller is what both cover.
                    wanted if wanted.prefixlen >= route.prefixlen else route
                    for route in routes
                    if route.prefixlen > 0 and route.version == wanted.version and route.overlaps(wanted)
                ]
            else:
                continue  # nodes, tags, groups: mesh addresses, never routed
            if found:
                covered.setdefault((slot.rule, slot.proto or "", slot.ports), []).extend(found)
        # Equal (proto, ports, destinations) from several rules: one rule over their sources.
        by_kind: dict[tuple[str, tuple[PortRange, ...], tuple[str, ...]], set[int]] = {}
        for (rule, proto, ports), found_networks in covered.items():
            destinations = cidr_texts(merge(interval_of(n) for n in found_networks))
            by_kind.setdefault((proto, ports, destinations), set()).add(rule)
        built = []
        for (proto, ports, destinations), rules in by_kind.items():
            networks, peers = self._sources_of(frozenset(rules))
            for start in range(0, max(len(networks), 1), MAX_SOURCES):
                built.append(ForwardRule(
                    destinations=destinations,
                    sources=networks[start:start + MAX_SOURCES],
                    proto=proto or None,
                    ports=ports,
                    peers=peers if start == 0 else (),
                    rules=tuple(sorted(rules)),
                ))
        return tuple(sorted(built, key=lambda r: (r.destinations, r.proto or "", r.ports, r.sources, r.peers)))

    def routers_of(self, address: Address) -> list[tuple[str, str]]:
        """The nodes that serve a route holding ``address`` (name, route), most specific first."""
        found = []
        for node in self._nodes.values():
            for network in node.networks:
                if network.version == address.version and address in network:
                    found.append((network.prefixlen, node.name, str(network)))
        return [(name, route) for _, name, route in sorted(found, key=lambda f: (-f[0], f[1]))]

    def _sources_of(self, rules: frozenset[int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Some rules' sources: the networks they name, as merged CIDR text, and
        the tags and node names they name (the node resolves those against its
        peers). Both follow from the policy alone, so filters are cached for the
        index's lifetime and no node's coming or going changes another's filter."""
        cached = self._sources_cache.get(rules)
        if cached is None:
            compiled = self._compiled
            if any(compiled.rule_from_anywhere[rule] for rule in rules):
                cached = (EVERYWHERE, ())
            else:
                intervals = merge(interval_of(n) for rule in rules for n in compiled.rule_networks[rule])
                peers = sorted(set().union(*(compiled.rule_peers[rule] for rule in rules)))
                cached = (cidr_texts(intervals), tuple(peers))
            self._sources_cache[rules] = cached
        return cached

    def explain(self, src: str, dst: str, port: int | None = None, proto: str = "tcp") -> Decision:
        """Would ``src`` reach ``dst`` on ``port``/``proto``, and by which rule?
        ``src`` and ``dst`` are node names or addresses."""
        if proto not in PROTOCOLS:
            raise PolicyError(f"proto must be one of {', '.join(PROTOCOLS)}")
        source, target = self._endpoint(src), self._endpoint(dst)
        routed = ""
        if target.name is None and target.addresses:
            routers = self.routers_of(target.addresses[0])
            if routers:
                name, route = routers[0]
                if ipaddress.ip_network(route).prefixlen == 0:
                    routed = (f"; only exit node {name} carries {target.label}, and it forwards for "
                              "rules whose dst is * alone")
                else:
                    routed = f"; {target.label} is routed by {name} ({route}), which enforces it"
            else:
                routed = f"; no node routes {target.label}"
        if self.policy is None:
            return Decision(True, None, "", "no policy is set: everything may reach everything" + routed)
        decision = decide(self.policy, source, target, port, proto)
        return Decision(decision.allowed, decision.rule_index, decision.rule_text, decision.reason + routed) if routed else decision

    def _endpoint(self, text: str) -> Endpoint:
        node_id = self._by_name.get(text.lower())
        if node_id is None:
            try:
                address = ipaddress.ip_address(text.strip("[]"))
            except ValueError:
                raise PolicyError(f"unknown node {text[:80]!r} (give a node name or an address)") from None
            node_id = self._by_address.get(address)
            if node_id is None:
                return Endpoint.of_address(address)
        return Endpoint.of_node(self._nodes[node_id])

    # -- changes ------------------------------------------------------------

    def with_node(self, node: DirectoryNode) -> PolicyIndex:
        """A new index with ``node`` added (or replaced, if its id is known)."""
        changed = self.without_node(node.node_id) if node.node_id in self._nodes else self._copy()
        changed._remember(node)
        signature = changed._compiled.signature(node)
        cid = changed._class_of_signature.get(signature)
        new_class = cid is None
        if cid is None:
            cid = changed._new_class(signature)
            changed._members[cid] = frozenset()
        changed._members[cid] = changed._members[cid] | {node.node_id}
        changed._node_class[node.node_id] = cid
        if new_class:
            changed._link_classes()
        changed._forget_cached(cid)
        return changed

    def without_node(self, node_id: str) -> PolicyIndex:
        """A new index without ``node_id`` (unchanged if it is not there)."""
        changed = self._copy()
        node = changed._nodes.pop(node_id, None)
        if node is None:
            return changed
        if changed._by_name.get(node.name) == node_id:
            del changed._by_name[node.name]
        for address in node.addresses:
            if changed._by_address.get(address) == node_id:
                del changed._by_address[address]
        cid = changed._node_class.pop(node_id)
        changed._forget_cached(cid)
        remaining = changed._members[cid] - {node_id}
        if remaining:
            changed._members[cid] = remaining
        else:
            del changed._members[cid]
            del changed._class_of_signature[changed._signature_of_class.pop(cid)]
            changed._link_classes()
        return changed

    def _copy(self) -> PolicyIndex:
        """Shallow copies of every container a change writes to; the values
        (frozensets, tuples, nodes) are immutable and shared. The filter and
        source caches depend on the policy alone, so every index of one
        policy shares them: a node's filter is built once, not once per change."""
        copy = object.__new__(PolicyIndex)
        copy.__dict__.update(self.__dict__)
        for name in ("_nodes", "_by_name", "_by_address", "_node_class", "_class_of_signature",
                     "_signature_of_class", "_members", "_peers_cache"):
            setattr(copy, name, dict(getattr(self, name)))
        return copy

    def _forget_cached(self, cid: int) -> None:
        """Drop the peer sets that include class ``cid`` (its membership changed).
        Filters name peers instead of listing them, so they stay."""
        for key in [k for k in self._peers_cache if cid in k]:
            del self._peers_cache[key]
