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

from wire.node.servers import servers_of
from wire.node.daemon import NodeDaemon, RenameRefused, SettingsRefused
from wire.node.peerview import peer_entries
from wire.node.events import MAX_WAIT
from wire.node.settings import parse_settings, settings_of
from wire.node.wireguard import PeerStatus
from wire.protocol import ProtocolError, parse_node_name
from wire.web import ApiError, JsonResource, JsonRoot, make_site, read_json_body

CONTROL_SOCKET = "control.sock"


def control_socket_path(config_dir: str) -> str:
    return os.path.join(config_dir, CONTROL_SOCKET)


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
    names = daemon.names.status() if daemon.names is not None else None
    peers = peer_entries(daemon, by_key, now, names)
    relay = daemon.reconciler.relay
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
