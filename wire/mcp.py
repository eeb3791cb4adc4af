"""``wire-mcp``: the MCP adapter, an stdio MCP server over ``wire.ops``.

Each tool calls the operation the CLI command of the same name calls and
returns its result dict as structured content (what ``wire CMD --json``
prints), with the CLI's own rendering and the JSON as text for clients that
read only text. An ``ops.OpError`` becomes a tool error (``isError``)
carrying its message; any other exception becomes "internal error: ..."
plus a traceback on stderr. Arguments of the wrong type are tool errors too
(the SDK checks them against the input schema); their values are the
operation's to check, as for the CLI. One bad call never stops the server.

Two event loops in one process: the MCP SDK is asyncio (anyio), the
operations are Twisted. We install Twisted's asyncio reactor on the loop
*before* anything imports ``twisted.internet.reactor``, so both run on one
loop in one thread: a tool awaits an operation through
``Deferred.asFuture``, and cancelling the request cancels the operation.
Running the reactor in a second thread instead would need every call to
cross threads, and a reactor outside the main thread installs no SIGCHLD
handler, so the processes the operations spawn (``ping``, ``wg``, ``twistd``)
would never be reaped.

stdout carries MCP messages only: the SDK points fd 1 at stderr while it
serves, and logs (ours and the SDK's) go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, Callable

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react
from twisted.logger import Logger, globalLogBeginner

# None of these imports twisted.internet.reactor: main() installs it first.
from wire import __version__, cli, ops
from wire.node.config import default_config_dir
from wire.node.logfile import log_observer
from wire.textsafe import escaped

log = Logger()

ConfigDir = Annotated[
    str | None,
    Field(description="Node config directory. Default: $WIRE_CONFIG_DIR, else /etc/wire as root, else ~/.wire."),
]
Server = Annotated[
    str | None,
    Field(description="Coordination server URL (http://HOST:8787) to ask instead of the one in this node's config."),
]

# Every tool answers with the operation's dict as structured content.
Result = Annotated[CallToolResult, dict[str, Any]]

READ_ONLY = {"read_only_hint": True, "open_world_hint": True}
DESTRUCTIVE = {"read_only_hint": False, "destructive_hint": True, "open_world_hint": True}


def build_server(reactor) -> MCPServer:
    """The MCP server with one tool per ``wire`` command, running ops on ``reactor``."""
    mcp = MCPServer(
        "wire",
        version=__version__,
        instructions="Inspect and control this machine's node in a wire WireGuard mesh. wire_up and wire_down "
        "change network interfaces, wire_install with install=true installs packages; the other tools only look.",
    )

    def tool(name: str, title: str, hints: dict, description: str):
        return mcp.tool(name=name, description=description, annotations=ToolAnnotations(title=title, **hints))

    async def run(config_dir: str | None, operation: Callable[[ops.Context], Coroutine[Any, Any, dict] | dict], formatter: cli.Formatter) -> CallToolResult:
        ctx = ops.Context(reactor, os.path.abspath(config_dir or default_config_dir()))
        try:
            result = operation(ctx)
            if isinstance(result, Coroutine):  # all but ops.install, which only looks at files
                result = await ensureDeferred(result).asFuture(asyncio.get_running_loop())
        except ops.OpError as e:
            return _error(str(e))
        except Exception as e:
            log.failure("wire-mcp: operation failed unexpectedly")
            return _error(f"internal error: {e!r}")
        return CallToolResult(
            # What `wire CMD` prints, then what `wire CMD --json` prints.
            content=[
                TextContent(type="text", text=cli.render(formatter, result, cli.Style(False)).strip("\n")),
                TextContent(type="text", text=json.dumps(result, indent=2)),
            ],
            structured_content=result,
        )

    @tool(
        "wire_status",
        "Mesh status",
        READ_ONLY,
        "The whole mesh as the coordination server sees it: every node, online or offline, its VPN IP, "
        "and (when the node daemon runs here) this node's path to each peer: direct or relayed, and why. "
        "When the server does not answer, the mesh as this node's daemon last saw it, marked "
        '"stale": true, "source": "daemon" with a "warning" saying how old it is. '
        "Same as `wire status --json`.",
    )
    async def wire_status(server: Server = None, config_dir: ConfigDir = None) -> Result:
        return await run(config_dir, lambda ctx: ops.status(ctx, server=server), cli.format_status)

    @tool(
        "wire_peers",
        "Online peers",
        READ_ONLY,
        "Online nodes as the coordination server lists them (its /peers): name, VPN IP, public endpoint; "
        'when the server does not answer, the daemon\'s last known online peers, marked "stale": true. '
        "Same as `wire peers --json`.",
    )
    async def wire_peers(server: Server = None, config_dir: ConfigDir = None) -> Result:
        return await run(config_dir, lambda ctx: ops.peers(ctx, server=server), cli.format_peers)

    @tool(
        "wire_up",
        "Join the mesh",
        DESTRUCTIVE,
        "DESTRUCTIVE: changes this machine's network. Joins the mesh (or restarts with the saved config): "
        "creates the WireGuard interface, starts the node daemon and waits until it registers. New settings "
        "restart a running daemon. The first time needs `join` (a join token from the server's admin) or, for an "
        "open server, `server`. Needs root. Same as `wire up --json`.",
    )
    async def wire_up(
        join: Annotated[str | None, Field(description="A join token (wire1.…) from 'wire admin keys create' on the server.")] = None,
        server: Annotated[str | None, Field(description="An open (seed-compatible) server's URL, e.g. http://HOST:8787.")] = None,
        join_file: Annotated[
            str | None, Field(description="A file holding the join token, readable by its owner only (instead of join).")
        ] = None,
        name: Annotated[str | None, Field(description="This node's name in the mesh (default: the hostname).")] = None,
        port: Annotated[int | None, Field(description="WireGuard UDP listen port (default 51820).")] = None,
        interface: Annotated[str | None, Field(description="WireGuard interface name (default wire0).")] = None,
        wait: Annotated[float, Field(description="Seconds to wait for the node to register.")] = 30.0,
        accept_dns: Annotated[
            bool | None,
            Field(description="False: leave this machine's resolver alone (the mesh DNS still answers on the VPN address). Default: as saved (on)."),
        ] = None,
        config_dir: ConfigDir = None,
    ) -> Result:
        return await run(
            config_dir,
            lambda ctx: ops.up(
                ctx, server=server, name=name, port=port, interface=interface, wait=wait, join=join, join_file=join_file,
                settings={"accept_dns": accept_dns},
            ),
            cli.format_up,
        )

    @tool(
        "wire_set",
        "Change this node's settings",
        DESTRUCTIVE,
        "DESTRUCTIVE: changes this machine's routes or resolver. Changes settings without joining again: "
        "routes offered to the mesh and accepted from it, the exit node, the OS resolver. A running daemon "
        "applies them at once; a stopped node keeps them for its next start. Needs root. Same as `wire set --json`.",
    )
    async def wire_set(
        accept_dns: Annotated[bool | None, Field(description="Point this machine's resolver at the mesh DNS.")] = None,
        accept_routes: Annotated[bool | None, Field(description="Install the subnet routes other nodes offer.")] = None,
        advertise_routes: Annotated[
            list[str] | None, Field(description="Networks to offer the mesh (CIDRs, e.g. 192.168.1.0/24); [] offers none.")
        ] = None,
        advertise_exit_node: Annotated[bool | None, Field(description="Offer this node as an exit node.")] = None,
        snat_subnet_routes: Annotated[bool | None, Field(description="Masquerade mesh traffic into the offered networks.")] = None,
        exit_node: Annotated[str | None, Field(description="A peer's name to send internet traffic through; '' for none.")] = None,
        exit_node_allow_lan_access: Annotated[
            bool | None, Field(description="With an exit node, keep reaching the local LAN directly.")
        ] = None,
        config_dir: ConfigDir = None,
    ) -> Result:
        settings = {
            "accept_dns": accept_dns,
            "accept_routes": accept_routes,
            "advertise_routes": advertise_routes,
            "advertise_exit_node": advertise_exit_node,
            "snat_subnet_routes": snat_subnet_routes,
            "exit_node": exit_node,
            "exit_node_allow_lan_access": exit_node_allow_lan_access,
        }
        return await run(
            config_dir, lambda ctx: ops.set_settings(ctx, {k: v for k, v in settings.items() if v is not None}), cli.format_set
        )

    @tool(
        "wire_down",
        "Leave the mesh",
        DESTRUCTIVE,
        "DESTRUCTIVE: cuts this machine off the mesh. Tells the server, stops the node daemon and removes the "
        "WireGuard interface; tunnels to every peer go down. Needs root. Same as `wire down --json`.",
    )
    async def wire_down(config_dir: ConfigDir = None) -> Result:
        return await run(config_dir, ops.down, cli.format_down)

    @tool(
        "wire_ping",
        "Ping a peer",
        READ_ONLY,
        "Ping a peer over the VPN by node name or VPN IP: replies, loss, average round trip, and the path "
        "(direct or relayed). Same as `wire ping TARGET --json`.",
    )
    async def wire_ping(
        target: Annotated[str, Field(description="A peer's node name (e.g. db1) or VPN IP (e.g. 10.99.0.2).")],
        count: Annotated[int, Field(description="Echo requests to send (1 to 100).")] = 4,
        config_dir: ConfigDir = None,
    ) -> Result:
        return await run(config_dir, lambda ctx: ops.ping(ctx, target, count=count), cli.format_ping)

    @tool(
        "wire_ip",
        "Mesh addresses",
        READ_ONLY,
        "This node's mesh addresses (IPv4 and, when the mesh has it, IPv6), or a peer's by node name, mesh DNS "
        "name or mesh address. Same as `wire ip [-4|-6] [PEER] --json`.",
    )
    async def wire_ip(
        peer: Annotated[
            str | None, Field(description="A peer's node name (e.g. db1), DNS name or mesh address; omitted: this node.")
        ] = None,
        family: Annotated[int | None, Field(description="4 or 6: only that address family.")] = None,
        config_dir: ConfigDir = None,
    ) -> Result:
        return await run(config_dir, lambda ctx: ops.ip(ctx, peer, family=family), cli.format_ip)

    @tool(
        "wire_install",
        "WireGuard installation",
        DESTRUCTIVE,
        "Checks that WireGuard (wg, and kernel WireGuard or wireguard-go) is installed and names the command "
        "that installs what is missing. Only with install=true is it DESTRUCTIVE: it then runs the system's "
        "package manager as root. Same as `wire install [--yes] --json`.",
    )
    async def wire_install(
        install: Annotated[bool, Field(description="Run the package manager for what is missing (changes the system).")] = False,
        config_dir: ConfigDir = None,
    ) -> Result:
        return await run(config_dir, ops.install_now if install else ops.install, cli.format_install)

    @tool(
        "wire_diagnose",
        "Diagnose this node",
        READ_ONLY,
        "Checks, in order, what a working node needs (WireGuard, config, daemon, interface, server, "
        "registration, peers, handshakes) and suggests a fix for each failure. Same as `wire diagnose --json`.",
    )
    async def wire_diagnose(config_dir: ConfigDir = None) -> Result:
        return await run(config_dir, ops.diagnose, cli.format_checks)

    @tool(
        "wire_watchdog",
        "Tunnel health",
        READ_ONLY,
        "Handshake age of every peer, stale tunnels, server reachability and daemon health, from the running "
        "node daemon. Same as `wire watchdog --json`.",
    )
    async def wire_watchdog(config_dir: ConfigDir = None) -> Result:
        return await run(config_dir, ops.watchdog, cli.format_watchdog)

    @tool(
        "wire_netcheck",
        "NAT and connectivity check",
        READ_ONLY,
        "Probes this machine's network: the server's reachability and STUN, the public address and port the NAT "
        "maps to, and whether the NAT is easy or hard (symmetric). Same as `wire netcheck --json`.",
    )
    async def wire_netcheck(server: Server = None, config_dir: ConfigDir = None) -> Result:
        return await run(config_dir, lambda ctx: ops.netcheck(ctx, server=server), cli.format_netcheck)

    @tool(
        "wire_explain",
        "Explain the path to a peer",
        READ_ONLY,
        "Explains how this node reaches a peer and why: direct or relayed, the endpoint, the handshake, each "
        "side's NAT (answers 'why is web1 relayed to db1?' when asked on web1). Same as `wire explain PEER --json`.",
    )
    async def wire_explain(
        peer: Annotated[str, Field(description="The peer's node name (e.g. db1) or VPN IP.")],
        config_dir: ConfigDir = None,
    ) -> Result:
        return await run(config_dir, lambda ctx: ops.explain(ctx, peer), cli.format_explain)

    return mcp


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=escaped(message, keep_newlines=True))], is_error=True)


def main() -> None:
    """The ``wire-mcp`` console script: serves MCP on stdin/stdout until stdin closes."""
    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    # Not redirectStandardIO: the SDK needs the real sys.stdout to claim fd 1.
    # Escaped like the daemon's log: errors quote the server.
    globalLogBeginner.beginLoggingTo([log_observer(sys.stderr)], redirectStandardIO=False)
    server = build_server(reactor)

    def default_signals() -> None:
        # SIGTERM and SIGINT end the process at once, as they end any stdio MCP
        # server: Twisted's graceful stop would strand the SDK's blocking stdin
        # read in a thread that keeps the process alive. SIGCHLD stays Twisted's.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    def serve(reactor) -> Deferred:
        reactor.callWhenRunning(default_signals)  # after the reactor installs its own
        # The server returns when the client closes stdin; react() then exits.
        return Deferred.fromFuture(loop.create_task(server.run_stdio_async()))

    react(serve)


if __name__ == "__main__":
    main()
