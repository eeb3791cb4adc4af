"""The coordination server's record of one node, and its word on one pair."""

from __future__ import annotations

from dataclasses import dataclass, fields

from wire.protocol import NatType, PairPath, PathMode, Registration, nat_type_of, peer_view_json
from wire.protocol.peers import RECORD_FIELDS as VIEW_FIELDS
from wire.protocol.routes import EXIT_ROUTES, is_exit_route, route_order


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
    nat_type: NatType
    registered: float
    last_seen: float
    # The admin's (or the join key's) tags, sorted; a node cannot set its own.
    tags: tuple[str, ...] = ()
    # Server-only (never in a view as such): the networks the node offers to
    # carry, as its last registration said, and those the admin or the
    # policy's autoApprovers approved (kept when the node stops advertising
    # one, as in Tailscale). Both canonical, in route order.
    advertised_routes: tuple[str, ...] = ()
    approved_routes: tuple[str, ...] = ()
    # Its IPv6 mesh address, from the mesh's prefix (wire.addressing.Ipv6Pool);
    # "" until the server has one for it. A view carries it when set (Registry.view).
    vpn_ip6: str = ""
    # Its own IPv6 underlay address, as its last registration said ("": none).
    public_ip6: str = ""

    def __post_init__(self) -> None:
        # Rows come back from the store (and seed state files) as text; one
        # this version does not know counts as unknown.
        if type(self.nat_type) is not NatType:
            self.nat_type = nat_type_of(self.nat_type)
        # The store keeps these space-separated.
        if isinstance(self.tags, str):
            self.tags = tuple(self.tags.split())
        if isinstance(self.advertised_routes, str):
            self.advertised_routes = tuple(self.advertised_routes.split())
        if isinstance(self.approved_routes, str):
            self.approved_routes = tuple(self.approved_routes.split())

    @property
    def served_routes(self) -> tuple[str, ...]:
        """What it may carry for others: advertised and approved."""
        approved = set(self.approved_routes)
        return tuple(r for r in self.advertised_routes if r in approved)

    @property
    def subnet_routes(self) -> tuple[str, ...]:
        """Served routes that are not exit routes (those a primary is elected for)."""
        return tuple(r for r in self.served_routes if not is_exit_route(r))

    @property
    def offers_exit(self) -> bool:
        return any(r in EXIT_ROUTES for r in self.served_routes)

    @classmethod
    def from_registration(
        cls,
        registration: Registration,
        vpn_ip: str,
        public_ip: str,
        registered: float,
        last_seen: float,
        tags: tuple[str, ...] = (),
        approved_routes: tuple[str, ...] = (),
        vpn_ip6: str = "",
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
            tags=tags,
            advertised_routes=registration.advertise_routes,
            approved_routes=approved_routes,
            vpn_ip6=vpn_ip6,
            public_ip6=registration.public_ip6 or "",
        )

    def describes_same_node(self, other: NodeRecord) -> bool:
        """True when nothing a peer cares about differs (times aside)."""
        return all(
            getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
            if f.name not in ("registered", "last_seen")
        )

    # The node as other nodes and the seed's API see it: peer_view(online, now).
    # The protocol's function itself, not a wrapper: this runs once per node
    # in every snapshot and seed /peers answer.
    peer_view = peer_view_json


RECORD_FIELDS = tuple(f.name for f in fields(NodeRecord))
# What only the server holds; a view shows the rest of the record whole (a
# field added here is added there) and, of routes, what is served (Registry.view).
SERVER_ONLY_FIELDS = ("advertised_routes", "approved_routes")
# What a view carries only when set (Registry.view), as a seed's view lacks it.
SHOWN_WHEN_SET_FIELDS = ("vpn_ip6", "public_ip6")
assert (
    tuple(f for f in RECORD_FIELDS if f not in SERVER_ONLY_FIELDS + SHOWN_WHEN_SET_FIELDS) == VIEW_FIELDS
), (RECORD_FIELDS, VIEW_FIELDS)


def in_route_order(routes) -> tuple[str, ...]:
    return tuple(sorted(set(routes), key=route_order))


@dataclass(frozen=True)
class PairWord:
    """The server's word on one pair of nodes (:class:`~wire.protocol.PairPath`
    without ``peer``): the same for both, stored once under the pair's
    ordered ids ``(lo, hi)``."""

    mode: PathMode
    reason: str
    since: float
    tries: int = 0
    retry_at: float | None = None
    family: int = 0  # 4: direct over IPv4 only (IPv6 failed)

    def seen_from(self, peer: str) -> PairPath:
        """The word as the node on the other side of ``peer`` is told it."""
        return PairPath(peer, self.mode, self.reason, self.since, self.tries, self.retry_at, self.family)


def pair_key(a: str, b: str) -> tuple[str, str]:
    """A pair's key: its node ids in order, so (a, b) and (b, a) are one pair."""
    return (a, b) if a < b else (b, a)
