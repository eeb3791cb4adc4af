"""What a node is told of the others: a peer view, and the netmap answer that carries them.

The server writes a view with :func:`peer_view_json` straight from its
record (that runs once per node in every snapshot: no intermediate object),
and a node reads it back with :meth:`PeerView.from_json`, once, when the
answer arrives. ``GET /peers`` (the seed's list) and ``GET /status`` carry
the same views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

from wire.protocol.cursor import parse_cursor_text
from wire.protocol.enums import NatType
from wire.protocol.errors import ProtocolError
from wire.protocol.dns import DnsConfig
from wire.protocol.filter import FilterRule, parse_filter_rules
from wire.protocol.routefilter import ANSWER_KEY as ROUTE_FILTER_KEY
from wire.protocol.routefilter import ForwardRule, parse_route_filter
from wire.protocol.routes import parse_routes
from wire.protocol.paths import PairPath
from wire.protocol.relay import RelayEndpoint
from wire.protocol.fields import (
    MAX_TAGS,
    parse_bool,
    parse_ip_address,
    parse_list,
    parse_node_id,
    parse_number,
    parse_object,
    parse_port,
    parse_tag,
    parse_underlay_ipv6,
    parse_wg_public_key,
)
from wire.protocol.registration import DEFAULT_PORT

# The server's record of a node, field by field, in the order a view lists
# them (the seed's /status fields); wire.server.model.NodeRecord has exactly these.
RECORD_FIELDS = (
    "node_id",
    "node_name",
    "wg_public_key",
    "vpn_ip",
    "public_ip",
    "port",
    "nat_port",
    "lan_ip",
    "nat_type",
    "registered",
    "last_seen",
    "tags",
)
MAX_SHOWN_NAME = 63
T = TypeVar("T")


class NodeFacts(Protocol):
    """Anything with a record's fields (the server's NodeRecord)."""

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
    tags: tuple[str, ...]


def peer_view_json(record: NodeFacts, online: bool, now: float) -> dict[str, Any]:
    """A node as other nodes and the seed's API see it."""
    # Not dataclasses.asdict: it deep-copies field by field, and every field
    # here is a str or a number.
    view = {name: getattr(record, name) for name in RECORD_FIELDS}
    view["tags"] = list(record.tags)  # as JSON has it, in process too
    view["online"] = online
    view["status"] = "online" if online else "offline"
    view["last_seen_ago"] = max(0, int(now - record.last_seen))
    return view


@dataclass(frozen=True)
class PeerView:
    """One other node, validated: nothing from the network reaches ``wg`` unchecked.

    Read leniently where the seed's server may leave a field out (a node
    without a public address or a LAN address yet, no ``nat_port``), strictly
    where a value would reach WireGuard (ids, keys, addresses, ports).
    """

    node_id: str
    node_name: str
    vpn_ip: str
    wg_public_key: str
    public_ip: str = ""
    nat_port: int = DEFAULT_PORT
    port: int = DEFAULT_PORT
    lan_ip: str = ""
    nat_type: NatType = NatType.UNKNOWN
    online: bool = True
    # Only shown (status views); None when the server did not say.
    registered: float | None = None
    last_seen: float | None = None
    tags: tuple[str, ...] = ()
    # The subnet routes this peer is the primary router for, and whether it
    # offers an approved exit (wire.protocol.routes): they may reach AllowedIPs, so strict.
    routes: tuple[str, ...] = ()
    exit_node: bool = False
    # Its IPv6 mesh address ("": none; a seed server gives none). Reaches AllowedIPs: strict.
    vpn_ip6: str = ""
    # Its own IPv6 underlay address ("": none): a direct path goes there,
    # to its WireGuard port, when this node has IPv6 too. Reaches WireGuard: strict.
    public_ip6: str = ""

    @classmethod
    def from_json(cls, value: Any) -> PeerView:
        view = parse_object(value, "peer")
        port = parse_port(view.get("port") or DEFAULT_PORT, "port")
        name = view.get("node_name")
        return cls(
            node_id=parse_node_id(view.get("node_id")),
            # Shown, never acted on: a seed server stores any name it was given.
            node_name=name[:MAX_SHOWN_NAME] if isinstance(name, str) else "",
            vpn_ip=parse_ip_address(view.get("vpn_ip"), "vpn_ip"),
            wg_public_key=parse_wg_public_key(view.get("wg_public_key")),
            public_ip=_ip_or_empty(view, "public_ip"),
            nat_port=parse_port(view.get("nat_port") or port, "nat_port"),
            port=port,
            lan_ip=_ip_or_empty(view, "lan_ip"),
            nat_type=nat_type_of(view.get("nat_type")),
            online=bool(view.get("online", True)),
            registered=_number_or_none(view, "registered"),
            last_seen=_number_or_none(view, "last_seen"),
            tags=_shown_tags(view.get("tags")),
            routes=parse_routes(view.get("routes") or [], "routes"),
            exit_node=parse_bool(view.get("exit_node", False), "exit_node"),
            vpn_ip6=_ipv6_or_empty(view, "vpn_ip6"),
            public_ip6=parse_underlay_ipv6(view["public_ip6"], "public_ip6") if view.get("public_ip6") else "",
        )


