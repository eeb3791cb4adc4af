"""``wire``: the command line. It parses, calls ``wire.ops``, and prints.

Exit codes: 0 success, 1 the operation failed (or, for ping, diagnose,
watchdog, netcheck and explain, found a problem), 2 bad usage. Errors go to
stderr; with ``--json`` stdout also carries ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Callable, TextIO

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from wire import __version__, ops
from wire.admin_ops import AdminError, AdminOps, default_data_dir
from wire.node.config import default_config_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wire", description="wire: a self-hosted WireGuard mesh VPN")
    parser.add_argument("--version", action="version", version=f"wire {__version__}")
    parser.add_argument("--config-dir", help="node config directory [$WIRE_CONFIG_DIR, /etc/wire as root, else ~/.wire]")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser("up", help="join the mesh (first time: --join TOKEN, or --server URL for an open server)")
    up.add_argument("--join", "-j", metavar="TOKEN", help="a join token from 'wire admin keys create' on the server")
    up.add_argument("--server", "-s", help="an open (seed-compatible) server's URL, e.g. http://HOST:8787")
    up.add_argument("--name", "-n", help="this node's name (default: hostname)")
    up.add_argument("--port", "-p", type=int, help="WireGuard listen port (default 51820)")
    up.add_argument("--interface", help="WireGuard interface name (default wire0)")
    up.add_argument("--wait", type=float, default=30.0, help="seconds to wait for registration (default 30)")
    up.add_argument("--json", action="store_true", help="machine-readable output")

    down = commands.add_parser("down", help="leave the mesh: stop the daemon and remove the interface")
    down.add_argument("--json", action="store_true")

    status = commands.add_parser("status", help="the whole mesh, and this node's path to each peer")
    status.add_argument("--server", "-s", help="ask this server instead of the configured one")
    status.add_argument("--json", action="store_true")

    peers = commands.add_parser("peers", help="online nodes, as the server lists them")
    peers.add_argument("--server", "-s")
    peers.add_argument("--json", action="store_true")

    ping = commands.add_parser("ping", help="ping a peer over the VPN by name or VPN IP")
    ping.add_argument("target")
    ping.add_argument("-c", "--count", type=int, default=4)
    ping.add_argument("--json", action="store_true")

    install = commands.add_parser("install", help="check WireGuard is installed; --yes installs what is missing")
    install.add_argument("--yes", action="store_true", help="run the package manager")
    install.add_argument("--json", action="store_true")

    diagnose = commands.add_parser("diagnose", help="check everything a working node needs")
    diagnose.add_argument("--json", action="store_true")

    watchdog = commands.add_parser("watchdog", help="handshake ages, stale peers, daemon health")
    watchdog.add_argument("--json", action="store_true")

    netcheck = commands.add_parser("netcheck", help="what this network lets through to the server: UDP, NAT type, latency")
    netcheck.add_argument("--server", "-s", help="check this server instead of the configured one")
    netcheck.add_argument("--json", action="store_true")

    explain = commands.add_parser("explain", help="why this node reaches a peer the way it does (or does not)")
    explain.add_argument("peer", help="the peer's name or VPN IP")
    explain.add_argument("--json", action="store_true")

    admin = commands.add_parser("admin", help="administer a coordination server on this machine (root)")
    admin.add_argument("--data-dir", help="the server's data dir [$WIRE_DATA_DIR or /var/lib/wire]")
    topics = admin.add_subparsers(dest="topic", metavar="TOPIC", required=True)
    keys = topics.add_parser("keys", help="join keys").add_subparsers(dest="action", metavar="ACTION", required=True)
    create = keys.add_parser("create", help="a new join key; prints the join command")
    create.add_argument("--reusable", action="store_true", help="any number of nodes may join with it (default: one)")
    create.add_argument("--expires", metavar="DURATION", help="e.g. 30m, 24h, 7d (default: never)")
    create.add_argument("--note", default="", help="what it is for")
    create.add_argument("--url", help="the server URL to put in the token [the server's --public-url]")
    create.add_argument("--json", action="store_true")
    keys.add_parser("list", help="join keys (never their secrets)").add_argument("--json", action="store_true")
    revoke = keys.add_parser("revoke", help="no node may join with it any more")
    revoke.add_argument("key_id")
    revoke.add_argument("--json", action="store_true")
    nodes = topics.add_parser("nodes", help="enrolled nodes").add_subparsers(dest="action", metavar="ACTION", required=True)
    nodes.add_parser("list", help="every node").add_argument("--json", action="store_true")
    remove = nodes.add_parser("remove", help="out of every peer's WireGuard at once; its credential stops working")
    remove.add_argument("node", help="name, node id or VPN IP")
    remove.add_argument("--json", action="store_true")
    rename = nodes.add_parser("rename", help="give a node another name")
    rename.add_argument("node")
    rename.add_argument("new_name")
    rename.add_argument("--json", action="store_true")
    topics.add_parser("audit", help="enrollments, removals and key operations").add_argument("--json", action="store_true")

    demo = commands.add_parser("demo", help="build a demonstration mesh in network namespaces on this host (root)")
    demo.add_argument("--keep", action="store_true", help="leave the mesh running")
    demo.add_argument("--clean", metavar="PREFIX", help="remove a mesh left by --keep")
    return parser


# -- formatting: each takes an operation's result and returns the text to print --


class Style:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def format_status(result: dict, style: Style) -> str:
    """The seed's layout, then this node's path to each peer."""
    nodes = result["nodes"]
    # The seed's column widths, wider when a value needs it.
    name_w = max([14] + [len(n.get("node_name", "")) for n in nodes])
    vpn_w = max([16] + [len(n.get("vpn_ip", "")) for n in nodes])
    public_w = max([21] + [len(n.get("public_ip", "")) for n in nodes])
    lines = [
        "",
        f"{style('1', 'wire status')}  {result['server']}",
        f"  {result['online']} online / {result['offline']} offline / {result['total']} total",
        "",
    ]
    for node in nodes:
        online = node.get("status") == "online"
        colour = "32" if online else "90"
        dot = style(colour, "●" if online else "○")
        name = style(colour, f"{node.get('node_name', ''):<{name_w}}")
        line = f"  {dot} {name} {node.get('vpn_ip', ''):<{vpn_w}} {node.get('public_ip', ''):<{public_w}} {_ago(node.get('last_seen_ago')):<7}"
        if node.get("this_node"):
            line += "  " + style("1", "(this node)")
        elif "path" in node:
            line += "  " + _path_column(node)
        lines.append(line.rstrip())
    if not result.get("daemon_running") and result.get("my_node_id"):
        lines += ["", "  (the node daemon is not running here: paths unknown; sudo wire up)"]
    return "\n".join(lines) + "\n"


def _path_column(node: dict) -> str:
    """This node's path to a peer: direct, relay, or why neither yet."""
    path, reason = node["path"], node["path_reason"]
    if path == "direct":
        return f"direct {node['endpoint']}, handshake {_ago(node['handshake_age'])}"
    if path == "relay":
        return f"relay ({reason.removeprefix('relay: ')}), handshake {_ago(node['handshake_age'])}"
    return f"{path}: {reason}"


