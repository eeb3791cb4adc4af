"""``wire admin``: the server's admin operations, and how their results print."""

from __future__ import annotations

import argparse
import datetime
import sys

from wire import ops
from wire.admin_ops import DEFAULT_EPHEMERAL_AFTER, AdminError, AdminOps
from wire.cli.formatting import Formatter, Style, span
from wire.cli.table import table
from wire.datadir import default_data_dir
from wire.protocol.routes import EXIT_ROUTES, route_order


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
    # The IPv6 column only where the server gives addresses (not a seed's, nor an old wire's).
    ipv6 = any(n.get("vpn_ip6") for n in nodes)
    rows = [
        (
            n["node_name"],
            n["node_id"],
            n["vpn_ip"],
            *((n.get("vpn_ip6") or "-",) if ipv6 else ()),
            n["status"],
            f"{span(n['last_seen_ago'])} ago",
            n.get("public_ip") or "-",
            n.get("nat_type") or "-",
            ",".join(n.get("tags") or []) or "-",
        )
        for n in nodes
    ]
    headers = ("NAME", "NODE ID", "VPN IP", *(("VPN IPV6",) if ipv6 else ()), "STATUS", "LAST SEEN", "PUBLIC IP", "NAT", "TAGS")
    return "\n".join([summary, "", *table(headers, rows)])


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
        + (f"  (by {e['actor']})" if e.get("actor") else "")
        for e in reversed(result["events"])
    ) or "no events"


