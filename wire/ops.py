"""The operations the ``wire`` CLI and the MCP adapter share.

Each takes a :class:`Context` (reactor, process runner, config dir) and
returns a JSON-able dict; a failure is an :class:`OpError` whose message
says what went wrong and what to do. The CLI prints these, the MCP adapter
returns them: one implementation of each operation.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from twisted.internet.task import deferLater

from wire.client import ControlClient, CoordinationClient, ServerError, ServerUnreachable, make_http_client
from wire.install import check_install
from wire.node import launcher
from wire.node.config import (
    ConfigError,
    NodeConfig,
    default_node_name,
    generate_node_id,
    load_config,
    parse_interface_name,
    parse_server_url,
    save_config,
)
from wire.node.control import HANDSHAKE_FRESH, control_socket_path
from wire.protocol import ProtocolError, parse_node_name, parse_port
from wire.runner import CommandError, IProcessRunner, ProcessRunner


class OpError(Exception):
    """An operation failed; ``str()`` says why and what to do."""


@dataclass
class Context:
    reactor: object
    config_dir: str
    runner: IProcessRunner = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.runner is None:
            self.runner = ProcessRunner(self.reactor)

    def config(self, required: bool = True) -> NodeConfig | None:
        try:
            config = load_config(self.config_dir)
        except ConfigError as e:
            raise OpError(str(e))
        if config is None and required:
            raise OpError(f"this machine has not joined a mesh ({self.config_dir} has no config); run: wire up --server URL")
        return config

    def coordination(self, server_url: str) -> CoordinationClient:
        return CoordinationClient(make_http_client(self.reactor, persistent=False), server_url)

    def control(self) -> ControlClient:
        return ControlClient(self.reactor, control_socket_path(self.config_dir))

    async def daemon_status(self) -> dict | None:
        """The local daemon's own view, or None when it is not running."""
        if not os.path.exists(control_socket_path(self.config_dir)):
            return None
        try:
            return await self.control().status()
        except (ServerUnreachable, ServerError):
            return None


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise OpError(f"{what} changes network interfaces and must run as root (sudo wire ...)")


# -- up / down ----------------------------------------------------------------


async def up(
    ctx: Context,
    *,
    server: str | None = None,
    name: str | None = None,
    port: int | None = None,
    interface: str | None = None,
    wait: float = 30.0,
) -> dict:
    """Join the mesh (or start again with the saved config) and wait until registered."""
    _require_root("wire up")
    saved = ctx.config(required=False)
    if saved is None and not server:
        raise OpError("the first 'wire up' needs the server: wire up --server http://HOST:8787 --name NAME")
    try:
        config = _merge_config(ctx.config_dir, saved, server, name, port, interface)
    except ProtocolError as e:
        raise OpError(f"--{e.field.replace('_', '-') if e.field else 'value'}: {e.problem}")
    tools = check_install()
    if not tools.ok:
        hint = f"; install them with: {' '.join(tools.command)}" if tools.command else ""
        raise OpError(f"WireGuard is not usable here: missing {', '.join(tools.missing)}{hint} (or run: wire install --yes)")

    running = await ctx.daemon_status()
    if running is not None and config == saved:
        return _up_summary(running, already=True)
    if running is not None or launcher.daemon_pid(ctx.config_dir) is not None:
        # New settings: restart the daemon with them.
        await launcher.stop_daemon(ctx.runner, ctx.reactor, ctx.config_dir)
    os.makedirs(ctx.config_dir, mode=0o700, exist_ok=True)
    save_config(ctx.config_dir, config)
    try:
        how = await launcher.start_daemon(ctx.runner, ctx.config_dir)
    except (launcher.LaunchError, CommandError) as e:
        raise OpError(str(e))
    status = await _wait_until_registered(ctx, wait)
    summary = _up_summary(status, already=False)
    summary["started_by"] = how
    if how != "systemd":
        summary["note"] = "systemd is not managing this node: it will not start again at boot"
    return summary


