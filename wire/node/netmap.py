"""The node's copy of the netmap: the other nodes, its own record, and the server's word on its pairs."""

from __future__ import annotations

from wire.node.trust import PeerScreen
from wire.protocol import NetmapAnswer, PairPath, PeerView
from wire.protocol.dns import NO_DNS, DnsConfig, dns_digest
from wire.protocol.filter import NO_FILTER, FilterRule, filter_digest, filter_json
from wire.protocol.routefilter import ForwardRule, route_filter_digest

PERSISTENT_KEEPALIVE = 25

# One other node, as far as this node needs to know it: the protocol's
# peer view, validated when the netmap answer arrived (PeerView.from_json).
Peer = PeerView


class NodeNetmap:
    """Applies the server's snapshots and deltas; answers what WireGuard should hold."""

    def __init__(self, my_node_id: str, screen: PeerScreen | None = None):
        self.my_node_id = my_node_id
        # Every peer passes it before it is held (wire.node.trust).
        self.screen = screen or PeerScreen()
        self.cursor = "0"
        self.peers: dict[str, Peer] = {}
        # This node as the server has it (what its peers see of it), once told.
        self.me: Peer | None = None
        # The server's word on each pair with a peer (by peer id), where it has one.
        self.words: dict[str, PairPath] = {}
        # The access policy's filter for traffic to this node; None: no policy.
        self.filter: tuple[FilterRule, ...] | None = None
        # Its digest, as the long-poll tells the server (None: never told).
        self.filter_digest: str | None = None
        # The server sent a filter this node could not read, and none is in force.
        self.filter_unreadable = False
        # What the policy lets this node forward to the routes it serves (None:
        # no policy, forward all), its digest ("none" until told), and whether
        # the server sent one this node could not read (it then forwards nothing).
        self.route_filter: tuple[ForwardRule, ...] | None = None
        self.route_filter_digest: str = NO_FILTER
        self.route_filter_unreadable = False
        # The mesh's DNS settings (None: the server serves no mesh DNS, or never said).
        self.dns: DnsConfig | None = None
        # Their digest, as the long-poll tells the server: "none" until told.
        self.dns_digest: str = NO_DNS

    def apply(self, answer: NetmapAnswer) -> list[str]:
        """Take a long-poll answer; returns problems with entries that were skipped.

        A peer that fails the trust checks keeps the record held before (if
        that one still passes); those held before come first, so a newcomer
        claiming a held address or key is the one skipped.
        """
        held = self.peers
        updated: dict[str, Peer] = {} if answer.full else dict(held)
        for peer in answer.upserts:
            if peer.node_id != self.my_node_id:
                updated[peer.node_id] = peer
            else:
                self.me = peer
        if answer.me is not None and answer.me.node_id == self.my_node_id:
            self.me = answer.me
        for node_id in answer.removals:
            updated.pop(node_id, None)
        order = [n for n in held if n in updated] + [n for n in updated if n not in held]
        candidates = []
        for node_id in order:
            records = [updated[node_id]]
            if node_id in held and held[node_id] != records[0]:
                records.append(held[node_id])
            candidates.append((node_id, records))
        updated, problems = self.screen.screen(candidates)
        self.peers = updated
        # In the server's order: each entry replaces what was held.
        words = {} if answer.paths_full else dict(self.words)
        for word in answer.paths:
            if word.mode is None:
                words.pop(word.peer, None)
            elif word.peer != self.my_node_id:
                words[word.peer] = word
        self.words = {node_id: word for node_id, word in words.items() if node_id in updated}
        if answer.filter_given:
            self.filter = answer.filter
            self.filter_digest = filter_digest(None if answer.filter is None else filter_json(answer.filter))
            self.filter_unreadable = False
        elif answer.filter_refused and self.filter is None:
            # A policy exists and this node cannot read its filter: closed, never open.
            self.filter_unreadable = True
        if answer.route_filter_given:
            self.route_filter = answer.route_filter
            self.route_filter_digest = route_filter_digest(answer.route_filter)
            self.route_filter_unreadable = False
        elif answer.route_filter_refused:
            self.route_filter_unreadable = True
        if answer.dns_given:
            self.dns = answer.dns
            self.dns_digest = dns_digest(None if answer.dns is None else answer.dns.to_json())
        if answer.cursor:
            self.cursor = answer.cursor
        return list(answer.skipped) + problems

    def take_reported(self, word: PairPath) -> None:
        """The pair's word in the answer to this node's report.

        The long-poll brings the same change too, in either order: a word
        older than the one held is ignored, and so is "no word".
        """
        held = self.words.get(word.peer)
        if word.mode is None or word.peer not in self.peers or (held is not None and held.since > word.since):
            return
        self.words[word.peer] = word

    @property
    def epoch(self) -> str:
        """The server run our cursor belongs to ("" before the first answer)."""
        epoch, _, _ = self.cursor.rpartition(":")
        return epoch

    def by_name_or_ip(self, target: str) -> Peer | None:
        for peer in self.peers.values():
            if target in (peer.node_name, peer.vpn_ip):
                return peer
        return None
