"""``wire``: the command line. It parses, calls ``wire.ops``, and prints.

Exit codes: 0 success, 1 the operation failed (or, for ping, diagnose and
watchdog, found a problem), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from wire import __version__, ops
from wire.node.config import default_config_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wire", description="wire: a self-hosted WireGuard mesh VPN")
    parser.add_argument("--version", action="version", version=f"wire {__version__}")
    parser.add_argument("--config-dir", help="node config directory [$WIRE_CONFIG_DIR, /etc/wire as root, else ~/.wire]")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser("up", help="join the mesh (first time: --server and --name)")
    up.add_argument("--server", "-s", help="coordination server URL, e.g. http://HOST:8787")
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

    demo = commands.add_parser("demo", help="build a demonstration mesh in network namespaces on this host (root)")
    demo.add_argument("--keep", action="store_true", help="leave the mesh running")
    demo.add_argument("--clean", metavar="PREFIX", help="remove a mesh left by --keep")
    return parser


# -- printing -------------------------------------------------------------------------


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
    return f"{seconds // 3600}h ago"


def print_status(result: dict, style: Style) -> None:
    print(f"\n{style('1', 'wire status')}  {result['server']}")
    print(f"  {result['online']} online / {result['offline']} offline / {result['total']} total\n")
    for node in result["nodes"]:
        online = node.get("status") == "online"
        dot = style("32", "●") if online else style("90", "○")
        name = f"{node.get('node_name', ''):<16}"
        line = f"  {dot} {style('32' if online else '90', name)}  {node.get('vpn_ip', ''):<16} {node.get('public_ip', ''):<20} {_ago(node.get('last_seen_ago')):>8}"
        if node.get("this_node"):
            line += "  " + style("1", "(this node)")
        elif "path" in node:
            if node["path"] == "direct":
                line += f"  direct {node['endpoint']}, handshake {_ago(node['handshake_age'])}"
            else:
                line += f"  {node['path']}: {node['path_reason']}"
        print(line)
    if not result.get("daemon_running") and result.get("my_node_id"):
        print("\n  (the node daemon is not running here: paths unknown; sudo wire up)")
    print()


def print_peers(result: dict, style: Style) -> None:
    print(f"{result['count']} online peer(s) at {result['server']}")
    for peer in result["peers"]:
        print(f"  {peer.get('node_name', ''):<16} {peer.get('vpn_ip', ''):<16} {peer.get('public_ip', '')}:{peer.get('nat_port', '')}")


def print_up(result: dict, style: Style) -> None:
    verb = "already up" if result["already_running"] else "up"
    print(f"{result['node_name']} is {verb}: {style('1', result['vpn_ip'])} on {result['interface']} ({result['backend']}), server {result['server']}, NAT {result['nat_type']}, {result['peers']} peer(s)")
    if result.get("note"):
        print(f"note: {result['note']}")


def print_down(result: dict, style: Style) -> None:
    told = "the server was told" if result["server_told"] else "the server was not reachable"
    print(f"{result['node_name']} is down: interface {result['interface']} removed; {told}")


def print_ping(result: dict, style: Style) -> None:
    print(result["output"])
    if "path" in result:
        print(f"path: {result['path']} ({result['path_reason']})")


def print_install(result: dict, style: Style) -> None:
    if result["ok"]:
        how = "kernel WireGuard" if result["kernel_wireguard"] else f"wireguard-go ({result['wireguard_go']})"
        print(f"WireGuard is ready: wg at {result['wg']}, {how}")
        if result.get("installed"):
            print(f"installed: {', '.join(result['installed'])}")
    else:
        print(f"missing: {', '.join(result['missing'])} (platform: {result['platform']})")
        if result["install_command"]:
            print(f"install with: {result['install_command']}   (or: wire install --yes)")


def print_checks(result: dict, style: Style) -> None:
    for check in result["checks"]:
        mark = style("32", "✓") if check["ok"] else style("31", "✗")
        print(f"  {mark} {check['check']:<13} {check['detail']}")
        if check["suggestion"]:
            print(f"      → {check['suggestion']}")


def print_watchdog(result: dict, style: Style) -> None:
    if not result["daemon_running"]:
        print(result["problems"][0])
        return
    for peer in result["peers"]:
        mark = style("31", "stale") if peer["stale"] else ("ok" if peer["online"] else style("90", "offline"))
        print(f"  {peer['node_name']:<16} {peer['vpn_ip']:<16} handshake {_ago(peer['handshake_age']):<10} {mark}")
    for problem in result["problems"]:
        print(f"  ! {problem}")
    if result["ok"]:
        print("  all peers healthy")


def print_demo(result: dict, style: Style) -> None:
    print("demo passed" if result["ok"] else "demo FAILED")


# -- running --------------------------------------------------------------------------


async def dispatch(reactor, args: argparse.Namespace) -> tuple[dict, Callable[[dict, Style], None]]:
    ctx = ops.Context(reactor, os.path.abspath(args.config_dir or default_config_dir()))
    if args.command == "up":
        return await ops.up(ctx, server=args.server, name=args.name, port=args.port, interface=args.interface, wait=args.wait), print_up
    if args.command == "down":
        return await ops.down(ctx), print_down
    if args.command == "status":
        return await ops.status(ctx, server=args.server), print_status
    if args.command == "peers":
        return await ops.peers(ctx, server=args.server), print_peers
    if args.command == "ping":
        return await ops.ping(ctx, args.target, count=args.count), print_ping
    if args.command == "install":
        return (await ops.install_now(ctx) if args.yes else ops.install(ctx)), print_install
    if args.command == "diagnose":
        return await ops.diagnose(ctx), print_checks
    if args.command == "watchdog":
        return await ops.watchdog(ctx), print_watchdog
    if args.command == "demo":
        return await ops.demo(ctx, keep=args.keep, clean=args.clean), print_demo
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2

    async def run(reactor) -> None:
        outcome: dict[str, Any] = {}
        try:
            outcome["result"], outcome["printer"] = await dispatch(reactor, args)
        except ops.OpError as e:
            outcome["error"] = str(e)
        code = report(args, outcome)
        if code:
            raise SystemExit(code)

    # react() exits the process with 0, or with the SystemExit code raised.
    react(lambda reactor: ensureDeferred(run(reactor)))
    return 0


def report(args: argparse.Namespace, outcome: dict) -> int:
    as_json = getattr(args, "json", False)
    if "error" in outcome:
        if as_json:
            print(json.dumps({"ok": False, "error": outcome["error"]}, indent=2))
        else:
            print(f"wire {args.command}: {outcome['error']}", file=sys.stderr)
        return 1
    result = outcome["result"]
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        outcome["printer"](result, Style(sys.stdout.isatty()))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