def _merge_config(config_dir, saved, server, name, port, interface) -> NodeConfig:
    server_url = parse_server_url(server) if server else saved.server_url
    same_server = saved is not None and saved.server_url == server_url
    return NodeConfig(
        server_url=server_url,
        node_name=parse_node_name(name) if name else (saved.node_name if saved else default_node_name()),
        node_id=saved.node_id if saved else generate_node_id(config_dir),
        listen_port=parse_port(port, "port") if port is not None else (saved.listen_port if saved else 51820),
        interface=parse_interface_name(interface) if interface else (saved.interface if saved else "wire0"),
        # A new server assigns its own address.
        vpn_ip=saved.vpn_ip if same_server else "",
        vpn_subnet=saved.vpn_subnet if same_server else "",
        nat_port=saved.nat_port if same_server else 0,
    )


async def _wait_until_registered(ctx: Context, wait: float) -> dict:
    waited, step = 0.0, 0.1
    status = None
    while waited < wait:
        status = await ctx.daemon_status()
        if status and status["server"]["registered"] and status["interface"]["up"]:
            return status
        if status is None and waited > 3 and launcher.daemon_pid(ctx.config_dir) is None:
            break  # the daemon died
        await deferLater(ctx.reactor, step, lambda: None)
        waited += step
    detail = ""
    if status is not None and status["server"]["last_error"]:
        detail = f"; last error: {status['server']['last_error']}"
    tail = launcher.log_tail(ctx.config_dir)
    raise OpError(
        f"the node did not register within {wait:.0f}s{detail}"
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
    _require_root("wire down")
    config = ctx.config()
    told_server = False
    if await ctx.daemon_status() is not None:
        try:
            await ctx.control().down()
            told_server = True
        except (ServerUnreachable, ServerError):
            pass
        await launcher.wait_for_exit(ctx.reactor, ctx.config_dir)
    if launcher.uses_systemd(ctx.config_dir) or launcher.daemon_pid(ctx.config_dir) is not None:
        await launcher.stop_daemon(ctx.runner, ctx.reactor, ctx.config_dir)
    removed = await _remove_interface(ctx, config.interface)
    return {"ok": True, "node_name": config.node_name, "interface": config.interface, "interface_removed": removed or told_server, "server_told": told_server}


async def _remove_interface(ctx: Context, name: str) -> bool:
    """Whatever the daemon left (it may have crashed): remove the interface."""
    from wire.node.wireguard import make_wireguard

    wireguard = make_wireguard(ctx.runner, name, ctx.reactor)
    try:
        await wireguard.down()
    except Exception as e:
        raise OpError(f"could not remove interface {name}: {e}")
    return True


# -- views ------------------------------------------------------------------------


async def status(ctx: Context, server: str | None = None) -> dict:
    """The whole mesh as the server sees it, with this node's paths to each peer."""
    config = ctx.config(required=server is None)
    server_url = parse_server_url(server) if server else config.server_url
    local = await ctx.daemon_status()
    try:
        mesh = await ctx.coordination(server_url).status()
    except (ServerUnreachable, ServerError) as e:
        raise OpError(f"{e}; is the wire server running?")
    paths = {p["node_id"]: p for p in (local or {}).get("peers", [])}
    my_id = config.node_id if config else None
    nodes = []
    for node in mesh.get("nodes", []):
        node = dict(node)
        node["this_node"] = node.get("node_id") == my_id
        local_peer = paths.get(node.get("node_id"))
        if local_peer:
            node["path"] = local_peer["path"]
            node["path_reason"] = local_peer["reason"]
            node["endpoint"] = local_peer["endpoint"]
            node["handshake_age"] = local_peer["handshake_age"]
        nodes.append(node)
    return {
        "ok": True,
        "server": server_url,
        "version": mesh.get("version"),
        "total": mesh.get("total", len(nodes)),
        "online": mesh.get("online", 0),
        "offline": mesh.get("offline", 0),
        "nodes": nodes,
        "my_node_id": my_id,
        "daemon_running": local is not None,
    }


async def peers(ctx: Context, server: str | None = None) -> dict:
    """Online nodes, as the server's /peers lists them."""
    config = ctx.config(required=server is None)
    server_url = parse_server_url(server) if server else config.server_url
    try:
        answer = await ctx.coordination(server_url).peers()
    except (ServerUnreachable, ServerError) as e:
        raise OpError(f"{e}; is the wire server running?")
    return {"ok": True, "server": server_url, "count": answer.get("count", 0), "peers": answer.get("peers", [])}


_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+")


async def resolve_target(ctx: Context, target: str) -> tuple[str, str]:
    """A node name or VPN address -> (name, address), through the netmap."""
    try:
        address = str(ipaddress.ip_address(target))
        return target, address
    except ValueError:
        pass
    try:
        name = parse_node_name(target)
    except ProtocolError:
        raise OpError(f"{target!r} is neither a node name nor an IP address")
    local = await ctx.daemon_status()
    for peer in (local or {}).get("peers", []):
        if peer["node_name"] == name:
            return name, peer["vpn_ip"]
    config = ctx.config()
    try:
        mesh = await ctx.coordination(config.server_url).status()
    except (ServerUnreachable, ServerError) as e:
        raise OpError(f"cannot resolve {name}: the daemon does not know it and {e}")
    for node in mesh.get("nodes", []):
        if node.get("node_name") == name:
            return name, node["vpn_ip"]
    raise OpError(f"no node named {name} in the mesh (see: wire status)")


async def ping(ctx: Context, target: str, count: int = 4) -> dict:
    """Ping a peer over the VPN by name or address."""
    if not 1 <= count <= 100:
        raise OpError("count must be from 1 to 100")
    name, address = await resolve_target(ctx, target)
    try:
        result = await ctx.runner.run(["ping", "-c", str(count), "-W", "2", "-n", address], timeout=count * 3 + 5)
    except CommandError as e:
        raise OpError(f"ping failed to run: {e}")
    output = result.stdout.decode(errors="replace")
    summary = _PING_SUMMARY.search(output)
    sent, received = (int(summary.group(1)), int(summary.group(2))) if summary else (count, 0)
    rtt = _PING_RTT.search(output)
    answer = {
        "ok": result.rc == 0 and received > 0,
        "target": target,
        "node_name": name,
        "vpn_ip": address,
        "transmitted": sent,
        "received": received,
        "loss_percent": round(100.0 * (sent - received) / sent, 1) if sent else 100.0,
        "rtt_avg_ms": float(rtt.group(1)) if rtt else None,
        "output": output.strip(),
    }
    local = await ctx.daemon_status()
    for peer in (local or {}).get("peers", []):
        if peer["vpn_ip"] == address:
            answer["path"] = peer["path"]
            answer["path_reason"] = peer["reason"]
    return answer


def install(ctx: Context) -> dict:
    """What WireGuard needs here, and the command that installs what is missing."""
    return check_install().as_dict()


async def install_now(ctx: Context) -> dict:
    """Run the platform's package manager for what is missing."""
    check = check_install()
    if check.ok:
        return {**check.as_dict(), "installed": []}
    if not check.command:
        raise OpError(f"cannot install {', '.join(check.missing)} on this platform ({check.platform}); install WireGuard by hand")
    if check.platform != "macos":
        _require_root("wire install --yes")
    try:
        result = await ctx.runner.run(list(check.command), timeout=600)
    except CommandError as e:
        raise OpError(str(e))
    if result.rc != 0:
        raise OpError(f"{' '.join(check.command)} failed: {result.stderr.decode(errors='replace').strip()[-500:]}")
    after = check_install()
    return {**after.as_dict(), "installed": list(check.missing)}


# -- health -------------------------------------------------------------------------


def _check(name: str, ok: bool, detail: str, suggestion: str = "") -> dict:
    return {"check": name, "ok": ok, "detail": detail, "suggestion": "" if ok else suggestion}


async def diagnose(ctx: Context) -> dict:
    """Each thing a working node needs, checked in order, with what to do about it."""
    checks = []
    tools = check_install()
    checks.append(
        _check(
            "wireguard",
            tools.ok,
            "kernel WireGuard" if tools.kernel_module else (f"wireguard-go at {tools.wireguard_go}" if tools.wireguard_go else "not found"),
            f"install: {' '.join(tools.command)}" if tools.command else "install wireguard-tools and wireguard-go",
        )
    )
    try:
        config = ctx.config()
    except OpError as e:
        checks.append(_check("config", False, str(e), "run: wire up --server URL --name NAME"))
        return _diagnosis(checks)
    checks.append(_check("config", True, f"{config.node_name} → {config.server_url}"))
    local = await ctx.daemon_status()
    checks.append(_check("daemon", local is not None, "running" if local else "not running", "run: sudo wire up"))
    if local is not None:
        iface = local["interface"]
        checks.append(
            _check("interface", bool(iface["up"]), f"{iface['name']} ({iface.get('backend') or '?'})" + (f": {iface['error']}" if iface.get("error") else ""), "see the daemon log: " + os.path.join(ctx.config_dir, launcher.LOGFILE))
        )
    try:
        health = await ctx.coordination(config.server_url).health()
        checks.append(_check("server", True, f"{config.server_url} answers (version {health.get('version')})"))
        reachable = True
    except (ServerUnreachable, ServerError) as e:
        checks.append(_check("server", False, str(e), "check the server is running and the URL/port are reachable (TCP port, and UDP port+1, port+2 for STUN)"))
        reachable = False
    if reachable:
        mesh = await ctx.coordination(config.server_url).status()
        me = next((n for n in mesh.get("nodes", []) if n.get("node_id") == config.node_id), None)
        checks.append(
            _check("registered", me is not None and me.get("status") == "online", f"{me['vpn_ip']} {me['status']}" if me else "not in the server's registry", "run: sudo wire up")
        )
        if local is not None:
            expected = max(0, mesh.get("total", 0) - (1 if me else 0))
            known = len(local["peers"])
            checks.append(_check("peers synced", known == expected, f"{known} of {expected} peers configured", "the daemon catches up within seconds; if not, restart it: sudo wire down && sudo wire up"))
    if local is not None:
        online = [p for p in local["peers"] if p["online"]]
        fresh = [p for p in online if p["path"] != "none"]
        stale = sorted(p["node_name"] for p in online if p["path"] == "none")
        checks.append(
            _check(
                "handshakes",
                not stale,
                f"{len(fresh)} of {len(online)} online peers have a fresh handshake" + (f"; none with {', '.join(stale)}" if stale else ""),
                "a peer without a handshake is unreachable on UDP: check firewalls on its listen port, or wait for the relay",
            )
        )
    return _diagnosis(checks)


def _diagnosis(checks: list[dict]) -> dict:
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


async def watchdog(ctx: Context) -> dict:
    """Handshake ages, stale peers and daemon health, from the running daemon."""
    config = ctx.config()
    local = await ctx.daemon_status()
    if local is None:
        return {"ok": False, "daemon_running": False, "node_name": config.node_name, "problems": ["the node daemon is not running (sudo wire up)"], "peers": []}
    problems = []
    if not local["server"]["reachable"]:
        problems.append(f"coordination server unreachable: {local['server']['last_error']} (tunnels keep working)")
    if not local["interface"]["up"]:
        problems.append(f"interface {local['interface']['name']} is not up")
    peers_view = []
    for peer in local["peers"]:
        age = peer["handshake_age"]
        stale = peer["online"] and (age is None or age > HANDSHAKE_FRESH)
        if stale:
            problems.append(f"{peer['node_name']}: {peer['reason']}")
        peers_view.append(
            {
                "node_name": peer["node_name"],
                "vpn_ip": peer["vpn_ip"],
                "online": peer["online"],
                "handshake_age": age,
                "stale": stale,
                "endpoint": peer["endpoint"],
                "path": peer["path"],
            }
        )
    return {
        "ok": not problems,
        "daemon_running": True,
        "node_name": config.node_name,
        "server_reachable": local["server"]["reachable"],
        "problems": problems,
        "peers": peers_view,
    }


# -- the lab ------------------------------------------------------------------------


async def demo(ctx: Context, keep: bool = False, clean: str | None = None) -> dict:
    """Build a mesh of real nodes in network namespaces, show it working, tear it down."""
    from wire import demo as demo_module
    from wire.lab import LabUnavailable, check_requirements

    try:
        check_requirements()
    except LabUnavailable as e:
        raise OpError(f"the demo needs a Linux host with network namespaces: {e}")
    tools = check_install()
    if not tools.ok:
        raise OpError(f"the demo needs WireGuard: missing {', '.join(tools.missing)} (wire install --yes)")
    if clean:
        await demo_module.clean_demo(ctx.reactor, ctx.runner, clean)
        return {"ok": True, "cleaned": clean}
    try:
        ok = await demo_module.run_demo(ctx.reactor, ctx.runner, keep=keep)
    except demo_module.DemoError as e:
        raise OpError(str(e))
    return {"ok": ok}
