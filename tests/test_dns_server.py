"""Tests for the node's DNS server (wire.node.dns.server): the message rules in
memory (garbage, responses, opcodes, EDNS sizes), then real sockets on
127.0.0.1: UDP and TCP answers, truncation and the TCP retry of
twisted.names' client, split forwarding to fake upstream servers started
here, an upstream that never answers, and garbage that does not stop the
server."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import FakeDatagramTransport, StringTransport
from twisted.internet.task import Clock
from twisted.names import client, common, dns, error, server
from twisted.trial.unittest import SynchronousTestCase, TestCase

from wire.node.dns.resolver import MeshResolver
from wire.node.dns.server import MAX_TCP_CONNECTIONS, TCP_IDLE_SECONDS, DnsBindError, MeshDns, MeshDnsServerFactory, shown_name
from wire.node.dns.zone import MeshZone
from wire.protocol.dns import DnsConfig, DnsRecord, ForwardZone

PEERS = {"web1": ["10.99.0.1", "fd7a:115c:a1e0::1"], "db": ["10.99.0.2"]}
NETWORKS = ("10.99.0.0/16", "fd7a:115c:a1e0::/48")
# Forty addresses at one name: 40 * 16 bytes of answers, more than 512.
MANY = tuple(DnsRecord("many", "A", f"10.99.1.{i}") for i in range(1, 41))


def query_bytes(name: bytes = b"web1.wire.internal", qtype: int = dns.A, *, ident: int = 7, edns_size: int | None = None, **flags) -> bytes:
    message = dns.Message(id=ident, recDes=1, **flags)
    message.queries = [dns.Query(name, qtype)]
    if edns_size is not None:
        message.additional = [dns.RRHeader(b"", dns.OPT, edns_size, 0, dns.UnknownRecord(b""))]
    return message.toStr()


def parse(data: bytes) -> dns.Message:
    message = dns.Message()
    message.fromStr(data)
    return message


class _Proto:
    """Stands for the UDP protocol in memory: what the factory writes goes here."""

    def __init__(self) -> None:
        self.transport = FakeDatagramTransport()


class MessageTests(SynchronousTestCase):
    """The factory on its own, in memory."""

    def setUp(self) -> None:
        zone = MeshZone("wire.internal", PEERS, MANY, reverse_networks=NETWORKS)
        self.clock = Clock()
        self.factory = MeshDnsServerFactory(MeshResolver(self.clock, zone), self.clock)
        self.proto = _Proto()

    def ask(self, data: bytes) -> list[dns.Message]:
        self.proto.transport.written.clear()
        self.factory.received(data, self.proto, ("127.0.0.1", 5000))
        return [parse(packet) for packet, _ in self.proto.transport.written]

    def test_answer(self) -> None:
        [reply] = self.ask(query_bytes())
        self.assertEqual((reply.id, reply.answer, reply.auth, reply.recAv, reply.rCode), (7, 1, 1, 1, dns.OK))
        self.assertEqual(reply.answers[0].payload.dottedQuad(), "10.99.0.1")

    def test_nxdomain_and_nodata_have_the_soa(self) -> None:
        [nx] = self.ask(query_bytes(b"nobody.wire.internal"))
        [nodata] = self.ask(query_bytes(b"db.wire.internal", dns.AAAA))
        self.assertEqual((nx.rCode, nodata.rCode), (dns.ENAME, dns.OK))
        self.assertEqual([r.type for r in nx.authority + nodata.authority], [dns.SOA, dns.SOA])

    def test_plain_udp_over_512_is_truncated_whole(self) -> None:
        [reply] = self.ask(query_bytes(b"many.wire.internal"))
        self.assertEqual((reply.trunc, reply.answers, reply.queries[0].name.name), (1, [], b"many.wire.internal"))
        self.assertEqual(self.factory.truncated, 1)

    def test_edns_size_is_honoured(self) -> None:
        [reply] = self.ask(query_bytes(b"many.wire.internal", edns_size=4096))
        self.assertEqual((reply.trunc, len(reply.answers)), (0, 40))
        self.assertEqual([r.type for r in reply.additional], [dns.OPT])
        [small] = self.ask(query_bytes(b"many.wire.internal", edns_size=100))  # below 512: 512
        self.assertEqual((small.trunc, [r.type for r in small.additional]), (1, [dns.OPT]))

    def test_two_questions_are_formerr(self) -> None:
        message = dns.Message(id=9)
        message.queries = [dns.Query(b"web1.wire.internal"), dns.Query(b"db.wire.internal")]
        [reply] = self.ask(message.toStr())
        self.assertEqual((reply.id, reply.answer, reply.rCode), (9, 1, dns.EFORMAT))
        [none] = self.ask(dns.Message(id=10).toStr())
        self.assertEqual(none.rCode, dns.EFORMAT)

    def test_other_opcodes_are_notimp(self) -> None:
        for opcode in (dns.OP_INVERSE, dns.OP_STATUS, dns.OP_NOTIFY, dns.OP_UPDATE, 15):
            [reply] = self.ask(query_bytes(opCode=opcode))
            self.assertEqual((reply.answer, reply.opCode, reply.rCode), (1, opcode, dns.ENOTIMP))

    def test_edns_versions_other_than_0_are_badvers(self) -> None:
        message = parse(query_bytes(edns_size=1232))
        message.additional[0].ttl = 1 << 16  # version 1
        [reply] = self.ask(message.toStr())
        [opt] = reply.additional
        self.assertEqual((reply.rCode, opt.ttl >> 24, reply.answers), (dns.OK, 1, []))  # 1 << 4 | 0: BADVERS

    def test_zone_transfers_are_refused(self) -> None:
        for qtype in (dns.AXFR, dns.IXFR):
            [reply] = self.ask(query_bytes(b"wire.internal", qtype))
            self.assertEqual((reply.rCode, reply.answers), (dns.EREFUSED, []))

    def test_responses_are_not_answered(self) -> None:
        self.assertEqual(self.ask(query_bytes(answer=1)), [])

    def test_unreadable_with_a_header_is_formerr(self) -> None:
        data = query_bytes()[:-3]  # the question cut short
        [reply] = self.ask(struct.pack("!HBBHHHH", 77, 0, 0, 1, 0, 0, 0) + b"\x3fabc")
        self.assertEqual((reply.id, reply.rCode), (77, dns.EFORMAT))
        self.assertLessEqual(len(self.ask(data)), 1)

    def test_short_garbage_is_dropped(self) -> None:
        self.assertEqual(self.ask(b"\x00\x01\x02"), [])
        self.assertEqual(self.factory.malformed, 1)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=600))
    def test_any_bytes_never_raise_and_any_reply_is_a_response(self, data: bytes) -> None:
        for reply in self.ask(data):
            self.assertEqual(reply.answer, 1)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=1, max_size=60), st.integers(0, 65535))
    def test_mangled_queries_never_raise(self, tail: bytes, qtype: int) -> None:
        head = query_bytes(qtype=qtype)
        for reply in self.ask(head[: len(head) // 2] + tail):
            self.assertEqual(reply.answer, 1)

    def test_tcp_answer_then_idle_close(self) -> None:
        proto = self.factory.buildProtocol(("127.0.0.1", 5000))
        transport = StringTransport()
        proto.makeConnection(transport)
        data = query_bytes()
        proto.dataReceived(struct.pack("!H", len(data)) + data)
        reply = transport.value()
        self.assertEqual(struct.unpack("!H", reply[:2])[0], len(reply) - 2)
        self.assertEqual(parse(reply[2:]).answers[0].payload.dottedQuad(), "10.99.0.1")
        self.clock.advance(TCP_IDLE_SECONDS - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_tcp_connections_are_bounded(self) -> None:
        for _ in range(MAX_TCP_CONNECTIONS):
            self.factory.buildProtocol(("127.0.0.1", 5000)).makeConnection(StringTransport())
        self.assertIsNone(self.factory.buildProtocol(("127.0.0.1", 5000)))

    def test_shown_name_is_one_safe_line(self) -> None:
        self.assertEqual(shown_name(b"evil\r\nFAKE \x1b[2J\xff.x"), "evil\\r\\nFAKE \\x1b[2J\\xff.x")


class _StaticUpstream(common.ResolverBase):
    """A fake upstream resolver: fixed A records, NXDOMAIN for the rest; counts questions."""

    def __init__(self, records: dict[bytes, str], name: str) -> None:
        super().__init__()
        self.records = records
        self.name = name
        self.asked: list[bytes] = []

    def _lookup(self, name, cls, type, timeout):
        self.asked.append(name)
        if name.startswith(b"big."):
            answers = [dns.RRHeader(name, dns.A, dns.IN, 60, dns.Record_A(f"192.0.2.{i}", 60)) for i in range(1, 50)]
            return defer.succeed((answers, [], []))
        if name not in self.records or type != dns.A:
            return defer.fail(error.DNSNameError(name))
        return defer.succeed(([dns.RRHeader(name, dns.A, dns.IN, 60, dns.Record_A(self.records[name], 60))], [], []))


class _Silent(DatagramProtocol):
    """An upstream that reads every question and never answers."""

    def __init__(self) -> None:
        self.asked = 0

    def datagramReceived(self, data: bytes, addr) -> None:
        self.asked += 1


class _RawClient(DatagramProtocol):
    """Sends bytes, hands back the first datagram that comes back."""

    def __init__(self) -> None:
        self.replies: defer.Deferred[bytes] = defer.Deferred()

    def datagramReceived(self, data: bytes, addr) -> None:
        if not self.replies.called:
            self.replies.callback(data)


class ServerTests(TestCase):
    """Real sockets on 127.0.0.1."""

    def start_upstream(self, records: dict[bytes, str], name: str) -> tuple[_StaticUpstream, str]:
        upstream = _StaticUpstream(records, name)
        factory = server.DNSServerFactory(authorities=[upstream])
        # A UDP port whose TCP twin is free too (another test may hold it).
        for _ in range(50):
            udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
            try:
                tcp = reactor.listenTCP(udp.getHost().port, factory, interface="127.0.0.1")
            except CannotListenError:
                udp.stopListening()
                continue
            self.addCleanup(udp.stopListening)
            self.addCleanup(tcp.stopListening)
            return upstream, f"127.0.0.1:{udp.getHost().port}"
        raise AssertionError("no UDP port with a free TCP twin on 127.0.0.1")

    async def start_mesh(self, config: DnsConfig | None = None, **options) -> MeshDns:
        mesh = MeshDns(reactor, "127.0.0.1", 0, reverse_networks=NETWORKS, **options)
        mesh.update(PEERS, config)
        await mesh.start()
        self.addCleanup(mesh.stop)
        return mesh

    def client(self, mesh: MeshDns) -> client.Resolver:
        resolver = client.Resolver(servers=[("127.0.0.1", mesh.port)], reactor=reactor, timeout=(5,))
        self.addCleanup(lambda: [c.transport.loseConnection() for c in resolver.connections])
        return resolver

    async def raw(self, mesh: MeshDns, data: bytes) -> bytes:
        protocol = _RawClient()
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        port.write(data, ("127.0.0.1", mesh.port))
        return await protocol.replies

    async def test_udp_and_tcp_answers(self) -> None:
        mesh = await self.start_mesh()
        resolver = self.client(mesh)
        udp = await resolver.queryUDP([dns.Query(b"web1.wire.internal", dns.A)])
        self.assertEqual((udp.rCode, udp.auth, udp.answers[0].payload.dottedQuad()), (dns.OK, 1, "10.99.0.1"))
        tcp = await resolver.queryTCP([dns.Query(b"web1.wire.internal", dns.AAAA)])
        self.assertEqual(len(tcp.answers), 1)
        self.assertEqual(tcp.answers[0].type, dns.AAAA)
        ptr, _, _ = await resolver.lookupPointer(b"2.0.99.10.in-addr.arpa")
        self.assertEqual(ptr[0].payload.name.name, b"db.wire.internal")
        nx = await resolver.queryUDP([dns.Query(b"nobody.wire.internal", dns.A)])
        self.assertEqual((nx.rCode, [r.type for r in nx.authority]), (dns.ENAME, [dns.SOA]))

    async def test_update_is_seen_by_the_next_query(self) -> None:
        mesh = await self.start_mesh()
        resolver = self.client(mesh)
        mesh.update({"web2": ["10.99.0.1"]})
        moved = await resolver.queryUDP([dns.Query(b"web2.wire.internal", dns.A)])
        gone = await resolver.queryUDP([dns.Query(b"web1.wire.internal", dns.A)])
        self.assertEqual((moved.rCode, gone.rCode), (dns.OK, dns.ENAME))

    async def test_truncated_then_tcp_retry(self) -> None:
        mesh = await self.start_mesh(DnsConfig(records=MANY))
        resolver = self.client(mesh)
        udp = await resolver.queryUDP([dns.Query(b"many.wire.internal", dns.A)])
        self.assertEqual((udp.trunc, udp.answers), (1, []))
        # lookupAddress asks over UDP, sees TC, asks again over TCP.
        answers, _, _ = await resolver.lookupAddress(b"many.wire.internal")
        self.assertEqual(len(answers), 40)
        self.assertEqual(mesh.factory.truncated, 2)

    async def test_split_forwarding_and_upstream(self) -> None:
        office, office_address = self.start_upstream({b"printer.corp.example": "10.1.0.9"}, "office")
        world, world_address = self.start_upstream({b"example.com": "192.0.2.1"}, "world")
        config = DnsConfig(forward=(ForwardZone("corp.example", (office_address,)),))
        mesh = await self.start_mesh(config, upstream=[world_address])
        resolver = self.client(mesh)
        printer = await resolver.queryUDP([dns.Query(b"printer.corp.example", dns.A)])
        self.assertEqual((printer.rCode, printer.auth, printer.answers[0].payload.dottedQuad()), (dns.OK, 0, "10.1.0.9"))
        example = await resolver.queryUDP([dns.Query(b"example.com", dns.A)])
        self.assertEqual(example.answers[0].payload.dottedQuad(), "192.0.2.1")
        # The upstream's rcode passes through.
        missing = await resolver.queryUDP([dns.Query(b"missing.corp.example", dns.A)])
        self.assertEqual(missing.rCode, dns.ENAME)
        # The mesh's own names never leave the node.
        await resolver.queryUDP([dns.Query(b"nobody.wire.internal", dns.A)])
        self.assertEqual(office.asked, [b"printer.corp.example", b"missing.corp.example"])
        self.assertEqual(world.asked, [b"example.com"])
        self.assertEqual(mesh.resolver.outstanding, 0)

    async def test_admin_nameservers_replace_the_machine_upstream(self) -> None:
        machine, machine_address = self.start_upstream({b"example.com": "192.0.2.1"}, "machine")
        admin, admin_address = self.start_upstream({b"example.com": "198.51.100.1"}, "admin")
        mesh = await self.start_mesh(DnsConfig(nameservers=(admin_address,)), upstream=[machine_address])
        reply = await self.client(mesh).queryUDP([dns.Query(b"example.com", dns.A)])
        self.assertEqual(reply.answers[0].payload.dottedQuad(), "198.51.100.1")
        self.assertEqual(machine.asked, [])

    async def test_the_exit_nodes_resolver_answers_beyond_the_mesh_while_it_is_in_use(self) -> None:
        machine, machine_address = self.start_upstream({b"example.com": "192.0.2.1"}, "machine")
        exit_dns, exit_address = self.start_upstream({b"example.com": "203.0.113.7"}, "exit")
        mesh = await self.start_mesh(upstream=[machine_address])
        resolver = self.client(mesh)
        mesh.set_exit_resolver(exit_address)
        reply = await resolver.queryUDP([dns.Query(b"example.com", dns.A)])
        self.assertEqual(reply.answers[0].payload.dottedQuad(), "203.0.113.7")
        self.assertEqual(machine.asked, [], "the local network sees no question")
        # The mesh's own names are still answered here.
        own = await resolver.queryUDP([dns.Query(b"web1.wire.internal", dns.A)])
        self.assertEqual(own.answers[0].payload.dottedQuad(), "10.99.0.1")
        self.assertEqual(exit_dns.asked, [b"example.com"])
        # No exit any more: the machine's resolver again.
        mesh.set_exit_resolver("")
        reply = await resolver.queryUDP([dns.Query(b"example.com", dns.A)])
        self.assertEqual((reply.answers[0].payload.dottedQuad(), machine.asked), ("192.0.2.1", [b"example.com"]))

    async def test_large_upstream_answer_comes_over_tcp_from_it_and_to_us(self) -> None:
        world, world_address = self.start_upstream({}, "world")
        mesh = await self.start_mesh(upstream=[world_address])
        resolver = self.client(mesh)
        answers, _, _ = await resolver.lookupAddress(b"big.example.com")
        self.assertEqual(len(answers), 49)

    async def test_cname_out_of_the_zone_is_chased(self) -> None:
        world, world_address = self.start_upstream({b"example.com": "192.0.2.1"}, "world")
        mesh = await self.start_mesh(DnsConfig(records=(DnsRecord("away", "CNAME", "example.com"),)), upstream=[world_address])
        reply = await self.client(mesh).queryUDP([dns.Query(b"away.wire.internal", dns.A)])
        self.assertEqual([r.type for r in reply.answers], [dns.CNAME, dns.A])

    async def test_silent_upstream_is_servfail(self) -> None:
        silent = _Silent()
        port = reactor.listenUDP(0, silent, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        mesh = await self.start_mesh(upstream=[f"127.0.0.1:{port.getHost().port}"], timeouts=(0.2,))
        reply = await self.client(mesh).queryUDP([dns.Query(b"example.com", dns.A)])
        self.assertEqual(reply.rCode, dns.ESERVER)
        self.assertEqual((silent.asked, mesh.resolver.outstanding, mesh.resolver.failed_forwards), (1, 0, 1))

    async def test_garbage_does_not_stop_the_server(self) -> None:
        mesh = await self.start_mesh()
        sender = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(sender.stopListening)
        rng = random.Random(16)
        # In rounds, each ended by a real question: the socket's buffer holds a round.
        for round in range(10):
            for _ in range(30):
                sender.write(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))), ("127.0.0.1", mesh.port))
            reply = parse(await self.raw(mesh, query_bytes(ident=round)))
            self.assertEqual((reply.id, reply.rCode), (round, dns.OK))
        self.assertGreater(mesh.factory.malformed, 0)
        formerr = parse(await self.raw(mesh, struct.pack("!HBBHHHH", 5, 0, 0, 1, 0, 0, 0) + b"\x3f"))
        self.assertEqual((formerr.id, formerr.rCode), (5, dns.EFORMAT))
        tcp = await self.client(mesh).queryTCP([dns.Query(b"db.wire.internal", dns.A)])
        self.assertEqual(tcp.rCode, dns.OK)

    async def test_edns_over_real_udp(self) -> None:
        mesh = await self.start_mesh(DnsConfig(records=MANY))
        reply = parse(await self.raw(mesh, query_bytes(b"many.wire.internal", edns_size=1232)))
        self.assertEqual((reply.trunc, len(reply.answers)), (0, 40))

    async def test_never_forwards_to_itself(self) -> None:
        mesh = MeshDns(reactor, "127.0.0.1", 0)
        await mesh.start()
        self.addCleanup(mesh.stop)
        mesh.set_machine_upstream([f"127.0.0.1:{mesh.port}"])
        reply = await self.client(mesh).queryUDP([dns.Query(b"example.com", dns.A)])
        self.assertEqual((reply.rCode, mesh.resolver.outstanding), (dns.EREFUSED, 0))

    async def test_busy_port_is_a_clear_error(self) -> None:
        mesh = await self.start_mesh()
        other = MeshDns(reactor, "127.0.0.1", mesh.port)
        failure = await self.assertFailure(other.start(), DnsBindError)
        self.assertIn(f"127.0.0.1:{mesh.port}", str(failure))

    async def test_stop_then_start_again(self) -> None:
        mesh = MeshDns(reactor, "127.0.0.1", 0)
        await mesh.start()
        port = mesh.port
        await mesh.stop()
        again = MeshDns(reactor, "127.0.0.1", port)
        await again.start()
        self.addCleanup(again.stop)
        self.assertEqual(again.port, port)
