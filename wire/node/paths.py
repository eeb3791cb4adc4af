"""Choosing each peer's path: direct (LAN or public endpoint) or the relay.

The rules are symmetric, so both nodes of a pair reach the same choice from
the netmap without talking to each other:

- same public address (one NAT): direct, over the LAN;
- a hard (symmetric) NAT on one side while the other side is behind a NAT
  too: no endpoint learned by STUN is valid, so relay at once;
- otherwise try direct; no handshake within DIRECT_TIMEOUT seconds of
  configuring the peer means relay;
- a direct path that worked and then went silent (no handshake for
  HANDSHAKE_STALE seconds) falls back to relay;
- when either side's network facts change (address, port, NAT type), the
  pair tries direct again (or relays at once if the NAT rule says so).
"""

from __future__ import annotations

from dataclasses import dataclass

from wire.node.netmap import Peer, endpoint_for
from wire.protocol import NatType, PathMode

DIRECT_TIMEOUT = 15.0
# WireGuard re-handshakes every 2 minutes on a live tunnel (keepalives count).
HANDSHAKE_STALE = 180.0

NATTED = (NatType.EASY, NatType.HARD, NatType.UNKNOWN)


@dataclass(frozen=True)
class Me:
    node_name: str
    public_ip: str
    nat_type: NatType


@dataclass
class PathChoice:
    mode: PathMode  # DIRECT or RELAY
    reason: str  # why, without the mode: "hard NAT on web2", "via 203.0.113.2:40000"
    since: float
    facts: tuple
    verified: bool = False  # a handshake was seen on this path
    # Only a handshake at or after this time proves the path (0: any recent
    # one does, e.g. a tunnel that was already up when the daemon started).
    proof_after: float = 0.0

    @property
    def summary(self) -> str:
        """Mode and reason in one line: "relay: hard NAT on web2"."""
        return f"{self.mode}: {self.reason}"


def facts(me: Me, peer: Peer) -> tuple:
    """What the choice depends on; when any of it changes, choose again."""
    return (me.public_ip, me.nat_type, peer.public_ip, peer.nat_port, peer.lan_ip, peer.port, peer.nat_type)


def nat_rule(me: Me, peer: Peer) -> str | None:
    """Why the NAT types alone rule a direct path out (so: relay), or None."""
    if peer.lan_ip and peer.public_ip and peer.public_ip == me.public_ip:
        return None
    if me.nat_type == NatType.HARD and peer.nat_type in NATTED:
        return f"hard NAT on {me.node_name}"
    if peer.nat_type == NatType.HARD and me.nat_type in NATTED:
        return f"hard NAT on {peer.node_name}"
    return None


def direct_reason(me: Me, peer: Peer) -> str:
    endpoint = endpoint_for(peer, me.public_ip)
    if peer.lan_ip and peer.public_ip == me.public_ip:
        return f"same LAN, via {endpoint}"
    return f"via {endpoint}"


class PathPlanner:
    """Per-peer path state, moved forward by :meth:`plan`."""

    def __init__(self) -> None:
        self.choices: dict[str, PathChoice] = {}

    def plan(self, me: Me, peers: dict[str, Peer], handshakes: dict[str, float], now: float) -> dict[str, PathChoice]:
        """Update every peer's choice; ``handshakes`` maps public key to its last handshake time."""
        for node_id in list(self.choices):
            if node_id not in peers:
                del self.choices[node_id]
        for node_id, peer in peers.items():
            self.choices[node_id] = self._next(me, peer, handshakes.get(peer.wg_public_key, 0.0), now)
        return self.choices

    def _next(self, me: Me, peer: Peer, handshake: float, now: float) -> PathChoice:
        current = self.choices.get(peer.node_id)
        peer_facts = facts(me, peer)
        if current is None or current.facts != peer_facts:
            forced = nat_rule(me, peer)
            if forced:
                return PathChoice(PathMode.RELAY, forced, now, peer_facts)
            # Leaving the relay, an older handshake may have gone through it.
            proof_after = now if current is not None and current.mode is PathMode.RELAY else 0.0
            current = PathChoice(PathMode.DIRECT, direct_reason(me, peer), now, peer_facts, proof_after=proof_after)
        if current.mode is PathMode.RELAY:
            return current
        fresh = handshake > 0 and now - handshake <= HANDSHAKE_STALE
        if fresh and handshake >= current.proof_after:
            current.verified = True
            return current
        if not current.verified and now - current.since > DIRECT_TIMEOUT:
            return PathChoice(PathMode.RELAY, f"no direct handshake within {DIRECT_TIMEOUT:.0f}s", now, peer_facts)
        if current.verified and not fresh:
            return PathChoice(PathMode.RELAY, "the direct path stopped working", now, peer_facts)
        return current
