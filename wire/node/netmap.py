"""The node's copy of the netmap, and the WireGuard peers it implies."""

from __future__ import annotations

from dataclasses import dataclass

from wire.protocol import ProtocolError, parse_ip_address, parse_node_id, parse_port, parse_wg_public_key

PERSISTENT_KEEPALIVE = 25


@dataclass(frozen=True)
class Peer:
    """One other node, as far as this node needs to know it."""

    node_id: str
    node_name: str
    vpn_ip: str
    wg_public_key: str
    public_ip: str
    nat_port: int
    port: int
    lan_ip: str
    nat_type: str
    online: bool

    @classmethod
    def from_view(cls, view: dict) -> Peer:
        """Validate a server's peer entry: nothing from the network reaches ``wg`` unchecked."""
        if not isinstance(view, dict):
            raise ProtocolError("peer", "is not an object")
        return cls(
            node_id=parse_node_id(view.get("node_id")),
            node_name=str(view.get("node_name") or "")[:63],
            vpn_ip=parse_ip_address(view.get("vpn_ip"), "vpn_ip"),
            wg_public_key=parse_wg_public_key(view.get("wg_public_key")),
            public_ip=parse_ip_address(view["public_ip"], "public_ip") if view.get("public_ip") else "",
            nat_port=parse_port(view.get("nat_port") or view.get("port") or 51820, "nat_port"),
            port=parse_port(view.get("port") or 51820, "port"),
            lan_ip=parse_ip_address(view["lan_ip"], "lan_ip") if view.get("lan_ip") else "",
            nat_type=str(view.get("nat_type") or "unknown"),
            online=bool(view.get("online", True)),
        )


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

    def apply(self, answer: dict) -> list[str]:
        """Take a long-poll answer; returns problems with entries that were skipped."""
        problems: list[str] = []
        updated: dict[str, Peer] = {} if answer.get("full") else dict(self.peers)
        for view in answer.get("upserts") or []:
            try:
                peer = Peer.from_view(view)
            except (ProtocolError, KeyError) as e:
                problems.append(f"skipped a peer entry: {e}")
                continue
            if peer.node_id != self.my_node_id:
                updated[peer.node_id] = peer
        for node_id in answer.get("removals") or []:
            updated.pop(node_id, None)
        self.peers = updated
        cursor = answer.get("cursor")
        if isinstance(cursor, str) and cursor:
            self.cursor = cursor
        return problems

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