def read_policy_file(path: str) -> str:
    """The policy's text from a file, or stdin for ``-``; a clear error otherwise."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ops.OpError(f"cannot read the policy from {path}: {e}")


def parse_target(text: str) -> tuple[str, int | None, str]:
    """``DST[:PORT][/PROTO]`` -> (dst, port or None, proto): ``db1:5432``,
    ``db1:53/udp``, ``10.99.0.7:22``, ``[fd7a::1]:22``, ``db1/icmp``."""
    proto = "tcp"
    head, slash, tail = text.rpartition("/")
    if slash and tail in ("tcp", "udp", "icmp"):
        text, proto = head, tail
    port: int | None = None
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ops.OpError(f"{text!r}: an IPv6 address in brackets, then :PORT")
        text, port_text = host, rest[1:]
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
    else:
        port_text = ""  # a name, an IPv4 address, or a bare IPv6 address
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ops.OpError(f"{port_text!r} is not a port (0-65535)")
        port = int(port_text)
    return text, port, proto


async def _policy(admin: AdminOps, args: argparse.Namespace) -> tuple[dict, Formatter]:
    if args.action == "get":
        return await admin.policy(), format_policy
    if args.action in ("set", "check"):
        text = read_policy_file(args.file)
        return await admin.policy_action(args.action, text=text), format_policy_set if args.action == "set" else format_policy_checked
    if args.action == "clear":
        return await admin.policy_action("clear"), format_policy_set
    if args.action == "history":
        return await admin.policy_action("history"), format_policy_history
    if args.action == "rollback":
        return await admin.policy_action("rollback", version=args.version), format_policy_set
    if args.action == "explain":
        dst, port, proto = parse_target(args.dst)
        return await admin.policy_action("explain", src=args.src, dst=dst, port=port, proto=proto), format_policy_explained
    raise AssertionError(args.action)


def format_policy(result: dict, style: Style) -> str:
    if not result["policy_set"]:
        return f"no access policy (version {result['version']}): every node may reach every node"
    return f"// access policy version {result['version']}, set {_local_time(result['set_at'])} by {result['source']}\n{result['text'].rstrip()}\n"


def format_policy_set(result: dict, style: Style) -> str:
    if not result["policy_set"]:
        return f"access policy cleared (version {result['version']}): every node may reach every node"
    return f"access policy version {result['version']} in force ({result['source']}); nodes get their filters within seconds"


def format_policy_checked(result: dict, style: Style) -> str:
    return f"the policy is valid: {result['rules']} rule(s), {result['tests']} test(s) pass; nothing was changed"


def format_policy_history(result: dict, style: Style) -> str:
    rows = [
        (v["version"], _local_time(v["set_at"]) if v["set_at"] else "-", v["source"], "policy" if v["policy_set"] else "none", "← in force" if v["version"] == result["current"] else "")
        for v in result["versions"]
    ]
    if not rows:
        return "no access policy has ever been set"
    return "\n".join(table(("VERSION", "SET", "BY", "KIND", ""), rows))


def format_policy_explained(result: dict, style: Style) -> str:
    target = result["dst"] + (f":{result['port']}" if result["port"] is not None else "") + f"/{result['proto']}"
    verdict = "allowed" if result["allowed"] else "denied"
    why = result["reason"] or ("no policy: everything is allowed" if not result["policy_set"] else "")
    line = f"{result['src']} -> {target}: {verdict}" + (f" ({why})" if why else "")
    if result.get("rule_text"):
        line += f"\n  {result['rule_text']}"
    return line


async def _dns(admin: AdminOps, args: argparse.Namespace) -> tuple[dict, Formatter]:
    if args.action == "show":
        return await admin.dns(), format_dns
    if args.action == "records":
        if args.records_action == "list":
            return await admin.dns(), format_dns_records
        if args.records_action == "add":
            return await admin.dns_action("add-record", name=args.name, type=args.type, value=args.value), format_dns_changed
        fields = {"name": args.name, "type": args.type, "value": args.value}
        return await admin.dns_action("remove-record", **{k: v for k, v in fields.items() if v is not None}), format_dns_changed
    if args.action == "forward":
        if args.remove == bool(args.resolvers):
            raise ops.OpError(f"give {args.domain}'s resolvers (wire admin dns forward {args.domain} 10.0.0.53,10.0.0.54) or --remove, not both")
        if args.remove:
            return await admin.dns_action("unforward", domain=args.domain), format_dns_changed
        resolvers = [r.strip() for r in args.resolvers.split(",")]
        return await admin.dns_action("forward", domain=args.domain, resolvers=resolvers), format_dns_changed
    if args.action == "nameservers":
        if args.clear and args.resolvers:
            raise ops.OpError("give nameservers or --clear, not both")
        if not args.clear and not args.resolvers:
            return await admin.dns(), format_dns_nameservers
        return await admin.dns_action("nameservers", resolvers=list(args.resolvers)), format_dns_changed
    raise AssertionError(args.action)


def _full_name(record: dict, domain: str | None) -> str:
    return f"{record['name']}.{domain}" if domain else record["name"]


def _record_line(record: dict, domain: str | None) -> str:
    value = f'"{record["value"]}"' if record["type"] == "TXT" else record["value"]
    return f"{_full_name(record, domain)} {record['type']} {value}"


def _nameservers_text(nameservers: list[str]) -> str:
    return ", ".join(nameservers) if nameservers else "each node's own (the resolvers its machine had)"


def format_dns(result: dict, style: Style) -> str:
    """Everything: the domain, the records, the zones and the nameservers."""
    domain = result["domain"]
    if not result["enabled"]:
        head = "no mesh DNS (the server's --dns-domain is empty)"
    else:
        head = f"mesh DNS domain {domain}: every node is NAME.{domain}"
    lines = [f"{head}; settings version {result['version']}", ""]
    lines += ["records:", *(f"  {line}" if not line.startswith(" ") else line for line in format_dns_records(result, style).splitlines())]
    zones = [f"  {zone['domain']} -> {', '.join(zone['resolvers'])}" for zone in result["forward"]]
    lines += ["forwarded zones:", *(zones or ["  none"])]
    lines.append(f"nameservers: {_nameservers_text(result['nameservers'])}")
    return "\n".join(lines)


def format_dns_records(result: dict, style: Style) -> str:
    records = result["records"]
    if not records:
        return "no records (add one: wire admin dns records add NAME A|AAAA|CNAME|TXT VALUE)"
    rows = [(_full_name(r, result["domain"]), r["type"], r["value"]) for r in records]
    return "\n".join(table(("NAME", "TYPE", "VALUE"), rows))


def format_dns_nameservers(result: dict, style: Style) -> str:
    return f"nameservers: {_nameservers_text(result['nameservers'])}"


def format_dns_changed(result: dict, style: Style) -> str:
    """What one change did, and the version it made."""
    domain = result["domain"]
    if "added" in result:
        what = f"added {_record_line(result['added'], domain)}"
    elif "removed" in result:
        what = "removed " + "; ".join(_record_line(r, domain) for r in result["removed"])
    elif "forwarded" in result:
        zone = result["forwarded"]
        what = f"queries under {zone['domain']} now go to {', '.join(zone['resolvers'])}"
    elif "unforwarded" in result:
        what = f"{result['unforwarded']['domain']} is no longer forwarded"
    else:
        what = f"nameservers: {_nameservers_text(result['nameservers'])}"
    return f"{what} (DNS settings version {result['version']}); every node has it within seconds"


async def _routes(admin: AdminOps, args: argparse.Namespace) -> tuple[dict, Formatter]:
    if args.action == "list":
        return await admin.routes(), format_routes
    return await admin.route_action(args.action, args.node, args.route), format_route_changed


def _route_state(node: dict, route: str) -> str:
    """What a node does with one of its routes, for the listing."""
    advertised, approved = route in node["advertised"], route in node["approved"]
    if not approved:
        return "awaiting approval (wire admin routes approve)"
    if not advertised:
        return "approved, not advertised"
    if route in EXIT_ROUTES:
        state = "exit node"
    elif route in node["primary"]:
        state = "primary"
    else:
        state = "standby"
    return state + (" (autoApprovers)" if route in node.get("auto_approved", ()) else "")


def format_routes(result: dict, style: Style) -> str:
    """One row per node and route: advertised, approved, primary or standby."""
    nodes = result["nodes"]
    if not nodes:
        return "no node advertises routes (wire up --advertise-routes 192.168.1.0/24, --advertise-exit-node)"
    rows = []
    for node in nodes:
        for route in sorted(set(node["advertised"]) | set(node["approved"]), key=route_order):
            rows.append((
                node["node_name"],
                "online" if node["online"] else "offline",
                route,
                "yes" if route in node["advertised"] else "no",
                "yes" if route in node["approved"] else "no",
                _route_state(node, route),
            ))
    return "\n".join(table(("NODE", "STATUS", "ROUTE", "ADVERTISED", "APPROVED", "SERVING"), rows))


def format_route_changed(result: dict, style: Style) -> str:
    route, name = result["route"], result["node_name"]
    if route in result["approved"]:
        if not result["changed"]:
            return f"{route} was already approved for {name}"
        if route not in result["advertised"]:
            return f"{route} approved for {name}; served once {name} advertises it"
        return f"{route} approved for {name}: {_route_state(result, route)}; its peers have it within seconds"
    return f"{route} no longer approved for {name}: no longer served"


async def _apikeys(admin: AdminOps, args: argparse.Namespace) -> tuple[dict, Formatter]:
    if args.action == "create":
        return await admin.create_api_key(args.name, args.expires, args.read_only), format_api_key_created
    if args.action == "list":
        return await admin.api_keys(), format_api_keys
    return await admin.revoke_api_key(args.key_id), format_api_key_revoked


def _access(key: dict) -> str:
    return "read-only" if key["read_only"] else "read-write"


def format_api_key_created(result: dict, style: Style) -> str:
    key = result["api_key"]
    return (
        f"admin API key {key['key_id']} ({_access(key)}, expires {_expiry(key, key['created'])}); "
        f"shown this once, the server keeps only its hash:\n\n  {result['token']}\n\n"
        "use it as: curl --cacert CERT -H \"Authorization: Bearer $KEY\" https://SERVER/api/v1/nodes (see README: The admin API)\n"
    )


def format_api_keys(result: dict, style: Style) -> str:
    keys = result["api_keys"]
    if not keys:
        return "no admin API keys (create one: wire admin apikeys create)"
    now = result.get("timestamp")
    rows = [
        (k["key_id"], k["state"], _access(k), _local_time(k["created"]), _expiry(k, now), _local_time(k["last_used"]) if k["last_used"] else "never", k["name"] or "-")
        for k in keys
    ]
    return "\n".join(table(("KEY ID", "STATE", "ACCESS", "CREATED", "EXPIRES", "LAST USED", "NAME"), rows))


def format_api_key_revoked(result: dict, style: Style) -> str:
    return f"admin API key {result['api_key']['key_id']} revoked: it no longer works"


def format_dashboard_link(result: dict, style: Style) -> str:
    return (
        f"open this link in a browser to log in to the dashboard (once, until {_local_time(result['expires'])}):\n\n"
        f"  {result['url']}\n"
    )


async def dispatch_admin(ctx: ops.Context, args: argparse.Namespace) -> tuple[dict, Formatter]:
    """Run one ``wire admin`` command: its result, and how it prints."""
    admin = AdminOps(ctx.reactor, args.data_dir or default_data_dir())
    try:
        if args.topic == "keys" and args.action == "create":
            ephemeral_after = args.ephemeral_after or (DEFAULT_EPHEMERAL_AFTER if args.ephemeral else 0.0)
            tags = tuple(sorted(set(args.tags)))
            created = await admin.create_key(
                reusable=args.reusable, expires_in=args.expires, note=args.note, url=args.url, tags=tags, ephemeral_after=ephemeral_after
            )
            return created, format_key_created
        if args.topic == "keys" and args.action == "list":
            return await admin.keys(), format_keys
        if args.topic == "keys" and args.action == "revoke":
            return await admin.revoke_key(args.key_id), format_key_revoked
        if args.topic == "apikeys":
            return await _apikeys(admin, args)
        if args.topic == "nodes" and args.action == "list":
            return await admin.nodes(), format_nodes
        if args.topic == "nodes" and args.action == "remove":
            return await admin.remove_node(args.node), format_removed
        if args.topic == "nodes" and args.action == "rename":
            return await admin.rename_node(args.node, args.new_name), format_renamed
        if args.topic == "nodes" and args.action == "tag":
            return await admin.tag_node(args.node, tuple(sorted(set(args.tags)))), format_tagged
        if args.topic == "policy":
            return await _policy(admin, args)
        if args.topic == "dns":
            return await _dns(admin, args)
        if args.topic == "routes":
            return await _routes(admin, args)
        if args.topic == "audit":
            return await admin.audit(), format_audit
        if args.topic == "dashboard":
            return await admin.dashboard_link(), format_dashboard_link
    except AdminError as e:
        raise ops.OpError(str(e))
    raise AssertionError((args.topic, args.action))
