"""The LAN address this host uses to reach its coordination server, and
its own IPv6 underlay address.

Peers behind the same NAT reach each other over the LAN, so a node tells the
server this address. Finding it takes two steps: the server's host name to
an address, then the routing table's choice of source address for it. The
first may wait on a DNS server for seconds (or forever), so it goes through
the reactor's ``IHostnameResolver`` (a thread pool by default) with a
timeout; the reactor thread, which also carries relay frames, never waits.
The second is a connected UDP socket on a numeric address: it sends
nothing and asks only the kernel, so it runs inline.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorTime,
    IResolutionReceiver,
)
from zope.interface import implementer

from wire.debuglog import logger as debug_aware_logger
from wire.protocol.fields import underlay_ipv6_problem

RESOLVE_TIMEOUT = 5.0
# How long a resolved server address is trusted before it is looked up again.
RESOLVE_EVERY = 300.0
RETRY_FAILED_AFTER = 30.0

log = debug_aware_logger()


def server_host(server_url: str) -> str:
    return urlsplit(server_url).hostname or ""


def numeric(host: str) -> str | None:
    """``host`` as a normalised IP address, or None for a name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def route_source(address: str) -> str:
    """The local address the routing table picks towards numeric ``address``
    ("" if none). Never resolves a name: a name here is refused, not looked up."""
    ip = numeric(address)
    if ip is None:
        return ""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            if family == socket.AF_INET6:
                _prefer_public_source(s)
            s.connect((ip, 9))  # no packet leaves: connect() on UDP only routes
            return s.getsockname()[0]
    except OSError:
        return ""


# Linux's IPV6_ADDR_PREFERENCES and IPV6_PREFER_SRC_PUBLIC (linux/in6.h): a
# host with privacy addresses (use_tempaddr=2) would otherwise name the
# temporary one, which changes daily, and every pair would start again.
IPV6_ADDR_PREFERENCES = 72
IPV6_PREFER_SRC_PUBLIC = 0x0002


def _prefer_public_source(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_ADDR_PREFERENCES, IPV6_PREFER_SRC_PUBLIC)
    except OSError:
        pass  # not Linux: the kernel's choice


# Any global unicast address: the kernel names the source it would use
# towards the IPv6 internet; nothing is sent (see route_source).
GLOBAL_IPV6 = "2000::1"
ULA = ipaddress.IPv6Network("fc00::/7")


def underlay_ipv6() -> str:
    """This host's IPv6 address towards the IPv6 internet, where peers with
    IPv6 may reach its WireGuard port directly ("" if it has none).

    Unique local addresses (fc00::/7, the mesh's own among them) reach no
    one beyond their site, and link-local or Teredo ones are no endpoint a
    peer elsewhere can use: none of them is reported. A node whose IPv6
    default route goes through an exit node finds its mesh address here,
    and reports none while it does."""
    source = route_source(GLOBAL_IPV6)
    if not source:
        return ""
    address = ipaddress.IPv6Address(source)
    if underlay_ipv6_problem(address) or address in ULA or address.teredo is not None:
        return ""
    return str(address)


@implementer(IResolutionReceiver)
class _FirstAddress:
    def __init__(self, done: Deferred):
        self._done = done
        self._addresses: list[str] = []

    def resolutionBegan(self, resolution) -> None:
        pass

    def addressResolved(self, address) -> None:
        self._addresses.append(address.host)

    def resolutionComplete(self) -> None:
        if not self._done.called:  # not timed out already
            self._done.callback(self._addresses[0] if self._addresses else "")


def resolve(
    reactor: IReactorTime, host: str, *, resolver: IHostnameResolver | None = None, timeout: float = RESOLVE_TIMEOUT
) -> Deferred:
    """Fires with the first address of ``host`` ("" when it has none);
    fails with ``TimeoutError`` after ``timeout`` seconds. A numeric host
    is its own answer, at once."""
    ip = numeric(host)
    if ip is not None:
        return succeed(ip)
    if resolver is None:
        resolver = reactor.nameResolver  # type: ignore[attr-defined]
    done: Deferred = Deferred()
    done.addTimeout(timeout, reactor)
    resolver.resolveHostName(_FirstAddress(done), host, 0, transportSemantics="UDP")
    return done