def _shown_tags(value: Any) -> tuple[str, ...]:
    """A peer's tags, for showing: the valid ones (a seed server sends none)."""
    if not isinstance(value, list):
        return ()
    shown = set()
    for tag in value[:MAX_TAGS]:
        try:
            shown.add(parse_tag(tag))
        except ProtocolError:
            continue
    return tuple(sorted(shown))


def nat_type_of(value: Any) -> NatType:
    """A NAT type as a peer reports it; one this node does not know counts as unknown."""
    try:
        return NatType(value)
    except ValueError:
        return NatType.UNKNOWN


def _ipv6_or_empty(view: dict[str, Any], field: str) -> str:
    address = _ip_or_empty(view, field)
    if address and ":" not in address:
        raise ProtocolError(field, f"{address} is not an IPv6 address")
    return address


def _ip_or_empty(view: dict[str, Any], field: str) -> str:
    value = view.get(field)
    return parse_ip_address(value, field) if value else ""


def _number_or_none(view: dict[str, Any], field: str) -> float | None:
    value = view.get(field)
    return parse_number(value, field) if value is not None else None


def netmap_answer_json(cursor: str, full: bool, upserts: list[dict[str, Any]], removals: list[str]) -> dict[str, Any]:
    """A long-poll answer, as the server sends it (``upserts`` are :func:`peer_view_json` views)."""
    return {"cursor": cursor, "full": full, "upserts": upserts, "removals": removals}


