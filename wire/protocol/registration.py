"""``POST /register`` and ``POST /enroll``: the registration body, and the answer to it.

The body is built by :meth:`Registration.as_body` wherever a node (the
daemon, enrollment, the benchmarks' simulated nodes) sends one, and read by
:func:`parse_registration` on the server, so both ends agree by construction.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from wire.protocol.cursor import parse_cursor_text
from wire.protocol.enums import Heartbeat, NatType
from wire.protocol.errors import ProtocolError
from wire.protocol.routes import parse_routes
from wire.protocol.fields import (
    optional,
    parse_ip_address,
    parse_nat_type,
    parse_node_id,
    parse_node_name,
    parse_number,
    parse_object,
    parse_port,
    parse_str,
    parse_underlay_ipv6,
    parse_wg_public_key,
    required,
)

DEFAULT_PORT = 51820
MAX_JOIN_KEY = 200
MAX_CREDENTIAL = 200


@dataclass(frozen=True)
class Registration:
    """A validated registration (the seed's fields, plus extras)."""

    node_id: str
    node_name: str
    wg_public_key: str
    port: int = DEFAULT_PORT
    nat_port: int = DEFAULT_PORT
    lan_ip: str | None = None
    requested_vpn_ip: str | None = None
    nat_type: NatType = NatType.UNKNOWN
    # Networks this node offers to carry for the mesh (wire.protocol.routes).
    advertise_routes: tuple[str, ...] = ()
    # Its own IPv6 address on the underlay, where peers with IPv6 reach its
    # WireGuard port directly (no NAT in the way); None: it has none.
    public_ip6: str | None = None

    def as_body(self) -> dict[str, Any]:
        """The JSON body of ``POST /register`` (what :func:`parse_registration` reads back).

        Optional fields at their default are left out, as the seed's client
        leaves them out; the server reads an absent field as its default.
        """
        body: dict[str, Any] = {
            "node_id": self.node_id,
            "node_name": self.node_name,
            "wg_public_key": self.wg_public_key,
            "port": self.port,
            "nat_port": self.nat_port,
        }
        if self.nat_type is not NatType.UNKNOWN:
            body["nat_type"] = str(self.nat_type)
        if self.requested_vpn_ip:
            body["vpn_ip"] = self.requested_vpn_ip
        if self.lan_ip:
            body["lan_ip"] = self.lan_ip
        if self.advertise_routes:
            body["advertise_routes"] = list(self.advertise_routes)
        if self.public_ip6:
            body["public_ip6"] = self.public_ip6
        return body

    def enrollment_body(self, join_key: str) -> dict[str, Any]:
        """The JSON body of ``POST /enroll``: a registration plus the join key."""
        return {"join_key": join_key, **self.as_body()}


def parse_registration(body: dict[str, Any]) -> Registration:
    """Validate a registration; unknown fields are ignored for forward compatibility."""
    required(body, "node_id")
    wg_public_key = required(body, "wg_public_key")
    node_id = parse_node_id(body["node_id"])
    name_value = optional(body, "node_name")
    # The seed lets a node register without a name; it is then known by the
    # start of its id, as the seed's status view shows it.
    node_name = parse_node_name(name_value) if name_value is not None else _default_name(node_id)
    port = parse_port(body.get("port", DEFAULT_PORT), "port")
    nat_port_value = body.get("nat_port")
    nat_port = parse_port(nat_port_value, "nat_port") if nat_port_value is not None else port
    lan_value = optional(body, "lan_ip")
    vpn_value = optional(body, "vpn_ip")
    nat_value = optional(body, "nat_type")
    return Registration(
        node_id=node_id,
        node_name=node_name,
        wg_public_key=parse_wg_public_key(wg_public_key),
        port=port,
        nat_port=nat_port,
        lan_ip=parse_ip_address(lan_value, "lan_ip") if lan_value is not None else None,
        requested_vpn_ip=parse_ip_address(vpn_value, "vpn_ip") if vpn_value is not None else None,
        nat_type=parse_nat_type(nat_value) if nat_value is not None else NatType.UNKNOWN,
        advertise_routes=parse_routes(body.get("advertise_routes") or []),
        public_ip6=parse_underlay_ipv6(body["public_ip6"], "public_ip6") if body.get("public_ip6") else None,
    )


def parse_enrollment(body: dict[str, Any]) -> tuple[str, Registration]:
    """``POST /enroll``'s body: the join key (bounded, not yet checked) and the registration."""
    secret = body.get("join_key")
    if not isinstance(secret, str) or not secret:
        raise ProtocolError("join_key", "is required (the secret from a join token)")
    return secret[:MAX_JOIN_KEY], parse_registration(body)


def _default_name(node_id: str) -> str:
    label = re.sub(r"[^a-z0-9-]", "-", node_id[:12].lower()).strip("-")
    return label or "node"


@dataclass(frozen=True)
class LeaveRequest:
    """``POST /leave``: the node (its id, with its key) is going down."""

    node_id: str
    wg_public_key: str

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "wg_public_key": self.wg_public_key}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> LeaveRequest:
        return cls(node_id=parse_node_id(body.get("node_id")), wg_public_key=parse_wg_public_key(body.get("wg_public_key")))


