"""``wire status`` and ``wire peers``: the mesh as the server and the daemon see it.

When the server does not answer, both show the mesh from the running
daemon's netmap instead, marked ``"stale": true, "source": "daemon"`` (and
not ``ok``): what this node last heard, not what is true now.
"""

from __future__ import annotations

from wire.client import BadAnswer, ServerError, ServerUnreachable
from wire.node.config import NodeConfig
from wire.ops.context import (
    Context,
    OpError,
    _server_url,
    daemon_was_removed,
    refuses_this_node,
    removed_message,
    server_problem,
)
from wire.ops.troubles import daemon_troubles
from wire.protocol.dns import dns_name_of


async def status(ctx: Context, server: str | None = None) -> dict:
    """The whole mesh as the server sees it, with this node's paths to each peer;
    the daemon's last known mesh when the server does not answer."""
    config = ctx.config(required=server is None)
    server_url = _server_url(config, server)
    local = await ctx.daemon_status()
    try:
        mesh = await ctx.coordination(server_url).status()
    except (ServerUnreachable, ServerError) as e:
        return _last_known_status(ctx, config, server_url, local, e)
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
            node["path_why"] = local_peer.get("why", local_peer["reason"])
            node["endpoint"] = local_peer["endpoint"]
            node["handshake_age"] = local_peer["handshake_age"]
            node.update(path_details(local_peer))
        nodes.append(node)
    result = {
        "ok": True,
        "stale": False,
        "source": "server",
        "server": server_url,
        "proxy": ctx.proxy_in_use(server_url),
        "version": mesh.get("version"),
        "total": mesh.get("total", len(nodes)),
        "online": mesh.get("online", 0),
        "offline": mesh.get("offline", 0),
        "nodes": nodes,
        "my_node_id": my_id,
        "daemon_running": local is not None,
        **daemon_state(local),
    }
    with_dns_names(result, local)
    with_routing(result, local)
    if _daemon_knows(local, server_url) and daemon_was_removed(local):
        # The server answers others; this node's daemon it turns away.
        result.update(ok=False, warning=removed_message())
    return result


def with_routing(result: dict, local: dict | None) -> dict:
    """This node's routing (routes skipped and why, the exit in use), and which node is that exit."""
    routing = (local or {}).get("routing")
    result["routing"] = routing
    exit_name = (routing or {}).get("exit_node")
    for node in result["nodes"]:
        if exit_name and node.get("node_name") == exit_name:
            node["exit_in_use"] = True
    return result


def with_dns_names(result: dict, local: dict | None) -> dict:
    """Each node's DNS name in the mesh domain, when the daemon serves mesh DNS."""
    dns = (local or {}).get("dns") or {}
    domain = dns.get("domain") if dns.get("enabled") else None
    result["dns"] = dns or None
    if domain:
        for node in result["nodes"]:
            name = dns_name_of(node.get("node_name"), domain)
            if name is not None:
                node["dns_name"] = name
    return result


def daemon_state(local: dict | None) -> dict:
    """The daemon's own troubles for ``status``: its data as ``wire diagnose``
    reads it (``failing``, ``bad_answers``), and the lines saying it (``daemon_problems``)."""
    return {
        "failing": (local or {}).get("failing") or [],
        "bad_answers": (local or {}).get("bad_answers"),
        "daemon_problems": daemon_troubles(local),
    }


def _daemon_knows(local: dict | None, server_url: str) -> bool:
    """Whether the daemon's netmap is that of ``server_url`` (``--server`` may
    name another): the replica it uses or another replica of its mesh."""
    if local is None:
        return False
    replicas = local["server"].get("replicas") or [local["server"]["url"]]
    return server_url.rstrip("/") in (url.rstrip("/") for url in replicas)


def _fallback(ctx: Context, server_url: str, local: dict | None, error: ServerUnreachable | ServerError) -> str:
    """Why the server gave nothing; raises when the daemon cannot stand in for it."""
    if refuses_this_node(ctx, server_url, error) or (_daemon_knows(local, server_url) and daemon_was_removed(local)):
        # The netmap of a node the mesh no longer has is no mesh to show.
        raise OpError(removed_message())
    problem = server_problem(ctx, server_url, error)
    if _refused(error):
        raise OpError(problem)  # it answered: a refusal, not an absence
    if not _daemon_knows(local, server_url):
        if local is None:
            raise OpError(f"{problem} And the node daemon is not running here, so there is no last known mesh to show either (start it: sudo wire up).")
        raise OpError(f"{problem} And the node daemon here belongs to {local['server']['url']}, so there is no last known mesh of this server to show.")
    return str(error)


