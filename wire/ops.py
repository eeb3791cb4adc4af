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
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

from twisted.internet.error import CannotListenError, DNSLookupError
from twisted.internet.task import deferLater

from wire.client import ControlClient, CoordinationClient, ServerError, ServerUnreachable, make_http_client
from wire.install import InstallCheck, check_install
from wire.jointoken import JoinToken, JoinTokenError, decode_join_token
from wire.keys import PUBLIC_KEY_FILE
from wire.node import launcher
from wire.node.enroll import EnrollError, coordination_client, enroll, forget_credential
from wire.node.config import (
    ConfigError,
    NodeConfig,
    default_node_name,
    generate_node_id,
    load_config,
    parse_interface_name,
    parse_server_url,
    save_config,
    stun_ports,
)
from wire.node.control import control_socket_path
from wire.node.daemon import detect_lan_ip
from wire.node.netmap import Peer, endpoint_for
from wire.node.paths import DIRECT_TIMEOUT, HANDSHAKE_STALE
from wire.protocol import ProtocolError, parse_node_name, parse_port, parse_wg_public_key
from wire.runner import CommandError, IProcessRunner, ProcessRunner
from wire.stun import StunError, StunTimeout, detect_nat


class OpError(Exception):
    """An operation failed; ``str()`` says why and what to do."""


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Context:
    """What an operation may touch. ``is_root`` and ``check_install`` are the
    host's facts; tests replace them rather than the host."""

    reactor: Any
    config_dir: str
    runner: IProcessRunner | None = None
    is_root: Callable[[], bool] = _is_root
    check_install: Callable[[], InstallCheck] = check_install

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
        """A client for ``server_url``: as this node (pinned TLS, its
        credential) when that is the server it joined, else anonymous."""
        try:
            config = load_config(self.config_dir)
        except ConfigError:
            config = None
        if config is not None and config.server_url == server_url.rstrip("/"):
            return coordination_client(self.reactor, config, self.config_dir, persistent=False)
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


def _require_root(ctx: Context, what: str) -> None:
    if not ctx.is_root():
        raise OpError(f"{what} changes network interfaces and must run as root (sudo {what} ...)")


def _server_url(config: NodeConfig | None, server: str | None) -> str:
    """``--server`` when given (validated), else the configured server."""
    if not server:
        assert config is not None  # ctx.config(required=True) made sure
        return config.server_url
    try:
        return parse_server_url(server)
    except ProtocolError as e:
        raise OpError(f"--server: {e.problem}")


async def _mesh(ctx: Context, server_url: str) -> dict:
    try:
        return await ctx.coordination(server_url).status()
    except (ServerUnreachable, ServerError) as e:
        raise OpError(f"{e}; is the wire server running?")


# -- up / down ----------------------------------------------------------------

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


# -- views ------------------------------------------------------------------------


async def status(ctx: Context, server: str | None = None) -> dict:
    """The whole mesh as the server sees it, with this node's paths to each peer."""
    config = ctx.config(required=server is None)
    server_url = _server_url(config, server)
    local = await ctx.daemon_status()
    mesh = await _mesh(ctx, server_url)
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
    server_url = _server_url(config, server)
    try:
        answer = await ctx.coordination(server_url).peers()
    except (ServerUnreachable, ServerError) as e:
        raise OpError(f"{e}; is the wire server running?")
    return {"ok": True, "server": server_url, "count": answer.get("count", 0), "peers": answer.get("peers", [])}


def _as_address(target: str) -> str | None:
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        return None


def _parse_target(target: str) -> str:
    """A VPN address, or a node name in its stored (lower-case) form."""
    address = _as_address(target)
    if address is not None:
        return address
    try:
        return parse_node_name(target)
    except ProtocolError:
        raise OpError(f"{target!r} is neither a node name nor an IP address")


def _matches(entry: dict, target: str) -> bool:
    return target in (entry.get("node_name"), entry.get("vpn_ip"))


