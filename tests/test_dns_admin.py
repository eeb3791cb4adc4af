"""``wire admin dns``: the admin socket's /dns resource in memory, the
command line's grammar, what each command sends, and how results print."""

from __future__ import annotations

import io
import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.test_policy_server import Mesh
from wire import cli
from wire.cli import admin
from wire.cli.formatting import Style
from wire.ops import OpError
from wire.server.admin import build_admin_site


class AdminSocketTests(unittest.TestCase):
    def setUp(self):
        self.mesh = Mesh(self)
        self.http = StubTreq(build_admin_site(self.mesh.admin).resource)

    def call(self, method: str, body: dict | None = None) -> tuple[int, dict]:
        async def call():
            if method == "GET":
                response = await self.http.get("http://wire-admin/dns")
            else:
                response = await self.http.post("http://wire-admin/dns", json=body)
            return response.code, json.loads(await response.content())

        d = Deferred.fromCoroutine(call())
        self.http.flush()
        return self.successResultOf(d)

    def test_each_action_and_the_settings_after(self):
        for body, key in (
            ({"action": "add-record", "name": "db", "type": "a", "value": "10.99.0.50"}, "added"),
            ({"action": "add-record", "name": "www", "type": "CNAME", "value": "db.wire.internal"}, "added"),
            ({"action": "remove-record", "name": "www"}, "removed"),
            ({"action": "forward", "domain": "corp.example", "resolvers": ["10.0.0.53"]}, "forwarded"),
            ({"action": "nameservers", "resolvers": ["9.9.9.9"]}, "nameservers"),
        ):
            code, answer = self.call("POST", body)
            self.assertEqual((code, answer["ok"]), (200, True), answer)
            self.assertIn(key, answer)
        code, shown = self.call("GET")
        self.assertEqual(code, 200)
        self.assertEqual(
            {k: shown[k] for k in ("domain", "records", "forward", "nameservers", "version")},
            {
                "domain": "wire.internal",
                "records": [{"name": "db", "type": "A", "value": "10.99.0.50"}],
                "forward": [{"domain": "corp.example", "resolvers": ["10.0.0.53"]}],
                "nameservers": ["9.9.9.9"],
                "version": 5,
            },
        )
        code, answer = self.call("POST", {"action": "unforward", "domain": "corp.example"})
        self.assertEqual((code, answer["unforwarded"]["domain"], answer["version"]), (200, "corp.example", 6))

    def test_refusals_are_400_and_404_with_the_reason(self):
        self.call("POST", {"action": "add-record", "name": "db", "type": "A", "value": "10.99.0.50"})
        for body, status, words in (
            ({"action": "add-record", "name": "db", "type": "CNAME", "value": "web1.wire.internal"}, 400, "a CNAME must stand alone"),
            ({"action": "add-record", "name": "db", "type": "A"}, 400, "value: must be a non-empty string"),
            ({"action": "forward", "domain": "wire.internal", "resolvers": ["10.0.0.53"]}, 400, "overlaps the mesh domain"),
            ({"action": "forward", "domain": "corp.example", "resolvers": "10.0.0.53"}, 400, "resolvers: must be a list of strings"),
            ({"action": "remove-record", "name": "nope"}, 404, "no record nope"),
            ({"action": "unforward", "domain": "corp.example"}, 404, "corp.example is not forwarded"),
            ({"action": "rename"}, 400, "action: must be add-record, remove-record, forward, unforward or nameservers"),
        ):
            code, answer = self.call("POST", body)
            self.assertEqual(code, status, body)
            self.assertIn(words, answer["error"], body)
        self.assertEqual(self.mesh.coordinator.dns.version, 1, "nothing changed")


