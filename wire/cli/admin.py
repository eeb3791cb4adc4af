"""``wire admin``: the server's admin operations, and how their results print."""

from __future__ import annotations

import argparse
import json

from wire import ops
from wire.admin_ops import AdminError, AdminOps
from wire.cli.formatting import Style, format_status
from wire.datadir import default_data_dir


def format_admin(result: dict, style: Style) -> str:
    if "join_command" in result:
        key = result["key"]
        kind = "reusable" if key["reusable"] else "one-time"
        return f"join key {key['key_id']} ({kind}); on the new machine run:\n\n  {result['join_command']}\n"
    if "keys" in result:
        lines = [f"  {k['key_id']}  {'usable ' if k['usable'] else 'spent  '}  uses {k['uses']:<4} {'reusable' if k['reusable'] else 'one-time'}  {k['note']}" for k in result["keys"]]
        return "\n".join(lines) or "no join keys"
    if "key" in result:
        return f"join key {result['key']['key_id']} revoked"
    if "nodes" in result:
        return format_status({**result, "server": "(admin)"}, style)
    if "removed" in result:
        return f"removed {result['removed']} ({result['vpn_ip']}); its credential no longer works"
    if "old_name" in result:
        return f"renamed {result['old_name']} to {result['node_name']}"
    if "events" in result:
        import datetime

        return "\n".join(
            f"  {datetime.datetime.fromtimestamp(e['at']).isoformat(timespec='seconds')}  {e['event']:<12} {e['detail']}"
            for e in reversed(result["events"])
        ) or "no events"
    return json.dumps(result, indent=2)


async def dispatch_admin(ctx: ops.Context, args: argparse.Namespace) -> dict:
    admin = AdminOps(ctx.reactor, args.data_dir or default_data_dir())
    try:
        if args.topic == "keys" and args.action == "create":
            return await admin.create_key(args.reusable, args.expires, args.note, args.url)
        if args.topic == "keys" and args.action == "list":
            return await admin.keys()
        if args.topic == "keys" and args.action == "revoke":
            return await admin.revoke_key(args.key_id)
        if args.topic == "nodes" and args.action == "list":
            return await admin.nodes()
        if args.topic == "nodes" and args.action == "remove":
            return await admin.remove_node(args.node)
        if args.topic == "nodes" and args.action == "rename":
            return await admin.rename_node(args.node, args.new_name)
        if args.topic == "audit":
            return await admin.audit()
    except AdminError as e:
        raise ops.OpError(str(e))
    raise AssertionError((args.topic, args.action))