async def resolve_target(ctx: Context, target: str) -> tuple[str, str]:
    """A node name or VPN address -> (name, address), through the netmap."""
    address = _as_address(target)
    if address is not None:
        return target, address  # ping an address as given, in the mesh or not
    name = _parse_target(target)
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


# iputils: "4 packets transmitted, 4 received"; BSD/macOS: "... 4 packets received".
_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
# iputils "rtt min/avg/max/mdev = a/b/c/d ms", BSD "round-trip min/avg/max/stddev = ...".
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)")


def ping_argv(address: str, count: int, platform: str = sys.platform) -> list[str]:
    # -W is seconds for iputils, milliseconds on macOS.
    wait = "2000" if platform == "darwin" else "2"
    return ["ping", "-c", str(count), "-W", wait, "-n", address]


def parse_ping(output: str, count: int) -> dict:
    """Counts and round-trip times from ping's summary (missing: nothing came back)."""
    summary = _PING_SUMMARY.search(output)
    sent, received = (int(summary.group(1)), int(summary.group(2))) if summary else (count, 0)
    rtt = _PING_RTT.search(output)
    rtt_min, rtt_avg, rtt_max = (float(v) for v in rtt.groups()) if rtt else (None, None, None)
    return {
        "transmitted": sent,
        "received": received,
        "loss_percent": round(100.0 * (sent - received) / sent, 1) if sent else 100.0,
        "rtt_min_ms": rtt_min,
        "rtt_avg_ms": rtt_avg,
        "rtt_max_ms": rtt_max,
    }


async def ping(ctx: Context, target: str, count: int = 4) -> dict:
    """Ping a peer over the VPN by name or address."""
    if not 1 <= count <= 100:
        raise OpError("count must be from 1 to 100")
    name, address = await resolve_target(ctx, target)
    try:
        result = await ctx.runner.run(ping_argv(address, count), timeout=count * 3 + 5)
    except CommandError as e:
        raise OpError(f"ping failed to run: {e}")
    # ping's own errors ("Network is unreachable") go to stderr.
    output = (result.stdout + result.stderr).decode(errors="replace").strip()
    counts = parse_ping(output, count)
    answer = {
        "ok": result.rc == 0 and counts["received"] > 0,
        "target": target,
        "node_name": name,
        "vpn_ip": address,
        **counts,
        "output": output,
    }
    local = await ctx.daemon_status()
    for peer in (local or {}).get("peers", []):
        if peer["vpn_ip"] == address:
            answer["path"] = peer["path"]
            answer["path_reason"] = peer["reason"]
    return answer


def install(ctx: Context) -> dict:
    """What WireGuard needs here, and the command that installs what is missing."""
    return ctx.check_install().as_dict()


async def install_now(ctx: Context) -> dict:
    """Run the platform's package manager for what is missing."""
    check = ctx.check_install()
    if check.ok:
        return {**check.as_dict(), "installed": []}
    if not check.command:
        raise OpError(f"cannot install {', '.join(check.missing)} on this platform ({check.platform}); install WireGuard by hand")
    if check.platform != "macos":  # Homebrew refuses to run as root
        _require_root(ctx, "wire install --yes")
    try:
        result = await ctx.runner.run(list(check.command), timeout=600)
    except CommandError as e:
        raise OpError(str(e))
    if result.rc != 0:
        output = (result.stderr or result.stdout).decode(errors="replace").strip()[-500:]
        raise OpError(f"{' '.join(check.command)} failed (exit {result.rc}): {output}")
    after = ctx.check_install()
    return {**after.as_dict(), "installed": [m for m in check.missing if m not in after.missing]}


# -- health -------------------------------------------------------------------------


def _check(name: str, ok: bool, detail: str, suggestion: str = "") -> dict:
    return {"check": name, "ok": ok, "detail": detail, "suggestion": "" if ok else suggestion}


