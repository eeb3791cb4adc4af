"""A window from the host into one of the lab's namespaces (``wire demo --keep``).

The lab never touches the host's interfaces or routes (wire.lab), so the
host's browser cannot reach the demo server's dashboard inside the server's
namespace. This process bridges the two without touching either: it runs
inside the server's namespace and is handed, as file descriptor 3, a
listening socket that the demo made in the host's namespace on 127.0.0.1.
A socket stays in the namespace it was made in, so it accepts connections
from the host's loopback and opens each one's other end inside the lab.

It forwards bytes only (TLS is end to end, browser to server), lives as long
as the lab (``wire demo --clean`` ends it with the namespace's processes)
and says nothing once running: after ``--keep`` no one reads its output.

    ip netns exec NS python -m wire.labforward --to 198.18.0.3:8787   (fd 3: the socket)
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from wire.protocol.errors import ProtocolError
from wire.protocol.fields import parse_udp_endpoint

LISTENING_FD = 3


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of what to forward to (an address, not a name), or argparse's clear error."""
    try:
        host, port = parse_udp_endpoint(text, "--to").rsplit(":", 1)
    except ProtocolError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wire.labforward", description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", required=True, type=parse_target, metavar="HOST:PORT", help="where each connection goes")
    parser.add_argument("--fd", type=int, default=LISTENING_FD, help="the inherited listening socket (default 3)")
    args = parser.parse_args(argv)
    try:
        kind = socket.socket(fileno=os.dup(args.fd))
        listening = kind.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        kind.close()
    except OSError as e:
        print(f"wire.labforward: file descriptor {args.fd} is not a socket: {e}", file=sys.stderr)
        return 2
    if not listening:
        print(f"wire.labforward: file descriptor {args.fd} is not a listening socket", file=sys.stderr)
        return 2

    from twisted.internet import reactor
    from twisted.protocols.portforward import ProxyFactory

    host, port = args.to
    os.set_blocking(args.fd, False)  # as the reactor needs it (a blocking accept would stall it)
    reactor.adoptStreamPort(args.fd, socket.AF_INET, ProxyFactory(host, port))  # type: ignore[attr-defined]
    os.close(args.fd)  # adopted: the port holds its own duplicate
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
