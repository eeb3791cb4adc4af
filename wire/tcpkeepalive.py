"""TCP keepalive for the node's connections to its server.

A long-poll is silent for up to LONGPOLL_WAIT seconds by design, so
silence alone cannot tell a waiting server from a vanished one (a machine
that died, a network that dropped it, with no RST to say so). Keepalive
probes can: the server's kernel answers them while it is there. With these
settings a vanished server is noticed within about
``KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT`` = 7 s, and data
left unacknowledged as long fails the connection too (TCP_USER_TIMEOUT),
so a node moves to another replica (wire.node.servers) within 10 s.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

KEEPALIVE_IDLE = 3
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 2
USER_TIMEOUT_MS = (KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT) * 1000


def keep_alive(transport: Any) -> bool:
    """Turn the probes on for a connected TCP transport; False where it has
    no socket (a test's memory transport) or the platform lacks the options."""
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    if not isinstance(sock, socket.socket):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
            ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        return False
    return True


@implementer(IStreamClientEndpoint)
class KeepaliveEndpoint:
    """Another endpoint, whose connections get keepalive probes. Wrap the
    TCP endpoint (under any TLS), so the transport it sees is the socket's."""

    def __init__(self, wrapped: Any):
        self.wrapped = wrapped

    def connect(self, factory):
        return self.wrapped.connect(factory).addCallback(self._probe)

    @staticmethod
    def _probe(protocol):
        keep_alive(protocol.transport)
        return protocol
