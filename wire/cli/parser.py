"""The ``wire`` command line's grammar: every command, its options and help."""

from __future__ import annotations

import argparse

from wire import __version__
from wire.admin_ops import DEFAULT_EPHEMERAL_AFTER, DurationError, parse_duration
from wire.datadir import DEFAULT_DATA_DIR
from wire.protocol import ProtocolError
from wire.protocol.dns import RECORD_TYPES
from wire.protocol.fields import parse_tag

# What a global option means when it is given nowhere.
GLOBAL_DEFAULTS = {"config_dir": None, "data_dir": None, "json": False}


def _directory(text: str) -> str:
    # An empty value would silently fall back to the default directory.
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as e:
        raise argparse.ArgumentTypeError(str(e))


def _tag(text: str) -> str:
    try:
        return parse_tag(text, "tag")
    except ProtocolError as e:
        raise argparse.ArgumentTypeError(str(e))


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text[:20]!r} is not true or false")


def _route_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# wire.node.settings, as flags: wire up and wire set take the same ones.
_SETTING_FLAGS = (
    ("accept_dns", "point this machine's resolver at the mesh DNS (default true; =false leaves it alone; "
     "the mesh DNS still answers on the VPN address)"),
    ("accept_routes", "install the subnet routes other nodes offer (default false)"),
    ("advertise_exit_node", "offer this node as an exit node for others' internet traffic (an admin approves it)"),
    ("snat_subnet_routes", "masquerade mesh traffic into the advertised networks (default true; =false keeps sources)"),
    ("exit_node_allow_lan_access", "with an exit node, keep reaching the local LAN directly (default false)"),
)


def add_settings(parser: argparse.ArgumentParser) -> None:
    for name, help_text in _SETTING_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), metavar="BOOL", type=_boolean, nargs="?", const=True, default=None, help=help_text)
    parser.add_argument(
        "--advertise-routes", metavar="CIDR[,CIDR]", type=_route_list, default=None,
        help="offer these networks to the mesh (a subnet router); an admin approves them; '' offers none",
    )
    parser.add_argument("--exit-node", metavar="NAME", default=None, help="send internet traffic through this peer ('' for none)")
    parser.add_argument(
        "--proxy", metavar="URL", default=None,
        help="reach the server through this HTTP proxy (http://[user:password@]host:port, CONNECT); "
        "'' uses $HTTPS_PROXY/$ALL_PROXY if set; $NO_PROXY applies; credentials are kept in a 0600 file",
    )


def settings_given(args: argparse.Namespace) -> dict:
    """The settings flags given on the command line (None: not given)."""
    names = [name for name, _ in _SETTING_FLAGS] + ["advertise_routes", "exit_node", "proxy"]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


class WireParser(argparse.ArgumentParser):
    """A parser for ``wire`` or any of its (sub)commands: each carries the
    global options, so they work before and after any command and every
    ``--help`` shows them. Subcommand parsers are made from this class too
    (``add_subparsers`` uses the parent's class)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # SUPPRESS: a parser that did not see an option leaves it unset, so a
        # subcommand's parser never resets what an earlier level was given;
        # the last one given wins. parse() fills in GLOBAL_DEFAULTS after.
        unset = argparse.SUPPRESS
        group = self.add_argument_group("global options (before or after the command)")
        group.add_argument("--config-dir", metavar="DIR", type=_directory, default=unset, help="node config directory [$WIRE_CONFIG_DIR, /etc/wire as root, else ~/.wire]")
        group.add_argument("--data-dir", metavar="DIR", type=_directory, default=unset, help=f"the coordination server's data dir, for 'wire admin' [$WIRE_DATA_DIR or {DEFAULT_DATA_DIR}]")
        group.add_argument("--json", action="store_true", default=unset, help="machine-readable output")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args``, with the global options that were not given set to their defaults."""
    args = parser.parse_args(argv)
    for name, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


def _record_type(text: str) -> str:
    return text.upper()


