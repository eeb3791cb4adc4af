"""Where a question goes: the mesh zone, a forwarded zone, or the upstream.

twisted.names' ``ResolverChain`` asks each resolver in turn and moves on when
one fails; that is wrong here, because the mesh zone's NXDOMAIN is the
answer (a name under ``wire.internal`` that no peer has must not leak to the
machine's old resolvers). So :class:`MeshResolver` routes by name instead, in
a fixed order of precedence: the mesh zone for the names it covers (the mesh
domain, the reverse zones of the VPN networks); then the forwarded zone whose
domain is the longest suffix of the name; then the upstream resolvers.

Forwarded answers pass through as they came (rcode, sections), less any OPT
record (EDNS is hop by hop). The number of forwarded questions in flight is
bounded (MAX_OUTSTANDING, then SERVFAIL at once): the server listens on the
VPN address only, but a peer could still try to use the node as a relay for
a flood. Every forwarded question has a deadline; past it, SERVFAIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.names import client, common, dns
from twisted.python.failure import Failure

from wire.protocol.dns import ForwardZone, resolver_address
from wire.node.dns.zone import MeshZone
from wire.textsafe import escaped_line

MAX_OUTSTANDING = 256
# Resend after 1 s, then give up 2 s later: under the 5 s a stub resolver
# (glibc) waits before it tries its next server.
DEFAULT_TIMEOUTS = (1.0, 2.0)
FAILURE_LOG_SECONDS = 60.0
# TCP (a truncated answer's retry) gets what is left of the same budget.
_TCP_TIMEOUT = 3.0


@dataclass
class Reply:
    """A whole answer, as the server will send it."""

    rcode: int
    answers: list[dns.RRHeader] = field(default_factory=list)
    authority: list[dns.RRHeader] = field(default_factory=list)
    additional: list[dns.RRHeader] = field(default_factory=list)
    authoritative: bool = False


def _servfail() -> Reply:
    return Reply(dns.ESERVER)


class Forwarder:
    """One set of resolvers (a forwarded zone's, or the upstream), asked in order."""

    def __init__(self, reactor: Any, resolvers: Sequence[str], timeouts: Sequence[float] = DEFAULT_TIMEOUTS):
        self.resolvers = tuple(resolvers)
        self._reactor = reactor
        self._timeouts = tuple(timeouts)
        self._deadline = sum(self._timeouts) * len(self.resolvers) + _TCP_TIMEOUT
        servers = [resolver_address(text) for text in self.resolvers]
        self._client = client.Resolver(servers=servers, reactor=reactor, timeout=self._timeouts)

    def forward(self, query: dns.Query) -> defer.Deferred[dns.Message]:
        """The upstream's message for ``query``; fails on timeout (after the deadline at the latest)."""
        asked = dns.Query(query.name.name, query.type, query.cls)
        d: defer.Deferred[dns.Message] = self._client.queryUDP([asked], timeout=self._timeouts)

        def over_tcp_if_truncated(message: dns.Message) -> dns.Message | defer.Deferred[dns.Message]:
            if message.trunc:
                tcp: defer.Deferred[dns.Message] = self._client.queryTCP([asked], timeout=_TCP_TIMEOUT)
                return tcp
            return message

        d.addCallback(over_tcp_if_truncated)
        # client.Resolver's TCP path has no deadline of its own when a connection stalls.
        d.addTimeout(self._deadline, self._reactor)
        return d

    def close(self) -> None:
        """Drop the TCP connections client.Resolver keeps open after a TCP retry."""
        connections: Any = self._client.connections  # a list; Twisted's annotation says otherwise
        for connection in list(connections):
            if connection.transport is not None:
                connection.transport.loseConnection()


class MeshResolver(common.ResolverBase):
    """The node's resolver: :meth:`resolve` for the server (whole replies,
    rcodes passed through), and twisted.names' ``IResolver`` (``lookupAddress``
    and the rest, through ``_lookup``) for anything else in the daemon."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        zone: MeshZone,
        upstream: Sequence[str] = (),
        forward: Sequence[ForwardZone] = (),
        *,
        timeouts: Sequence[float] = DEFAULT_TIMEOUTS,
        max_outstanding: int = MAX_OUTSTANDING,
    ):
        super().__init__()
        self._reactor = reactor
        self._timeouts = tuple(timeouts)
        self.max_outstanding = max_outstanding
        self.outstanding = 0
        self.refused_busy = 0
        self.failed_forwards = 0
        self._quiet_until = float("-inf")
        self._forwarders: dict[tuple[str, ...], Forwarder] = {}
        self.zone = zone
        self._upstream: Forwarder | None = None
        self._zones: dict[bytes, Forwarder] = {}
        self.update(zone, upstream, forward)

    def update(self, zone: MeshZone, upstream: Sequence[str] = (), forward: Sequence[ForwardZone] = ()) -> None:
        """Answer from now on with this zone and these resolvers (questions in flight finish as they began)."""
        kept: dict[tuple[str, ...], Forwarder] = {}

        def forwarder(resolvers: Sequence[str]) -> Forwarder:
            key = tuple(resolvers)
            found = kept.get(key) or self._forwarders.get(key) or Forwarder(self._reactor, key, self._timeouts)
            kept[key] = found
            return found

        self.zone = zone
        self._upstream = forwarder(upstream) if upstream else None
        self._zones = {fz.domain.encode(): forwarder(fz.resolvers) for fz in forward}
        for key, dropped in self._forwarders.items():
            if key not in kept:
                dropped.close()
        self._forwarders = kept

    def close(self) -> None:
        """Drop every connection to a resolver (the server is stopping)."""
        for forwarder in self._forwarders.values():
            forwarder.close()

    def _route(self, name: bytes) -> Forwarder | None:
        """The forwarded zone that is the longest suffix of ``name``, else the upstream."""
        if self._zones:
            rest = name
            while True:
                found = self._zones.get(rest)
                if found is not None:
                    return found
                dot = rest.find(b".")
                if dot < 0:
                    break
                rest = rest[dot + 1 :]
        return self._upstream

    def resolve(self, query: dns.Query) -> defer.Deferred[Reply]:
        """The reply to one question; never fails (a failure is a SERVFAIL reply)."""
        name = query.name.name.lower().rstrip(b".")
        zone = self.zone
        if zone.covers(name):
            if query.cls not in (dns.IN, dns.ANY):
                return defer.succeed(Reply(dns.EREFUSED))
            found = zone.answer(name, query.type)
            reply = Reply(found.rcode, found.answers, found.authority, authoritative=True)
            if found.outside is None:
                return defer.succeed(reply)
            # A CNAME out of the zone: chase it, as a recursive resolver does.
            return self._forwarded(dns.Query(found.outside, query.type, query.cls), found.answers)
        return self._forwarded(query, [])

    def _forwarded(self, query: dns.Query, before: list[dns.RRHeader]) -> defer.Deferred[Reply]:
        forwarder = self._route(query.name.name.lower().rstrip(b"."))
        if forwarder is None:
            # Nowhere to ask. A CNAME of ours is still an answer; the client may chase it.
            return defer.succeed(Reply(dns.OK, list(before), authoritative=True) if before else Reply(dns.EREFUSED))
        if self.outstanding >= self.max_outstanding:
            self.refused_busy += 1
            return defer.succeed(_servfail())
        self.outstanding += 1

        def passed_through(message: dns.Message) -> Reply:
            additional = [r for r in message.additional if r.type != dns.OPT]
            return Reply(message.rCode & 0xF, before + message.answers, message.authority, additional)

        def failed(reason: Failure) -> Reply:
            self.failed_forwards += 1
            now = self._reactor.seconds()
            # One line a minute at most: an upstream that is down must not become a log flood.
            if now >= self._quiet_until:
                self._quiet_until = now + FAILURE_LOG_SECONDS
                self.log.info(
                    "forwarding to {resolvers} failed ({failed} so far): {error}",
                    resolvers=", ".join(forwarder.resolvers),
                    failed=self.failed_forwards,
                    error=escaped_line(reason.getErrorMessage())[:200],
                )
            return _servfail()

        def done(result: Reply) -> Reply:
            self.outstanding -= 1
            return result

        d = forwarder.forward(query).addCallbacks(passed_through, failed)
        return d.addBoth(done)

    # twisted.names' IResolver, on top of resolve().

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[tuple[list[dns.RRHeader], ...]]:
        def as_tuple(reply: Reply) -> Any:
            if reply.rcode != dns.OK:
                return Failure(self.exceptionForCode(reply.rcode)(reply))
            return (reply.answers, reply.authority, reply.additional)

        return self.resolve(dns.Query(name, type, cls)).addCallback(as_tuple)
