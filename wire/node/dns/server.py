"""The DNS server around a :class:`MeshResolver`: UDP and TCP on one address.

twisted.names' ``DNSServerFactory`` is the base, with the parts a public
server needs done here instead:

- Any datagram or TCP message is parsed here, and whatever it contains never
  raises out of the protocol: garbage with a readable header gets FORMERR,
  shorter garbage and any *response* (QR set: never answer an answer, or two
  servers could ping-pong) are dropped.
- A query with other than one question is FORMERR; an opcode other than
  QUERY is NOTIMP (Twisted's own handlers echo the query without QR set).
- EDNS (RFC 6891): the client's UDP size is honoured (clamped to 512..4096)
  and an OPT is returned; a reply larger than the size goes out truncated
  (TC set, no records; RFC 2181 9), and the client asks again over TCP,
  where a reply may be up to 64 KiB.
- EDNS versions other than 0 get BADVERS; zone transfers (AXFR, IXFR) are
  refused: the zone is this node's view of the mesh, asked name by name.
- TCP connections are bounded in number and closed when idle.

No query is logged (a flood would become a log flood); counters say what
happened, and any name that reaches a log line is escaped first.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.names import dns, server
from twisted.protocols.policies import TimeoutMixin

from wire.protocol.dns import DnsConfig, resolver_address
from wire.node.dns.resolver import DEFAULT_TIMEOUTS, MeshResolver, Reply
from wire.node.dns.zone import DEFAULT_TTL, MeshZone, Peers
from wire.textsafe import escaped_line

PLAIN_UDP_SIZE = 512
MAX_UDP_SIZE = 4096
OUR_EDNS_SIZE = 1232  # the DNS flag day 2020 figure: no IP fragmentation on any path
MAX_TCP_SIZE = 65535
MAX_TCP_CONNECTIONS = 64
TCP_IDLE_SECONDS = 10
_HEADER = struct.Struct("!HBBHHHH")
BADVERS = 16


def shown_name(name: bytes) -> str:
    """A DNS name (any bytes) as one safe line of text for a log."""
    return escaped_line(name.decode("ascii", "backslashreplace"))[:300]


class DnsBindError(Exception):
    """The server could not listen where it was told to."""


class _UdpProtocol(dns.DNSDatagramProtocol):
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.controller.received(data, self, addr)


class _TcpProtocol(dns.DNSProtocol, TimeoutMixin):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.setTimeout(TCP_IDLE_SECONDS)

    def callLater(self, period: float, func: Any, *args: Any, **kw: Any) -> Any:
        """TimeoutMixin's clock: the one we were given, not the global reactor."""
        return self.controller.clock.callLater(period, func, *args, **kw)

    def stringReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.controller.received(data, self, None)

    def timeoutConnection(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)


