"""``wire status`` and ``wire peers``: the mesh as the server and the daemon see it."""

from __future__ import annotations

from wire.client import ServerError, ServerUnreachable
from wire.ops.context import Context, OpError, _mesh, _server_url


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
            node["path_why"] = local_peer.get("why", local_peer["reason"])
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
