"""Each peer as this node sees it: the path WireGuard actually has, the
pair's mode and why (``wire status``, ``wire explain``), and the same
entries for the node's path reports to the server (wire.node.report)."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from wire.node.netmap import Peer
from wire.node.paths import PeerPath, Phase, is_shim_endpoint
from wire.node.wireguard import PeerStatus
from wire.protocol import PathMode
from wire.protocol.dns import dns_name_of
from wire.protocol.filter import admitted

if TYPE_CHECKING:
    from wire.node.daemon import NodeDaemon


def endpoint_kind(endpoint: str | None, peer: Peer, shims: Collection[str] = (), kernels: Collection[str] = ()) -> str:
    """What a WireGuard endpoint is: "relay-shim" (one of this node's relay
    shim sessions, ``shims``, or another loopback address that is not the
    peer's own), "relay-kernel" (the server's port of a session the
    server's kernel forwards, ``kernels``), "lan" (the peer's LAN address),
    "ipv6" (its IPv6 underlay address), "public", or "none"."""
    if not endpoint:
        return "none"
    if endpoint in shims:
        return "relay-shim"
    if endpoint in kernels:
        return "relay-kernel"
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    if host == peer.public_ip:
        return "public"  # a node with a public address has it as its LAN address too
    if peer.lan_ip and host == peer.lan_ip:
        return "lan"
    if peer.public_ip6 and host == peer.public_ip6:
        return "ipv6"
    return "relay-shim" if is_shim_endpoint(endpoint) else "public"


def _proven_since(path: PeerPath, status: PeerStatus) -> bool:
    """What proves the attempt now, that the planner (which looks once a
    second) may not have seen yet: bytes from the peer since it settled, or a
    handshake since it began (``wg`` shows whole seconds)."""
    if path.baseline_rx is not None and status.rx_bytes > path.baseline_rx:
        return True
    return bool(status.latest_handshake) and status.latest_handshake >= int(path.since)


def describe_path(
    path: PeerPath | None, status: PeerStatus | None, peer: Peer, now: float, shims: Collection[str] = (),
    relay_over_tcp: str = "", kernels: Collection[str] = (),
) -> dict:
    """How traffic reaches a peer: the path WireGuard actually has (its endpoint
    as ``wg show`` shows it), the pair's mode, why, and since when.
    ``relay_over_tcp``: why the shim's frames go over TCP ("" when over UDP)."""
    age = now - status.latest_handshake if status is not None and status.latest_handshake else None
    if status is None or path is None:
        why = "not configured in WireGuard yet"
        return {"path": PathMode.NONE, "reason": why, "why": why, "handshake_age": age, "endpoint_kind": "none"}
    actual = endpoint_kind(status.endpoint, peer, shims, kernels)
    relayed = actual in ("relay-shim", "relay-kernel")
    why = path.reason
    word = path.word
    if path.mode is PathMode.RELAY and word is not None and word.retry_at is not None:
        wait = max(0, word.retry_at - now)
        why += f"; direct tried again in {wait:.0f}s"
    shown: PathMode = path.mode
    if path.mode is PathMode.RELAY and not relayed:
        shown = PathMode.CONNECTING
        reason = f"relay chosen ({why}); the relay session is not ready, WireGuard sends to {status.endpoint or 'nowhere'}"
    elif path.mode is not PathMode.RELAY and relayed:
        shown = PathMode.CONNECTING
        reason = f"{path.summary}; WireGuard still sends to the relay {'shim ' if actual == 'relay-shim' else ''}{status.endpoint}"
    elif path.mode is not PathMode.RELAY and path.phase in (Phase.TRYING, Phase.FAILED) and not _proven_since(path, status):
        shown = PathMode.CONNECTING
        waited = now - path.since
        state = "reported to the server; waiting for its word" if path.phase is Phase.FAILED else f"{waited:.0f}s of {path.timeout:.0f}s"
        reason = f"trying {path.summary} (nothing from the peer yet: {state})"
    else:
        reason = f"{path.mode}: {why}"
        if path.phase is Phase.SILENT:
            reason += " (silent lately: probing)"
    if shown is PathMode.RELAY and relay_over_tcp:
        shown = PathMode.RELAY_TCP
        why += f"; over TCP: {relay_over_tcp}"
        reason = f"{PathMode.RELAY_TCP}: {why}"
    return {
        "path": shown,
        "mode": path.mode,
        "reason": reason,
        "why": why,
        "handshake_age": age,
        "endpoint_kind": actual,
        "phase": path.phase,
        "since": path.since,
        "since_ago": max(0.0, now - path.since),
        "decided_by": "server" if word is not None else "rule",
        # Where the daemon's planner sends (a direct or LAN path), whatever WireGuard shows now.
        "planned_endpoint": path.endpoint,
    }


def peer_entries(daemon: NodeDaemon, by_key: dict[str, PeerStatus], now: float, names: dict | None = None) -> list[dict]:
    """Each peer as ``wire status`` shows it (and the server's view of the
    mesh is told, wire.node.report), from WireGuard's view ``by_key``;
    ``names``: the mesh DNS status, when the caller has it already."""
    relay = daemon.reconciler.relay
    sessions = relay.sessions().values() if relay is not None else ()
    shims = {session.endpoint for session in sessions}
    # The server's kernel forwards these: WireGuard sends there, no shim in the way.
    kernels = {session.kernel_endpoint for session in sessions if session.kernel and session.kernel_endpoint}
    over_tcp = relay.tcp_reason if relay is not None and relay.over_tcp else ""
    # Which replica relays each relayed pair (a cluster's grants name it).
    relayed_at = {
        s.peer_node_id: {"relay_replica": s.relay_replica, "relay_address": f"{s.relay_host}:{s.relay[1]}"}
        for s in sessions
        if s.relay_replica
    }
    echoing = daemon.reconciler.echoing_peers()
    peers = []
    rules = daemon.netmap.filter
    resolved = daemon.reconciler.resolved_filter(rules) if rules is not None else None
    if names is None and daemon.names is not None:
        names = daemon.names.status()
    domain = names["domain"] if names and names["enabled"] else None
    for peer in sorted(daemon.netmap.peers.values(), key=lambda p: p.node_name):
        wg_peer = by_key.get(peer.wg_public_key)
        # Under a policy: what this peer may open on this node, and by which rule.
        policy = {} if resolved is None else {"may_open_here": admitted(resolved, peer.vpn_ip)}
        dns_name = dns_name_of(peer.node_name, domain) if domain else None
        entry = {
            "node_name": peer.node_name,
            "node_id": peer.node_id,
            "vpn_ip": peer.vpn_ip,
            "vpn_ip6": peer.vpn_ip6,
            "online": peer.online,
            "endpoint": wg_peer.endpoint if wg_peer else None,
            "rx_bytes": wg_peer.rx_bytes if wg_peer else 0,
            "tx_bytes": wg_peer.tx_bytes if wg_peer else 0,
            # It answers our path probes: a dead direct path to it is found within seconds.
            "echoing": peer.node_id in echoing,
            **describe_path(daemon.reconciler.paths.paths.get(peer.node_id), wg_peer, peer, now, shims, over_tcp, kernels),
            **policy,
            **relayed_at.get(peer.node_id, {}),
            **({"dns_name": dns_name} if dns_name else {}),
        }
        at = relayed_at.get(peer.node_id)
        if at is not None and entry["endpoint_kind"] in ("relay-shim", "relay-kernel"):
            entry["reason"] += f" (relayed by replica {at['relay_replica']} at {at['relay_address']})"
        peers.append(entry)
    return peers
