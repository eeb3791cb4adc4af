"""The protocol's closed vocabularies, as str-valued enums.

A member *is* its string (``NatType.EASY == "easy"``, and ``json.dumps``
writes ``"easy"``), so JSON on the wire and on disk is what it always was,
while code compares members instead of spelling strings.
"""

from __future__ import annotations

from enum import StrEnum


class NatType(StrEnum):
    """What a node's STUN probe learned of the NAT in front of it."""

    UNKNOWN = "unknown"  # no probe, or no answer
    NONE = "none"  # mapped to its own address: no NAT
    EASY = "easy"  # the same mapping towards every destination
    HARD = "hard"  # a mapping per destination (symmetric): STUN's endpoint is useless to peers


class PathMode(StrEnum):
    """How this node's traffic reaches a peer (the ``path`` of a status view)."""

    DIRECT = "direct"  # WireGuard sends to the peer's own public endpoint
    LAN = "lan"  # to the peer's LAN address: both sit behind the same public address
    RELAY = "relay"  # through the coordination server's relay, via the local shim
    RELAY_TCP = "relay-tcp"  # the same, the shim's frames over TCP (UDP to the server is blocked); shown only
    CONNECTING = "connecting"  # direct chosen, no handshake proves it yet
    NONE = "none"  # not configured in WireGuard (yet)


class RegisterOutcome(StrEnum):
    """What a registration did (the ``outcome`` label of ``wire_registrations_total``)."""

    NEW = "new"
    CHANGED = "changed"
    HEARTBEAT = "heartbeat"


class Heartbeat(StrEnum):
    """How the server wants a node's heartbeat (``"heartbeat"`` in a register answer)."""

    REGISTER = "register"  # POST /register every 30 s (the seed's way; field absent on the wire)
    LONGPOLL = "longpoll"  # the authenticated long-poll counts
