"""The coordination server's record of one node."""

from __future__ import annotations

from dataclasses import dataclass, fields

from wire.protocol import Registration


@dataclass
class NodeRecord:
    node_id: str
    node_name: str
    wg_public_key: str
    vpn_ip: str
    public_ip: str
    port: int
    nat_port: int
    lan_ip: str
    nat_type: str
    registered: float
    last_seen: float

    @classmethod
    def from_registration(
        cls, registration: Registration, vpn_ip: str, public_ip: str, registered: float, last_seen: float
    ) -> NodeRecord:
        return cls(
            node_id=registration.node_id,
            node_name=registration.node_name,
            wg_public_key=registration.wg_public_key,
            vpn_ip=vpn_ip,
            public_ip=public_ip,
            port=registration.port,
            nat_port=registration.nat_port,
            lan_ip=registration.lan_ip or "",
            nat_type=registration.nat_type,
            registered=registered,
            last_seen=last_seen,
        )

    def describes_same_node(self, other: NodeRecord) -> bool:
        """True when nothing a peer cares about differs (times aside)."""
        return all(
            getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
            if f.name not in ("registered", "last_seen")
        )

    def peer_view(self, online: bool, now: float) -> dict:
        """The node as other nodes and the seed's API see it."""
        # Not dataclasses.asdict: it deep-copies field by field, and every
        # field here is a str or a number. This runs once per node in every
        # snapshot and seed /peers answer.
        view = {name: getattr(self, name) for name in RECORD_FIELDS}
        view["online"] = online
        view["status"] = "online" if online else "offline"
        view["last_seen_ago"] = max(0, int(now - self.last_seen))
        return view


RECORD_FIELDS = tuple(f.name for f in fields(NodeRecord))
