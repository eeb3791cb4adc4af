"""``wire up`` and ``wire down``: joining, starting, stopping and leaving."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from twisted.internet.task import deferLater

from wire.client import ServerError, ServerUnreachable
from wire.jointoken import JoinToken, JoinTokenError, decode_join_token
from wire.keys import PUBLIC_KEY_FILE
from wire.node import launcher
from wire.node.config import (
    NodeConfig,
    default_node_name,
    generate_node_id,
    parse_server_url,
    save_config,
)
from wire.node.enroll import EnrollError, enroll, forget_credential
from wire.node.ifname import parse_interface_name
from wire.ops.context import Context, OpError, _require_root
from wire.protocol import (
    ProtocolError,
    parse_node_name,
    parse_port,
    parse_wg_public_key,
)
from wire.runner import CommandError

# The CLI flag behind each validated field, so an error names what to fix.
_FLAGS = {"server_url": "--server", "node_name": "--name", "port": "--port", "interface": "--interface"}
_POLL = 0.1


async def up(
    ctx: Context,
    *,
    server: str | None = None,
    name: str | None = None,
    port: int | None = None,
    interface: str | None = None,
    wait: float = 30.0,
    join: str | None = None,
) -> dict:
    """Join the mesh (or start again with the saved config) and wait until registered.

    ``join`` is a join token (from ``wire admin keys create``): the node
    enrolls with the server it names, pinning its certificate. ``server``
    alone is for open (seed-compatible) servers.
    """
    _require_root(ctx, "wire up")
    if wait <= 0:
        raise OpError(f"--wait must be a positive number of seconds, not {wait:g}")
    if join and server:
        raise OpError("give --join TOKEN or --server URL, not both (the token names its server)")
    saved = ctx.config(required=False)
    if saved is None and not server and not join:
        raise OpError(
            "the first 'wire up' needs a join token (wire up --join TOKEN, from 'wire admin keys create' on the server) "
            "or, for an open server, its URL (wire up --server http://HOST:8787)"
        )
    token = _join_token(join) if join else None
    try:
        config = _merge_config(ctx.config_dir, saved, token.server_url if token else server, name, port, interface)
    except ProtocolError as e:
        raise OpError(f"{_FLAGS.get(e.field or '', e.field or 'value')}: {e.problem}")
    _require_wireguard(ctx)
    if token is not None:
        await _stop_running_daemon(ctx)
        config = await _enroll(ctx, token, config)
        saved = config
    elif saved is not None and config.server_url != saved.server_url:
        # Another server: this one's credential must never be sent there.
        forget_credential(ctx.config_dir)

    running = await ctx.daemon_status()
    if running is not None and config == saved and not join:
        return _up_summary(running, already=True)
    # New settings: restart the daemon with them.
    await _stop_running_daemon(ctx)
    save_config(ctx.config_dir, config)
    try:
        how = await launcher.start_daemon(ctx.runner, ctx.config_dir)
    except (launcher.LaunchError, CommandError) as e:
        raise OpError(str(e))
    status = await _wait_until_registered(ctx, wait, how)
    summary = _up_summary(status, already=False)
    summary["started_by"] = how
    if how != "systemd":
        summary["note"] = "systemd is not managing this node: it will not start again at boot"
    return summary


async def _stop_running_daemon(ctx: Context) -> None:
    if await ctx.daemon_status() is None and launcher.daemon_pid(ctx.config_dir) is None:
        return
    await launcher.stop_daemon(ctx.runner, ctx.reactor, ctx.config_dir)
    if await ctx.daemon_status() is not None:
        raise OpError(
            f"a node daemon that wire did not start is serving {ctx.config_dir} (no pidfile, no systemd unit); stop it, then run wire up again"
        )


def _join_token(text: str) -> JoinToken:
    try:
        return decode_join_token(text)
    except JoinTokenError as e:
        raise OpError(f"--join: {e}")


async def _enroll(ctx: Context, token: JoinToken, config: NodeConfig) -> NodeConfig:
    """Enroll with the token's server; returns the config it saved."""
    try:
        return await enroll(ctx.reactor, ctx.config_dir, token, config.node_name, config.listen_port, config.interface)
    except ServerError as e:
        raise OpError(f"the server refused to enroll this node: {e.message}")
    except (ServerUnreachable, EnrollError) as e:
        raise OpError(f"cannot enroll: {e}")