def with_paths(answer: dict[str, Any], paths: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
    """The same answer, carrying one viewer's pair paths (:meth:`PairPath.to_json`)."""
    return {**answer, "paths": paths, "paths_full": complete}


def asking_to_register(answer: dict[str, Any]) -> dict[str, Any]:
    """The same answer, telling the node to register again (its endpoint moved)."""
    return {**answer, "register": True}


@dataclass(frozen=True)
class NetmapAnswer:
    """A long-poll answer (``GET /peers?since=…``), validated.

    An upsert or removal that does not validate is skipped (and named in
    ``skipped``): one bad entry must not cost a node the rest of its mesh.
    """

    cursor: str | None  # None: the server gave none (keep ours)
    full: bool
    upserts: tuple[PeerView, ...]
    removals: tuple[str, ...]
    register: bool = False
    skipped: tuple[str, ...] = ()
    # The server's word on this node's pairs (wire.protocol.paths): those
    # changed since the cursor, or with paths_full (and in a full answer)
    # every pair it has a word on.
    paths: tuple[PairPath, ...] = ()
    paths_full: bool = False
    # The access policy's packet filter for traffic to this node
    # (wire.protocol.filter): given (a list) replaces the one in force;
    # null: no policy, no filter; absent (or refused whole): unchanged.
    filter: tuple[FilterRule, ...] | None = None
    filter_given: bool = False
    # A filter was sent and could not be read: there is a policy this node cannot enforce.
    filter_refused: bool = False
    # This node's own record, apart from the peers (under an access policy
    # the upserts hold only the peers it may see).
    me: PeerView | None = None
    # The mesh's DNS (wire.protocol.dns): given (an object) replaces the one
    # held; null: the server serves no mesh DNS; absent (or refused whole): unchanged.
    dns: DnsConfig | None = None
    dns_given: bool = False
    # A subnet router's forwarding filter (wire.protocol.routefilter), under
    # its own key so that nothing takes it for rules about traffic to the
    # node: given (a list) replaces the one held; null: no policy, forward
    # everything; absent: unchanged; refused: this router forwards nothing.
    route_filter: tuple[ForwardRule, ...] | None = None
    route_filter_given: bool = False
    route_filter_refused: bool = False
    # The live replicas' relays (a cluster's servers say; None: not given),
    # wire.server.replicas: a change has relayed nodes ask for grants again.
    relays: tuple[RelayEndpoint, ...] | None = None

    @classmethod
    def from_json(cls, value: Any) -> NetmapAnswer:
        answer = parse_object(value, "answer")
        skipped: list[str] = []
        filter_rules: tuple[FilterRule, ...] | None = None
        filter_given = "filter" in answer
        filter_refused = False
        if filter_given and answer["filter"] is not None:
            try:
                filter_rules = parse_filter_rules(answer["filter"])
            except ProtocolError as e:
                # All or nothing: half a filter would open or close the wrong ports.
                skipped.append(f"skipped the packet filter (the one in force stays): {e}")
                filter_given = False
                filter_refused = True
        dns: DnsConfig | None = None
        dns_given = "dns" in answer
        if dns_given and answer["dns"] is not None:
            try:
                dns = DnsConfig.from_json(answer["dns"])
            except ProtocolError as e:
                skipped.append(f"skipped the DNS settings (those held stay): {e}")
                dns_given = False
        route_filter: tuple[ForwardRule, ...] | None = None
        route_filter_given = ROUTE_FILTER_KEY in answer
        route_filter_refused = False
        if route_filter_given and answer[ROUTE_FILTER_KEY] is not None:
            try:
                route_filter = parse_route_filter(answer[ROUTE_FILTER_KEY])
            except ProtocolError as e:
                skipped.append(f"skipped the forwarding filter (this router forwards nothing from the mesh): {e}")
                route_filter_given, route_filter_refused = False, True
        upserts = _each_valid(answer, "upserts", PeerView.from_json, "a peer entry", skipped)
        removals = _each_valid(answer, "removals", lambda v: parse_node_id(v, "removals"), "a removal", skipped)
        paths = _each_valid(answer, "paths", PairPath.from_json, "a path entry", skipped)
        relays = tuple(_each_valid(answer, "relays", RelayEndpoint.from_json, "a relay", skipped)) if "relays" in answer else None
        cursor = answer.get("cursor")
        full = parse_bool(answer.get("full", False), "full")
        return cls(
            cursor=parse_cursor_text(cursor) if cursor not in (None, "") else None,
            full=full,
            upserts=tuple(upserts),
            removals=tuple(removals),
            register=parse_bool(answer.get("register", False), "register"),
            skipped=tuple(skipped),
            paths=tuple(paths),
            paths_full=full or parse_bool(answer.get("paths_full", False), "paths_full"),
            filter=filter_rules,
            filter_given=filter_given,
            filter_refused=filter_refused,
            me=_own_record(answer.get("me"), skipped),
            dns=dns,
            dns_given=dns_given,
            route_filter=route_filter,
            route_filter_given=route_filter_given,
            route_filter_refused=route_filter_refused,
            relays=relays,
        )


def _own_record(value: Any, skipped: list[str]) -> PeerView | None:
    if value is None:
        return None
    try:
        return PeerView.from_json(value)
    except ProtocolError as e:
        skipped.append(f"skipped this node's own record: {e}")
        return None


def _each_valid(answer: dict[str, Any], field: str, parse: Callable[[Any], T], what: str, skipped: list[str]) -> list[T]:
    """Every entry of the list ``field`` that parses; the others are named in ``skipped``."""
    valid = []
    for entry in parse_list(answer.get(field, []), field):
        try:
            valid.append(parse(entry))
        except ProtocolError as e:
            skipped.append(f"skipped {what}: {e}")
    return valid
