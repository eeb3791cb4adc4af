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


async def find_node(ctx: Context, local: dict | None, target: str, *, verb: str = "look up", hint: str = "") -> tuple[dict, str]:
    """The node ``target`` names (a node name, a mesh DNS name or one of its
    mesh addresses): from the daemon's netmap (this node's own record too),
    else from the server's ``/status``; with where it was found ("daemon", "server")."""
    address = _as_address(target)
    name = None if address is not None else _parse_target(target, mesh_domain(local))

    def matches(entry: dict) -> bool:
        if address is not None:
            return address in (entry.get("vpn_ip"), entry.get("vpn_ip6"))
        return entry.get("node_name") == name

    known = ([local["node"]] if local and local.get("node") else []) + list((local or {}).get("peers", []))
    for entry in known:
        if matches(entry):
            return entry, "daemon"
    config = ctx.config()
    try:
        mesh = await ctx.coordination(config.server_url).status()
    except (ServerUnreachable, ServerError) as e:
        if refuses_this_node(ctx, config.server_url, e):
            raise OpError(removed_message())
        why = "it is not running here" if local is None else "it is not in the daemon's netmap"
        raise OpError(
            f"cannot {verb} {name or target}: the daemon does not know it ({why}), and the server cannot be asked: "
            f"{server_problem(ctx, config.server_url, e)}{hint}"
        )
    for entry in mesh.get("nodes", []):
        if matches(entry):
            return entry, "server"
    raise OpError(f"no node {'named ' + name if name else target} in the mesh (see: wire status)")


async def resolve_target(ctx: Context, target: str) -> tuple[str, str]:
    """A node name or VPN address -> (name, address), through the netmap."""
    address = _as_address(target)
    if address is not None:
        return target, address  # ping an address as given, in the mesh or not
    entry, _ = await find_node(
        ctx, await ctx.daemon_status(), target, verb="resolve", hint=" (a VPN address needs no lookup: wire ping 10.99.x.y)"
    )
    return entry["node_name"], entry["vpn_ip"]