async def diagnose(ctx: Context) -> dict:
    """Each thing a working node needs, checked in order, with what to do about it."""
    checks = [_wireguard_check(ctx.check_install())]
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
        client = ctx.coordination(config.server_url)
        health = await client.health()
        mesh = await client.status()
    except (ServerUnreachable, ServerError) as e:
        checks.append(_check("server", False, str(e), "check the server is running and the URL/port are reachable (TCP port, and UDP port+1, port+2 for STUN)"))
        mesh = None
    else:
        checks.append(_check("server", True, f"{config.server_url} answers (version {health.get('version')})"))
    if mesh is not None:
        checks.extend(_registry_checks(mesh, config, local))
    if local is not None:
        checks.append(_handshake_check(local))
    return _diagnosis(checks)


def _wireguard_check(tools: InstallCheck) -> dict:
    if tools.kernel_module:
        detail = "kernel WireGuard"
    elif tools.wireguard_go:
        detail = f"wireguard-go at {tools.wireguard_go}"
    else:
        detail = "no kernel module, no wireguard-go"
    if tools.missing:
        detail += f"; missing {', '.join(tools.missing)}"
    suggestion = f"install: {' '.join(tools.command)}" if tools.command else "install wireguard-tools and wireguard-go"
    return _check("wireguard", tools.ok, detail, suggestion)


def _registry_checks(mesh: dict, config: NodeConfig, local: dict | None) -> list[dict]:
    me = next((n for n in mesh.get("nodes", []) if n.get("node_id") == config.node_id), None)
    checks = [
        _check("registered", me is not None and me.get("status") == "online", f"{me['vpn_ip']} {me['status']}" if me else "not in the server's registry", "run: sudo wire up")
    ]
    if local is not None:
        expected = max(0, mesh.get("total", 0) - (1 if me else 0))
        known = len(local["peers"])
        checks.append(_check("peers synced", known == expected, f"{known} of {expected} peers configured", "the daemon catches up within seconds; if not, restart it: sudo wire down && sudo wire up"))
    return checks


def _handshake_check(local: dict) -> dict:
    online = [p for p in local["peers"] if p["online"]]
    stale = sorted(p["node_name"] for p in online if _is_stale(p))
    return _check(
        "handshakes",
        not stale,
        f"{len(online) - len(stale)} of {len(online)} online peers have a fresh handshake" + (f"; none with {', '.join(stale)}" if stale else ""),
        f"see why: wire explain {stale[0]}" if stale else "",
    )


