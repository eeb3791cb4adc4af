"""The operations the ``wire`` CLI and the MCP adapter share.

Each takes a :class:`Context` (reactor, process runner, config dir) and
returns a JSON-able dict; a failure is an :class:`OpError` whose message
says what went wrong and what to do. The CLI prints these, the MCP adapter
returns them: one implementation of each operation, one module per job:

    context    Context and OpError
    lifecycle  up, down
    joinsource a join token from a file (--join-file) or stdin (--join -)
    views      status, peers
    troubles   the daemon's failing loops and refused answers, told (status, diagnose)
    targets    a peer named by node name or VPN address
    addresses  ip: this node's or a peer's mesh addresses (IPv4, IPv6)
    ping       ping
    install    install, install_now
    health     diagnose, watchdog
    netcheck   netcheck
    explain    explain (explain_path: the reasoning, from plain views)
    demo       demo
"""

from wire.ops.addresses import ip
from wire.ops.context import Context, OpError
from wire.ops.demo import demo
from wire.ops.explain import explain, explain_path
from wire.ops.health import diagnose, watchdog
from wire.ops.install import install, install_now
from wire.ops.joinsource import read_join_file, read_join_stream
from wire.ops.lifecycle import down, set_settings, up
from wire.ops.netcheck import netcheck
from wire.ops.ping import parse_ping, ping, ping_argv
from wire.ops.targets import resolve_target
from wire.ops.views import peers, status

__all__ = [
    "Context",
    "OpError",
    "demo",
    "diagnose",
    "down",
    "explain",
    "explain_path",
    "install",
    "install_now",
    "ip",
    "netcheck",
    "parse_ping",
    "peers",
    "ping",
    "ping_argv",
    "resolve_target",
    "status",
    "read_join_file",
    "read_join_stream",
    "up",
    "watchdog",
]