@dataclass(frozen=True)
class RegisterAnswer:
    """What ``POST /register`` answers (and ``POST /enroll``, with ``credential``).

    The seed's server answers only ``vpn_ip`` and ``your_ip``; the rest are
    ours, read as empty ("", None) when absent.
    """

    vpn_ip: str
    your_ip: str = ""
    node_id: str = ""
    node_name: str = ""
    vpn_subnet: str = ""
    offline_after: float | None = None
    cursor: str = ""
    heartbeat: Heartbeat = Heartbeat.REGISTER
    credential: str | None = None
    # The node's IPv6 mesh address and the mesh's IPv6 prefix ("": none; a seed server gives none).
    vpn_ip6: str = ""
    vpn_subnet6: str = ""

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "ok": True,
            "vpn_ip": self.vpn_ip,
            "your_ip": self.your_ip,
            "node_id": self.node_id,
            "node_name": self.node_name,
            "vpn_subnet": self.vpn_subnet,
            "offline_after": self.offline_after,
            "cursor": self.cursor,
        }
        if self.heartbeat is Heartbeat.LONGPOLL:
            # The node's long-poll keeps it online: it may leave out the
            # periodic POST /register while nothing it registers changes.
            answer["heartbeat"] = str(Heartbeat.LONGPOLL)
        if self.credential is not None:
            answer["credential"] = self.credential
        if self.vpn_ip6:
            answer["vpn_ip6"] = self.vpn_ip6
            answer["vpn_subnet6"] = self.vpn_subnet6
        return answer

    @classmethod
    def from_json(cls, value: Any) -> RegisterAnswer:
        """Validate the server's answer before the node keeps any of it."""
        body = parse_object(value, "answer")
        node_id = optional(body, "node_id")
        node_name = optional(body, "node_name")
        subnet = optional(body, "vpn_subnet")
        offline_after = body.get("offline_after")
        cursor = optional(body, "cursor")
        heartbeat = body.get("heartbeat")
        credential = optional(body, "credential")
        return cls(
            vpn_ip=parse_ip_address(required(body, "vpn_ip"), "vpn_ip"),
            your_ip=_optional_ip(body, "your_ip"),
            node_id=parse_node_id(node_id) if node_id is not None else "",
            node_name=parse_node_name(node_name) if node_name is not None else "",
            vpn_subnet=_subnet(subnet) if subnet is not None else "",
            offline_after=parse_number(offline_after, "offline_after") if offline_after is not None else None,
            cursor=parse_cursor_text(cursor) if cursor is not None else "",
            # Only the value we know changes how we heartbeat; anything else is the seed's way.
            heartbeat=Heartbeat.LONGPOLL if heartbeat == Heartbeat.LONGPOLL else Heartbeat.REGISTER,
            credential=parse_str(credential, "credential", limit=MAX_CREDENTIAL) if credential is not None else None,
            vpn_ip6=_ipv6(body, "vpn_ip6"),
            vpn_subnet6=_subnet(body["vpn_subnet6"], "vpn_subnet6", version=6) if body.get("vpn_subnet6") else "",
        )


def _optional_ip(body: dict[str, Any], field: str) -> str:
    value = optional(body, field)
    return parse_ip_address(value, field) if value is not None else ""


def _subnet(value: Any, field: str = "vpn_subnet", version: int | None = None) -> str:
    text = parse_str(value, field, limit=50)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ProtocolError(field, f"{text[:40]!r} is not a network (ADDRESS/PREFIX)")
    if version is not None and network.version != version:
        raise ProtocolError(field, f"{text[:40]!r} is not an IPv{version} network")
    return str(network)


def _ipv6(body: dict[str, Any], field: str) -> str:
    """An IPv6 address, or "" when absent."""
    value = body.get(field)
    if not value:
        return ""
    address = parse_ip_address(value, field)
    if ":" not in address:
        raise ProtocolError(field, f"{address} is not an IPv6 address")
    return address
