"""``wire ip``: this node's mesh addresses, or a peer's (as ``tailscale ip`` does).

This node's come from the running daemon, else from config.json (so they
show while the daemon is stopped); a peer's from the daemon's netmap, else
from the server. A peer is named by node name, mesh DNS name or one of its
mesh addresses. ``family`` 4 or 6 keeps one address family; asking for one
the node lacks (a mesh whose server gives no IPv6) is an error that says so.
"""

from __future__ import annotations

from wire.ops.context import Context, OpError
from wire.ops.targets import find_node

FAMILIES = (4, 6)


async def ip(ctx: Context, peer: str | None = None, family: int | None = None) -> dict:
    """The mesh addresses of this node, or of ``peer``: IPv4 first, then IPv6."""
    if family is not None and family not in FAMILIES:
        raise OpError(f"family must be 4 or 6, not {family!r}")
    local = await ctx.daemon_status()
    if peer is None:
        entry, source = _this_node(ctx, local)
    else:
        entry, source = await find_node(ctx, local, peer)
    name = entry.get("node_name") or ""
    vpn_ip, vpn_ip6 = entry.get("vpn_ip") or "", entry.get("vpn_ip6") or ""
    chosen = [a for a, f in ((vpn_ip, 4), (vpn_ip6, 6)) if a and family in (None, f)]
    if not chosen:
        who = "this node" if peer is None else name or peer
        if family == 6 and vpn_ip:
            raise OpError(f"{who} has no IPv6 mesh address (its server gives the mesh none, or has not yet)")
        raise OpError(f"{who} has no mesh address yet" + (" (start it: sudo wire up)" if peer is None else ""))
    return {
        "ok": True,
        "node_name": name,
        "this_node": peer is None,
        "vpn_ip": vpn_ip,
        "vpn_ip6": vpn_ip6,
        "addresses": chosen,
        "source": source,
    }


def _this_node(ctx: Context, local: dict | None) -> tuple[dict, str]:
    node = (local or {}).get("node")
    if node and node.get("vpn_ip"):
        return node, "daemon"
    config = ctx.config()
    return {"node_name": config.node_name, "vpn_ip": config.vpn_ip, "vpn_ip6": config.vpn_ip6}, "config"
