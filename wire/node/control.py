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
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.web import server

from wire.node.daemon import NodeDaemon, RenameRefused
from wire.node.events import MAX_WAIT
from wire.node.paths import HANDSHAKE_STALE, PathChoice
from wire.node.wireguard import PeerStatus
from wire.protocol import PathMode, ProtocolError, parse_node_name
from wire.web import ApiError, JsonResource, JsonRoot, make_site, read_json_body

CONTROL_SOCKET = "control.sock"


def control_socket_path(config_dir: str) -> str:
    return os.path.join(config_dir, CONTROL_SOCKET)


def describe_path(choice: PathChoice | None, status: PeerStatus | None, now: float) -> dict:
    """How traffic reaches a peer: the chosen path, why, and what WireGuard shows."""
    age = now - status.latest_handshake if status is not None and status.latest_handshake else None
    if status is None or choice is None:
        why = "not configured in WireGuard yet"
        return {"path": PathMode.NONE, "reason": why, "why": why, "handshake_age": age}
    # The planner looks every few seconds; a handshake since then counts now.
    proven = choice.verified or (age is not None and age <= HANDSHAKE_STALE and status.latest_handshake >= choice.proof_after)
    # "reason" is the one line people read; "why" the same without the mode.
    if choice.mode is PathMode.DIRECT and not proven:
        return {"path": PathMode.CONNECTING, "reason": f"trying {choice.summary} (no handshake yet)", "why": choice.reason, "handshake_age": age}
    return {"path": choice.mode, "reason": choice.summary, "why": choice.reason, "handshake_age": age}


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
    peers = []
    for peer in sorted(daemon.netmap.peers.values(), key=lambda p: p.node_name):
        wg_peer = by_key.get(peer.wg_public_key)
        peers.append(
            {
                "node_name": peer.node_name,
                "node_id": peer.node_id,
                "vpn_ip": peer.vpn_ip,
                "online": peer.online,
                "endpoint": wg_peer.endpoint if wg_peer else None,
                "rx_bytes": wg_peer.rx_bytes if wg_peer else 0,
                "tx_bytes": wg_peer.tx_bytes if wg_peer else 0,
                **describe_path(daemon.reconciler.paths.choices.get(peer.node_id), wg_peer, now),
            }
        )
    config = daemon.config
    contact = daemon.contact
    return {
        "node": {
            "node_name": config.node_name,
            "node_id": config.node_id,
            "vpn_ip": config.vpn_ip,
            "vpn_subnet": config.vpn_subnet,
            "public_ip": contact.public_ip,
            "listen_port": config.listen_port,
            "nat_type": daemon.nat.nat_type if daemon.nat else "unknown",
            "nat_port": daemon.nat.mapped.port if daemon.nat else None,
            "wg_public_key": daemon.public_key,
            "state": daemon.state.phase.value,
            "state_reason": daemon.state.reason,
        },
        "server": {
            "url": config.server_url,
            "reachable": contact.reachable,
            "registered": contact.registered,
            "last_error": contact.last_error,
            "last_status": contact.last_status,
            "last_contact_ago": (now - contact.last_contact) if contact.last_contact else None,
        },
        "interface": interface,
        "netmap_cursor": daemon.netmap.cursor,
        "peers": peers,
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


def build_control_site(daemon: NodeDaemon, clock: IReactorTime, exit_process: Callable[[], None]) -> server.Site:
    root = JsonRoot()
    root.putChild(b"status", Status(daemon))
    root.putChild(b"events", Events(daemon))
    root.putChild(b"rename", Rename(daemon))
    root.putChild(b"down", Down(daemon, clock, exit_process))
    return make_site(root, timeout=30, reactor=clock)
