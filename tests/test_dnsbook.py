"""The admin's DNS settings on the server (wire.server.dnsbook): changed only
into a whole valid configuration, audited, durable once acknowledged, kept
across restarts and schema upgrades; and what a node's answer adds."""

from __future__ import annotations

import json
import os
import sqlite3

from twisted.trial import unittest

from tests.helpers import make_coordinator, registration_for, settled
from wire.protocol.dns import MAX_RECORDS, NO_DNS, DnsConfig, dns_digest
from wire.server.auth import Authority
from wire.server.dnsbook import DnsBook, DnsError
from wire.server.store import SCHEMA_VERSION, StoreError, open_store
from wire.web import SharedJson


class Book:
    """A coordinator's DnsBook on a real SQLite store in a temp dir, with an audit log."""

    def __init__(self, test: unittest.TestCase, domain: str | None = "wire.internal"):
        self.test = test
        self.data_dir = test.mktemp()
        self.coordinator = make_coordinator(test, data_dir=self.data_dir)
        self.store = self.coordinator.store
        self.coordinator.authority = Authority(self.store, self.coordinator.clock)
        self.book = DnsBook(self.store, domain, self.coordinator.now)
        self.audit = self.coordinator.audit

    def events(self, prefix: str = "dns.") -> list[tuple[str, str]]:
        assert self.coordinator.authority is not None
        log = settled(self.coordinator.authority.audit_log(1000))
        return [(e["event"], e["detail"]) for e in reversed(log) if e["event"].startswith(prefix)]

    def reopened(self, domain: str | None = "wire.internal") -> DnsBook:
        store = open_store(self.data_dir, self.coordinator.clock)
        self.test.addCleanup(store.close)
        return DnsBook(store, domain)

    def stored_row(self) -> tuple | None:
        """The row as another process sees it (what survives kill -9)."""
        db = sqlite3.connect(os.path.join(self.data_dir, "registry.sqlite3"))
        try:
            return db.execute("SELECT version, settings FROM dns_settings").fetchone()
        finally:
            db.close()


class RecordTests(unittest.TestCase):
    def setUp(self):
        self.b = Book(self)
        self.book = self.b.book

    def test_nothing_at_first(self):
        shown = self.book.shown()
        self.assertEqual(
            {k: shown[k] for k in ("domain", "enabled", "records", "forward", "nameservers", "version")},
            {"domain": "wire.internal", "enabled": True, "records": [], "forward": [], "nameservers": [], "version": 0},
        )
        self.assertEqual(self.book.config, DnsConfig("wire.internal"))
        self.assertEqual(self.book.digest, dns_digest(DnsConfig("wire.internal").to_json()))

    def test_records_are_added_normalised_and_listed(self):
        settled(self.book.add_record("DB", "a", "10.99.0.50", self.b.audit))
        settled(self.book.add_record("v6", "AAAA", "FD00::0:1", self.b.audit))
        settled(self.book.add_record("www", "CNAME", "DB.wire.internal.", self.b.audit))
        settled(self.book.add_record("_acme-challenge.web", "TXT", "token value", self.b.audit))
        self.assertEqual(
            self.book.shown()["records"],
            [
                {"name": "db", "type": "A", "value": "10.99.0.50"},
                {"name": "v6", "type": "AAAA", "value": "fd00::1"},
                {"name": "www", "type": "CNAME", "value": "db.wire.internal"},
                {"name": "_acme-challenge.web", "type": "TXT", "value": "token value"},
            ],
        )
        self.assertEqual(self.book.version, 4)
        self.assertEqual(len(self.book.config.records), 4)  # type: ignore[union-attr]

    def test_a_name_may_have_several_addresses(self):
        settled(self.book.add_record("db", "A", "10.99.0.50", self.b.audit))
        settled(self.book.add_record("db", "A", "10.99.0.51", self.b.audit))
        settled(self.book.add_record("db", "AAAA", "fd00::50", self.b.audit))
        self.assertEqual([r.value for r in self.book.settings.records], ["10.99.0.50", "10.99.0.51", "fd00::50"])

    def test_remove_by_name_by_type_and_by_value(self):
        for kind, value in (("A", "10.99.0.50"), ("A", "10.99.0.51"), ("AAAA", "fd00::50"), ("TXT", "hello")):
            settled(self.book.add_record("db", kind, value, self.b.audit))
        gone = settled(self.book.remove_records("db", "a", "10.99.0.51", self.b.audit))
        self.assertEqual([(r.type, r.value) for r in gone], [("A", "10.99.0.51")])
        gone = settled(self.book.remove_records("DB", "AAAA", "FD00::50", self.b.audit))  # as it was stored
        self.assertEqual([r.value for r in gone], ["fd00::50"])
        gone = settled(self.book.remove_records("db", "TXT", None, self.b.audit))
        self.assertEqual([r.value for r in gone], ["hello"])
        gone = settled(self.book.remove_records("db", None, None, self.b.audit))
        self.assertEqual([r.value for r in gone], ["10.99.0.50"])
        self.assertEqual(self.book.settings.records, ())

    def test_removing_what_is_not_there_says_so_and_changes_nothing(self):
        settled(self.book.add_record("db", "A", "10.99.0.50", self.b.audit))
        for args, words in (
            (("nope", None, None), "no record nope"),
            (("db", "AAAA", None), "no record db AAAA"),
            (("db", "A", "10.99.0.51"), "no record db A 10.99.0.51"),
        ):
            with self.assertRaises(LookupError) as caught:
                settled(self.book.remove_records(*args, audit=self.b.audit))
            self.assertIn(words, str(caught.exception))
            self.assertIn("wire admin dns records list", str(caught.exception))
        self.assertEqual(self.book.version, 1)
        with self.assertRaises(DnsError) as refused:
            settled(self.book.remove_records("db", "MX", None, self.b.audit))
        self.assertIn("not one of A, AAAA, CNAME, TXT", str(refused.exception))


