"""Listening that fails in one line: a port the server cannot have stops it at
start with a message naming the port and the likely cause, not a traceback."""

from __future__ import annotations

import errno

from twisted.application.internet import StreamServerEndpointService, UDPServer
from twisted.internet.error import CannotListenError


class StartFailure(Exception):
    """The server cannot start (a port it cannot have); ``str()`` is the one line that says why."""


def cannot_listen(what: str, error: CannotListenError) -> str:
    """The one line a port that cannot be had is told in."""
    cause = error.socketError
    number = getattr(cause, "errno", None)
    if number == errno.EADDRINUSE:
        why = "address already in use (another wire-server? choose another --port)"
    elif number == errno.EACCES:
        why = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif number == errno.EADDRNOTAVAIL:
        why = f"this machine has no address {error.interface} (check --interface)"
    else:
        why = (getattr(cause, "strerror", None) or str(cause)).lower()
    return f"wire-server: cannot listen on {what}: {why}"


class Listening(StreamServerEndpointService):
    """A port that cannot be had stops the server at start, in one line,
    instead of leaving it running without its API (or a traceback)."""

    # listen() fails at once: raise it from privilegedStartService.
    _raiseSynchronously = True

    def __init__(self, endpoint, factory, what: str):
        super().__init__(endpoint, factory)
        self.what = what

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartFailure(cannot_listen(self.what, e)) from None


class ListeningUDP(UDPServer):
    def __init__(self, port: int, protocol, interface: str, reactor, what: str):
        super().__init__(port, protocol, interface=interface, reactor=reactor)
        self.what = what

    def _getPort(self):
        try:
            return super()._getPort()
        except CannotListenError as e:
            raise StartFailure(cannot_listen(self.what, e)) from None