def _require_wireguard(ctx: Context) -> None:
    tools = ctx.check_install()
    if not tools.ok:
        hint = f"; install them with: {' '.join(tools.command)}" if tools.command else ""
        raise OpError(f"WireGuard is not usable here: missing {', '.join(tools.missing)}{hint} (or run: wire install --yes)")


def _merge_config(config_dir, saved, server, name, port, interface) -> NodeConfig:
    """The saved config (or a new node's) with what the command line changes."""
    config = saved or NodeConfig(server_url=parse_server_url(server), node_name=default_node_name(), node_id=generate_node_id(config_dir))
    changes: dict[str, Any] = {}
    if server and parse_server_url(server) != config.server_url:
        # A new server assigns its own address and learns our NAT afresh.
        changes.update(
            server_url=parse_server_url(server), server_fingerprint="", vpn_ip="", vpn_subnet="", nat_port=0, nat_type=""
        )
    if name:
        changes["node_name"] = parse_node_name(name)
    if port is not None:
        changes["listen_port"] = parse_port(port, "port")
    if interface:
        changes["interface"] = parse_interface_name(interface)
    return replace(config, **changes)


async def _wait_until_registered(ctx: Context, wait: float, how: str) -> dict:
    deadline = ctx.reactor.seconds() + wait
    status = None
    while True:
        status = await ctx.daemon_status()
        if status and status["server"]["registered"] and status["interface"]["up"]:
            return status
        if status and status["server"].get("last_status") in (401, 403, 409, 495):
            # Refused, not unreachable: waiting will not help.
            raise OpError(f"the server refused this node: {status['server']['last_error']}")
        # twistd returns only once the daemon has started (pidfile written,
        # control socket open): neither answering now means it has died.
        # systemd restarts a dying daemon, so there we wait it out.
        if how == "twistd" and status is None and launcher.daemon_pid(ctx.config_dir) is None:
            break
        if ctx.reactor.seconds() >= deadline:
            break
        await deferLater(ctx.reactor, _POLL, lambda: None)
    detail = ""
    if status is None:
        detail = "; the daemon is not running"
    elif status["server"]["last_error"]:
        detail = f"; last error: {status['server']['last_error']}"
    elif not status["interface"]["up"]:
        detail = f"; interface {status['interface']['name']} is not up"
    tail = launcher.log_tail(ctx.config_dir)
    raise OpError(
        f"the node did not register within {wait:g}s{detail}"
        + (f"\nlast lines of {os.path.join(ctx.config_dir, launcher.LOGFILE)}:\n{tail}" if tail else "")
    )


def _up_summary(status: dict, already: bool) -> dict:
    node = status["node"]
    return {
        "ok": True,
        "already_running": already,
        "node_name": node["node_name"],
        "node_id": node["node_id"],
        "vpn_ip": node["vpn_ip"],
        "interface": status["interface"]["name"],
        "backend": status["interface"].get("backend", ""),
        "server": status["server"]["url"],
        "nat_type": node["nat_type"],
        "peers": len(status["peers"]),
    }


async def down(ctx: Context) -> dict:
    """Leave the mesh: tell the server, stop the daemon, remove the interface."""
    _require_root(ctx, "wire down")
    config = ctx.config()
    daemon_left = False
    server_told = False
    if await ctx.daemon_status() is not None:
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
    if not daemon_left:
        server_told = await _leave_without_daemon(ctx, config)
    await _remove_interface(ctx, config.interface)
    return {"ok": True, "node_name": config.node_name, "interface": config.interface, "interface_removed": True, "server_told": server_told}


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
