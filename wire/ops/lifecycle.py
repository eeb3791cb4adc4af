"""``wire up`` and ``wire down``: asking the node daemon to join, start, stop and leave.

The daemon owns the node's life: ``wire up`` checks what it is given,
leaves a join request in the config dir (``wire.node.enroll``), starts the
daemon and waits on the daemon's own events (``GET /events`` on its control
socket) until it is registered, refused or removed. It never enrolls and
never writes ``config.json``.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from dataclasses import replace
from typing import Callable

from twisted.internet.task import deferLater

from wire.client import ServerError, ServerUnreachable
from wire.ops.joinsource import read_join_file
from wire.jointoken import JoinToken, JoinTokenError, decode_join_token
from wire.keys import PUBLIC_KEY_FILE
from wire.node import launcher
from wire.node.config import (
    DEFAULT_INTERFACE,
    ConfigError,
    NodeConfig,
    load_config,
    parse_server_url,
    save_config,
)
from wire.node.enroll import JoinRequest, forget_join_request, load_join_request, requested_config, save_join_request
from wire.node.events import MAX_WAIT
from wire.node.ifname import parse_interface_name
from wire.node.osdns import OsDnsError, recover_after_crash
from wire.node.router import InvalidRouterConfig, RouterError, SubnetRouter
from wire.node.routes import MeshRoutes, RouteError
from wire.node.settings import FLAGS as SETTING_FLAGS
from wire.node.settings import advertised_routes, parse_settings, settings_of, with_settings
from wire.node.proxy import split_proxy_credentials
from wire.ops.context import Context, OpError, _require_root
from wire.protocol import ProtocolError, parse_node_name, parse_port, parse_wg_public_key
from wire.runner import CommandError

# The CLI flag behind each validated field, so an error names what to fix.
_FLAGS = {"server_url": "--server", "node_name": "--name", "port": "--port", "interface": "--interface", **SETTING_FLAGS}
_RETRY_CONNECT = 0.1
_SOCKET_GONE_WITHIN = 10  # tries, _RETRY_CONNECT apart
_OUT_OF_THE_MESH = ("refused", "removed")

Progress = Callable[[dict], None]


async def up(
    ctx: Context,
    *,
    server: str | None = None,
    name: str | None = None,
    port: int | None = None,
    interface: str | None = None,
    wait: float = 30.0,
    join: str | None = None,
    join_file: str | None = None,
    settings: dict | None = None,
    progress: Progress | None = None,
) -> dict:
    """Join the mesh (or start again with the saved config) and wait until registered.

    ``join`` is a join token (from ``wire admin keys create``): the daemon
    enrolls with the server it names, pinning its certificate; ``join_file``
    names a file holding one (:func:`read_join_file`). ``server``
    alone is for open (seed-compatible) servers. ``settings`` are those of
    ``wire set`` (wire.node.settings; None values: as saved). ``progress`` is given
    each of the daemon's events as it happens.
    """
    _require_root(ctx, "wire up")
    if join_file is not None:
        if join:
            raise OpError("give --join TOKEN or --join-file PATH, not both")
        join = read_join_file(join_file)
    if wait <= 0:
        raise OpError(f"--wait must be a positive number of seconds, not {wait:g}")
    if join and server:
        raise OpError("give --join TOKEN or --server URL, not both (the token names its server)")
    saved, broken = _saved_config(ctx.config_dir)
    if broken and not join and not server:
        raise OpError(f"{broken}; to start over: sudo wire down, then sudo wire up --join TOKEN")
    if saved is None and not server and not join:
        raise OpError(
            "the first 'wire up' needs a join token (wire up --join TOKEN, from 'wire admin keys create' on the server) "
            "or, for an open server, its URL (wire up --server http://HOST:8787)"
        )
    token = _join_token(join) if join else None
    # A proxy's credentials go to their own 0600 file, not into join.json or config.json.
    settings = split_proxy_credentials(ctx.config_dir, settings or {})
    try:
        request = _request(saved, token, server, name, port, interface, settings)
    except ProtocolError as e:
        raise OpError(f"{_FLAGS.get(e.field or '', e.field or 'value')}: {e.problem}")
    wanted = requested_config(ctx.config_dir, saved, request)
    _require_wireguard(ctx)

    running = await ctx.daemon_status()
    state = running["node"].get("state", "registered") if running else None
    nothing_new = saved is not None and wanted == saved
    if nothing_new and running is not None and not (token and state in _OUT_OF_THE_MESH):
        # Up already (or on its way): say so, or why not.
        if state in _OUT_OF_THE_MESH:
            raise OpError(running["node"]["state_reason"] or running["server"]["last_error"])
        summary = _up_summary(await _wait_until_registered(ctx, wait, "running", progress), already=state == "registered")
        if token is not None:
            summary["note"] = "already enrolled with this server: the join token was not needed"
        return summary
    if nothing_new and running is None and token is None:
        return await _start(ctx, wait, progress, started_fresh=False)
    if saved is not None and running is not None and state == "registered" and wanted == _renamed(saved, wanted):
        return await _rename(ctx, wanted.node_name)
    # Anything else is the daemon's to do, from a join request: a first
    # join, another server, port or interface, a node out of the mesh, or a
    # token for a stopped node (its credential is tried first).
    _check_port(wanted.listen_port, running, saved)
    await _stop_running_daemon(ctx)
    # The running daemon's interface is the real one (with a config.json that
    # cannot be read, it is the only record of it).
    old_interface = running["interface"].get("name") if running is not None else None
    old_interface = old_interface or (saved.interface if saved is not None else None)
    if old_interface and old_interface != wanted.interface:
        # The daemon adopts only its own interface: the old one would stay
        # behind, holding the WireGuard port.
        await _remove_interface(ctx, old_interface)
    save_join_request(ctx.config_dir, request)
    return await _start(ctx, wait, progress, started_fresh=True)


def _saved_config(config_dir: str) -> tuple[NodeConfig | None, str]:
    """The saved config, or None and why it cannot be used."""
    try:
        return load_config(config_dir), ""
    except ConfigError as e:
        return None, str(e)


def _join_token(text: str) -> JoinToken:
    try:
        return decode_join_token(text)
    except JoinTokenError as e:
        raise OpError(f"--join: {e}")


def _request(saved, token, server, name, port, interface, settings: dict) -> JoinRequest:
    """What the command line asks of the daemon, validated."""
    if token is not None:
        server_url = token.server_url
    elif server:
        server_url = parse_server_url(server)
    else:
        server_url = saved.server_url
    return JoinRequest(
        server_url=server_url,
        token=token.encode() if token else "",
        node_name=parse_node_name(name) if name else "",
        listen_port=parse_port(port, "port") if port is not None else 0,
        interface=parse_interface_name(interface) if interface else "",
        settings=parse_settings(settings),
    )


def _renamed(saved: NodeConfig, wanted: NodeConfig) -> NodeConfig:
    """``saved`` with only the name changed (to compare: is that all?)."""
    return replace(saved, node_name=wanted.node_name)


def _require_wireguard(ctx: Context) -> None:
    tools = ctx.check_install()
    if not tools.ok:
        hint = f"; install them with: {' '.join(tools.command)}" if tools.command else ""
        raise OpError(f"WireGuard is not usable here: missing {', '.join(tools.missing)}{hint} (or run: wire install --yes)")


def _check_port(port: int, running: dict | None, saved: NodeConfig | None) -> None:
    """Refuse a WireGuard port another program holds, before anything is asked of a server."""
    if running is not None and running["interface"].get("listen_port") == port:
        return  # our own daemon's interface holds it
    if running is None and saved is not None and saved.listen_port == port and _interface_exists(saved.interface):
        return  # our interface, left by a daemon that stopped: the next one adopts it
    if udp_port_in_use(port):
        raise OpError(f"UDP port {port} is in use by another program; choose another with --port")


def udp_port_in_use(port: int) -> bool:
    """Whether binding UDP ``port`` (as WireGuard will, on every address) fails."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            continue  # no IPv6 here
        with s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((address, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return True
    return False


def _interface_exists(name: str) -> bool:
    return os.path.exists(os.path.join("/sys/class/net", name))


async def _stop_running_daemon(ctx: Context) -> None:
    if await ctx.daemon_status() is None and launcher.daemon_pid(ctx.config_dir) is None:
        return
    await launcher.stop_daemon(ctx.runner, ctx.reactor, ctx.config_dir)
    for _ in range(_SOCKET_GONE_WITHIN):
        # Its process is gone; the control socket closes with it.
        if await ctx.daemon_status() is None:
            return
        await deferLater(ctx.reactor, _RETRY_CONNECT, lambda: None)
    if await ctx.daemon_status() is not None:
        raise OpError(
            f"a node daemon that wire did not start is serving {ctx.config_dir} (no pidfile, no systemd unit); stop it, then run wire up again"
        )


async def _start(ctx: Context, wait: float, progress: Progress | None, started_fresh: bool) -> dict:
    try:
        how = await launcher.start_daemon(ctx.runner, ctx.config_dir)
    except (launcher.LaunchError, CommandError) as e:
        if started_fresh:
            forget_join_request(ctx.config_dir)
        raise OpError(str(e))
    try:
        status = await _wait_until_registered(ctx, wait, how, progress)
    except _Died:
        if started_fresh:
            forget_join_request(ctx.config_dir)  # nothing is left to carry it out
        raise
    except _Refused as e:
        # Waiting will not help: stop what this command started.
        await launcher.stop_daemon(ctx.runner, ctx.reactor, ctx.config_dir)
        forget_join_request(ctx.config_dir)
        raise OpError(f"{e}; the daemon was stopped")
    summary = _up_summary(status, already=False)
    summary["started_by"] = how
    if how != "systemd":
        summary["note"] = "systemd is not managing this node: it will not start again at boot"
    return summary


async def _rename(ctx: Context, node_name: str) -> dict:
    """``wire up --name NEW`` on a running node: the daemon registers under it."""
    try:
        await ctx.control().rename(node_name)
    except ServerError as e:
        raise OpError(e.message)
    except ServerUnreachable as e:
        raise OpError(f"the node daemon did not answer: {e}")
    status = await ctx.daemon_status()
    if status is None:
        raise OpError("the node daemon stopped answering")
    summary = _up_summary(status, already=True)
    summary["renamed"] = True
    return summary


class _Refused(Exception):
    """The daemon was refused or removed; ``str()`` says why and what to do."""


class _Died(OpError):
    """The daemon this command started is gone."""


async def _wait_until_registered(ctx: Context, wait: float, how: str, progress: Progress | None) -> dict:
    """Follow the daemon's events until it is registered (its status), refused
    or removed (:class:`_Refused`), has died, or ``wait`` is over."""
    deadline = ctx.reactor.seconds() + wait
    control = ctx.control()
    after = 0
    answer: dict | None = None
    while ctx.reactor.seconds() < deadline:
        try:
            answer = await control.events(after, min(MAX_WAIT, max(0.1, deadline - ctx.reactor.seconds())))
        except (ServerUnreachable, ServerError):
            # twistd returns only once the daemon has started (pidfile written,
            # control socket open): neither answering now means it has died.
            # systemd restarts a dying daemon (and opens the socket later).
            if how == "twistd" and launcher.daemon_pid(ctx.config_dir) is None:
                answer = None
                break
            await deferLater(ctx.reactor, _RETRY_CONNECT, lambda: None)
            continue
        # An already running daemon's past is not this command's progress.
        if progress is not None and not (how == "running" and after == 0):
            for event in answer["events"]:
                progress(event)
        after = answer["last"]
        if answer["state"] == "registered":
            status = await ctx.daemon_status()
            if status is not None:
                return status
        if answer["state"] in _OUT_OF_THE_MESH:
            if how == "running":
                raise OpError(answer["reason"])
            raise _Refused(answer["reason"])
    if answer is None:
        tail = launcher.log_tail(ctx.config_dir)
        raise _Died(
            f"the node did not register within {wait:g}s; the daemon is not running"
            + (f"\nlast lines of {os.path.join(ctx.config_dir, launcher.LOGFILE)}:\n{tail}" if tail else "")
        )
    last = answer["events"][-1]["message"] if answer["events"] else answer["state"]
    raise OpError(
        f"the node did not register within {wait:g}s (last: {last}); the daemon keeps trying in the background: "
        "see 'wire status', or stop it with: sudo wire down"
    )


def _up_summary(status: dict, already: bool) -> dict:
    node = status["node"]
    return {
        "ok": True,
        "already_running": already,
        "node_name": node["node_name"],
        "node_id": node["node_id"],
        "vpn_ip": node["vpn_ip"],
        # The IPv6 mesh address and prefix, when the server gives them.
        **{key: node[key] for key in ("vpn_ip6", "vpn_subnet6") if node.get(key)},
        "interface": status["interface"]["name"],
        "backend": status["interface"].get("backend", ""),
        "server": status["server"]["url"],
        "nat_type": node["nat_type"],
        "peers": len(status["peers"]),
    }


async def set_settings(ctx: Context, settings: dict) -> dict:
    """``wire set``: change settings (wire.node.settings) without joining again.
    A running daemon applies them at once and keeps them; else they are saved
    for its next start."""
    _require_root(ctx, "wire set")
    settings = split_proxy_credentials(ctx.config_dir, settings)
    try:
        changes = parse_settings(settings)
    except ProtocolError as e:
        raise OpError(f"{_FLAGS.get(e.field or '', e.field or 'value')}: {e.problem}")
    if not changes:
        raise OpError("nothing to change: give a setting, e.g. wire set --accept-routes (see: wire set --help)")
    config = ctx.config()
    running = await ctx.daemon_status()
    if running is not None:
        try:
            answer = await ctx.control().change_settings(_as_json(changes))
        except ServerError as e:
            raise OpError(f"the daemon refused the settings: {e}")
        result = {"ok": True, "applied": True, "changed": sorted(changes), "settings": answer["settings"]}
        if "proxy" in changes:
            # The daemon's HTTP client is made at its start (wire.node.tap).
            result["note"] = "the proxy is kept; the running daemon uses it from its next start (sudo wire down; sudo wire up)"
        return result
    stored = dict(changes)
    if "exit_node" in changes:
        stored["exit_node_id"] = ""  # no netmap here to pin it: matched by name until a daemon is told
    updated = with_settings(config, stored)
    save_config(ctx.config_dir, updated)
    return {"ok": True, "applied": False, "changed": sorted(changes), "settings": settings_of(updated)}


def _as_json(changes: dict) -> dict:
    return {name: list(value) if isinstance(value, tuple) else value for name, value in changes.items()}


async def down(ctx: Context) -> dict:
    """Leave the mesh: tell the server, stop the daemon, remove the interface.

    Works whatever state the config is in: a config.json that cannot be
    read still leaves the pidfile, the daemon's own status and the default
    interface name to go by.
    """
    _require_root(ctx, "wire down")
    config, broken = _saved_config(ctx.config_dir)
    try:
        request = load_join_request(ctx.config_dir)
    except ConfigError:
        request = None
    status = await ctx.daemon_status()
    if config is None and not broken and request is None and status is None and launcher.daemon_pid(ctx.config_dir) is None:
        ctx.config()  # not joined: says so
    interface = _interface_to_remove(status, config, request)
    node_name = status["node"]["node_name"] if status else (config.node_name if config else (request.node_name if request else ""))
    daemon_left = False
    server_told = False
    if status is not None:
        try:
            answer = await ctx.control().down()
            daemon_left = True
            server_told = bool(answer.get("server_told"))
        except (ServerUnreachable, ServerError):
            pass  # not answering: stopped below like a hung daemon
    if daemon_left:
        await launcher.wait_for_exit(ctx.reactor, ctx.config_dir)
    # Also when the daemon left by itself: systemd would start it again.
    if launcher.uses_systemd(ctx.config_dir) or launcher.daemon_pid(ctx.config_dir) is not None:
        await launcher.stop_daemon(ctx.runner, ctx.reactor, ctx.config_dir)
    if not daemon_left and config is not None:
        server_told = await _leave_without_daemon(ctx, config)
    forget_join_request(ctx.config_dir)  # a join still pending is called off
    await _remove_interface(ctx, interface)
    result = {"ok": True, "node_name": node_name, "interface": interface, "interface_removed": True, "server_told": server_told}
    # A daemon that crashed (or was killed) left routes, forwarding or the resolver as it had them: undo.
    problem = await _undo_routing(ctx, config, interface)
    if problem:
        result["routing_problem"] = problem
    # The OS resolver pointed at the mesh: put it back.
    try:
        restored = recover_after_crash(ctx.config_dir, ctx.resolv_conf)
    except OsDnsError as e:
        result["resolver_problem"] = f"the OS resolver could not be restored: {e}"
    else:
        if restored:
            result["resolver_restored"] = restored
    if config is None and not broken and request is not None:
        # A join that never got as far as enrolling: no server knows this node.
        result["join_called_off"] = request.server_url
    if broken:
        result["note"] = f"{broken}; to join again: sudo wire up --join TOKEN (it replaces the file)"
    return result


async def _undo_routing(ctx: Context, config: NodeConfig | None, interface: str) -> str | None:
    """Routes, rules, the router's table and forwarding a daemon that did not
    stop cleanly may have left (nothing to do for a node that never routed)."""
    router = SubnetRouter(ctx.runner, interface, ctx.config_dir)
    routed = config is not None and (config.accept_routes or bool(config.exit_node) or bool(advertised_routes(config)))
    if not sys.platform.startswith("linux") or not (routed or os.path.exists(router.saved_path)):
        return None
    try:
        await router.recover()
        await MeshRoutes(ctx.runner, interface).clear()
    except (RouteError, RouterError, InvalidRouterConfig) as e:
        return f"routes or forwarding could not be undone: {e}"
    return None


def _interface_to_remove(status: dict | None, config: NodeConfig | None, request: JoinRequest | None) -> str:
    if status is not None:
        return status["interface"]["name"]
    if config is not None:
        return config.interface
    if request is not None and request.interface:
        return request.interface
    return DEFAULT_INTERFACE


async def _leave_without_daemon(ctx: Context, config: NodeConfig) -> bool:
    """The daemon is gone (crashed, killed): tell the server ourselves, so the
    node shows offline now rather than after the heartbeat timeout."""
    try:
        with open(os.path.join(ctx.config_dir, PUBLIC_KEY_FILE)) as f:
            public_key = parse_wg_public_key(f.read().strip())
    except (OSError, ProtocolError):
        return False  # never joined, or no usable key: the server cannot know us
    try:
        await ctx.coordination(config.server_url).leave(config.node_id, public_key)
    except (ServerUnreachable, ServerError):
        return False
    return True


async def _remove_interface(ctx: Context, name: str) -> None:
    """Whatever the daemon left (it may have crashed): remove the interface."""
    from wire.node.wireguard import WireGuardError, make_wireguard

    try:
        await make_wireguard(ctx.runner, name, ctx.reactor).down()
    except (WireGuardError, CommandError) as e:
        raise OpError(f"could not remove interface {name}: {e}")
