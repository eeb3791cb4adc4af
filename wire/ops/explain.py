"""``wire explain``: why this node reaches a peer the way it does."""

from __future__ import annotations

import ipaddress

from wire.client import ServerError, ServerUnreachable
from wire.node.netmap import Peer
from wire.node.paths import HANDSHAKE_STALE, endpoint_for
from wire.protocol import PathMode
from wire.ops.context import (
    REJOIN,
    REMOVED,
    Context,
    OpError,
    daemon_was_removed,
    refuses_this_node,
    removed_message,
)
from wire.ops.targets import _matches, _parse_target, mesh_domain
from wire.protocol import ProtocolError


async def explain(ctx: Context, peer: str) -> dict:
    """Why this node reaches ``peer`` (a name or VPN address) the way it does,
    or why it does not, from the daemon's WireGuard view and the server's."""
    config = ctx.config()
    local = await ctx.daemon_status()
    wanted = _parse_target(peer, mesh_domain(local))
    try:
        mesh: dict | None = await ctx.coordination(config.server_url).status()
        server_error = ""
    except (ServerUnreachable, ServerError) as e:
        mesh, server_error = None, str(e)
        removed = refuses_this_node(ctx, config.server_url, e)
    else:
        removed = False
    removed = removed or daemon_was_removed(local)
    nodes = (mesh or {}).get("nodes", [])
    record = next((n for n in nodes if _matches(n, wanted)), None)
    wg_peer = next((p for p in (local or {}).get("peers", []) if _matches(p, wanted)), None)
    if record is None and wg_peer is None:
        if removed:
            raise OpError(removed_message())
        routed = routed_by(wanted, nodes or (local or {}).get("peers", []))
        if routed is not None:
            router, route = routed
            raise OpError(
                f"{wanted} is no node: it is behind {router}, which routes {route} for the mesh; under an access "
                f"policy {router} forwards to it only what a rule allows (on the server: wire admin policy explain "
                f"{config.node_name} {wanted}:PORT), and this node uses it only with --accept-routes"
            )
        where = "in the mesh" if mesh is not None else f"known to the daemon (and the server is unreachable: {server_error})"
        if ((local or {}).get("policy") or {}).get("rules") is not None:
            raise OpError(
                f"no node {wanted} in this node's view: there is none, or the access policy does not let it and this "
                f"node be peers (on the server: wire admin policy explain {config.node_name} {wanted}:PORT)"
            )
        raise OpError(f"no node {wanted} {where} (see: wire status)")
    if (record or {}).get("node_id") == config.node_id:
        raise OpError(f"{wanted} is this node")
    me: dict = (local or {}).get("node") or next((n for n in nodes if n.get("node_id") == config.node_id), {})
    return explain_path(me, record, wg_peer, local, server_error, removed=removed)


def routed_by(target: str, nodes: list) -> tuple[str, str] | None:
    """The node whose routes hold the address ``target`` (name, route), most specific first; None if none."""
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        return None
    found = []
    for node in nodes:
        for route in node.get("routes") or []:
            try:
                network = ipaddress.ip_network(route)
            except (TypeError, ValueError):
                continue
            if network.version == address.version and address in network:
                found.append((-network.prefixlen, str(node.get("node_name") or node.get("node_id")), str(network)))
    return (min(found)[1], min(found)[2]) if found else None