class MeshDnsServerFactory(server.DNSServerFactory):
    """Answers with ``resolver.resolve``; the same factory serves UDP and TCP."""

    protocol = _TcpProtocol
    log = Logger()

    def __init__(self, resolver: MeshResolver, clock: IReactorTime):
        super().__init__()
        self.mesh_resolver = resolver
        self.clock = clock
        self.canRecurse = True
        self.answered = 0
        self.malformed = 0
        self.truncated = 0

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.connections) >= MAX_TCP_CONNECTIONS:
            return None
        return super().buildProtocol(addr)

    def received(self, data: bytes, proto: Any, address: Any) -> None:
        """One message off the wire (``address`` None: over TCP)."""
        try:
            message = dns.Message()
            message.fromStr(data)
        except Exception:
            # Anything may arrive; none of it may stop the server.
            self.malformed += 1
            self._formerr_for(data, proto, address)
            return
        if message.answer:
            return
        try:
            self.messageReceived(message, proto, address)
        except Exception:
            self.log.failure("answering a query from {address}", address=address)

    def messageReceived(self, message: dns.Message, proto: Any, address: Any = None) -> None:
        opts = [r for r in message.additional if r.type == dns.OPT]
        if message.opCode != dns.OP_QUERY:
            self._send(message, Reply(dns.ENOTIMP), proto, address, opts)
        elif len(message.queries) != 1 or len(opts) > 1:
            self._send(message, Reply(dns.EFORMAT), proto, address, opts)
        elif opts and (opts[0].ttl >> 16) & 0xFF != 0:
            # RFC 6891 6.1.3: we speak EDNS version 0 only.
            self._send(message, Reply(dns.OK), proto, address, opts, extended_rcode=BADVERS)
        elif message.queries[0].type in (dns.AXFR, dns.IXFR):
            # No zone transfers: the zone is this node's view of the mesh, asked name by name.
            self._send(message, Reply(dns.EREFUSED), proto, address, opts)
        else:
            d = self.mesh_resolver.resolve(message.queries[0])
            d.addCallback(lambda reply: self._send(message, reply, proto, address, opts))
            d.addErrback(lambda reason: self.log.failure("resolving {name}", reason, name=shown_name(message.queries[0].name.name)))

    def _formerr_for(self, data: bytes, proto: Any, address: Any) -> None:
        if len(data) < _HEADER.size:
            return
        ident, flags, _, _, _, _, _ = _HEADER.unpack_from(data)
        if flags & 0x80:
            return
        reply = dns.Message(id=ident, answer=1, opCode=(flags >> 3) & 0xF, rCode=dns.EFORMAT, maxSize=0)
        self._write(reply.toStr(), proto, address)

    def _send(
        self, query: dns.Message, reply: Reply, proto: Any, address: Any, opts: list[dns.RRHeader], extended_rcode: int = 0
    ) -> None:
        response = dns.Message(
            id=query.id,
            answer=1,
            opCode=query.opCode,
            auth=reply.authoritative,
            recDes=query.recDes,
            recAv=1,
            rCode=reply.rcode,
            maxSize=0,  # Twisted would cut the bytes mid-record; we truncate whole below
        )
        response.queries = query.queries
        response.answers = reply.answers
        response.authority = reply.authority
        response.additional = list(reply.additional)
        if address is None:
            limit = MAX_TCP_SIZE
        elif len(opts) == 1:
            limit = min(max(opts[0].cls, PLAIN_UDP_SIZE), MAX_UDP_SIZE)
        else:
            limit = PLAIN_UDP_SIZE
        if opts:
            # OPT's TTL carries the upper 8 bits of a 12-bit rcode (RFC 6891 6.1.3).
            high = (extended_rcode >> 4) << 24
            response.additional.append(dns.RRHeader(b"", dns.OPT, OUR_EDNS_SIZE, high, dns.UnknownRecord(b"")))
        data = response.toStr()
        if len(data) > limit:
            self.truncated += 1
            response.trunc = 1
            response.answers, response.authority = [], []
            response.additional = response.additional[-1:] if opts else []
            data = response.toStr()
        self.answered += 1
        self._write(data, proto, address)

    def _write(self, data: bytes, proto: Any, address: Any) -> None:
        transport = proto.transport
        if transport is None:
            return  # the TCP client left, or the server stopped, before the answer
        try:
            if address is None:
                proto.sendString(data)
            else:
                transport.write(data, address)
        except Exception as e:
            self.log.info("could not send a DNS answer: {error}", error=escaped_line(str(e)))


