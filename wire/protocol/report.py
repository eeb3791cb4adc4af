"""``POST /report``: how a node's traffic reaches its peers, for the admin's
view of the mesh (the dashboard's topology, ``/api/v1/mesh``).

A node sends one when a peer's path changes, and otherwise now and then
while its counters move (wire.node.report), never per packet. It tells,
per peer it has shaken hands with: the path as ``wire status`` shows it,
the kind of WireGuard endpoint, the endpoint itself, the age of the latest
handshake and the byte counters. Everything is bounded: at most
MAX_REPORTED_PEERS peers (its most recently active), in a body within the
API's usual limit, and every field typed and ranged here, so the server stores nothing it did
not check. Which peers a node may report about is the server's rule (its
own peers only: wire.server.reports).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from wire.protocol.enums import PathMode
from wire.protocol.errors import ProtocolError
from wire.protocol.fields import (
    optional,
    parse_list,
    parse_node_id,
    parse_object,
    parse_udp_endpoint,
    parse_wg_public_key,
    required,
)

# Its most recently active peers: at most about 300 bytes each, the report
# fits the API's body limit (MAX_BODY_BYTES, 64 KiB) whatever the names.
MAX_REPORTED_PEERS = 200
# What ``wire status`` calls a WireGuard endpoint (wire.node.peerview.endpoint_kind).
ENDPOINT_KINDS = ("none", "public", "lan", "ipv6", "relay-shim", "relay-kernel")
# WireGuard's counters are 64-bit; a handshake older than a year is no handshake.
MAX_COUNTER = 2**64 - 1
MAX_HANDSHAKE_AGE = 365 * 86400.0
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,39}\Z")


@dataclass(frozen=True)
class PeerReport:
    peer_node_id: str
    path: PathMode
    endpoint_kind: str
    endpoint: str | None
    handshake_age: float | None
    rx_bytes: int
    tx_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "peer_node_id": self.peer_node_id,
            "path": str(self.path),
            "endpoint_kind": self.endpoint_kind,
            "endpoint": self.endpoint,
            "handshake_age": self.handshake_age,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
        }

    @classmethod
    def from_json(cls, value: Any, where: str = "peer") -> PeerReport:
        body = parse_object(value, where)
        path = required(body, "path")
        try:
            mode = PathMode(path if isinstance(path, str) else "")
        except ValueError:
            raise ProtocolError(f"{where}.path", f"{path!r} is not one of {', '.join(PathMode)}") from None
        kind = required(body, "endpoint_kind")
        if kind not in ENDPOINT_KINDS:
            raise ProtocolError(f"{where}.endpoint_kind", f"{kind!r} is not one of {', '.join(ENDPOINT_KINDS)}")
        endpoint = optional(body, "endpoint")
        age = optional(body, "handshake_age")
        return cls(
            peer_node_id=parse_node_id(required(body, "peer_node_id"), f"{where}.peer_node_id"),
            path=mode,
            endpoint_kind=kind,
            endpoint=None if endpoint is None else parse_udp_endpoint(endpoint, f"{where}.endpoint"),
            handshake_age=None if age is None else _bounded_number(age, f"{where}.handshake_age", MAX_HANDSHAKE_AGE),
            rx_bytes=_counter(required(body, "rx_bytes"), f"{where}.rx_bytes"),
            tx_bytes=_counter(required(body, "tx_bytes"), f"{where}.tx_bytes"),
        )

    @property
    def shape(self) -> tuple[str, str, str, str | None]:
        """What a change of is worth a report at once (counters and ages are not)."""
        return (self.peer_node_id, str(self.path), self.endpoint_kind, self.endpoint)


@dataclass(frozen=True)
class NodeReport:
    node_id: str
    wg_public_key: str
    peers: tuple[PeerReport, ...]
    version: str = ""  # the node's wire version ("" for one that did not say)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "node_id": self.node_id,
            "wg_public_key": self.wg_public_key,
            "peers": [peer.to_json() for peer in self.peers],
        }
        if self.version:
            body["version"] = self.version
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> NodeReport:
        peers, version = parse_peers_and_version(body)
        return cls(
            node_id=parse_node_id(required(body, "node_id")),
            wg_public_key=parse_wg_public_key(required(body, "wg_public_key")),
            peers=peers,
            version=version,
        )


def parse_peers_and_version(body: dict[str, Any]) -> tuple[tuple[PeerReport, ...], str]:
    """A report's ``peers`` and ``version`` (also how the server reads back what it stored)."""
    listed = parse_list(required(body, "peers"), "peers")
    if len(listed) > MAX_REPORTED_PEERS:
        raise ProtocolError("peers", f"lists {len(listed)} peers; at most {MAX_REPORTED_PEERS}")
    peers = tuple(PeerReport.from_json(entry, f"peers[{i}]") for i, entry in enumerate(listed))
    seen: set[str] = set()
    for peer in peers:
        if peer.peer_node_id in seen:
            raise ProtocolError("peers", f"{peer.peer_node_id} is listed twice")
        seen.add(peer.peer_node_id)
    version = optional(body, "version")
    if version is not None and (not isinstance(version, str) or not _VERSION.match(version)):
        raise ProtocolError("version", "must be a version like 0.1.0 (letters, digits, . + -; at most 40)")
    return peers, version or ""


def _bounded_number(value: Any, field: str, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(field, "must be a number")
    # json.loads takes NaN and Infinity (neither is an age), and integers too
    # large for a float (math.isfinite would raise on them): compare first.
    if not 0 <= value <= limit or not math.isfinite(value):
        raise ProtocolError(field, f"{value!r} is not from 0 to {limit:.0f}")
    return float(value)


def _counter(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(field, "must be a whole number")
    if not 0 <= value <= MAX_COUNTER:
        raise ProtocolError(field, f"{value} is not a byte counter (0 to 2^64-1)")
    return value
