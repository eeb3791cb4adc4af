"""``POST /relay``: asking for a relay session, and the grant that answers it.

The grant is also what ``POST /punch`` carries in ``relay``. The server
builds one with :meth:`RelayGrant.to_json`; the node reads it once with
:meth:`RelayGrant.from_json`, so the relay shim only ever sees bytes of the
right length.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from wire.protocol.errors import ProtocolError
from wire.protocol.fields import (
    optional,
    parse_node_id,
    parse_object,
    parse_port,
    parse_str,
    parse_wg_public_key,
    required,
)
from wire.relayproto import KEY_BYTES, TOKEN_BYTES


@dataclass(frozen=True)
class RelayRequest:
    """The caller (``node_id`` with its key) asks for its side of a session with ``peer_node_id``.

    ``fastpath``: the caller's shim accepts frames sealed by the peer's side
    (the server's kernel fast path forwards them unchanged); only then does
    the grant carry the peer's token and key. Absent (an older node): False.
    ``held``: the token of the side the caller's shim holds and keeps (it
    asks only to learn the peer's side anew); the server keeps that side
    when it is still the session's, instead of making a fresh one.
    ``direct``: the caller can bind from its WireGuard port (a raw socket),
    so its side may get a port of its own (the grant's ``direct_port``).
    """

    node_id: str
    wg_public_key: str
    peer_node_id: str
    fastpath: bool = False
    held: bytes | None = None
    direct: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"node_id": self.node_id, "wg_public_key": self.wg_public_key, "peer_node_id": self.peer_node_id}
        if self.fastpath:
            body["fastpath"] = True
        if self.direct:
            body["direct"] = True
        if self.held is not None:
            body["held"] = self.held.hex()
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RelayRequest:
        return cls(
            node_id=parse_node_id(body.get("node_id")),
            wg_public_key=parse_wg_public_key(body.get("wg_public_key")),
            peer_node_id=parse_node_id(body.get("peer_node_id"), "peer_node_id"),
            fastpath=body.get("fastpath") is True,
            held=_hex_bytes(body["held"], "held", TOKEN_BYTES) if optional(body, "held") is not None else None,
            direct=body.get("direct") is True,
        )


@dataclass(frozen=True)
class RelayGrant:
    """One node's side of a relay session: what it seals and opens frames with."""

    session_id: str
    peer_node_id: str
    token: bytes  # TOKEN_BYTES: names the side in every frame
    key: bytes  # KEY_BYTES: the MAC key
    relay_port: int | None = None  # the server's relay UDP port (None: it did not say)
    # The peer side's token and key, for a node that asked with ``fastpath``:
    # frames the server's kernel forwards unchanged are sealed by the peer.
    peer_token: bytes | None = None
    peer_key: bytes | None = None
    # The side's own port on the server (it asked with ``direct``): where
    # its WireGuard sends once the kernel forwards the session from there.
    direct_port: int | None = None
    # The host of the replica that relays the session, when another than
    # the node's own may (replicas, wire.server.replicas); None: the node's
    # own server. A node takes it only if it is one of its servers' hosts.
    relay_host: str | None = None
    # The replica's name (for status views; no node acts on it).
    relay_replica: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "session_id": self.session_id,
            "peer_node_id": self.peer_node_id,
            "token": self.token.hex(),
            "key": base64.b64encode(self.key).decode(),
            "relay_port": self.relay_port,
        }
        if self.peer_token is not None and self.peer_key is not None:
            body["peer_token"] = self.peer_token.hex()
            body["peer_key"] = base64.b64encode(self.peer_key).decode()
        if self.direct_port is not None:
            body["direct_port"] = self.direct_port
        if self.relay_host is not None:
            body["relay_host"] = self.relay_host
        if self.relay_replica is not None:
            body["relay_replica"] = self.relay_replica
        return body

    @classmethod
    def from_json(cls, value: Any) -> RelayGrant:
        grant = parse_object(value, "relay grant")
        port = optional(grant, "relay_port")
        peer_token, peer_key = optional(grant, "peer_token"), optional(grant, "peer_key")
        direct_port = optional(grant, "direct_port")
        relay_host, relay_replica = optional(grant, "relay_host"), optional(grant, "relay_replica")
        if (peer_token is None) != (peer_key is None):
            raise ProtocolError("peer_key" if peer_key is None else "peer_token", "comes only with the other")
        return cls(
            session_id=parse_str(required(grant, "session_id"), "session_id", limit=64),
            peer_node_id=parse_node_id(grant.get("peer_node_id"), "peer_node_id"),
            token=_hex_bytes(required(grant, "token"), "token", TOKEN_BYTES),
            key=_base64_bytes(required(grant, "key"), "key", KEY_BYTES),
            relay_port=parse_port(port, "relay_port") if port is not None else None,
            peer_token=_hex_bytes(peer_token, "peer_token", TOKEN_BYTES) if peer_token is not None else None,
            peer_key=_base64_bytes(peer_key, "peer_key", KEY_BYTES) if peer_key is not None else None,
            direct_port=parse_port(direct_port, "direct_port") if direct_port is not None else None,
            relay_host=parse_relay_host(relay_host, "relay_host") if relay_host is not None else None,
            relay_replica=parse_str(relay_replica, "relay_replica", limit=200) if relay_replica is not None else None,
        )


@dataclass(frozen=True)
class RelayEndpoint:
    """A live replica's relay, as a long-poll answer lists them (``relays``)."""

    replica: str
    host: str
    port: int

    @classmethod
    def from_json(cls, value: Any) -> RelayEndpoint:
        entry = parse_object(value, "relay")
        return cls(
            replica=parse_str(required(entry, "replica"), "replica", limit=200),
            host=parse_relay_host(required(entry, "host"), "host"),
            port=parse_port(required(entry, "port"), "port"),
        )


def parse_relay_host(value: Any, field: str) -> str:
    """A host name or address (a URL's host part), nothing else."""
    text = parse_str(value, field, limit=253)
    if not text or not all(c.isascii() and (c.isalnum() or c in ".-:") for c in text):
        raise ProtocolError(field, f"{text[:40]!r} is not a host name or address")
    return text


def _hex_bytes(value: Any, field: str, size: int) -> bytes:
    text = parse_str(value, field, limit=2 * size)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ProtocolError(field, "is not hex")
    if len(raw) != size:
        raise ProtocolError(field, f"is {len(raw)} bytes; a relay {field} is {size}")
    return raw


def _base64_bytes(value: Any, field: str, size: int) -> bytes:
    text = parse_str(value, field, limit=4 * size)
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ProtocolError(field, "is not base64")
    if len(raw) != size:
        raise ProtocolError(field, f"is {len(raw)} bytes; a relay {field} is {size}")
    return raw
