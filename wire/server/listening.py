"""Listening that fails in one line: a port the server cannot have stops it at
start with a message naming the port and the likely cause, not a traceback."""

from __future__ import annotations

import errno
import socket

from twisted.application.internet import StreamServerEndpointService, UDPServer
from twisted.application.service import Service
from twisted.internet.defer import fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()
# What binding "::" says on a host without IPv6 (disabled, or no such family).
NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


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


def ipv6_only_socket(kind: int, port: int, backlog: int = 0) -> socket.socket:
    """A socket on every IPv6 address of ``port``, for IPv6 alone
    (IPV6_V6ONLY): IPv4 keeps its own socket beside it, so an IPv4 client
    is never seen as an IPv4-mapped address. Raises OSError."""
    sock = socket.socket(socket.AF_INET6, kind)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
class TCP6OnlyServerEndpoint:
    """``TCP6ServerEndpoint`` on "::", for IPv6 alone (see :func:`ipv6_only_socket`)."""

    def __init__(self, reactor, port: int, backlog: int = 50):
        self._reactor, self._port, self._backlog = reactor, port, backlog

    def listen(self, factory):
        try:
            sock = ipv6_only_socket(socket.SOCK_STREAM, self._port, self._backlog)
        except OSError as e:
            return fail(CannotListenError("::", self._port, e))
        try:
            return succeed(self._reactor.adoptStreamPort(sock.fileno(), socket.AF_INET6, factory))
        finally:
            sock.close()  # the reactor holds its own copy


class AlsoOnIPv6(StreamServerEndpointService):
    """The API's port on IPv6 as well, when the host has IPv6: a host
    without it (or a port another program holds there) is told once and
    the server carries on over IPv4."""

    _raiseSynchronously = True

    def __init__(self, endpoint, factory, what: str):
        super().__init__(endpoint, factory)
        self.what = what
        self._gave_up = False

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            _not_on_ipv6(self.what, e.socketError)
            self._gave_up = True
            self._waitingForPort = None

    def startService(self):
        if self._gave_up:
            Service.startService(self)  # told once; not tried again (without privileges, it would fail anew)
            return
        super().startService()

    def stopService(self):
        if self._gave_up or self._waitingForPort is None:
            return Service.stopService(self)
        return super().stopService()


class AlsoOnIPv6UDP(Service):
    """A UDP port (STUN) on IPv6 as well, when the host has IPv6 (as :class:`AlsoOnIPv6`)."""

    def __init__(self, port: int, protocol, reactor, what: str):
        self.udp_port, self.protocol, self.reactor, self.what = port, protocol, reactor, what
        self.listening = None
        self._tried = False

    def privilegedStartService(self):
        self._listen_once()
        super().privilegedStartService()

    def startService(self):
        self._listen_once()  # started without privilegedStartService (as a child of a running service)
        super().startService()

    def _listen_once(self):
        if self._tried:
            return
        self._tried = True
        try:
            sock = ipv6_only_socket(socket.SOCK_DGRAM, self.udp_port)
        except OSError as e:
            _not_on_ipv6(self.what, e)
            return
        try:
            self.listening = self.reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET6, self.protocol)
        finally:
            sock.close()

    def stopService(self):
        super().stopService()
        self._tried = False
        listening, self.listening = self.listening, None
        return listening.stopListening() if listening is not None else None


def _not_on_ipv6(what: str, error: BaseException) -> None:
    if getattr(error, "errno", None) in NO_IPV6:
        log.info("wire-server: no IPv6 on this host: {what} over IPv4 only", what=what)
    else:
        log.warn("wire-server: cannot listen on {what} over IPv6 ({error}): IPv4 only", what=what, error=error)