class RefusalTests(unittest.TestCase):
    """A change that would make the configuration invalid is refused with
    the reason a node would give, and nothing changes: not the book, not the
    database, not the audit log."""

    def setUp(self):
        self.b = Book(self)
        self.book = self.b.book
        settled(self.book.add_record("db", "A", "10.99.0.50", self.b.audit))
        settled(self.book.set_forward("corp.example", ["10.0.0.53"], self.b.audit))

    def refused(self, change, words: str) -> None:
        before = (self.book.settings, self.book.version, self.book.digest, self.b.stored_row(), self.b.events())
        with self.assertRaises(DnsError) as caught:
            change()
        self.assertIn(words, str(caught.exception))
        self.assertEqual((self.book.settings, self.book.version, self.book.digest, self.b.stored_row(), self.b.events()), before)

    def test_invalid_changes(self):
        audit = self.b.audit
        self.refused(lambda: settled(self.book.add_record("db", "CNAME", "web1.wire.internal", audit)), "a CNAME must stand alone")
        self.refused(lambda: settled(self.book.add_record("db", "A", "10.99.0.50", audit)), "db A 10.99.0.50 is already a record")
        self.refused(lambda: settled(self.book.add_record("db", "A", "fd00::1", audit)), "value: 'fd00::1' is not an IPv4 address")
        self.refused(lambda: settled(self.book.add_record("db", "MX", "mail", audit)), "type: 'MX' is not one of")
        self.refused(lambda: settled(self.book.add_record("db.wire.internal.", "A", "10.0.0.1", audit)), "relative to the mesh domain")
        self.refused(lambda: settled(self.book.add_record("bad name", "A", "10.0.0.1", audit)), "is not a DNS label")
        self.refused(lambda: settled(self.book.add_record("t", "TXT", "tab\there", audit)), "printable ASCII")
        self.refused(lambda: settled(self.book.add_record("x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "w" * 50, "A", "10.0.0.1", audit)), "longer than 253")
        for zone in ("wire.internal", "internal", "lab.wire.internal"):
            self.refused(lambda: settled(self.book.set_forward(zone, ["10.0.0.53"], audit)), "overlaps the mesh domain wire.internal")
        self.refused(lambda: settled(self.book.set_forward("office.example", [], audit)), "at least one resolver")
        self.refused(lambda: settled(self.book.set_forward("office.example", ["dns.example"], audit)), "is not IP, IP:PORT or [IPv6]:PORT")
        self.refused(lambda: settled(self.book.set_nameservers(["10.0.0.1:99999"], audit)), "the port must be 1-65535")
        self.refused(lambda: settled(self.book.set_nameservers([f"10.0.0.{i}" for i in range(9)], audit)), "at most 8 resolvers")

    def test_too_many_records(self):
        # Filled in one write (a thousand adds would be a thousand fsyncs).
        settled(self.book._put(
            type(self.book.settings)(tuple(_a(i) for i in range(MAX_RECORDS - 1)) + self.book.settings.records, self.book.settings.forward),
            "dns.test",
            "filled",
            self.b.audit,
        ))
        self.refused(lambda: settled(self.book.add_record("one-more", "A", "10.99.1.1", self.b.audit)), f"at most {MAX_RECORDS} records")


def _a(i: int):
    from wire.protocol.dns import DnsRecord

    return DnsRecord(f"h{i}", "A", f"10.98.{i // 256}.{i % 256}")


class ZoneAndNameserverTests(unittest.TestCase):
    def setUp(self):
        self.b = Book(self)
        self.book = self.b.book

    def test_a_zone_is_set_replaced_and_removed(self):
        settled(self.book.set_forward("Corp.Example.", ["10.0.0.53", "[fd00::53]:5353", "10.0.0.53"], self.b.audit))
        self.assertEqual(self.book.shown()["forward"], [{"domain": "corp.example", "resolvers": ["10.0.0.53", "[fd00::53]:5353"]}])
        settled(self.book.set_forward("corp.example", ["10.0.0.54"], self.b.audit))
        self.assertEqual(self.book.shown()["forward"], [{"domain": "corp.example", "resolvers": ["10.0.0.54"]}])
        settled(self.book.remove_forward("CORP.example", self.b.audit))
        self.assertEqual(self.book.shown()["forward"], [])
        with self.assertRaises(LookupError) as caught:
            settled(self.book.remove_forward("corp.example", self.b.audit))
        self.assertIn("corp.example is not forwarded", str(caught.exception))
        self.assertEqual(self.book.version, 3)

    def test_nameservers_are_set_and_cleared(self):
        self.assertEqual(settled(self.book.set_nameservers(["9.9.9.9", "1.1.1.1:53"], self.b.audit)), ("9.9.9.9", "1.1.1.1"))
        self.assertEqual(self.book.config.nameservers, ("9.9.9.9", "1.1.1.1"))  # type: ignore[union-attr]
        self.assertEqual(settled(self.book.set_nameservers([], self.b.audit)), ())
        self.assertEqual(self.book.shown()["nameservers"], [])


class AuditTests(unittest.TestCase):
    def test_every_change_is_in_the_audit_log(self):
        b = Book(self)
        settled(b.book.add_record("db", "A", "10.99.0.50", b.audit))
        settled(b.book.add_record("note", "TXT", "v=spf1 -all", b.audit))
        settled(b.book.remove_records("db", None, None, b.audit))
        settled(b.book.set_forward("corp.example", ["10.0.0.53", "10.0.0.54"], b.audit))
        settled(b.book.remove_forward("corp.example", b.audit))
        settled(b.book.set_nameservers(["9.9.9.9"], b.audit))
        settled(b.book.set_nameservers([], b.audit))
        self.assertEqual(
            b.events(),
            [
                ("dns.record.add", "db A 10.99.0.50 (version 1)"),
                ("dns.record.add", "note TXT 'v=spf1 -all' (version 2)"),
                ("dns.record.remove", "db A 10.99.0.50 (version 3)"),
                ("dns.forward.set", "corp.example -> 10.0.0.53,10.0.0.54 (version 4)"),
                ("dns.forward.remove", "corp.example (version 5)"),
                ("dns.nameservers", "9.9.9.9 (version 6)"),
                ("dns.nameservers", "cleared (each node's own) (version 7)"),
            ],
        )


class PersistenceTests(unittest.TestCase):
    def test_an_acknowledged_change_is_on_disk_at_once_and_kept_across_restarts(self):
        b = Book(self)
        settled(b.book.add_record("db", "A", "10.99.0.50", b.audit))
        settled(b.book.set_forward("corp.example", ["10.0.0.53"], b.audit))
        settled(b.book.set_nameservers(["9.9.9.9"], b.audit))
        # Committed before the call returned: another process reads it now (kill -9 would keep it).
        row = b.stored_row()
        assert row is not None
        self.assertEqual(row[0], 3)
        self.assertEqual(json.loads(row[1])["nameservers"], ["9.9.9.9"])
        again = b.reopened()
        self.assertEqual((again.settings, again.version, again.digest), (b.book.settings, 3, b.book.digest))

    def test_stored_settings_that_do_not_fit_a_new_domain_stop_the_server_saying_why(self):
        b = Book(self)
        settled(b.book.set_forward("corp.internal", ["10.0.0.53"], b.audit))
        with self.assertRaises(StoreError) as caught:
            b.reopened("corp.internal")
        message = str(caught.exception)
        self.assertIn("--dns-domain corp.internal", message)
        self.assertIn("overlaps the mesh domain", message)
        # Without mesh DNS they are kept, only not served.
        self.assertEqual(b.reopened(None).settings, b.book.settings)

    def test_a_schema_5_database_gains_the_dns_table_and_keeps_its_nodes(self):
        data_dir = self.mktemp()
        coordinator = make_coordinator(self, data_dir=data_dir)
        coordinator.registry.register(registration_for("web1"), "203.0.113.9", coordinator.now())
        settled(coordinator.store.close())
        db = sqlite3.connect(os.path.join(data_dir, "registry.sqlite3"))
        db.execute("DROP TABLE dns_settings")
        db.execute("PRAGMA user_version = 5")
        db.commit()
        db.close()
        store = open_store(data_dir, coordinator.clock)
        self.addCleanup(store.close)
        self.assertEqual(settled(store.query("PRAGMA user_version"))[0][0], SCHEMA_VERSION)
        self.assertEqual(SCHEMA_VERSION, 13)
        self.assertEqual([r.node_name for r in store.load()], ["web1"])
        book = DnsBook(store, "wire.internal")
        self.assertEqual((book.version, book.settings.records), (0, ()))
        settled(book.add_record("db", "A", "10.99.0.50", lambda db, event, detail: None))
        self.assertEqual(DnsBook(store, "wire.internal").version, 1)


class NoMeshDnsTests(unittest.TestCase):
    def test_without_a_domain_nodes_are_told_none_and_changes_are_refused(self):
        b = Book(self, domain=None)
        self.assertIsNone(b.book.config)
        self.assertEqual(b.book.digest, NO_DNS)
        self.assertEqual(b.book.shown()["enabled"], False)
        self.assertEqual(b.book.extra_for(None), {})
        self.assertEqual(b.book.extra_for(NO_DNS), {})
        self.assertEqual(b.book.extra_for("0123456789abcdef"), {"dns": None})
        with self.assertRaises(DnsError) as caught:
            settled(b.book.add_record("db", "A", "10.99.0.50", b.audit))
        self.assertIn("no mesh DNS", str(caught.exception))


class ExtraTests(unittest.TestCase):
    def test_one_shared_object_for_every_node_until_a_change(self):
        b = Book(self)
        self.assertEqual(b.book.extra_for(None), {}, "a seed node never gets it")
        first = b.book.extra_for(NO_DNS)
        self.assertIs(first, b.book.extra_for("0123456789abcdef"))
        self.assertIsInstance(first["dns"], SharedJson)
        self.assertEqual(dict(first["dns"]), DnsConfig("wire.internal").to_json())
        self.assertEqual(b.book.extra_for(dns_digest(first["dns"])), {}, "it holds this one")
        old = b.book.digest
        settled(b.book.add_record("db", "A", "10.99.0.50", b.audit))
        self.assertNotEqual(b.book.digest, old)
        self.assertEqual(b.book.extra_for(old)["dns"]["records"], [{"name": "db", "type": "A", "value": "10.99.0.50"}])
        # What the node computes from what it got is the server's digest.
        self.assertEqual(dns_digest(DnsConfig.from_json(b.book.extra_for(old)["dns"]).to_json()), b.book.digest)


class ConcurrentChangeTests(unittest.TestCase):
    """Two changes whose transactions overlap (a served store answers later):
    the second is made from the settings the first left, so neither is lost."""

    def test_two_records_added_at_once_are_both_kept(self):
        from twisted.internet.defer import Deferred

        b = Book(self)
        real = b.store.transaction
        held: list[tuple[Deferred, object]] = []

        def slow_transaction(writes):
            d: Deferred = Deferred()
            held.append((d, writes))
            return d

        b.store.transaction = slow_transaction  # type: ignore[method-assign]
        first = Deferred.fromCoroutine(b.book.add_record("a", "A", "10.99.0.1", b.audit))
        second = Deferred.fromCoroutine(b.book.add_record("b", "A", "10.99.0.2", b.audit))
        self.assertEqual(len(held), 1, "the second waits for the first")
        while held:
            d, writes = held.pop(0)
            real(writes).chainDeferred(d)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(sorted(r.name for r in b.book.settings.records), ["a", "b"])
        self.assertEqual(b.book.version, 2)
        self.assertEqual(sorted(r.name for r in b.reopened().settings.records), ["a", "b"], "both stored")
