"""``wire diagnose`` and ``wire watchdog``: what a working node needs, checked."""

from __future__ import annotations

import os

from wire.client import ServerError, ServerUnreachable
from wire.install import InstallCheck
from wire.node import launcher
from wire.node.config import NodeConfig, config_path
from wire.node.paths import HANDSHAKE_STALE
from wire.ops.context import (
    JOIN,
    JOIN_HINT,
    REJOIN,
    REMOVED,
    ConfigProblem,
    Context,
    daemon_was_removed,
    refuses_this_node,
    removed_message,
    server_problem,
)
from wire.ops.troubles import failing_loop, recent_bad_answers, refused_answers


def _check(name: str, ok: bool, detail: str, suggestion: str = "") -> dict:
    return {"check": name, "ok": ok, "detail": detail, "suggestion": "" if ok else suggestion}


async def diagnose(ctx: Context) -> dict:
    """Each thing a working node needs, checked in order, with what to do about it."""
    checks = [_wireguard_check(ctx.check_install())]
    try:
        config = ctx.config()
    except ConfigProblem as e:
        fix = e.suggestion or f"fix or remove {config_path(ctx.config_dir)}, then join again: {JOIN}"
        checks.append(_check("config", False, e.detail, fix))
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
    except ConfigProblem as e:  # its credential, unreadable for this user
        checks.append(_check("credential", False, e.detail, e.suggestion))
        return _diagnosis(checks)
    mesh, refused = None, None
    try:
        health = await client.health()
    except (ServerUnreachable, ServerError) as e:
        checks.append(_check("server", False, str(e), "check the server is running and the URL/port are reachable (TCP port, and UDP port+1, port+2 for STUN)"))
    else:
        checks.append(_check("server", True, f"{config.server_url} answers (version {health.get('version')})"))
        # /health is public; /status is where this node's credential counts.
        try:
            mesh = await client.status()
        except (ServerUnreachable, ServerError) as e:
            refused = e
    if daemon_was_removed(local) or refuses_this_node(ctx, config.server_url, refused):
        # Not the network: the server knows this node no more.
        checks.append(_check("registered", False, REMOVED, REJOIN))
    elif refused is not None:
        if isinstance(refused, ServerError) and refused.status == 401:
            # This machine never joined this (authenticated) server.
            checks.append(_check("registered", False, str(refused), JOIN_HINT))
        else:
            checks.append(_check("registered", False, server_problem(ctx, config.server_url, refused), "run: sudo wire up"))
    elif mesh is not None:
        checks.extend(_registry_checks(mesh, config, local))
    if local is not None:
        checks.append(_loops_check(local))
        checks.append(_answers_check(local))
        checks.append(_handshake_check(local))
        dns = local.get("dns")
        if dns and dns.get("enabled"):
            checks.append(_dns_check(dns))
    return _diagnosis(checks)


def _dns_check(dns: dict) -> dict:
    """The mesh DNS: where it answers, and how the OS resolver reaches it."""
    os_status = dns.get("os") or {}
    mode = os_status.get("mode") or "none"
    where = f"*.{dns['domain']} answered on {dns['listening']}" if dns.get("listening") else f"*.{dns['domain']} not answered"
    told = "OS resolver left alone" if mode == "none" else f"OS resolver: {mode}"
    problem = dns.get("problem")
    return _check(
        "mesh dns",
        problem is None and bool(dns.get("listening")),
        f"{where}; {told}" + (f"; {problem}" if problem else ""),
        "see the daemon log (port 53 on the VPN address must be free; resolv.conf writable)",
    )


def _loops_check(local: dict) -> dict:
    """The daemon's loops (netmap sync, heartbeat, path check): failing now, and why."""
    failing = local.get("failing") or []
    if not failing:
        return _check("daemon loops", True, "netmap sync, heartbeat and path checks run")
    worst = max(failing, key=lambda f: f["count"])
    detail = "; ".join(failing_loop(f) for f in failing)
    return _check("daemon loops", False, detail, f"see the daemon log for the first {worst['what']} failure")


def _answers_check(local: dict) -> dict:
    """Whether the server lately sent what this node had to refuse (a hostile or broken server)."""
    bad = recent_bad_answers(local)
    if bad is None:
        return _check("server answers", True, "nothing refused lately")
    return _check(
        "server answers",
        False,
        refused_answers(bad),
        "the server sends what this node will not apply (addresses outside the mesh, duplicate keys): check the server and its version",
    )


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
    if daemon_was_removed(local):
        problems.append(removed_message())
    elif not local["server"]["reachable"]:
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