class MeshDns:
    """The node's DNS server, as the daemon holds it: :meth:`update` on every
    netmap change, :meth:`start` and :meth:`stop` with the daemon."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listen_address: str,
        port: int = 53,
        *,
        reverse_networks: Sequence[str] = (),
        upstream: Sequence[str] = (),
        timeouts: Sequence[float] = DEFAULT_TIMEOUTS,
        ttl: int = DEFAULT_TTL,
    ):
        """``upstream``: the machine's own resolvers before wire (used unless the
        admin names nameservers); ``reverse_networks``: the mesh's VPN networks."""
        self._reactor = reactor
        self.listen_address = listen_address
        self.requested_port = port
        self._reverse_networks = tuple(reverse_networks)
        self._machine_upstream = tuple(upstream)
        self._exit_resolver = ""  # the exit node's mesh DNS, while one is in use
        self._ttl = ttl
        self._serial = 0
        self._config = DnsConfig()
        self._udp: IListeningPort | None = None
        self._tcp: IListeningPort | None = None
        self.resolver = MeshResolver(reactor, self._zone({}, self._config, None), self._upstream(), timeouts=timeouts)
        self.factory = MeshDnsServerFactory(self.resolver, reactor)

    def _zone(self, peers: Peers, config: DnsConfig, own_name: str | None) -> MeshZone:
        self._serial += 1
        return MeshZone(
            config.domain,
            peers,
            config.records,
            reverse_networks=self._reverse_networks,
            own_name=own_name,
            ttl=self._ttl,
            serial=self._serial,
        )

    def update(self, peers: Peers, config: DnsConfig | None = None, *, own_name: str | None = None) -> MeshZone:
        """Answer from now on for these peers (node name to VPN addresses, as a
        mapping or as pairs, this node among them) and this configuration (None: the defaults)."""
        config = config or DnsConfig()
        self._config = config
        zone = self._zone(peers, config, own_name)
        if zone.shadowed:
            self.log.info("{count} node(s) named like an admin DNS record: the record is served, not the node", count=zone.shadowed)
        self.resolver.update(zone, self._upstream(), config.forward)
        return zone

    def _upstream(self) -> tuple[str, ...]:
        """The admin's nameservers, else the exit node's resolver while one is
        in use (the machine's may sit on the local network the exit hides),
        else the machine's; never this server itself (the machine's resolver
        may by now be us: a question would loop)."""
        exit_resolver = (self._exit_resolver,) if self._exit_resolver else ()
        chosen = self._config.nameservers or exit_resolver or self._machine_upstream
        return tuple(text for text in chosen if resolver_address(text) != (self.listen_address, self.port))

    def set_exit_resolver(self, address: str) -> None:
        """The exit node in use changed: its mesh DNS ("" for none)."""
        if address != self._exit_resolver:
            self._exit_resolver = address
            self.resolver.update(self.resolver.zone, self._upstream(), self._config.forward)

    def set_machine_upstream(self, upstream: Sequence[str]) -> None:
        """The machine's resolvers changed (the OS integration learnt them anew)."""
        self._machine_upstream = tuple(upstream)
        self.resolver.update(self.resolver.zone, self._upstream(), self._config.forward)

    @property
    def port(self) -> int:
        """The port listened on (the one chosen, when asked for 0)."""
        if self._udp is None:
            return self.requested_port
        host: Any = self._udp.getHost()
        return int(host.port)

    def start(self) -> defer.Deferred[None]:
        """Listen on UDP and TCP; fails with :class:`DnsBindError`. Port 0: one free port for both."""
        try:
            self._listen()
        except DnsBindError:
            return defer.fail()
        # The port is known now: drop ourselves from the upstream, if we were in it.
        self.resolver.update(self.resolver.zone, self._upstream(), self._config.forward)
        return defer.succeed(None)

    def _listen(self) -> None:
        for _ in range(10 if self.requested_port == 0 else 1):
            try:
                self._udp = self._reactor.listenUDP(
                    self.requested_port, _UdpProtocol(self.factory, reactor=self._reactor), interface=self.listen_address
                )
            except CannotListenError as e:
                raise DnsBindError(f"cannot listen for DNS on UDP {self._where()}: {e.socketError}") from e
            try:
                self._tcp = self._reactor.listenTCP(self.port, self.factory, interface=self.listen_address)
                return
            except CannotListenError as e:
                udp, self._udp = self._udp, None
                udp.stopListening()
                error = e
        raise DnsBindError(f"cannot listen for DNS on TCP {self._where()}: {error.socketError}") from error

    def _where(self) -> str:
        host = f"[{self.listen_address}]" if ":" in self.listen_address else self.listen_address
        return f"{host}:{self.requested_port}"

    def stop(self) -> defer.Deferred[None]:
        """Stop listening (both sockets); open TCP connections are closed."""
        ports = [p for p in (self._udp, self._tcp) if p is not None]
        self._udp = self._tcp = None
        for proto in list(self.factory.connections):
            proto.transport.loseConnection()
        self.resolver.close()
        results = [defer.maybeDeferred(p.stopListening) for p in ports]
        return defer.gatherResults(results).addCallback(lambda _: None)
