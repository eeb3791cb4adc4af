"""``wire admin``: the server's admin operations, and how their results print."""

from __future__ import annotations

import argparse
import datetime

from wire import ops
from wire.admin_ops import DEFAULT_EPHEMERAL_AFTER, AdminError, AdminOps
from wire.cli.formatting import Formatter, Style, span
from wire.cli.table import table
from wire.datadir import default_data_dir


def _local_time(at: float) -> str:
    # The admin reads these next to the server's own logs: local time.
    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")


def _expiry(key: dict, now: float | None) -> str:
    """When a key expires, and (given the server's clock) how far off that is."""
    if not key["expires"]:
        return "never"
    text = _local_time(key["expires"])
    if now is None:
        return text
    left = key["expires"] - now
    return f"{text} (in {span(left)})" if left > 0 else f"{text} ({span(-left)} ago)"


def _kind(key: dict) -> str:
    return "reusable" if key["reusable"] else "one-time"


def _extras(key: dict) -> str:
    """A key's tags and ephemerality, as a key listing shows them."""
    parts = []
    if key.get("tags"):
        parts.append("tags " + ",".join(key["tags"]))
    if key.get("ephemeral"):
        parts.append(f"ephemeral: removed {span(key['ephemeral_after'])} offline")
    return "; ".join(parts)


def format_key_created(result: dict, style: Style) -> str:
    key = result["key"]
    expires = f", expires {_expiry(key, key['created'])}" if key["expires"] else ""
    extras = f", {_extras(key)}" if _extras(key) else ""
    return f"join key {key['key_id']} ({_kind(key)}{expires}{extras}); on the new machine run:\n\n  {result['join_command']}\n"


def format_keys(result: dict, style: Style) -> str:
    """Every key: its state (usable, spent, revoked, expired), uses, creation and expiry."""
    keys = result["keys"]
    if not keys:
        return "no join keys (create one: wire admin keys create)"
    now = result.get("timestamp")
    rows = [
        (
            k["key_id"],
            k.get("state", "usable" if k["usable"] else "unusable"),
            _kind(k) + (", ephemeral" if k.get("ephemeral") else ""),
            k["uses"],
            _local_time(k["created"]),
            _expiry(k, now),
            ",".join(k.get("tags") or []) or "-",
            k["note"],
        )
        for k in keys
    ]
    return "\n".join(table(("KEY ID", "STATE", "KIND", "USES", "CREATED", "EXPIRES", "TAGS", "NOTE"), rows))


def format_key_revoked(result: dict, style: Style) -> str:
    return f"join key {result['key']['key_id']} revoked: no node may join with it any more"


def format_nodes(result: dict, style: Style) -> str:
    """Every enrolled node, with the id ``nodes remove`` and ``rename`` accept."""
    nodes = result["nodes"]
    summary = f"{result['online']} online / {result['offline']} offline / {result['total']} total"
    if not nodes:
        return f"{summary}: no nodes have joined (create a join key: wire admin keys create)"
    rows = [
        (
            n["node_name"],
            n["node_id"],
            n["vpn_ip"],
            n["status"],
            f"{span(n['last_seen_ago'])} ago",
            n.get("public_ip") or "-",
            n.get("nat_type") or "-",
            ",".join(n.get("tags") or []) or "-",
        )
        for n in nodes
    ]
    return "\n".join([summary, "", *table(("NAME", "NODE ID", "VPN IP", "STATUS", "LAST SEEN", "PUBLIC IP", "NAT", "TAGS"), rows)])


def format_removed(result: dict, style: Style) -> str:
    return f"removed {result['removed']} ({result['vpn_ip']}); its credential no longer works"


def format_renamed(result: dict, style: Style) -> str:
    return f"renamed {result['old_name']} to {result['node_name']}"


def format_tagged(result: dict, style: Style) -> str:
    tags = ", ".join(result["tags"]) or "no tags"
    return f"{result['node_name']} now has {tags} (was: {', '.join(result['old_tags']) or 'none'})"


def format_audit(result: dict, style: Style) -> str:
    return "\n".join(
        f"  {datetime.datetime.fromtimestamp(e['at']).isoformat(timespec='seconds')}  {e['event']:<12} {e['detail']}"
        for e in reversed(result["events"])
    ) or "no events"


async def dispatch_admin(ctx: ops.Context, args: argparse.Namespace) -> tuple[dict, Formatter]:
    """Run one ``wire admin`` command: its result, and how it prints."""
    admin = AdminOps(ctx.reactor, args.data_dir or default_data_dir())
    try:
        if args.topic == "keys" and args.action == "create":
            ephemeral_after = args.ephemeral_after or (DEFAULT_EPHEMERAL_AFTER if args.ephemeral else 0.0)
            tags = tuple(sorted(set(args.tags)))
            return await admin.create_key(args.reusable, args.expires, args.note, args.url, tags, ephemeral_after), format_key_created
        if args.topic == "keys" and args.action == "list":
            return await admin.keys(), format_keys
        if args.topic == "keys" and args.action == "revoke":
            return await admin.revoke_key(args.key_id), format_key_revoked
        if args.topic == "nodes" and args.action == "list":
            return await admin.nodes(), format_nodes
        if args.topic == "nodes" and args.action == "remove":
            return await admin.remove_node(args.node), format_removed
        if args.topic == "nodes" and args.action == "rename":
            return await admin.rename_node(args.node, args.new_name), format_renamed
        if args.topic == "nodes" and args.action == "tag":
            return await admin.tag_node(args.node, tuple(sorted(set(args.tags)))), format_tagged
        if args.topic == "audit":
            return await admin.audit(), format_audit
    except AdminError as e:
        raise ops.OpError(str(e))
    raise AssertionError((args.topic, args.action))