async def detect_lan_ip(
    reactor: IReactorTime,
    server_url: str,
    *,
    resolver: IHostnameResolver | None = None,
    timeout: float = RESOLVE_TIMEOUT,
) -> str:
    """The local address this host uses to reach the server ("" if unknown)."""
    host = server_host(server_url)
    if not host:
        return ""
    try:
        address = await resolve(reactor, host, resolver=resolver, timeout=timeout)
    except Exception as e:  # a dead resolver, an unknown name: the address is unknown
        log.debug("cannot resolve {host}: {error}", host=host, error=e)
        return ""
    return route_source(address)


class LanAddress:
    """The daemon's view of its LAN address: a plain call for registration
    bodies, which never waits. The route is asked for at each call (cheap,
    and follows a move to another network at once); the server's name is
    resolved in the background, at most one lookup at a time, again after
    ``RESOLVE_EVERY`` seconds. Until the first lookup ends the answer is ""
    (await :meth:`refresh` to have it before the first registration)."""

    def __init__(
        self,
        reactor: IReactorTime,
        server_url: str,
        *,
        resolver: IHostnameResolver | None = None,
        timeout: float = RESOLVE_TIMEOUT,
        every: float = RESOLVE_EVERY,
    ):
        self._reactor = reactor
        self._host = server_host(server_url)
        self._resolver = resolver
        self._timeout = timeout
        self._every = every
        self._address = numeric(self._host)  # the server's, once known
        self._resolved_at = float("-inf")
        self._lookup: Deferred | None = None
        self._failing = False

    def move_to(self, server_url: str) -> None:
        """The node uses another replica now: the route towards it decides."""
        self._host = server_host(server_url)
        self._address = numeric(self._host)
        self._resolved_at = float("-inf")

    def __call__(self) -> str:
        if self._reactor.seconds() - self._resolved_at >= self._every:
            self._ensure_lookup()
        return route_source(self._address) if self._address else ""

    async def refresh(self) -> str:
        """Look the server's name up now (or join the lookup under way)."""
        self._resolved_at = float("-inf")
        lookup = self._ensure_lookup()
        if lookup is not None:
            # A Deferred of our own: cancelling it (a stopping daemon) leaves
            # the lookup itself to whoever else waits on it.
            waiting: Deferred[None] = Deferred()

            def done(result):
                if not waiting.called:
                    waiting.callback(None)
                return result

            lookup.addBoth(done)
            await waiting
        return self()

    def _ensure_lookup(self) -> Deferred | None:
        """The lookup under way, a new one, or None (nothing to resolve, or
        the lookup ended at once)."""
        if not self._host or numeric(self._host) is not None:
            return None
        if self._lookup is None:
            lookup = Deferred.fromCoroutine(self._look_up())
            if not lookup.called:
                self._lookup = lookup
        return self._lookup

    async def _look_up(self) -> None:
        try:
            address = await resolve(self._reactor, self._host, resolver=self._resolver, timeout=self._timeout)
            problem = "" if address else "no address"
        except Exception as e:
            address, problem = "", str(e) or type(e).__name__
        finally:
            self._lookup = None
        now = self._reactor.seconds()
        if address:
            if self._failing:
                log.info("the server's name {host} resolves again", host=self._host)
            self._failing = False
            self._address = address
            self._resolved_at = now
            return
        # Keep the last address (a resolver that is down does not move the
        # server), and try again after a while, not at every call.
        (log.debug if self._failing else log.warn)(
            "cannot resolve the server's name {host}: {error}", host=self._host, error=problem
        )
        self._failing = True
        self._resolved_at = now - self._every + min(self._every, RETRY_FAILED_AFTER)
