"""The daemon's local control API: a UNIX socket (0600) for the CLI and MCP.

``GET /status`` is the node's own view (its phase, interface, server
contact, each peer's endpoint, handshake age and traffic); ``GET
/events?after=N&wait=S`` the daemon's events after N (a long-poll: waits up
to S seconds for one) and its phase, which ``wire up`` waits on; ``POST
/rename`` registers under another name; ``POST /down`` makes the node leave
the mesh and the daemon exit.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.web import server

from wire.node.servers import servers_of
from wire.node.daemon import NodeDaemon, RenameRefused, SettingsRefused
from wire.node.events import MAX_WAIT
from wire.node.netmap import Peer
from wire.node.paths import PeerPath, Phase, is_shim_endpoint
from wire.node.settings import parse_settings, settings_of
from wire.node.wireguard import PeerStatus
from wire.protocol import PathMode, ProtocolError, parse_node_name
from wire.protocol.dns import dns_name_of
from wire.protocol.filter import admitted
from wire.web import ApiError, JsonResource, JsonRoot, make_site, read_json_body

CONTROL_SOCKET = "control.sock"


def control_socket_path(config_dir: str) -> str:
    return os.path.join(config_dir, CONTROL_SOCKET)


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


async def node_status(daemon: NodeDaemon) -> dict:
    now = daemon.clock.seconds()
    interface: dict = {"name": daemon.wireguard.name, "backend": daemon.wireguard.backend, "up": daemon.interface_ready}
    by_key: dict[str, PeerStatus] = {}
    if daemon.interface_ready:
        try:
            wg = await daemon.wireguard.status()
        except Exception as e:
            interface["error"] = str(e)
        else:
            interface["listen_port"] = wg.listen_port
            by_key = {p.public_key: p for p in wg.peers}
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
    peers = []
    rules = daemon.netmap.filter
    resolved = daemon.reconciler.resolved_filter(rules) if rules is not None else None
    names = daemon.names.status() if daemon.names is not None else None
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
            **describe_path(daemon.reconciler.paths.paths.get(peer.node_id), wg_peer, peer, now, shims, over_tcp, kernels),
            **policy,
            **relayed_at.get(peer.node_id, {}),
            **({"dns_name": dns_name} if dns_name else {}),
        }
        at = relayed_at.get(peer.node_id)
        if at is not None and entry["endpoint_kind"] in ("relay-shim", "relay-kernel"):
            entry["reason"] += f" (relayed by replica {at['relay_replica']} at {at['relay_address']})"
        peers.append(entry)
    config = daemon.config
    contact = daemon.contact
    return {
        "node": {
            "node_name": config.node_name,
            "node_id": config.node_id,
            "vpn_ip": config.vpn_ip,
            "vpn_subnet": config.vpn_subnet,
            "vpn_ip6": config.vpn_ip6,
            "vpn_subnet6": config.vpn_subnet6,
            "public_ip": contact.public_ip,
            "public_ip6": daemon.me().public_ip6,
            "listen_port": config.listen_port,
            "nat_type": daemon.nat.nat_type if daemon.nat else "unknown",
            "nat_port": daemon.nat.mapped.port if daemon.nat else None,
            "wg_public_key": daemon.public_key,
            "state": daemon.state.phase.value,
            "state_reason": daemon.state.reason,
        },
        "server": {
            "url": config.server_url,
            # Every replica the node may move to, the one in use among them (wire.node.servers).
            "replicas": list(servers_of(config)),
            "reachable": contact.reachable,
            "registered": contact.registered,
            "last_error": contact.last_error,
            "last_status": contact.last_status,
            "last_contact_ago": (now - contact.last_contact) if contact.last_contact else None,
        },
        "interface": interface,
        "netmap_cursor": daemon.netmap.cursor,
        "peers": peers,
        # Loops failing now, and the server's last answer with entries this node refused.
        "failing": daemon.failures.failing(),
        "bad_answers": daemon.bad_answers.view(now),
        "policy": policy_state(daemon),
        "dns": names,
        "routing": daemon.reconciler.routing.status() if daemon.reconciler.routing is not None else None,
        "relay": relay_state(relay),
    }


def relay_state(relay) -> dict | None:
    """How this node's relayed frames reach the server: over UDP, or over the TCP relay stream, and why."""
    if relay is None:
        return None
    stream = relay.stream
    return {
        "transport": relay.transport,
        "why": relay.tcp_reason or None,
        "sessions": len(relay.sessions()),
        "stream": None if stream is None else {"up": stream.is_up, "problem": stream.problem, "dropped": stream.dropped},
    }