def format_peers(result: dict, style: Style) -> str:
    lines = [f"{result['count']} online peer(s) at {result['server']}"]
    for peer in result["peers"]:
        lines.append(f"  {peer.get('node_name', ''):<16} {peer.get('vpn_ip', ''):<16} {peer.get('public_ip', '')}:{peer.get('nat_port', '')}")
    return "\n".join(lines)


def format_up(result: dict, style: Style) -> str:
    verb = "already up" if result["already_running"] else "up"
    text = f"{result['node_name']} is {verb}: {style('1', result['vpn_ip'])} on {result['interface']} ({result['backend']}), server {result['server']}, NAT {result['nat_type']}, {result['peers']} peer(s)"
    if result.get("note"):
        text += f"\nnote: {result['note']}"
    return text


def format_down(result: dict, style: Style) -> str:
    told = "the server was told" if result["server_told"] else "the server could not be told (it shows the node offline after its heartbeat timeout)"
    return f"{result['node_name']} is down: interface {result['interface']} removed; {told}"


def format_ping(result: dict, style: Style) -> str:
    text = result["output"]
    if "path" in result:
        text += f"\npath: {result['path']} ({result['path_reason']})"
    return text


def format_install(result: dict, style: Style) -> str:
    if result["ok"]:
        how = "kernel WireGuard" if result["kernel_wireguard"] else f"wireguard-go ({result['wireguard_go']})"
        text = f"WireGuard is ready: wg at {result['wg']}, {how}"
        if result.get("installed"):
            text += f"\ninstalled: {', '.join(result['installed'])}"
        return text
    text = f"missing: {', '.join(result['missing'])} (platform: {result['platform']})"
    if result["install_command"]:
        text += f"\ninstall with: {result['install_command']}   (or: wire install --yes)"
    return text


def format_checks(result: dict, style: Style) -> str:
    lines = []
    for check in result["checks"]:
        mark = style("32", "✓") if check["ok"] else style("31", "✗")
        lines.append(f"  {mark} {check['check']:<13} {check['detail']}")
        if check["suggestion"]:
            lines.append(f"      → {check['suggestion']}")
    return "\n".join(lines)


def format_watchdog(result: dict, style: Style) -> str:
    if not result["daemon_running"]:
        return result["problems"][0]
    lines = []
    for peer in result["peers"]:
        mark = style("31", "stale") if peer["stale"] else ("ok" if peer["online"] else style("90", "offline"))
        lines.append(f"  {peer['node_name']:<16} {peer['vpn_ip']:<16} handshake {_ago(peer['handshake_age']):<10} {mark}")
    lines += [f"  ! {problem}" for problem in result["problems"]]
    if result["ok"]:
        lines.append("  all peers healthy")
    return "\n".join(lines)