def _is_stale(peer: dict) -> bool:
    """An online peer without a recent handshake, on whatever path."""
    age = peer["handshake_age"]
    return peer["online"] and (age is None or age > HANDSHAKE_STALE)


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
        stale = _is_stale(peer)
        if stale:
            problems.append(f"{peer['node_name']}: {peer['reason']}")
        peers_view.append(
            {
                "node_name": peer["node_name"],
                "vpn_ip": peer["vpn_ip"],
                "online": peer["online"],
                "handshake_age": peer["handshake_age"],
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


# -- netcheck -----------------------------------------------------------------------

NAT_MEANINGS = {
    "none": "no NAT: this host's own address is public",
    "easy": "easy NAT: one public mapping for every destination, so peers can reach this node directly",
    "hard": "hard (symmetric) NAT: a new public mapping for every destination; direct tunnels only with peers that have no NAT, the relay carries the rest",
    "unknown": "unknown: only one STUN port answered, so the NAT type cannot be told",
}


async def netcheck(ctx: Context, server: str | None = None, *, timeout: float = 1.0, attempts: int = 3) -> dict:
    """What this network lets through to the server: HTTP, and UDP to its
    STUN ports (the path WireGuard needs), with the mapped address, the NAT
    type and latencies. Probes from an ephemeral port: the WireGuard port
    belongs to the daemon."""
    config = ctx.config(required=server is None)
    server_url = _server_url(config, server)
    host, port_a, port_b = stun_ports(server_url)
    local_ips = [ip for ip in (detect_lan_ip(server_url),) if ip]
    http = await _http_check(ctx, server_url)
    udp = await _stun_check(ctx, host, (port_a, port_b), local_ips, timeout, attempts)
    problems = []
    if not http["reachable"]:
        problems.append(f"the server's HTTP API does not answer: {http['error']}")
    if not udp["reachable"]:
        problems.append(
            f"no UDP answer from {host} ports {port_a} and {port_b}: UDP is blocked on this network or at the server's "
            "firewall (or its STUN ports are closed), and WireGuard needs UDP"
        )
    return {
        "ok": not problems,
        "server": server_url,
        "http": http,
        "udp": udp,
        "local_ips": local_ips,
        "mapped": udp["mapped"],
        "nat_type": udp["nat_type"],
        "nat_meaning": NAT_MEANINGS[udp["nat_type"]] if udp["reachable"] else "unknown: no STUN answer",
        "problems": problems,
    }


async def _http_check(ctx: Context, server_url: str) -> dict:
    started = ctx.reactor.seconds()
    try:
        health = await ctx.coordination(server_url).health()
    except (ServerUnreachable, ServerError) as e:
        return {"reachable": False, "rtt_ms": None, "version": None, "error": str(e)}
    rtt_ms = round((ctx.reactor.seconds() - started) * 1000, 2)
    return {"reachable": True, "rtt_ms": rtt_ms, "version": health.get("version"), "error": ""}


async def _stun_check(ctx: Context, host: str, ports: tuple[int, int], local_ips: list[str], timeout: float, attempts: int) -> dict:
    try:
        report = await detect_nat(ctx.reactor, host, *ports, local_port=0, timeout=timeout, attempts=attempts, local_ips=local_ips)
    except (StunTimeout, StunError, DNSLookupError, CannotListenError) as e:
        return {
            "reachable": False,
            "ports": [{"port": p, "answered": False, "mapped": None} for p in ports],
            "mapped": None,
            "nat_type": "unknown",
            "rtt_ms": None,
            "error": str(e),
        }
    answers = [_address(report.mapped_a), _address(report.mapped_b)]
    return {
        "reachable": True,
        "ports": [{"port": p, "answered": a is not None, "mapped": a} for p, a in zip(ports, answers)],
        "mapped": _address(report.mapped),
        "nat_type": report.nat_type,
        "rtt_ms": round(report.latency_ms, 2),
        "error": "",
    }


def _address(mapped) -> str | None:
    if mapped is None:
        return None
    return f"[{mapped.ip}]:{mapped.port}" if ":" in mapped.ip else f"{mapped.ip}:{mapped.port}"


# -- explain ------------------------------------------------------------------------


async def explain(ctx: Context, peer: str) -> dict:
    """Why this node reaches ``peer`` (a name or VPN address) the way it does,
    or why it does not, from the daemon's WireGuard view and the server's."""
    config = ctx.config()
    wanted = _parse_target(peer)
    local = await ctx.daemon_status()
    try:
        mesh: dict | None = await ctx.coordination(config.server_url).status()
        server_error = ""
    except (ServerUnreachable, ServerError) as e:
        mesh, server_error = None, str(e)
    nodes = (mesh or {}).get("nodes", [])
    record = next((n for n in nodes if _matches(n, wanted)), None)
    wg_peer = next((p for p in (local or {}).get("peers", []) if _matches(p, wanted)), None)
    if record is None and wg_peer is None:
        where = "in the mesh" if mesh is not None else f"known to the daemon (and the server is unreachable: {server_error})"
        raise OpError(f"no node {wanted} {where} (see: wire status)")
    if (record or {}).get("node_id") == config.node_id:
        raise OpError(f"{wanted} is this node")
    me = (local or {}).get("node") or next((n for n in nodes if n.get("node_id") == config.node_id), {})
    return explain_path(me, record, wg_peer, local, server_error)


def explain_path(me: dict, record: dict | None, wg_peer: dict | None, local: dict | None, server_error: str = "") -> dict:
    """The explanation itself, from plain views (testable without a mesh).

    ``me``: this node (public_ip, nat_type); ``record``: the peer as the
    server lists it (None when the server is unreachable); ``wg_peer``: the
    peer in the daemon's status, with the path it chose (None when not
    configured); ``local``: the daemon's status (None when it is not running).
    """
    peer = record or wg_peer or {}
    name = peer.get("node_name", "?")
    wg = wg_peer or {}
    path = wg.get("path", "none") if local is not None else "none"
    age = wg.get("handshake_age")
    fresh = age is not None and age <= HANDSHAKE_STALE
    reasons = [f"the server is unreachable ({server_error}): only the daemon's last netmap is known"] if server_error else []
    suggestions: list[str] = []
    expected, kind = _expected_endpoint(record, me.get("public_ip", ""))
    if path == "relay":
        endpoint = wg.get("endpoint")
        why = wg.get("reason", "").removeprefix("relay: ")
        reasons.append(f"traffic to {name} goes through the relay on the coordination server ({why}); WireGuard sends it to the local relay shim {endpoint}")
        cause, fix = _why_not_direct(name, me.get("nat_type") or "unknown", peer.get("nat_type") or "unknown", expected, kind)
        reasons.append(cause)
        suggestions.append(fix)
        kind = "relay"
    else:
        endpoint = wg.get("endpoint") or expected
        reasons.extend(_endpoint_reasons(name, record, me, expected, kind, wg.get("endpoint")))
    if fresh:
        reasons.append(f"handshake {max(0, age):.0f}s ago: the tunnel is up")
    elif path == "connecting":
        reasons.append(f"no handshake on the direct path yet: the daemon tries it for {DIRECT_TIMEOUT:.0f}s, then relays")
        suggestions.append(f"ask again in {DIRECT_TIMEOUT:.0f}s: wire explain {name}")
    else:
        causes, fixes = _no_handshake(name, me, peer, record, wg_peer, local, endpoint, kind)
        reasons.extend(causes)
        suggestions.extend(fixes)
    return {
        "ok": fresh,
        "peer": name,
        "vpn_ip": peer.get("vpn_ip"),
        "path": path,
        "endpoint": endpoint,
        "endpoint_kind": kind,
        "handshake_age": age,
        "peer_online": _online(record, wg_peer),
        "nat": {"this_node": me.get("nat_type") or "unknown", "peer": peer.get("nat_type") or "unknown"},
        "reasons": reasons,
        "suggestions": suggestions,
    }


def _expected_endpoint(record: dict | None, my_public_ip: str) -> tuple[str | None, str]:
    """The endpoint the daemon gives WireGuard (the daemon's own rule), and
    whether it is the peer's "lan" or "public" address."""
    if record is None:
        return None, "unknown"
    try:
        view = Peer.from_view(record)
    except (ProtocolError, KeyError):
        return None, "unknown"
    endpoint = endpoint_for(view, my_public_ip)
    if endpoint is None:
        return None, "none"
    return endpoint, "lan" if view.lan_ip and view.public_ip == my_public_ip else "public"


def _endpoint_reasons(name: str, record: dict | None, me: dict, expected: str | None, kind: str, actual: str | None) -> list[str]:
    my_ip = me.get("public_ip") or "unknown"
    if kind == "lan":
        reasons = [
            f"{name} has the same public IP as this node ({my_ip}): both are behind one NAT, so WireGuard uses "
            f"its LAN address {expected} (hairpinning through the shared router often fails)"
        ]
    elif kind == "public":
        mapped = "its own address (it has no NAT)" if record.get("nat_type") == "none" else "its public NAT-mapped endpoint, learned by STUN"
        reasons = [f"{name} is at {record['public_ip']}, this node at {my_ip}: WireGuard uses {mapped}, {expected}"]
    elif kind == "none":
        reasons = [f"the server knows no public address for {name}: WireGuard has no endpoint and waits for {name} to reach this node"]
    else:
        reasons = []
    if actual and expected and actual != expected:
        reasons.append(f"WireGuard now sends to {actual}: {name}'s packets arrive from there (WireGuard follows the latest authenticated packet)")
    return reasons


def _online(record: dict | None, wg_peer: dict | None) -> bool | None:
    if record is not None:
        return record.get("status") == "online"
    return (wg_peer or {}).get("online")


def _no_handshake(name, me, peer, record, wg_peer, local, endpoint, kind) -> tuple[list[str], list[str]]:
    """Likely causes of a missing handshake, most basic first, with what to do."""
    if local is None:
        return ["the node daemon is not running here"], ["start it: sudo wire up"]
    if not local["interface"]["up"]:
        iface = local["interface"]
        return [f"interface {iface['name']} is not up{': ' + iface['error'] if iface.get('error') else ''}"], ["see: wire diagnose"]
    if wg_peer is None:
        return [f"{name} is not configured in WireGuard yet"], ["the daemon applies new peers within seconds; if it does not: wire diagnose"]
    age = wg_peer.get("handshake_age")
    causes = [f"last handshake {age:.0f}s ago: the path worked, then stopped" if age is not None else "no handshake yet"]
    if _online(record, wg_peer) is False:
        seen = f" (last seen {record['last_seen_ago']}s ago)" if record and "last_seen_ago" in record else ""
        return causes + [f"{name} is offline at the server{seen}"], [f"start {name}: sudo wire up (on {name})"]
    cause, fix = _likely_blocker(name, peer.get("nat_type") or "unknown", endpoint, kind)
    causes.append(cause)
    fixes = [fix]
    unknown = [who for who, nat in (("this node", me.get("nat_type")), (name, peer.get("nat_type"))) if (nat or "unknown") == "unknown"]
    if unknown:
        causes.append(f"NAT type unknown on {' and '.join(unknown)} (its STUN probe got no answer)")
        fixes.append("see what the network lets through: wire netcheck")
    return causes, fixes


def _why_not_direct(name: str, my_nat: str, peer_nat: str, expected: str | None, kind: str) -> tuple[str, str]:
    """Why a relayed pair is not direct, and what would make it so."""
    hard = [who for who, nat in (("this node", my_nat), (name, peer_nat)) if nat == "hard"]
    if hard:
        return (
            f"hard (symmetric) NAT on {' and '.join(hard)}: a new public port for every destination, so no endpoint learned by STUN reaches it",
            "for a direct path: forward the WireGuard UDP port to that node on its router, or give it a public address",
        )
    cause, fix = _likely_blocker(name, peer_nat, expected, kind)
    return f"the direct path got no handshake: {cause}", f"for a direct path: {fix}"


def _likely_blocker(name: str, peer_nat: str, endpoint: str | None, kind: str) -> tuple[str, str]:
    """What most likely stops a peer that is online, configured and silent."""
    if kind == "relay":
        return (
            f"no handshake through the relay either: UDP to the server's relay port is blocked on this side or {name}'s",
            "see what the network lets through: wire netcheck (on both nodes)",
        )
    if endpoint is None:
        return f"neither side knows where {name} is", f"check {name} is registered with a public address: wire status"
    port = endpoint.rsplit(":", 1)[1]
    if kind == "lan":
        return (
            f"UDP to {name}'s LAN address {endpoint} gets no answer: a firewall on {name} drops it",
            f"allow UDP port {port} in on {name}",
        )
    if peer_nat == "none":
        return (
            f"UDP to {endpoint} gets no answer: a firewall on {name} or in front of it drops it",
            f"allow UDP port {port} in on {name}",
        )
    return (
        f"{name} is behind NAT: its router must let this node's packets in once {name}'s own went out, and some routers filter them anyway",
        "check neither network blocks UDP: wire netcheck (on both nodes)",
    )


# -- the lab ------------------------------------------------------------------------


async def demo(ctx: Context, keep: bool = False, clean: str | None = None) -> dict:
    """Build a mesh of real nodes in network namespaces, show it working, tear it down."""
    from wire import demo as demo_module
    from wire.lab import LabUnavailable, check_requirements

    try:
        check_requirements()
    except LabUnavailable as e:
        raise OpError(f"the demo needs a Linux host with network namespaces: {e}")
    tools = ctx.check_install()
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