def explain_path(
    me: dict, record: dict | None, wg_peer: dict | None, local: dict | None, server_error: str = "", removed: bool = False
) -> dict:
    """The explanation itself, from plain views (testable without a mesh).

    ``me``: this node (public_ip, nat_type); ``record``: the peer as the
    server lists it (None when the server is unreachable); ``wg_peer``: the
    peer in the daemon's status, with the path it chose (None when not
    configured); ``local``: the daemon's status (None when it is not running);
    ``removed``: the server no longer accepts this node (401 to its credential).
    """
    peer = record or wg_peer or {}
    name = peer.get("node_name", "?")
    wg = wg_peer or {}
    path = wg.get("path", "none") if local is not None else "none"
    age = wg.get("handshake_age")
    fresh = age is not None and age <= HANDSHAKE_STALE
    if removed:
        # Before any path reasoning: every peer drops this node from its WireGuard.
        reasons = [f"{REMOVED}: every peer removes this node from its WireGuard, so no tunnel to {name} lasts"]
        suggestions = [REJOIN]
    else:
        reasons = [f"the server is unreachable ({server_error}): only the daemon's last netmap is known"] if server_error else []
        suggestions = []
    expected, kind = _expected_endpoint(record, me.get("public_ip", ""), me.get("public_ip6", ""))
    planned = wg.get("planned_endpoint")
    if planned and record is not None:
        # The daemon's own plan (the server's word included: an IPv4 fallback) wins over re-deriving it.
        expected, kind = planned, _kind_of(planned, record)
    if path in ("relay", "relay-tcp") or wg.get("mode") == "relay":
        endpoint = wg.get("endpoint")
        why = wg.get("why") or wg.get("reason", "")
        if wg.get("endpoint_kind", "relay-shim") == "relay-shim":
            where = f"WireGuard sends it to the local relay shim {endpoint}"
        elif wg.get("endpoint_kind") == "relay-kernel":
            where = f"WireGuard sends it straight to the relay at {endpoint}, whose kernel forwards it (no shim on either node)"
        else:
            where = f"its relay session is not ready yet, and WireGuard sends to {endpoint or 'nowhere'} meanwhile"
        over = " over TCP, on the server's HTTPS port" if path == "relay-tcp" else ""
        # Replicas: the one relaying the pair (its home), by name and relay address.
        at = f" (replica {wg['relay_replica']}, {wg.get('relay_address', '')})" if wg.get("relay_replica") else ""
        reasons.append(f"traffic to {name} goes through the relay on the coordination server{at}{over} ({why}); {where}")
        cause, fix = _why_not_direct(name, me.get("nat_type") or "unknown", peer.get("nat_type") or "unknown", expected, kind)
        reasons.append(cause)
        suggestions.append(fix)
        kind = "relay" if wg.get("endpoint_kind", "relay-shim") == "relay-shim" else wg["endpoint_kind"]
        kind = "relay" if kind == "relay-kernel" else kind  # the same relay, another way through it
        if path == "relay-tcp" and kind == "relay":
            kind = "relay-tcp"
    else:
        endpoint = wg.get("endpoint") or expected
        reasons.extend(_endpoint_reasons(name, record, me, expected, kind, wg.get("endpoint")))
    policy = (local or {}).get("policy") or {}
    if policy.get("problem"):
        reasons.append(f"the access policy cannot be enforced here ({policy['problem']}): this node holds no peers")
        suggestions.append("install nftables (see the reason), then the daemon puts the filter in force by itself")
    elif policy.get("rules") is not None:
        may_open = wg.get("may_open_here")
        if may_open:
            here = f"{name} may open on this node: {'; '.join(may_open)}; nothing else"
        elif may_open is not None:
            here = f"{name} may open nothing on this node (it is a peer because this node may reach it)"
        else:
            here = f"{name} may open on this node only what its {policy['rules']} filter rule(s) accept"
        reasons.append(
            f"an access policy is in force: {here}; what this node may open on {name} is {name}'s filter "
            f"(ask the admin: wire admin policy explain)"
        )
    if fresh and age is not None:  # fresh: it has an age
        reasons.append(f"handshake {max(0, age):.0f}s ago: the tunnel is up")
    elif path == "connecting":
        reasons.append(wg.get("reason") or "the direct path is being tried")
        reasons.append("if nothing proves it in time, the server moves the pair (both nodes at once) to the relay")
        suggestions.append(f"ask again in a few seconds: wire explain {name}")
    else:
        causes, fixes = _no_handshake(name, me, peer, record, wg_peer, local, endpoint, kind)
        reasons.extend(causes)
        suggestions.extend(fixes)
    return {
        "ok": fresh and not removed,
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


def _kind_of(endpoint: str, record: dict) -> str:
    """Which of the peer's addresses an endpoint is: "lan", "ipv6" or "public"."""
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    if record.get("lan_ip") and host == record["lan_ip"] and host != record.get("public_ip"):
        return "lan"
    if record.get("public_ip6") and host == record["public_ip6"]:
        return "ipv6"
    return "public"


def _expected_endpoint(record: dict | None, my_public_ip: str, my_public_ip6: str = "") -> tuple[str | None, str]:
    """The endpoint the daemon gives WireGuard (the daemon's own rule), and
    whether it is the peer's "lan", "ipv6" or "public" address."""
    if record is None:
        return None, "unknown"
    try:
        view = Peer.from_json(record)
    except ProtocolError:
        return None, "unknown"
    lan = bool(view.lan_ip and view.public_ip == my_public_ip)
    if not lan and view.public_ip6 and my_public_ip6 and view.public_ip6 != my_public_ip6:
        return f"[{view.public_ip6}]:{view.port}", "ipv6"
    endpoint = endpoint_for(view, PathMode.LAN if lan else PathMode.DIRECT)
    if endpoint is None:
        return None, "none"
    return endpoint, "lan" if lan else "public"


def _endpoint_reasons(name: str, record: dict | None, me: dict, expected: str | None, kind: str, actual: str | None) -> list[str]:
    my_ip = me.get("public_ip") or "unknown"
    if kind == "lan":
        reasons = [
            f"{name} has the same public IP as this node ({my_ip}): both are behind one NAT, so WireGuard uses "
            f"its LAN address {expected} (hairpinning through the shared router often fails)"
        ]
    elif kind == "ipv6":
        assert record is not None  # _expected_endpoint calls only a record's endpoint "ipv6"
        reasons = [
            f"{name} ({record.get('public_ip6')}) and this node ({me.get('public_ip6')}) both have IPv6: WireGuard sends "
            f"to {name}'s own IPv6 address, {expected}, with no NAT on the way (firewalls on either side let it through, "
            "since both send at once); if IPv6 fails the pair falls back to IPv4"
        ]
    elif kind == "public":
        assert record is not None  # _expected_endpoint calls only a record's endpoint "public"
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