def format_netcheck(result: dict, style: Style) -> str:
    http, udp = result["http"], result["udp"]
    lines = [f"{style('1', 'wire netcheck')}  {result['server']}"]
    http_state = f"ok, {_ms(http['rtt_ms'])} (version {http['version']})" if http["reachable"] else style("31", "no answer")
    lines.append(f"  HTTP /health      {http_state}")
    for port in udp["ports"]:
        state = f"ok, mapped {port['mapped']}" if port["answered"] else style("31", "no answer")
        lines.append(f"  UDP  STUN :{port['port']:<6} {state}")
    if udp["reachable"]:
        lines.append(f"  STUN latency      {_ms(udp['rtt_ms'])}")
        lines.append(f"  public address    {result['mapped']} (this host: {', '.join(result['local_ips']) or 'unknown'})")
    lines.append(f"  NAT               {result['nat_meaning']}")
    lines += [f"  ! {problem}" for problem in result["problems"]]
    return "\n".join(lines)


def format_explain(result: dict, style: Style) -> str:
    path = style("32", result["path"]) if result["ok"] else style("31", result["path"])
    lines = [
        f"{style('1', result['peer'])} ({result['vpn_ip']}): path {path}, endpoint {result['endpoint'] or 'none'}, handshake {_ago(result['handshake_age'])}",
        f"  NAT: this node {result['nat']['this_node']}, {result['peer']} {result['nat']['peer']}",
    ]
    lines += [f"  - {reason}" for reason in result["reasons"]]
    lines += [f"  → {suggestion}" for suggestion in result["suggestions"]]
    return "\n".join(lines)


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


def format_demo(result: dict, style: Style) -> str:
    if "cleaned" in result:
        return f"removed the demo mesh {result['cleaned']}"
    return "demo passed" if result["ok"] else "demo FAILED"


# -- running --------------------------------------------------------------------------

Formatter = Callable[[dict, Style], str]


async def dispatch(ctx: ops.Context, args: argparse.Namespace) -> tuple[dict, Formatter]:
    if args.command == "up":
        return (
            await ops.up(ctx, server=args.server, name=args.name, port=args.port, interface=args.interface, wait=args.wait, join=args.join),
            format_up,
        )
    if args.command == "admin":
        return await dispatch_admin(ctx, args), format_admin
    if args.command == "down":
        return await ops.down(ctx), format_down
    if args.command == "status":
        return await ops.status(ctx, server=args.server), format_status
    if args.command == "peers":
        return await ops.peers(ctx, server=args.server), format_peers
    if args.command == "ping":
        return await ops.ping(ctx, args.target, count=args.count), format_ping
    if args.command == "install":
        return (await ops.install_now(ctx) if args.yes else ops.install(ctx)), format_install
    if args.command == "diagnose":
        return await ops.diagnose(ctx), format_checks
    if args.command == "watchdog":
        return await ops.watchdog(ctx), format_watchdog
    if args.command == "netcheck":
        return await ops.netcheck(ctx, server=args.server), format_netcheck
    if args.command == "explain":
        return await ops.explain(ctx, args.peer), format_explain
    if args.command == "demo":
        return await ops.demo(ctx, keep=args.keep, clean=args.clean), format_demo
    raise AssertionError(args.command)


def parse_args(argv: list[str], stdout: TextIO, stderr: TextIO) -> argparse.Namespace | int:
    """The parsed command line, or the exit code when there is nothing to run
    (2 for bad usage, 0 for --help and --version)."""
    parser = build_parser()
    # argparse prints straight to sys.stdout/sys.stderr and exits.
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 2
        if args.command is None:
            parser.print_help(stderr)
            return 2
    return args


async def run(
    reactor,
    argv: list[str],
    stdout: TextIO,
    stderr: TextIO,
    make_context: Callable[[object, str], ops.Context] = ops.Context,
) -> int:
    """The whole command: parse, run the operation, print; returns the exit code."""
    args = parse_args(argv, stdout, stderr)
    if isinstance(args, int):
        return args
    ctx = make_context(reactor, os.path.abspath(args.config_dir or default_config_dir()))
    try:
        result, formatter = await dispatch(ctx, args)
    except ops.OpError as e:
        return report_error(args, str(e), stdout, stderr)
    return report(args, result, formatter, stdout)


def report_error(args: argparse.Namespace, error: str, stdout: TextIO, stderr: TextIO) -> int:
    print(f"wire {args.command}: {error}", file=stderr)
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": error}, indent=2), file=stdout)
    return 1


def report(args: argparse.Namespace, result: dict, formatter: Formatter, stdout: TextIO) -> int:
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2), file=stdout)
    else:
        print(formatter(result, Style(stdout.isatty())), file=stdout)
    return 0 if result.get("ok", True) else 1


def main(argv: list[str] | None = None) -> None:
    """The ``wire`` console script: exits the process with the command's code."""
    arguments = sys.argv[1:] if argv is None else argv

    async def command(reactor) -> None:
        code = await run(reactor, arguments, sys.stdout, sys.stderr)
        if code:
            raise SystemExit(code)

    # react() exits with 0, or with the code of the SystemExit raised.
    react(lambda reactor: ensureDeferred(command(reactor)))


if __name__ == "__main__":
    main()
