"""The node's copy of the netmap, and the WireGuard peers it implies."""

from __future__ import annotations

from wire.protocol import NetmapAnswer, PeerView

PERSISTENT_KEEPALIVE = 25

# One other node, as far as this node needs to know it: the protocol's
# peer view, validated when the netmap answer arrived (PeerView.from_json).
Peer = PeerView


def endpoint_for(peer: Peer, my_public_ip: str) -> str | None:
    """Where to send WireGuard packets for ``peer``.

    Two nodes behind the same NAT share a public address; they reach each
    other on their LAN addresses (hairpinning through the router often
    fails). Otherwise the peer's public, NAT-mapped endpoint.
    """
    if peer.lan_ip and peer.public_ip and peer.public_ip == my_public_ip:
        return _join(peer.lan_ip, peer.port)
    if peer.public_ip:
        return _join(peer.public_ip, peer.nat_port)
    return None


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class NodeNetmap:
    """Applies the server's snapshots and deltas; answers what WireGuard should hold."""

    def __init__(self, my_node_id: str):
        self.my_node_id = my_node_id
        self.cursor = "0"
        self.peers: dict[str, Peer] = {}

    def apply(self, answer: NetmapAnswer) -> list[str]:
        """Take a long-poll answer; returns problems with entries that were skipped."""
        updated: dict[str, Peer] = {} if answer.full else dict(self.peers)
        for peer in answer.upserts:
            if peer.node_id != self.my_node_id:
                updated[peer.node_id] = peer
        for node_id in answer.removals:
            updated.pop(node_id, None)
        self.peers = updated
        if answer.cursor:
            self.cursor = answer.cursor
        return list(answer.skipped)

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