def _add_dns(topics) -> None:
    """``wire admin dns``: the records, forwarded zones and nameservers every node's resolver gets."""
    dns = topics.add_parser(
        "dns",
        help="the mesh's DNS: records, forwarded zones, nameservers",
        description="The DNS settings every node's resolver gets with its netmap (within seconds of a change). Names are relative to the server's --dns-domain: 'db' is db.wire.internal.",
    ).add_subparsers(dest="action", metavar="ACTION", required=True)
    dns.add_parser("show", help="the domain, records, forwarded zones, nameservers and version")
    records = dns.add_parser("records", help="the admin's records (A, AAAA, CNAME, TXT)").add_subparsers(dest="records_action", metavar="ACTION", required=True)
    add = records.add_parser("add", help="a record: wire admin dns records add db A 10.99.0.50", description="Add a record. NAME is relative to the mesh domain (db, _acme-challenge.web); a CNAME's VALUE is a full name (web1.wire.internal or example.com); quote a TXT value with spaces.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("type", metavar="TYPE", type=_record_type, choices=RECORD_TYPES, help="A, AAAA, CNAME or TXT")
    add.add_argument("value", metavar="VALUE")
    remove = records.add_parser("remove", help="NAME's records (only those of TYPE, or only the one with VALUE)")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("type", metavar="TYPE", nargs="?", type=_record_type, choices=RECORD_TYPES)
    remove.add_argument("value", metavar="VALUE", nargs="?")
    records.add_parser("list", help="every record, with its full name")
    forward = dns.add_parser(
        "forward",
        help="split DNS: queries under DOMAIN go to RESOLVER[,RESOLVER]; --remove stops it",
        description="Queries for DOMAIN and the names beneath it go to these resolvers, in order (IP, IP:PORT or [IPv6]:PORT), e.g. an office zone behind a subnet. Given again, the new resolvers replace the old. --remove forwards it no more.",
    )
    forward.add_argument("domain", metavar="DOMAIN")
    forward.add_argument("resolvers", metavar="RESOLVER[,RESOLVER]", nargs="?")
    forward.add_argument("--remove", action="store_true", help="stop forwarding DOMAIN")
    nameservers = dns.add_parser(
        "nameservers",
        help="the resolvers for every other name (none given: show them; --clear: each node's own)",
        description="The resolvers every node forwards names outside the mesh and its forwarded zones to, instead of the ones its machine had. With none given, shows them; --clear goes back to each node's own.",
    )
    nameservers.add_argument("resolvers", metavar="RESOLVER", nargs="*")
    nameservers.add_argument("--clear", action="store_true", help="each node forwards to the resolvers its machine had")


def _add_routes(topics) -> None:
    """``wire admin routes``: the networks nodes offer to carry, and which are approved."""
    routes = topics.add_parser(
        "routes",
        help="subnet routes and exit nodes: list, approve, reject",
        description="Routes beyond the mesh: the networks nodes advertise (wire up --advertise-routes, --advertise-exit-node). Only approved ones reach other nodes; for a prefix several nodes serve, one is the primary and the others take over when it goes offline.",
    ).add_subparsers(dest="action", metavar="ACTION", required=True)
    routes.add_parser("list", help="per node: advertised, approved, primary, offline")
    for action, text in (("approve", "approve ROUTE for NODE (served once it advertises it)"), ("reject", "approve ROUTE for NODE no longer (it is no longer served)")):
        parser = routes.add_parser(action, help=text, description=f"{text[0].upper()}{text[1:]}: wire admin routes {action} router1 192.168.1.0/24 (0.0.0.0/0 and ::/0: an exit node).")
        parser.add_argument("node", metavar="NODE", help="name, node id or VPN IP")
        parser.add_argument("route", metavar="ROUTE", help="a network: 192.168.1.0/24, fd00:1::/64, 0.0.0.0/0")


def build_parser() -> WireParser:
    parser = WireParser(prog="wire", description="wire: a self-hosted WireGuard mesh VPN")
    parser.add_argument("--version", action="version", version=f"wire {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="join the mesh (first time: --join TOKEN, or --server URL for an open server)",
        description=(
            "Join the mesh, or start this node again. The first time: sudo wire up --join TOKEN "
            "(the token from 'wire admin keys create' on the server), or --server URL for an open server. "
            "Later runs need no arguments, and running the join command again is harmless. "
            "To keep the token out of ps and shell history: --join-file PATH, or --join - to read it from stdin."
        ),
    )
    token = up.add_mutually_exclusive_group()
    token.add_argument(
        "--join", "-j", metavar="TOKEN",
        help="a join token from 'wire admin keys create' on the server; '-' reads it from stdin (kept out of ps and shell history)",
    )
    token.add_argument(
        "--join-file", metavar="PATH",
        help="read the join token from PATH (readable by its owner only: chmod 600), so it is never on the command line",
    )
    up.add_argument("--server", "-s", metavar="URL", help="an open (seed-compatible) server's URL, e.g. http://HOST:8787")
    up.add_argument("--name", "-n", help="this node's name (default: hostname)")
    up.add_argument("--port", "-p", type=int, help="WireGuard listen port (default 51820)")
    up.add_argument("--interface", metavar="IF", help="WireGuard interface name (default wire0)")
    up.add_argument("--wait", metavar="SECONDS", type=float, default=30.0, help="seconds to wait for registration (default 30)")
    add_settings(up)

    set_command = commands.add_parser(
        "set",
        help="change this node's settings without joining again (routes, exit node, DNS)",
        description="Change settings of this node; a running daemon applies them at once, and they are kept for the next start.",
    )
    add_settings(set_command)

    commands.add_parser("down", help="leave the mesh: stop the daemon and remove the interface")

    status = commands.add_parser("status", help="the whole mesh, and this node's path to each peer")
    status.add_argument("--server", "-s", help="ask this server instead of the configured one")

    peers = commands.add_parser("peers", help="online nodes, as the server lists them")
    peers.add_argument("--server", "-s")

    ping = commands.add_parser("ping", help="ping a peer over the VPN by name or VPN IP")
    ping.add_argument("target")
    ping.add_argument("-c", "--count", type=int, default=4)

    ip = commands.add_parser(
        "ip",
        help="this node's mesh addresses, or a peer's (one a line: IPv4, then IPv6)",
        description="Print this node's mesh addresses, or PEER's (a node name, mesh DNS name or mesh address), "
        "one a line, as tailscale ip does: wire ip -4 db1.",
    )
    family = ip.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=4, help="only the IPv4 address")
    family.add_argument("-6", dest="family", action="store_const", const=6, help="only the IPv6 address")
    ip.add_argument("peer", nargs="?", metavar="PEER", help="a peer (default: this node)")

    install = commands.add_parser("install", help="check WireGuard is installed; --yes installs what is missing")
    install.add_argument("--yes", action="store_true", help="run the package manager")

    commands.add_parser("diagnose", help="check everything a working node needs")

    commands.add_parser("watchdog", help="handshake ages, stale peers, daemon health")

    netcheck = commands.add_parser("netcheck", help="what this network lets through to the server: UDP, NAT type, latency")
    netcheck.add_argument("--server", "-s", help="check this server instead of the configured one")

    explain = commands.add_parser("explain", help="why this node reaches a peer the way it does (or does not)")
    explain.add_argument("peer", help="the peer's name or VPN IP")

    admin = commands.add_parser("admin", help="administer a coordination server on this machine (root)")
    topics = admin.add_subparsers(dest="topic", metavar="TOPIC", required=True)
    keys = topics.add_parser("keys", help="join keys").add_subparsers(dest="action", metavar="ACTION", required=True)
    create = keys.add_parser(
        "create",
        help="a new join key; prints the join command",
        description="A new join key (one-time unless --reusable); prints the command to run on the new machine: sudo wire up --join TOKEN.",
    )
    create.add_argument("--reusable", action="store_true", help="any number of nodes may join with it (default: one)")
    create.add_argument("--expires", metavar="DURATION", type=_duration, help="how long it may be used: a number and a unit (s, m, h, d, w), e.g. 30m, 24h, 7d (default: never)")
    create.add_argument("--note", default="", help="what it is for")
    create.add_argument("--url", help="the server URL to put in the token [the server's --public-url]")
    create.add_argument("--tag", dest="tags", action="append", type=_tag, default=[], metavar="TAG", help="give every node it enrolls this tag (tag:NAME or NAME); repeat for more")
    create.add_argument("--ephemeral", action="store_true", help="its nodes are removed once offline for a while (CI runners, containers)")
    create.add_argument("--ephemeral-after", metavar="DURATION", type=_duration, help=f"how long an ephemeral node may stay offline (default {DEFAULT_EPHEMERAL_AFTER / 60:.0f}m; implies --ephemeral)")
    keys.add_parser("list", help="join keys (never their secrets)")
    revoke = keys.add_parser("revoke", help="no node may join with it any more")
    revoke.add_argument("key_id")
    _add_apikeys(topics)
    nodes = topics.add_parser("nodes", help="enrolled nodes").add_subparsers(dest="action", metavar="ACTION", required=True)
    nodes.add_parser("list", help="every node")
    remove = nodes.add_parser("remove", help="out of every peer's WireGuard at once; its credential stops working")
    remove.add_argument("node", help="name, node id or VPN IP")
    rename = nodes.add_parser("rename", help="give a node another name")
    rename.add_argument("node")
    rename.add_argument("new_name")
    tag = nodes.add_parser("tag", help="replace a node's tags (none given: no tags)", description="Replace a node's tags: wire admin nodes tag web1 tag:web tag:prod. With no tags, the node has none. A node cannot set its own tags.")
    tag.add_argument("node", help="name, node id or VPN IP")
    tag.add_argument("tags", nargs="*", type=_tag, metavar="TAG")
    policy = topics.add_parser("policy", help="the access policy: who may reach what").add_subparsers(dest="action", metavar="ACTION", required=True)
    policy.add_parser("get", help="the policy in force (its text, version and source)")
    set_policy = policy.add_parser(
        "set",
        help="validate FILE, run its tests, and put it in force",
        description="Validate the policy (HuJSON: Tailscale's ACL shape), check it against the nodes and run its tests; any failure refuses it and changes nothing.",
    )
    set_policy.add_argument("file", metavar="FILE", help="the policy file, or - for stdin")
    check_policy = policy.add_parser("check", help="validate FILE and run its tests, changing nothing")
    check_policy.add_argument("file", metavar="FILE", help="the policy file, or - for stdin")
    policy.add_parser("clear", help="no policy: everything may reach everything again")
    policy.add_parser("history", help="every version, when and by what it was set")
    rollback = policy.add_parser("rollback", help="put an earlier version in force again (as a new version)")
    rollback.add_argument("version", type=int)
    explain_policy = policy.add_parser("explain", help="may SRC reach DST:PORT[/PROTO], and by which rule")
    explain_policy.add_argument("src", help="a node name or address")
    explain_policy.add_argument("dst", metavar="DST[:PORT][/PROTO]", help="e.g. db1:5432, db1:53/udp, 10.99.0.7:22, [fd7a::1]:22, db1/icmp")
    _add_dns(topics)
    _add_routes(topics)
    topics.add_parser("audit", help="enrollments, removals and key operations")
    topics.add_parser(
        "dashboard",
        help="a one-time login link to the web dashboard (valid 10 minutes)",
        description="Prints a link to https://SERVER/ui/: open it in a browser to log in (once; it is valid for 10 minutes). The session lasts 8 hours.",
    )

    demo = commands.add_parser("demo", help="build a demonstration mesh in network namespaces on this host (root)")
    demo.add_argument("--keep", action="store_true", help="leave the mesh running")
    demo.add_argument("--clean", metavar="PREFIX", help="remove a mesh left by --keep")
    return parser


def _add_apikeys(topics) -> None:
    apikeys = topics.add_parser("apikeys", help="keys for the remote admin API (/api/v1)").add_subparsers(dest="action", metavar="ACTION", required=True)
    create = apikeys.add_parser(
        "create",
        help="a new admin API key; printed once",
        description="A new key for the remote admin API (https://SERVER/api/v1/..., Authorization: Bearer KEY). It is printed once; the server keeps only its hash.",
    )
    create.add_argument("--expires", metavar="DURATION", type=_duration, help="how long it works: e.g. 30d, 12w (default 90d, at most 365d)")
    create.add_argument("--read-only", action="store_true", help="it may only read (GET), never change anything")
    create.add_argument("--name", default="", help="what or who it is for, shown in the listing")
    apikeys.add_parser("list", help="admin API keys (never their secrets), with their last use")
    revoke = apikeys.add_parser("revoke", help="the key stops working at once")
    revoke.add_argument("key_id")