class ParserTests(unittest.TestCase):
    def parse(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        return cli.parse_args(["admin", "dns", *argv], out, err), err.getvalue()

    def test_the_commands(self):
        args, _ = self.parse("records", "add", "db", "a", "10.99.0.50")
        self.assertEqual((args.topic, args.action, args.records_action, args.name, args.type, args.value), ("dns", "records", "add", "db", "A", "10.99.0.50"))
        args, _ = self.parse("records", "remove", "db")
        self.assertEqual((args.name, args.type, args.value), ("db", None, None))
        args, _ = self.parse("records", "remove", "db", "txt", "hello world")
        self.assertEqual((args.type, args.value), ("TXT", "hello world"))
        args, _ = self.parse("forward", "corp.example", "10.0.0.53,10.0.0.54")
        self.assertEqual((args.domain, args.resolvers, args.remove), ("corp.example", "10.0.0.53,10.0.0.54", False))
        args, _ = self.parse("forward", "corp.example", "--remove")
        self.assertEqual((args.resolvers, args.remove), (None, True))
        args, _ = self.parse("nameservers", "9.9.9.9", "1.1.1.1", "--json")
        self.assertEqual((args.resolvers, args.clear, args.json), (["9.9.9.9", "1.1.1.1"], False, True))
        args, _ = self.parse("nameservers", "--clear")
        self.assertEqual((args.resolvers, args.clear), ([], True))
        for argv in (("show",), ("records", "list")):
            args, err = self.parse(*argv)
            self.assertFalse(isinstance(args, int), err)

    def test_bad_usage_exits_2(self):
        for argv, words in (
            (("records", "add", "db", "MX", "mail"), "invalid choice: 'MX'"),
            (("records", "add", "db", "A"), "the following arguments are required: VALUE"),
            (("records",), "required"),
            (("forward",), "DOMAIN"),
        ):
            code, err = self.parse(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn(words, err, argv)


class FakeAdmin:
    """What ``_dns`` asks of AdminOps, recorded."""

    def __init__(self):
        self.calls: list[tuple] = []

    async def dns(self) -> dict:
        self.calls.append(("GET",))
        return {}

    async def dns_action(self, action: str, **fields) -> dict:
        self.calls.append((action, fields))
        return {}


class DispatchTests(unittest.TestCase):
    def run_dns(self, *argv):
        args = cli.parse_args(["admin", "dns", *argv], io.StringIO(), io.StringIO())
        fake = FakeAdmin()
        result, formatter = self.successResultOf(Deferred.fromCoroutine(admin._dns(fake, args)))  # type: ignore[arg-type]
        return fake.calls, formatter

    def test_what_each_command_sends(self):
        for argv, call, formatter in (
            (("show",), ("GET",), admin.format_dns),
            (("records", "list"), ("GET",), admin.format_dns_records),
            (("records", "add", "db", "A", "10.99.0.50"), ("add-record", {"name": "db", "type": "A", "value": "10.99.0.50"}), admin.format_dns_changed),
            (("records", "remove", "db", "A"), ("remove-record", {"name": "db", "type": "A"}), admin.format_dns_changed),
            (("forward", "corp.example", "10.0.0.53, 10.0.0.54"), ("forward", {"domain": "corp.example", "resolvers": ["10.0.0.53", "10.0.0.54"]}), admin.format_dns_changed),
            (("forward", "corp.example", "--remove"), ("unforward", {"domain": "corp.example"}), admin.format_dns_changed),
            (("nameservers",), ("GET",), admin.format_dns_nameservers),
            (("nameservers", "9.9.9.9"), ("nameservers", {"resolvers": ["9.9.9.9"]}), admin.format_dns_changed),
            (("nameservers", "--clear"), ("nameservers", {"resolvers": []}), admin.format_dns_changed),
        ):
            calls, shown_by = self.run_dns(*argv)
            self.assertEqual((calls, shown_by), ([call], formatter), argv)

    def test_contradictions_are_refused_before_asking(self):
        for argv, words in (
            (("forward", "corp.example"), "give corp.example's resolvers"),
            (("forward", "corp.example", "10.0.0.53", "--remove"), "or --remove, not both"),
            (("nameservers", "9.9.9.9", "--clear"), "not both"),
        ):
            args = cli.parse_args(["admin", "dns", *argv], io.StringIO(), io.StringIO())
            fake = FakeAdmin()
            failure = self.failureResultOf(Deferred.fromCoroutine(admin._dns(fake, args)), OpError)  # type: ignore[arg-type]
            self.assertIn(words, str(failure.value))
            self.assertEqual(fake.calls, [])


SHOWN = {
    "ok": True,
    "domain": "wire.internal",
    "enabled": True,
    "records": [
        {"name": "db", "type": "A", "value": "10.99.0.50"},
        {"name": "www", "type": "CNAME", "value": "db.wire.internal"},
        {"name": "_acme-challenge.web", "type": "TXT", "value": "token value"},
    ],
    "forward": [{"domain": "corp.example", "resolvers": ["10.0.0.53", "10.0.0.54"]}],
    "nameservers": [],
    "version": 4,
    "set_at": 1_700_000_000.0,
    "digest": "0123456789abcdef",
}


class FormatTests(unittest.TestCase):
    plain = Style(False)

    def test_show(self):
        self.assertEqual(
            admin.format_dns(SHOWN, self.plain).splitlines(),
            [
                "mesh DNS domain wire.internal: every node is NAME.wire.internal; settings version 4",
                "",
                "records:",
                "  NAME                               TYPE   VALUE",
                "  db.wire.internal                   A      10.99.0.50",
                "  www.wire.internal                  CNAME  db.wire.internal",
                "  _acme-challenge.web.wire.internal  TXT    token value",
                "forwarded zones:",
                "  corp.example -> 10.0.0.53, 10.0.0.54",
                "nameservers: each node's own (the resolvers its machine had)",
            ],
        )

    def test_show_with_nothing_and_without_mesh_dns(self):
        empty = {**SHOWN, "records": [], "forward": [], "nameservers": ["9.9.9.9"], "domain": None, "enabled": False, "version": 0}
        self.assertEqual(
            admin.format_dns(empty, self.plain).splitlines(),
            [
                "no mesh DNS (the server's --dns-domain is empty); settings version 0",
                "",
                "records:",
                "  no records (add one: wire admin dns records add NAME A|AAAA|CNAME|TXT VALUE)",
                "forwarded zones:",
                "  none",
                "nameservers: 9.9.9.9",
            ],
        )

    def test_each_change(self):
        base = {"ok": True, "domain": "wire.internal", "version": 7}
        for result, text in (
            ({"added": SHOWN["records"][0]}, "added db.wire.internal A 10.99.0.50"),
            ({"added": SHOWN["records"][2]}, 'added _acme-challenge.web.wire.internal TXT "token value"'),
            ({"removed": SHOWN["records"][:2]}, "removed db.wire.internal A 10.99.0.50; www.wire.internal CNAME db.wire.internal"),
            ({"forwarded": SHOWN["forward"][0]}, "queries under corp.example now go to 10.0.0.53, 10.0.0.54"),
            ({"unforwarded": SHOWN["forward"][0]}, "corp.example is no longer forwarded"),
            ({"nameservers": ["9.9.9.9", "1.1.1.1"]}, "nameservers: 9.9.9.9, 1.1.1.1"),
            ({"nameservers": []}, "nameservers: each node's own (the resolvers its machine had)"),
        ):
            self.assertEqual(
                admin.format_dns_changed({**base, **result}, self.plain),
                f"{text} (DNS settings version 7); every node has it within seconds",
            )