def _refused(error: ServerUnreachable | ServerError) -> bool:
    """A refusal (bad request, not allowed): the server said no. A busy or
    failing server, one without the endpoint (404) or one whose answer is
    not what the protocol says (a bad answer) is as good as absent: the
    daemon's last netmap stands in."""
    if not isinstance(error, ServerError) or isinstance(error, BadAnswer):
        return False
    return error.status < 500 and error.status not in (404, 429)


def _stale_view(problem: str, local: dict, server_url: str) -> dict:
    """What every view built from the daemon's last netmap says about itself."""
    return {
        "ok": False,
        "stale": True,
        "source": "daemon",
        "warning": _last_seen(problem, local),
        "server_error": problem,
        "server": server_url,
    }


def _last_seen(problem: str, local: dict) -> str:
    age = local["server"].get("last_contact_ago")
    when = f", {age:.0f}s ago" if age is not None else " (it has not reached the server since its daemon started)"
    return f"server unreachable ({problem}): showing the mesh as this node last saw it{when}"


def _last_known_status(ctx: Context, config: NodeConfig | None, server_url: str, local: dict | None, error) -> dict:
    """``status`` from the daemon's netmap: this node, then each peer it knows."""
    problem = _fallback(ctx, server_url, local, error)
    assert local is not None  # _fallback made sure
    me = local["node"]
    nodes = [
        {
            "node_name": me["node_name"],
            "node_id": me["node_id"],
            "vpn_ip": me.get("vpn_ip") or "",
            "vpn_ip6": me.get("vpn_ip6") or "",
            "public_ip": me.get("public_ip") or "",
            "public_ip6": me.get("public_ip6") or "",
            "status": "online",  # its daemon runs: that is what online means for this node
            "this_node": True,
        }
    ]
    for peer in local["peers"]:
        nodes.append(
            {
                "node_name": peer["node_name"],
                "node_id": peer["node_id"],
                "vpn_ip": peer["vpn_ip"],
                "vpn_ip6": peer.get("vpn_ip6") or "",
                "status": "online" if peer["online"] else "offline",
                "this_node": False,
                "path": peer["path"],
                "path_reason": peer["reason"],
                **path_details(peer),
                "endpoint": peer["endpoint"],
                "handshake_age": peer["handshake_age"],
            }
        )
    nodes.sort(key=lambda n: n["node_name"])
    online = sum(1 for n in nodes if n["status"] == "online")
    return with_routing(with_dns_names({
        **_stale_view(problem, local, server_url),
        "last_contact_ago": local["server"].get("last_contact_ago"),
        "version": None,
        "total": len(nodes),
        "online": online,
        "offline": len(nodes) - online,
        "nodes": nodes,
        "my_node_id": me["node_id"] if config is None else config.node_id,
        "daemon_running": True,
        **daemon_state(local),
    }, local), local)


async def peers(ctx: Context, server: str | None = None) -> dict:
    """Online nodes, as the server's /peers lists them; the daemon's last
    known online peers when the server does not answer."""
    config = ctx.config(required=server is None)
    server_url = _server_url(config, server)
    try:
        answer = await ctx.coordination(server_url).peers()
    except (ServerUnreachable, ServerError) as e:
        local = await ctx.daemon_status()
        problem = _fallback(ctx, server_url, local, e)
        assert local is not None
        known = [
            {"node_name": p["node_name"], "node_id": p["node_id"], "vpn_ip": p["vpn_ip"], "endpoint": p["endpoint"], "path": p["path"]}
            for p in local["peers"]
            if p["online"]
        ]
        return {
            **_stale_view(problem, local, server_url),
            "count": len(known),
            "peers": known,
        }
    return {"ok": True, "stale": False, "source": "server", "server": server_url, "count": answer.get("count", 0), "peers": answer.get("peers", [])}


def path_details(peer: dict) -> dict:
    """What the daemon adds to a peer's path: the kind of endpoint WireGuard
    has, who decided the pair's mode (the rule or the server), since when."""
    details = {"endpoint_kind": peer.get("endpoint_kind", "none")}
    for field in ("mode", "decided_by", "since_ago", "phase"):
        if field in peer:
            details[f"path_{field}"] = peer[field]
    return details