def policy_state(daemon: NodeDaemon) -> dict:
    """Whether an access policy concerns this node, its filter's size, and why it is not in force."""
    rules = daemon.netmap.filter
    return {
        "in_force": rules is not None and daemon.reconciler.filter_problem is None,
        "rules": None if rules is None else len(rules),
        "problem": daemon.reconciler.filter_problem,
    }


class Status(JsonResource):
    methods = ("GET",)

    def __init__(self, daemon: NodeDaemon):
        super().__init__()
        self._daemon = daemon

    async def get(self, request: server.Request) -> dict:
        return await node_status(self._daemon)


class Down(JsonResource):
    methods = ("POST",)

    def __init__(self, daemon: NodeDaemon, clock: IReactorTime, exit_process: Callable[[], None]):
        super().__init__()
        self._daemon = daemon
        self._clock = clock
        self._exit_process = exit_process

    async def post(self, request: server.Request) -> dict:
        server_told = await self._daemon.leave()
        # Answer first, then exit.
        self._clock.callLater(0.1, self._exit_process)
        return {"ok": True, "interface_removed": self._daemon.wireguard.name, "server_told": server_told}


def daemon_state(daemon: NodeDaemon) -> dict:
    """The phase and what ``wire up`` reports once it is registered (no ``wg`` spawned)."""
    return {
        "state": daemon.state.phase.value,
        "reason": daemon.state.reason,
        "interface_up": daemon.state.interface_up,
        "node_name": daemon.config.node_name,
        "vpn_ip": daemon.config.vpn_ip,
    }


class Events(JsonResource):
    methods = ("GET",)

    def __init__(self, daemon: NodeDaemon):
        super().__init__()
        self._daemon = daemon

    async def get(self, request: server.Request) -> dict:
        try:
            after = int(_arg(request, b"after", "0"))
            wait = min(MAX_WAIT, max(0.0, float(_arg(request, b"wait", "0"))))
        except ValueError:
            raise ApiError(400, "after and wait must be numbers")
        events = await self._daemon.events.wait(after, wait)
        return {"events": events, "last": self._daemon.events.last, **daemon_state(self._daemon)}


def _arg(request: server.Request, name: bytes, default: str) -> str:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name) or [default.encode()]
    return values[0].decode("ascii", "replace")


class Rename(JsonResource):
    methods = ("POST",)

    def __init__(self, daemon: NodeDaemon):
        super().__init__()
        self._daemon = daemon

    async def post(self, request: server.Request) -> dict:
        body = read_json_body(request)
        try:
            name = parse_node_name(body.get("node_name"))
            return {"ok": True, "node_name": await self._daemon.rename(name)}
        except ProtocolError as e:
            raise ApiError(400, str(e))
        except RenameRefused as e:
            raise ApiError(409, str(e))


class Settings(JsonResource):
    """``POST /settings``: ``wire set`` (wire.node.settings); GET: as they are."""

    methods = ("GET", "POST")

    def __init__(self, daemon: NodeDaemon):
        super().__init__()
        self._daemon = daemon

    async def get(self, request: server.Request) -> dict:
        return {"ok": True, "settings": settings_of(self._daemon.config)}

    async def post(self, request: server.Request) -> dict:
        try:
            changes = parse_settings(read_json_body(request))
        except ProtocolError as e:
            raise ApiError(400, str(e))
        try:
            return {"ok": True, "settings": await self._daemon.change_settings(changes)}
        except SettingsRefused as e:
            raise ApiError(409, str(e))


def build_control_site(daemon: NodeDaemon, clock: IReactorTime, exit_process: Callable[[], None]) -> server.Site:
    root = JsonRoot()
    root.putChild(b"status", Status(daemon))
    root.putChild(b"events", Events(daemon))
    root.putChild(b"rename", Rename(daemon))
    root.putChild(b"settings", Settings(daemon))
    root.putChild(b"down", Down(daemon, clock, exit_process))
    return make_site(root, timeout=30, reactor=clock)
