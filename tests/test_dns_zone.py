"""Tests for the mesh zone (wire.node.dns.zone) and the resolver in front of it
(wire.node.dns.resolver), in memory: names from peers, renames and removals,
admin records, CNAME chains, NXDOMAIN vs NODATA, PTR, TTLs."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.names import dns, error
from twisted.trial.unittest import SynchronousTestCase

from wire.node.dns.resolver import MeshResolver
from wire.node.dns.zone import DEFAULT_TTL, MAX_CNAME_HOPS, MeshZone, ZoneAnswer, reverse_zones
from wire.protocol.dns import DnsRecord, ForwardZone

DOMAIN = "wire.internal"
NETWORKS = ("10.99.0.0/16", "fd7a:115c:a1e0::/48")
PEERS = {"web1": ["10.99.0.1", "fd7a:115c:a1e0::1"], "db": ["10.99.0.2"], "me": ["10.99.0.3"]}


def zone(peers=PEERS, records=(), **options) -> MeshZone:
    return MeshZone(DOMAIN, peers, records, reverse_networks=NETWORKS, **options)


def values(answer: ZoneAnswer) -> list[str]:
    shown = []
    for rr in answer.answers:
        payload = rr.payload
        if isinstance(payload, (dns.Record_A, dns.Record_AAAA)):
            shown.append(payload.dottedQuad() if isinstance(payload, dns.Record_A) else str(ipaddress.ip_address(payload.address)))
        elif isinstance(payload, dns.Record_TXT):
            shown.append(b"|".join(payload.data).decode())
        else:
            shown.append(payload.name.name.decode())
    return shown


def reverse(address: str) -> bytes:
    return ipaddress.ip_address(address).reverse_pointer.encode()


class NamesTests(SynchronousTestCase):
    def test_a_and_aaaa(self) -> None:
        mesh = zone()
        self.assertEqual(values(mesh.answer(b"web1.wire.internal", dns.A)), ["10.99.0.1"])
        self.assertEqual(values(mesh.answer(b"WEB1.Wire.Internal.", dns.AAAA)), ["fd7a:115c:a1e0::1"])
        answer = mesh.answer(b"web1.wire.internal", dns.A)
        self.assertEqual(answer.rcode, dns.OK)
        self.assertTrue(all(rr.auth and rr.ttl == DEFAULT_TTL for rr in answer.answers))

    def test_any(self) -> None:
        self.assertEqual(sorted(values(zone().answer(b"web1.wire.internal", dns.ALL_RECORDS))), ["10.99.0.1", "fd7a:115c:a1e0::1"])

    def test_nxdomain_has_soa(self) -> None:
        answer = zone().answer(b"nobody.wire.internal", dns.A)
        self.assertEqual(answer.rcode, dns.ENAME)
        self.assertEqual(answer.answers, [])
        [soa] = answer.authority
        self.assertEqual((soa.name.name, soa.type), (b"wire.internal", dns.SOA))
        # RFC 2308: the negative TTL is the smaller of the SOA's TTL and minimum.
        self.assertEqual((soa.ttl, soa.payload.minimum), (DEFAULT_TTL, DEFAULT_TTL))

    def test_nodata_for_a_name_without_that_type(self) -> None:
        answer = zone().answer(b"db.wire.internal", dns.AAAA)
        self.assertEqual((answer.rcode, answer.answers), (dns.OK, []))
        self.assertEqual([rr.type for rr in answer.authority], [dns.SOA])

    def test_below_a_node_is_nxdomain(self) -> None:
        self.assertEqual(zone().answer(b"x.web1.wire.internal", dns.A).rcode, dns.ENAME)

    def test_apex(self) -> None:
        mesh = zone(own_name="me")
        [soa] = mesh.answer(b"wire.internal", dns.SOA).answers
        self.assertEqual(soa.payload.mname.name, b"me.wire.internal")
        self.assertEqual(values(mesh.answer(b"wire.internal", dns.NS)), ["me.wire.internal"])
        nodata = mesh.answer(b"wire.internal", dns.A)
        self.assertEqual((nodata.rcode, nodata.answers, [rr.type for rr in nodata.authority]), (dns.OK, [], [dns.SOA]))

    def test_names_that_are_not_labels_get_no_name(self) -> None:
        mesh = zone({"web 1": ["10.99.0.9"], "\x1b[2J": ["10.99.0.8"], "a.b": ["10.99.0.7"], "Ok": ["10.99.0.6"]})
        self.assertEqual(values(mesh.answer(b"ok.wire.internal", dns.A)), ["10.99.0.6"])
        self.assertEqual(mesh.answer(reverse("10.99.0.9"), dns.PTR).rcode, dns.ENAME)
        self.assertEqual(mesh.answer(b"a.b.wire.internal", dns.A).rcode, dns.ENAME)

    def test_same_name_twice_merges_addresses(self) -> None:
        mesh = zone({"Web": ["10.99.0.1"], "web": ["10.99.0.1", "10.99.0.2"]})
        self.assertEqual(sorted(values(mesh.answer(b"web.wire.internal", dns.A))), ["10.99.0.1", "10.99.0.2"])

    def test_two_peers_with_one_name_as_pairs(self) -> None:
        mesh = zone([("web", ["10.99.0.1"]), ("web", ["10.99.0.2"])])
        self.assertEqual(sorted(values(mesh.answer(b"web.wire.internal", dns.A))), ["10.99.0.1", "10.99.0.2"])
        self.assertEqual(values(mesh.answer(reverse("10.99.0.2"), dns.PTR)), ["web.wire.internal"])

    def test_bad_addresses_are_skipped(self) -> None:
        mesh = zone({"web": ["nonsense", "10.99.0.1"]})
        self.assertEqual(values(mesh.answer(b"web.wire.internal", dns.A)), ["10.99.0.1"])

    def test_outside_names_are_not_covered(self) -> None:
        mesh = zone()
        for name in (b"example.com", b"internal", b"xwire.internal", b"1.0.0.10.in-addr.arpa", b"in-addr.arpa", reverse("fd00::1")):
            self.assertFalse(mesh.covers(name), name)
            self.assertEqual(mesh.answer(name, dns.A).rcode, dns.EREFUSED)
        self.assertTrue(mesh.covers(b"anything.wire.internal"))

    def test_rename_and_removal_take_effect_in_the_next_zone(self) -> None:
        before = zone()
        after = zone({"web2": ["10.99.0.1"], "me": ["10.99.0.3"]})
        self.assertEqual(values(before.answer(b"web1.wire.internal", dns.A)), ["10.99.0.1"])
        self.assertEqual(after.answer(b"web1.wire.internal", dns.A).rcode, dns.ENAME)
        self.assertEqual(values(after.answer(b"web2.wire.internal", dns.A)), ["10.99.0.1"])
        self.assertEqual(after.answer(b"db.wire.internal", dns.A).rcode, dns.ENAME)
        self.assertEqual(values(after.answer(reverse("10.99.0.1"), dns.PTR)), ["web2.wire.internal"])
        self.assertEqual(after.answer(reverse("10.99.0.2"), dns.PTR).rcode, dns.ENAME)

    def test_ttl_is_a_parameter(self) -> None:
        mesh = zone(ttl=5)
        self.assertEqual(mesh.answer(b"db.wire.internal", dns.A).answers[0].ttl, 5)
        self.assertEqual(mesh.answer(b"no.wire.internal", dns.A).authority[0].payload.minimum, 5)


node_names = st.text(alphabet="abcXYZ019-. \x1b", min_size=1, max_size=12)
mesh_v4 = st.integers(0, 0xFFFF).map(lambda n: f"10.99.{n >> 8}.{n & 0xFF}")
mesh_v6 = st.integers(0, 0xFFFF).map(lambda n: str(ipaddress.ip_address(f"fd7a:115c:a1e0::{n:x}")))


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(node_names, st.lists(st.one_of(mesh_v4, mesh_v6), max_size=3), max_size=20))
    def test_names_and_addresses_agree(self, peers: dict[str, list[str]]) -> None:
        mesh = zone(peers)
        for node_name, addresses in peers.items():
            label = node_name.lower()
            valid = label.replace("-", "").isalnum() and not label.startswith("-") and not label.endswith("-")
            name = f"{label}.wire.internal".encode()
            for address in addresses:
                qtype = dns.AAAA if ":" in address else dns.A
                # Every address of a valid name is answered for it (a name may gather several peers').
                self.assertEqual(address in values(mesh.answer(name, qtype)), valid, (node_name, address))
                # And every PTR names a name that has the address.
                ptr = values(mesh.answer(reverse(address), dns.PTR))
                if ptr:
                    self.assertIn(address, values(mesh.answer(ptr[0].encode(), qtype)))


class ReverseTests(SynchronousTestCase):
    def test_ptr_v4_and_v6(self) -> None:
        mesh = zone()
        self.assertEqual(values(mesh.answer(reverse("10.99.0.1"), dns.PTR)), ["web1.wire.internal"])
        self.assertEqual(values(mesh.answer(reverse("fd7a:115c:a1e0::1").upper(), dns.PTR)), ["web1.wire.internal"])

    def test_unknown_address_in_the_mesh_is_nxdomain_with_its_zone_soa(self) -> None:
        answer = zone().answer(reverse("10.99.7.7"), dns.PTR)
        self.assertEqual(answer.rcode, dns.ENAME)
        self.assertEqual(answer.authority[0].name.name, b"99.10.in-addr.arpa")

    def test_known_address_other_type_is_nodata(self) -> None:
        answer = zone().answer(reverse("10.99.0.1"), dns.A)
        self.assertEqual((answer.rcode, answer.answers), (dns.OK, []))

    def test_partial_and_odd_names(self) -> None:
        mesh = zone()
        self.assertEqual(mesh.answer(b"0.99.10.in-addr.arpa", dns.PTR).rcode, dns.OK)
        for odd in (b"01.0.99.10.in-addr.arpa", b"300.0.99.10.in-addr.arpa", b"x.0.99.10.in-addr.arpa"):
            self.assertEqual(mesh.answer(odd, dns.PTR).rcode, dns.ENAME, odd)
        self.assertEqual(values(mesh.answer(b"99.10.in-addr.arpa", dns.NS)), ["wire.internal"])

    def test_reverse_zones(self) -> None:
        self.assertEqual(reverse_zones(["10.99.0.0/16"]), ("99.10.in-addr.arpa",))
        self.assertEqual(reverse_zones(["10.98.0.0/23"]), ("0.98.10.in-addr.arpa", "1.98.10.in-addr.arpa"))
        self.assertEqual(reverse_zones(["fd7a:115c:a1e0::/48"]), ("0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa",))
        self.assertEqual(len(reverse_zones(["fd7a:115c:a1e0::/46"])), 4)
        self.assertEqual(reverse_zones(["10.0.0.0/7"]), ("10.in-addr.arpa", "11.in-addr.arpa"))
        self.assertRaises(ValueError, reverse_zones, ["not a network"])

    def test_ptr_for_a_narrow_network(self) -> None:
        mesh = MeshZone(DOMAIN, {"a": ["10.98.1.5"]}, reverse_networks=["10.98.0.0/23"])
        self.assertEqual(values(mesh.answer(reverse("10.98.1.5"), dns.PTR)), ["a.wire.internal"])
        self.assertFalse(mesh.covers(reverse("10.98.2.5")))


class AdminRecordTests(SynchronousTestCase):
    RECORDS = (
        DnsRecord("files", "A", "10.99.0.50"),
        DnsRecord("files", "AAAA", "fd7a:115c:a1e0::50"),
        DnsRecord("www", "CNAME", "web1.wire.internal"),
        DnsRecord("alias", "CNAME", "www.wire.internal"),
        DnsRecord("away", "CNAME", "example.com"),
        DnsRecord("dangling", "CNAME", "gone.wire.internal"),
        DnsRecord("_acme-challenge.deep.svc", "TXT", "x" * 300),
        DnsRecord("db", "TXT", "the admin's, whatever a node calls itself"),
    )

    def test_admin_records(self) -> None:
        mesh = zone(records=self.RECORDS)
        self.assertEqual(values(mesh.answer(b"files.wire.internal", dns.A)), ["10.99.0.50"])
        self.assertEqual(values(mesh.answer(b"files.wire.internal", dns.AAAA)), ["fd7a:115c:a1e0::50"])
        self.assertEqual(values(mesh.answer(b"_acme-challenge.deep.svc.wire.internal", dns.TXT)), ["x" * 255 + "|" + "x" * 45])

    def test_cname_chain_is_followed_inside_the_zone(self) -> None:
        answer = zone(records=self.RECORDS).answer(b"alias.wire.internal", dns.A)
        self.assertEqual(values(answer), ["www.wire.internal", "web1.wire.internal", "10.99.0.1"])
        self.assertIsNone(answer.outside)

    def test_cname_query_gets_the_cname_only(self) -> None:
        self.assertEqual(values(zone(records=self.RECORDS).answer(b"alias.wire.internal", dns.CNAME)), ["www.wire.internal"])

    def test_cname_out_of_the_zone(self) -> None:
        answer = zone(records=self.RECORDS).answer(b"away.wire.internal", dns.A)
        self.assertEqual((answer.rcode, values(answer), answer.outside), (dns.OK, ["example.com"], b"example.com"))

    def test_dangling_cname_is_nxdomain_with_the_cname(self) -> None:
        answer = zone(records=self.RECORDS).answer(b"dangling.wire.internal", dns.A)
        self.assertEqual((answer.rcode, values(answer)), (dns.ENAME, ["gone.wire.internal"]))

    def test_cname_loop_is_bounded(self) -> None:
        loop = (DnsRecord("a", "CNAME", "b.wire.internal"), DnsRecord("b", "CNAME", "a.wire.internal"))
        answer = zone(records=loop).answer(b"a.wire.internal", dns.A)
        self.assertEqual(answer.rcode, dns.OK)
        self.assertEqual(len(answer.answers), MAX_CNAME_HOPS + 1)

    def test_empty_non_terminals_exist(self) -> None:
        mesh = zone(records=self.RECORDS)
        for name in (b"svc.wire.internal", b"deep.svc.wire.internal"):
            self.assertEqual((mesh.answer(name, dns.A).rcode, mesh.answer(name, dns.A).answers), (dns.OK, []))
        self.assertEqual(mesh.answer(b"other.svc.wire.internal", dns.A).rcode, dns.ENAME)

    def test_an_admin_record_wins_over_a_node_that_names_itself_like_it(self) -> None:
        # Node names are the nodes' own choice: a node called "db" must not take over the admin's db.
        mesh = zone(records=self.RECORDS)
        self.assertEqual(mesh.shadowed, 1)
        self.assertEqual(values(mesh.answer(b"db.wire.internal", dns.TXT)), ["the admin's, whatever a node calls itself"])
        self.assertEqual(mesh.answer(b"db.wire.internal", dns.A).answers, [])


class ResolverTests(SynchronousTestCase):
    """The resolver in memory: the zone's answers, and the routes of the others
    (forwarding over real sockets is in test_dns_server)."""

    def resolver(self, **options) -> MeshResolver:
        return MeshResolver(Clock(), zone(records=AdminRecordTests.RECORDS), **options)

    def test_zone_answers_are_authoritative(self) -> None:
        reply = self.successResultOf(self.resolver().resolve(dns.Query(b"web1.wire.internal", dns.A)))
        self.assertEqual((reply.rcode, reply.authoritative, len(reply.answers)), (dns.OK, True, 1))

    def test_nxdomain_does_not_fall_through_to_upstream(self) -> None:
        resolver = self.resolver(upstream=["127.0.0.1:9"])
        reply = self.successResultOf(resolver.resolve(dns.Query(b"nobody.wire.internal", dns.A)))
        self.assertEqual(reply.rcode, dns.ENAME)
        self.assertEqual(resolver.outstanding, 0)

    def test_without_upstream_other_names_are_refused(self) -> None:
        reply = self.successResultOf(self.resolver().resolve(dns.Query(b"example.com", dns.A)))
        self.assertEqual(reply.rcode, dns.EREFUSED)

    def test_cname_out_of_the_zone_without_upstream_is_the_cname(self) -> None:
        reply = self.successResultOf(self.resolver().resolve(dns.Query(b"away.wire.internal", dns.A)))
        self.assertEqual((reply.rcode, [r.type for r in reply.answers]), (dns.OK, [dns.CNAME]))

    def test_other_classes_are_refused_for_the_zone(self) -> None:
        reply = self.successResultOf(self.resolver().resolve(dns.Query(b"web1.wire.internal", dns.A, dns.CH)))
        self.assertEqual(reply.rcode, dns.EREFUSED)

    def test_routes(self) -> None:
        resolver = self.resolver(
            upstream=["127.0.0.1:9"],
            forward=[ForwardZone("corp.example", ("127.0.0.2",)), ForwardZone("lab.corp.example", ("127.0.0.3",))],
        )
        self.assertEqual(resolver._route(b"host.lab.corp.example").resolvers, ("127.0.0.3",))
        self.assertEqual(resolver._route(b"corp.example").resolvers, ("127.0.0.2",))
        self.assertEqual(resolver._route(b"xcorp.example").resolvers, ("127.0.0.1:9",))

    def test_update_keeps_unchanged_forwarders(self) -> None:
        resolver = self.resolver(upstream=["127.0.0.1:9"])
        before = resolver._route(b"example.com")
        resolver.update(zone(), ["127.0.0.1:9"])
        self.assertIs(resolver._route(b"example.com"), before)

    def test_update_swaps_the_zone(self) -> None:
        resolver = self.resolver()
        resolver.update(zone({"web2": ["10.99.0.1"]}))
        reply = self.successResultOf(resolver.resolve(dns.Query(b"web1.wire.internal", dns.A)))
        self.assertEqual(reply.rcode, dns.ENAME)

    def test_outstanding_bound(self) -> None:
        resolver = self.resolver(upstream=["127.0.0.1:9"], max_outstanding=0)
        reply = self.successResultOf(resolver.resolve(dns.Query(b"example.com", dns.A)))
        self.assertEqual((reply.rcode, resolver.refused_busy), (dns.ESERVER, 1))

    def test_iresolver_lookups(self) -> None:
        resolver = self.resolver()
        answers, authority, additional = self.successResultOf(resolver.lookupAddress(b"web1.wire.internal"))
        self.assertEqual(answers[0].payload.dottedQuad(), "10.99.0.1")
        self.failureResultOf(resolver.lookupAddress(b"nobody.wire.internal"), error.DNSNameError)
        ptr, _, _ = self.successResultOf(resolver.lookupPointer(reverse("10.99.0.1")))
        self.assertEqual(ptr[0].payload.name.name, b"web1.wire.internal")
        # db is the admin's record here: the node named db is not answered for, by name or by address.
        self.failureResultOf(resolver.lookupPointer(reverse("10.99.0.2")), error.DNSNameError)
