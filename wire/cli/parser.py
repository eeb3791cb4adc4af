"""The ``wire`` command line's grammar: every command, its options and help."""

from __future__ import annotations

import argparse

from wire import __version__


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
