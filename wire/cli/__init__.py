"""``wire``: the command line. It parses (``parser``), calls ``wire.ops``, and
prints (``formatting``); ``admin`` holds ``wire admin``.

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

from wire import ops
from wire.cli.admin import dispatch_admin
from wire.cli.formatting import (
    format_set,
    Formatter,
    Style,
    format_checks,
    format_demo,
    format_down,
    format_explain,
    format_install,
    format_ip,
    format_netcheck,
    format_peers,
    format_ping,
    format_status,
    format_up,
    format_watchdog,
)
from wire.cli.parser import build_parser, parse, settings_given
from wire.node.config import default_config_dir
from wire.textsafe import escaped, escaped_strings

# -- running --------------------------------------------------------------------------

async def dispatch(
    ctx: ops.Context, args: argparse.Namespace, stderr: TextIO | None = None, stdin: TextIO | None = None
) -> tuple[dict, Formatter]:
    if args.command == "up":
        join = ops.read_join_stream(stdin if stdin is not None else sys.stdin) if args.join == "-" else args.join
        progress = (lambda event: print(f"wire up: {escaped(str(event['message']))}", file=stderr, flush=True)) if stderr else None
        result = await ops.up(
            ctx, server=args.server, name=args.name, port=args.port, interface=args.interface, wait=args.wait, join=join,
            join_file=args.join_file, settings=settings_given(args), progress=progress,
        )
        return result, format_up
    if args.command == "admin":
        return await dispatch_admin(ctx, args)
    if args.command == "set":
        return await ops.set_settings(ctx, settings_given(args)), format_set
    if args.command == "down":
        return await ops.down(ctx), format_down
    if args.command == "status":
        return await ops.status(ctx, server=args.server), format_status
    if args.command == "peers":
        return await ops.peers(ctx, server=args.server), format_peers
    if args.command == "ping":
        return await ops.ping(ctx, args.target, count=args.count), format_ping
    if args.command == "ip":
        return await ops.ip(ctx, args.peer, family=args.family), format_ip
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
            args = parse(parser, argv)
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
    stdin: TextIO | None = None,
) -> int:
    """The whole command: parse, run the operation, print; returns the exit code."""
    args = parse_args(argv, stdout, stderr)
    if isinstance(args, int):
        return args
    ctx = make_context(reactor, os.path.abspath(args.config_dir or default_config_dir()))
    try:
        # Progress goes to stderr, so --json's stdout stays one JSON object.
        result, formatter = await dispatch(ctx, args, stderr, stdin)
    except ops.OpError as e:
        return report_error(args, str(e), stdout, stderr)
    return report(args, result, formatter, stdout)


def report_error(args: argparse.Namespace, error: str, stdout: TextIO, stderr: TextIO) -> int:
    # Errors carry the server's words: shown escaped, kept exact in --json.
    print(f"wire {args.command}: {escaped(error, keep_newlines=True)}", file=stderr)
    if args.json:
        print(json.dumps({"ok": False, "error": error}, indent=2), file=stdout)
    return 1


def report(args: argparse.Namespace, result: dict, formatter: Formatter, stdout: TextIO) -> int:
    if args.json:
        print(json.dumps(result, indent=2), file=stdout)
    else:
        print(render(formatter, result, Style(stdout.isatty())), file=stdout)
    return 0 if result.get("ok", True) else 1


def render(formatter: Formatter, result: dict, style: Style) -> str:
    """A result as text: every string in it from the network, so escaped first
    (and columns are as wide as what is shown)."""
    return formatter(escaped_strings(result), style)


def main(argv: list[str] | None = None) -> None:
    """The ``wire`` console script: exits the process with the command's code."""
    arguments = sys.argv[1:] if argv is None else argv

    async def command(reactor) -> None:
        code = await run(reactor, arguments, sys.stdout, sys.stderr)
        if code:
            raise SystemExit(code)

    # react() exits with 0, or with the code of the SystemExit raised.
    react(lambda reactor: ensureDeferred(command(reactor)))


