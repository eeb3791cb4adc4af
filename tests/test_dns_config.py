"""Tests for the DNS configuration a node gets with its netmap (wire.protocol.dns):
every validation error, and hypothesis over names."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wire.protocol.dns import (
    DEFAULT_DOMAIN,
    MAX_NAME,
    MAX_RECORDS,
    MAX_RESOLVERS,
    MAX_TXT_BYTES,
    MAX_ZONES,
    NO_DNS,
    DnsConfig,
    DnsRecord,
    ForwardZone,
    dns_digest,
    dns_name_of,
    parse_dns_digest,
    parse_dns_name,
    parse_mesh_domain,
    parse_resolver,
    resolver_address,
)
from wire.protocol.errors import ProtocolError

labels = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=63).filter(
    lambda label: not label.startswith("-") and not label.endswith("-")
)


def record(name: str = "db", kind: str = "A", value: str = "10.1.2.3") -> dict:
    return {"name": name, "type": kind, "value": value}


class ConfigTests(SynchronousTestCase):
    def error(self, value: object) -> ProtocolError:
        return self.assertRaises(ProtocolError, DnsConfig.from_json, value)

    def test_round_trip(self) -> None:
        body = {
            "domain": "Mesh.Example.",
            "records": [record("DB"), record("v6", "aaaa", "FD00::1"), record("www", "CNAME", "Web1.Mesh.Example."), record("_acme-challenge.web", "TXT", "token")],
            "forward": [{"domain": "corp.example", "resolvers": ["10.0.0.53", "10.0.0.54:5353", "[FD00::53]:53"]}],
            "nameservers": ["1.1.1.1", "1.1.1.1"],
        }
        config = DnsConfig.from_json(body)
        self.assertEqual(config.domain, "mesh.example")
        self.assertEqual(
            config.records,
            (
                DnsRecord("db", "A", "10.1.2.3"),
                DnsRecord("v6", "AAAA", "fd00::1"),
                DnsRecord("www", "CNAME", "web1.mesh.example"),
                DnsRecord("_acme-challenge.web", "TXT", "token"),
            ),
        )
        self.assertEqual(config.forward, (ForwardZone("corp.example", ("10.0.0.53", "10.0.0.54:5353", "fd00::53")),))
        self.assertEqual(config.nameservers, ("1.1.1.1",))
        self.assertEqual(DnsConfig.from_json(config.to_json()), config)

    def test_defaults(self) -> None:
        self.assertEqual(DnsConfig.from_json({}), DnsConfig(DEFAULT_DOMAIN))

    def test_not_an_object(self) -> None:
        self.assertEqual(self.error([]).field, "dns")

    def test_bad_domains(self) -> None:
        for domain in ("", ".", "a..b", "-a.b", "a-.b", "a_b.c", "10.in-addr.arpa", "arpa", "x" * 64 + ".b", "caf\u00e9.b", "\u212a.b", 7):
            self.assertEqual(self.error({"domain": domain}).field, "domain", domain)

    def test_long_domain(self) -> None:
        name = ".".join(["a" * 63] * 4)  # 255 characters
        self.assertIn(f"at most {MAX_NAME}", str(self.error({"domain": name})))

    def test_record_errors(self) -> None:
        cases = [
            ("not an object", "record"),
            (record(name="db.example.com."), "name"),
            (record(name="@"), "name"),
            (record(name="a..b"), "name"),
            (record(name="-x"), "name"),
            (record(name=5), "name"),
            (record(kind="MX"), "type"),
            (record(kind=None), "type"),
            (record(value="fd00::1"), "value"),
            (record(value="10.0.0.256"), "value"),
            (record(kind="AAAA", value="10.0.0.1"), "value"),
            (record(kind="CNAME", value="not a name"), "value"),
            (record(kind="TXT", value="bell\x07"), "value"),
            (record(kind="TXT", value="x" * (MAX_TXT_BYTES + 1)), "value"),
            (record(kind="TXT", value=["a"]), "value"),
        ]
        for body, field in cases:
            self.assertEqual(self.error({"records": [body]}).field, field, body)

    def test_record_name_too_long_under_domain(self) -> None:
        name = ".".join(["a" * 63] * 3) + "." + "b" * 55  # 247 characters: a name, but not under wire.internal
        self.assertIn("longer than", str(self.error({"records": [record(name=name)]})))

    def test_record_limits(self) -> None:
        many = [record(name=f"h{i}") for i in range(MAX_RECORDS + 1)]
        self.assertIn(f"at most {MAX_RECORDS}", str(self.error({"records": many})))
        self.assertEqual(len(DnsConfig.from_json({"records": many[:MAX_RECORDS]}).records), MAX_RECORDS)

    def test_duplicate_record(self) -> None:
        self.assertIn("twice", str(self.error({"records": [record(), record(name="DB")]})))

    def test_cname_stands_alone(self) -> None:
        for pair in ([record(), record(kind="CNAME", value="x.y")], [record(kind="CNAME", value="x.y"), record(kind="TXT", value="t")]):
            self.assertIn("stand alone", str(self.error({"records": pair})))

    def test_txt_strings(self) -> None:
        text = "x" * 300
        self.assertEqual(DnsRecord("t", "TXT", text).txt_strings(), (b"x" * 255, b"x" * 45))
        self.assertEqual(DnsRecord("t", "TXT", "").txt_strings(), (b"",))

    def test_forward_errors(self) -> None:
        cases = [
            ({"forward": "x"}, "forward"),
            ({"forward": ["x"]}, "forward zone"),
            ({"forward": [{"domain": "a..b", "resolvers": ["10.0.0.1"]}]}, "domain"),
            ({"forward": [{"domain": "corp", "resolvers": []}]}, "resolvers"),
            ({"forward": [{"domain": "corp", "resolvers": "10.0.0.1"}]}, "resolvers"),
            ({"forward": [{"domain": "corp", "resolvers": ["dns.corp"]}]}, "resolvers"),
            ({"forward": [{"domain": "corp", "resolvers": ["10.0.0.1"] * 2 + [f"10.0.0.{i}" for i in range(2, 2 + MAX_RESOLVERS)]}]}, "resolvers"),
            ({"forward": [{"domain": "wire.internal", "resolvers": ["10.0.0.1"]}]}, "forward"),
            ({"forward": [{"domain": "x.wire.internal", "resolvers": ["10.0.0.1"]}]}, "forward"),
            ({"forward": [{"domain": "internal", "resolvers": ["10.0.0.1"]}]}, "forward"),
            ({"forward": [{"domain": "corp", "resolvers": ["10.0.0.1"]}, {"domain": "CORP.", "resolvers": ["10.0.0.2"]}]}, "forward"),
            ({"forward": [{"domain": f"z{i}", "resolvers": ["10.0.0.1"]} for i in range(MAX_ZONES + 1)]}, "forward"),
            ({"nameservers": ["10.0.0.1:0"]}, "nameservers"),
            ({"nameservers": [f"10.0.0.{i}" for i in range(9)]}, "nameservers"),
        ]
        for body, field in cases:
            self.assertEqual(self.error(body).field, field, body)

    def test_reverse_zone_may_be_forwarded(self) -> None:
        config = DnsConfig.from_json({"forward": [{"domain": "10.in-addr.arpa", "resolvers": ["10.0.0.53"]}]})
        self.assertEqual(config.forward[0].domain, "10.in-addr.arpa")


class ResolverTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(resolver_address("10.0.0.1"), ("10.0.0.1", 53))
        self.assertEqual(resolver_address("10.0.0.1:5353"), ("10.0.0.1", 5353))
        self.assertEqual(resolver_address("fd00::1"), ("fd00::1", 53))
        self.assertEqual(resolver_address("[fd00::1]:5353"), ("fd00::1", 5353))
        self.assertEqual(parse_resolver("[fd00:0::1]:5353"), "[fd00::1]:5353")
        self.assertEqual(parse_resolver("10.0.0.1:53"), "10.0.0.1")

    def test_refused(self) -> None:
        for text in ("", "host", "10.0.0.1:", "10.0.0.1:65536", "10.0.0.1:x", "10.0.0.1:\u0665\u0663", "[10.0.0.1]:53", "[fd00::1]", "fe80::1%eth0", "10.0.0.0/8", " 10.0.0.1", None):
            self.assertRaises(ProtocolError, resolver_address, text)


class NameTests(SynchronousTestCase):
    def test_dns_name_of(self) -> None:
        self.assertEqual(dns_name_of("Web1", "wire.internal"), "web1.wire.internal")
        for shown in ("web 1", "web.1", "-web", "", "\x1b[2J", "caf\u00e9", "\u212a", "x" * 64, None, 3):
            self.assertIsNone(dns_name_of(shown, "wire.internal"), shown)

    def test_dns_name_of_too_long(self) -> None:
        self.assertIsNone(dns_name_of("a" * 63, ".".join(["b" * 63] * 3)))

    def test_mesh_domain(self) -> None:
        self.assertEqual(parse_mesh_domain("wire.internal."), "wire.internal")
        self.assertRaises(ProtocolError, parse_mesh_domain, "_x.internal")

    @given(st.lists(labels, min_size=1, max_size=4))
    def test_valid_names_are_kept(self, parts: list[str]) -> None:
        name = ".".join(parts)
        if len(name) <= MAX_NAME:
            self.assertEqual(parse_dns_name(name.upper() + "."), name)
            self.assertEqual(DnsRecord.from_json(record(name=name)).name, name)
        else:
            self.assertRaises(ProtocolError, parse_dns_name, name)

    @given(st.text(max_size=80))
    def test_any_text_is_a_name_or_an_error(self, text: str) -> None:
        try:
            name = parse_dns_name(text)
        except ProtocolError:
            return
        self.assertTrue(name.isascii() and name == name.lower() and len(name) <= MAX_NAME)
        for label in name.split("."):
            self.assertTrue(1 <= len(label) <= 63)
            self.assertTrue(set(label) <= set(string.ascii_lowercase + string.digits + "-_"))

    @given(st.text(max_size=70))
    def test_dns_name_of_any_text(self, text: str) -> None:
        name = dns_name_of(text, "wire.internal")
        if name is not None:
            self.assertEqual(parse_dns_name(name), name)
            self.assertEqual(name.count("."), 2)


class DigestTests(SynchronousTestCase):
    def test_digest(self) -> None:
        config = DnsConfig.from_json({"records": [record()]})
        self.assertEqual(dns_digest(None), NO_DNS)
        self.assertEqual(len(dns_digest(config.to_json())), 16)
        self.assertEqual(dns_digest(config.to_json()), dns_digest(DnsConfig.from_json(config.to_json()).to_json()))
        self.assertNotEqual(dns_digest(config.to_json()), dns_digest(DnsConfig().to_json()))

    def test_parse_digest(self) -> None:
        digest = dns_digest(DnsConfig().to_json())
        self.assertEqual((parse_dns_digest(digest), parse_dns_digest(NO_DNS)), (digest, NO_DNS))
        for bad in ("", "NONE", digest.upper(), digest + "0", "g" * 16, None):
            self.assertRaises(ProtocolError, parse_dns_digest, bad)


class NetmapCarriesDnsTests(SynchronousTestCase):
    """The long-poll answer's ``dns``: given replaces, null turns mesh DNS off,
    absent or refused keeps what the node holds (and the refusal is named)."""

    def test_given_null_absent_refused(self):
        from wire.protocol import NetmapAnswer

        config = DnsConfig(records=(DnsRecord("db", "A", "10.99.0.7"),))
        answer = NetmapAnswer.from_json({"cursor": "ab12:3", "upserts": [], "dns": config.to_json()})
        self.assertEqual((answer.dns, answer.dns_given), (config, True))
        answer = NetmapAnswer.from_json({"cursor": "ab12:3", "upserts": [], "dns": None})
        self.assertEqual((answer.dns, answer.dns_given), (None, True))
        answer = NetmapAnswer.from_json({"cursor": "ab12:3", "upserts": []})
        self.assertFalse(answer.dns_given)
        answer = NetmapAnswer.from_json({"cursor": "ab12:3", "upserts": [], "dns": {"domain": "arpa"}})
        self.assertFalse(answer.dns_given)
        self.assertIn("skipped the DNS settings (those held stay)", answer.skipped[0])
