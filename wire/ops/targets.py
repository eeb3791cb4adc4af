"""A peer named on the command line: by node name or VPN address."""

from __future__ import annotations

import ipaddress

from wire.client import ServerError, ServerUnreachable
from wire.ops.context import (
    Context,
    OpError,
    refuses_this_node,
    removed_message,
    server_problem,
)
from wire.protocol import ProtocolError, parse_node_name
from wire.protocol.dns import DEFAULT_DOMAIN


def _as_address(target: str) -> str | None:
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        return None


def _parse_target(target: str, domain: str | None = None) -> str:
    """A VPN address, or a node name in its stored (lower-case) form; a DNS
    name in the mesh domain (``web2.wire.internal``) is that node's name."""
    address = _as_address(target)
    if address is not None:
        return address
    name = target.rstrip(".")
    for suffix in {f".{domain}" if domain else "", f".{DEFAULT_DOMAIN}"} - {""}:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    try:
        return parse_node_name(name)
    except ProtocolError:
        raise OpError(f"{target!r} is neither a node name, a mesh DNS name nor an IP address")


def mesh_domain(local: dict | None) -> str | None:
    """The mesh's DNS domain, as the daemon's status says (None: no mesh DNS, or no daemon)."""
    dns = (local or {}).get("dns") or {}
    return dns.get("domain") if dns.get("enabled") else None


def _matches(entry: dict, target: str) -> bool:
    return target in (entry.get("node_name"), entry.get("vpn_ip"))


async def resolve_target(ctx: Context, target: str) -> tuple[str, str]:
    """A node name or VPN address -> (name, address), through the netmap."""
    address = _as_address(target)
    if address is not None:
        return target, address  # ping an address as given, in the mesh or not
    local = await ctx.daemon_status()
    name = _parse_target(target, mesh_domain(local))
    for peer in (local or {}).get("peers", []):
        if peer["node_name"] == name:
            return name, peer["vpn_ip"]
    config = ctx.config()
    try:
        mesh = await ctx.coordination(config.server_url).status()
    except (ServerUnreachable, ServerError) as e:
        if refuses_this_node(ctx, config.server_url, e):
            raise OpError(removed_message())
        why = "it is not running here" if local is None else "it is not in the daemon's netmap"
        raise OpError(
            f"cannot resolve {name}: the daemon does not know it ({why}), and the server cannot be asked: "
            f"{server_problem(ctx, config.server_url, e)} (a VPN address needs no lookup: wire ping 10.99.x.y)"
        )
    for node in mesh.get("nodes", []):
        if node.get("node_name") == name:
            return name, node["vpn_ip"]
    raise OpError(f"no node named {name} in the mesh (see: wire status)")
