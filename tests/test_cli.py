"""The ``wire`` command line: parsing (global options anywhere), exit codes,
output, errors. In process against the test mesh of test_ops, and a few runs
of the real command, ``wire admin`` against a real ``twistd wire-server``."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.helpers import body_for, registration_for
from tests.serverproc import ServerProcess
from tests.test_ops import NO_TOOLS, PING_LOST, PING_OK, Mesh
from wire import __version__, cli, ops
from wire.admin_ops import UNITS, DurationError, parse_duration
from wire.client import CoordinationClient, make_http_client
from wire.cli import admin
from wire.cli.table import table
from wire.jointoken import decode_join_token
from wire.node.config import config_path
from wire.ops.views import daemon_state

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The seed README's `wire status` example, and the result it shows.
SEED_STATUS = """
wire status  http://YOUR_SERVER:8787
  3 online / 1 offline / 4 total

  ● node1          10.99.23.187     203.0.113.10          5s ago
  ● node2          10.99.45.22      198.51.100.20         12s ago  (this node)
  ● node3          10.99.87.3       192.0.2.30            8s ago
  ○ node4          10.99.200.5      203.0.113.40          14m ago
"""


def seed_node(name, vpn_ip, public_ip, ago, online=True, **fields):
    node = {"node_name": name, "vpn_ip": vpn_ip, "public_ip": public_ip, "last_seen_ago": ago, "status": "online" if online else "offline", "this_node": False}
    node.update(fields)
    return node


SEED_RESULT = {
    "ok": True,
    "server": "http://YOUR_SERVER:8787",
    "total": 4,
    "online": 3,
    "offline": 1,
    "nodes": [
        seed_node("node1", "10.99.23.187", "203.0.113.10", 5),
        seed_node("node2", "10.99.45.22", "198.51.100.20", 12, this_node=True),
        seed_node("node3", "10.99.87.3", "192.0.2.30", 8),
        seed_node("node4", "10.99.200.5", "203.0.113.40", 14 * 60 + 5, online=False),
    ],
    "my_node_id": None,
    "daemon_running": False,
}


class FormatTests(unittest.TestCase):
    plain = cli.Style(False)

    def test_status_is_the_seed_layout(self):
        self.assertEqual(cli.format_status(SEED_RESULT, self.plain), SEED_STATUS)

    def test_status_path_columns(self):
        nodes = [
            seed_node("alpha", "10.99.0.1", "203.0.113.1", 2, path="direct", path_reason="direct: via 203.0.113.1:51820", endpoint="203.0.113.1:51820", handshake_age=7.2),
            seed_node("beta", "10.99.0.2", "203.0.113.2", 2, path="relay", path_reason="relay: hard NAT on beta", path_why="hard NAT on beta", endpoint="127.0.0.1:40100", handshake_age=65),
            seed_node("gamma", "10.99.0.3", "203.0.113.3", 2, path="connecting", path_reason="trying direct: via 203.0.113.3:40000 (no handshake yet)", endpoint="203.0.113.3:40000", handshake_age=None),
            seed_node("a-very-long-node-name", "10.99.0.4", "203.0.113.4", 3 * 86400, online=False, path="none", path_reason="not configured in WireGuard yet", endpoint=None, handshake_age=None),
        ]
        text = cli.format_status({**SEED_RESULT, "nodes": nodes, "my_node_id": "x", "daemon_running": True}, self.plain)
        lines = text.splitlines()[4:]
        self.assertEqual(lines, [
            "  ● alpha                 10.99.0.1        203.0.113.1           2s ago   direct 203.0.113.1:51820, handshake 7s ago",
            "  ● beta                  10.99.0.2        203.0.113.2           2s ago   relay (hard NAT on beta), handshake 1m ago",
            "  ● gamma                 10.99.0.3        203.0.113.3           2s ago   connecting: trying direct: via 203.0.113.3:40000 (no handshake yet)",
            "  ○ a-very-long-node-name 10.99.0.4        203.0.113.4           3d ago   none: not configured in WireGuard yet",
        ])

    def test_status_says_when_paths_are_unknown(self):
        text = cli.format_status({**SEED_RESULT, "my_node_id": "x"}, self.plain)
        self.assertIn("(the node daemon is not running here: paths unknown; sudo wire up)", text)

    def test_status_tells_the_daemons_troubles_escaped(self):
        # The daemon's control status, as `wire status` gets it: a failing loop and a refused answer.
        local = {
            "failing": [{"what": "netmap sync", "count": 3, "since_ago": 130.4, "error": "server said \x1b[2J\r\nFAKE"}],
            "bad_answers": {"count": 4, "latest": "netmap: peers[3].vpn_ip 8.8.8.8 is outside the mesh 10.99.0.0/16\u202e", "ago": 20.2},
        }
        result = {**SEED_RESULT, "warning": "server unreachable", **daemon_state(local)}
        lines = cli.render(cli.format_status, result, self.plain).splitlines()
        self.assertEqual(lines[1:6], [
            "wire status  http://YOUR_SERVER:8787",
            "  ! server unreachable",
            "  ! netmap sync: 3 failure(s) in a row for 2m10s (server said \\x1b[2J\\r\\nFAKE)",
            "  ! server answers: 4 entr(y/ies) refused since the daemon started, the latest 20s ago: "
            "netmap: peers[3].vpn_ip 8.8.8.8 is outside the mesh 10.99.0.0/16\\u202e",
            "  3 online / 1 offline / 4 total",
        ])

    def test_status_says_nothing_of_a_daemon_that_is_well(self):
        calm = {"failing": [], "bad_answers": {"count": 2, "latest": "netmap: old news", "ago": 601.0}}
        self.assertEqual(daemon_state(calm)["daemon_problems"], [], "a refused answer 10 minutes old is history")
        self.assertEqual(cli.format_status({**SEED_RESULT, **daemon_state(calm)}, self.plain), SEED_STATUS)
        self.assertEqual(daemon_state(None), {"failing": [], "bad_answers": None, "daemon_problems": []})

    def test_status_tells_a_policy_the_node_cannot_enforce(self):
        local = {"failing": [], "bad_answers": None, "policy": {"in_force": False, "rules": 2, "problem": "no nft"}}
        self.assertEqual(daemon_state(local)["daemon_problems"], ["access policy: no nft; this node holds no peers until it can"])

    def test_status_shows_tags_after_the_seeds_columns(self):
        tagged = {**SEED_RESULT, "nodes": [seed_node("node1", "10.99.23.187", "203.0.113.10", 5, tags=["tag:db", "tag:prod"]), *SEED_RESULT["nodes"][1:]]}
        lines = cli.format_status(tagged, self.plain).splitlines()
        self.assertEqual(lines[4], "  ● node1          10.99.23.187     203.0.113.10          5s ago   tag:db tag:prod")
        self.assertEqual(lines[5:], SEED_STATUS.splitlines()[5:])

    def test_colour_only_on_a_terminal(self):
        self.assertIn("\033[32m●\033[0m", cli.format_status(SEED_RESULT, cli.Style(True)))
        self.assertNotIn("\033", cli.format_status(SEED_RESULT, self.plain))

    def test_explain(self):
        result = ops.explain_path(
            {"public_ip": "198.51.100.1", "nat_type": "easy"},
            {**body_for("db1"), "vpn_ip": "10.99.0.2", "public_ip": "203.0.113.9", "nat_port": 40001, "nat_type": "none", "status": "online"},
            {"node_name": "db1", "online": True, "endpoint": "203.0.113.9:40001", "handshake_age": 500.0, "path": "direct"},
            {"interface": {"name": "wire0", "up": True}},
        )
        self.assertEqual(cli.format_explain(result, self.plain).splitlines(), [
            "db1 (10.99.0.2): path direct, endpoint 203.0.113.9:40001, handshake 8m ago",
            "  NAT: this node easy, db1 none",
            "  - db1 is at 203.0.113.9, this node at 198.51.100.1: WireGuard uses its own address (it has no NAT), 203.0.113.9:40001",
            "  - last handshake 500s ago: the path worked, then stopped",
            "  - UDP to 203.0.113.9:40001 gets no answer: a firewall on db1 or in front of it drops it",
            "  → allow UDP port 40001 in on db1",
        ])

    def test_explain_tells_the_access_policy(self):
        peer = {**body_for("db1"), "vpn_ip": "10.99.0.2", "public_ip": "203.0.113.9", "nat_port": 40001, "nat_type": "none", "status": "online"}
        wg = {"node_name": "db1", "online": True, "endpoint": "203.0.113.9:40001", "handshake_age": 5.0, "path": "direct"}
        local = {"interface": {"name": "wire0", "up": True}, "policy": {"in_force": True, "rules": 3, "problem": None}}
        result = ops.explain_path({"public_ip": "198.51.100.1", "nat_type": "easy"}, peer, wg, local)
        self.assertIn("an access policy is in force: db1 may open on this node only what its 3 filter rule(s) accept", " ".join(result["reasons"]))
        # The daemon says what the peer may open here, and by which rule.
        result = ops.explain_path({"public_ip": "198.51.100.1", "nat_type": "easy"}, peer, {**wg, "may_open_here": ["tcp 5432 (acls[0])"]}, local)
        self.assertIn("db1 may open on this node: tcp 5432 (acls[0]); nothing else", " ".join(result["reasons"]))
        result = ops.explain_path({"public_ip": "198.51.100.1", "nat_type": "easy"}, peer, {**wg, "may_open_here": []}, local)
        self.assertIn("db1 may open nothing on this node (it is a peer because this node may reach it)", " ".join(result["reasons"]))
        local["policy"] = {"in_force": False, "rules": 3, "problem": "the 'nft' program is missing"}
        result = ops.explain_path({"public_ip": "198.51.100.1", "nat_type": "easy"}, peer, wg, local)
        self.assertIn("cannot be enforced here (the 'nft' program is missing): this node holds no peers", " ".join(result["reasons"]))

    def test_json_is_the_result(self):
        result = {"ok": True, "nodes": [{"node_name": "ä", "handshake_age": None}], "count": 1}
        out = io.StringIO()
        args = cli.parse_args(["status", "--json"], io.StringIO(), io.StringIO())
        self.assertEqual(cli.report(args, result, cli.format_status, out), 0)
        self.assertEqual(json.loads(out.getvalue()), result)

    def test_a_result_that_is_not_ok_exits_1(self):
        args = cli.parse_args(["diagnose"], io.StringIO(), io.StringIO())
        self.assertEqual(cli.report(args, {"ok": False, "checks": []}, cli.format_checks, io.StringIO()), 1)


class UsageTests(unittest.TestCase):
    def parse(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        return cli.parse_args(list(argv), out, err), out.getvalue(), err.getvalue()

    def test_bad_usage_exits_2(self):
        for argv, message in (
            ((), "usage: wire"),
            (("bogus",), "invalid choice: 'bogus'"),
            (("ping",), "the following arguments are required: target"),
            (("ping", "-c", "x", "db1"), "invalid int value: 'x'"),
            (("explain",), "the following arguments are required: peer"),
            (("status", "--bogus"), "unrecognized arguments: --bogus"),
        ):
            code, out, err = self.parse(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn(message, err, argv)
            self.assertEqual(out, "", argv)

    def test_help_and_version_exit_0(self):
        code, out, _ = self.parse("--version")
        self.assertEqual((code, out), (0, f"wire {__version__}\n"))
        code, out, _ = self.parse("netcheck", "--help")
        self.assertEqual(code, 0)
        self.assertIn("usage: wire netcheck", out)

    def test_every_command_parses(self):
        for argv in (["up", "-s", "http://h:1", "-n", "a", "-p", "1", "--interface", "wt0", "--wait", "5"], ["down"], ["status", "-s", "http://h:1"], ["peers"],
                     ["ping", "db1", "-c", "2"], ["install", "--yes"], ["diagnose"], ["watchdog"], ["netcheck", "-s", "http://h:1"], ["explain", "db1"],
                     ["demo", "--keep"]):
            args, _, err = self.parse(*argv, *([] if argv[0] == "demo" else ["--json"]))
            self.assertFalse(isinstance(args, int), f"{argv}: {err}")


def local_minute(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


NOW = 1_700_000_000.0


def key(key_id, state, created=NOW - 3600, expires=None, reusable=False, uses=0, note="", tags=(), ephemeral_after=None):
    return {"key_id": key_id, "created": created, "expires": expires, "reusable": reusable, "uses": uses,
            "revoked": state == "revoked", "usable": state == "usable", "state": state, "note": note,
            "tags": list(tags), "ephemeral": bool(ephemeral_after), "ephemeral_after": ephemeral_after}


class AdminFormatTests(unittest.TestCase):
    plain = cli.Style(False)

    def test_keys_list_tells_the_states_apart_and_shows_times(self):
        keys = [
            key("aaaa0001", "usable", expires=NOW + 7 * 86400, note="office laptops"),
            key("aaaa0002", "spent", uses=1),
            key("aaaa0003", "revoked", reusable=True, uses=2, expires=NOW + 3 * 3600),
            key("aaaa0004", "expired", expires=NOW - 300),
            key("aaaa0005", "usable", reusable=True, tags=("tag:ci", "tag:web"), ephemeral_after=1800),
        ]
        lines = admin.format_keys({"ok": True, "keys": keys, "timestamp": NOW}, self.plain).splitlines()
        created = local_minute(NOW - 3600)
        self.assertEqual(lines, [
            "  KEY ID    STATE    KIND                 USES  CREATED           EXPIRES                    TAGS            NOTE",
            f"  aaaa0001  usable   one-time             0     {created}  {local_minute(NOW + 7 * 86400)} (in 7d)   -               office laptops",
            f"  aaaa0002  spent    one-time             1     {created}  never                      -",
            f"  aaaa0003  revoked  reusable             2     {created}  {local_minute(NOW + 3 * 3600)} (in 3h)   -",
            f"  aaaa0004  expired  one-time             0     {created}  {local_minute(NOW - 300)} (5m ago)  -",
            f"  aaaa0005  usable   reusable, ephemeral  0     {created}  never                      tag:ci,tag:web",
        ])

    def test_keys_list_from_a_server_without_states(self):
        old = {k: v for k, v in key("aaaa0001", "spent").items() if k != "state"}
        text = admin.format_keys({"ok": True, "keys": [old]}, self.plain)
        self.assertIn("aaaa0001  unusable  one-time  0     ", text)

    def test_no_keys(self):
        self.assertEqual(admin.format_keys({"ok": True, "keys": [], "timestamp": NOW}, self.plain), "no join keys (create one: wire admin keys create)")

    def test_key_created_shows_its_expiry(self):
        token = "wire1.abc"
        result = {"key": key("aaaa0001", "usable", created=NOW, expires=NOW + 86400), "token": token, "join_command": f"sudo wire up --join {token}"}
        self.assertEqual(
            admin.format_key_created(result, self.plain),
            f"join key aaaa0001 (one-time, expires {local_minute(NOW + 86400)} (in 1d)); on the new machine run:\n\n  sudo wire up --join wire1.abc\n",
        )
        result["key"] = key("aaaa0002", "usable", reusable=True)
        self.assertTrue(admin.format_key_created(result, self.plain).startswith("join key aaaa0002 (reusable); on the new machine run:"))
        result["key"] = key("aaaa0003", "usable", tags=("tag:ci",), ephemeral_after=1800)
        self.assertTrue(
            admin.format_key_created(result, self.plain).startswith("join key aaaa0003 (one-time, tags tag:ci; ephemeral: removed 30m offline); on"),
            admin.format_key_created(result, self.plain),
        )

    def test_nodes_list_has_headers_and_ids(self):
        nodes = [
            {**body_for("db1"), "vpn_ip": "10.99.0.2", "public_ip": "203.0.113.9", "nat_type": "easy", "status": "online", "last_seen_ago": 4},
            {**body_for("old1"), "vpn_ip": "10.99.0.3", "public_ip": "", "nat_type": "unknown", "status": "offline", "last_seen_ago": 2 * 3600, "tags": []},
        ]
        nodes[0]["tags"] = ["tag:db", "tag:prod"]
        text = admin.format_nodes({"ok": True, "total": 2, "online": 1, "offline": 1, "nodes": nodes}, self.plain)
        db1, old1 = body_for("db1")["node_id"], body_for("old1")["node_id"]
        self.assertEqual(text.splitlines(), [
            "1 online / 1 offline / 2 total",
            "",
            "  NAME  NODE ID                           VPN IP     STATUS   LAST SEEN  PUBLIC IP    NAT      TAGS",
            f"  db1   {db1}  10.99.0.2  online   4s ago     203.0.113.9  easy     tag:db,tag:prod",
            f"  old1  {old1}  10.99.0.3  offline  2h ago     -            unknown  -",
        ])

    def test_no_nodes(self):
        text = admin.format_nodes({"ok": True, "total": 0, "online": 0, "offline": 0, "nodes": []}, self.plain)
        self.assertEqual(text, "0 online / 0 offline / 0 total: no nodes have joined (create a join key: wire admin keys create)")

    def test_table(self):
        self.assertEqual(table(("A", "LONG HEADER", "C"), [("wide cell", "x", ""), (1, 2, 3)]), [
            "  A          LONG HEADER  C",
            "  wide cell  x",
            "  1          2            3",
        ])


class DurationTests(unittest.TestCase):
    def test_units(self):
        for text, seconds in (("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 7 * 86400), ("2w", 14 * 86400), ("0.5h", 1800), (" 7D ", 7 * 86400), ("3 m", 180)):
            self.assertEqual(parse_duration(text), seconds, text)

    @given(st.integers(min_value=1, max_value=10**6), st.sampled_from(sorted(UNITS)))
    def test_any_number_with_a_unit(self, number, unit):
        self.assertEqual(parse_duration(f"{number}{unit}"), number * UNITS[unit])

    @given(st.integers(min_value=0, max_value=10**6))
    def test_a_bare_number_is_refused(self, number):
        with self.assertRaises(DurationError) as caught:
            parse_duration(str(number))
        self.assertEqual(str(caught.exception), f"'{number}' needs a unit (s, m, h, d, w), e.g. {number}m, {number}h or {number}d")

    def test_what_is_wrong_is_said(self):
        for text, message in (
            ("5x", "unknown unit 'x' in '5x' (units: s, m, h, d, w)"),
            ("5 min", "unknown unit 'min' in '5 min' (units: s, m, h, d, w)"),
            ("0m", "'0m' must be longer than zero"),
            ("-5m", "'-5m' is not a duration like 30m, 24h or 7d (units: s, m, h, d, w)"),
            ("", "'' is not a duration like 30m, 24h or 7d (units: s, m, h, d, w)"),
            ("soon", "'soon' is not a duration like 30m, 24h or 7d (units: s, m, h, d, w)"),
        ):
            with self.assertRaises(DurationError) as caught:
                parse_duration(text)
            self.assertEqual(str(caught.exception), message)

    def test_expires_without_a_unit_is_bad_usage(self):
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.parse_args(["admin", "keys", "create", "--expires", "5"], out, err), 2)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(err.getvalue().splitlines()[-1], "wire admin keys create: error: argument --expires: '5' needs a unit (s, m, h, d, w), e.g. 5m, 5h or 5d")


# Sample values for the positional arguments of the commands that take some.
POSITIONALS = {
    ("ping",): ["db1"],
    ("explain",): ["db1"],
    ("admin", "keys", "revoke"): ["k1"],
    ("admin", "apikeys", "revoke"): ["0123456789ab"],
    ("admin", "nodes", "remove"): ["web1"],
    ("admin", "nodes", "rename"): ["web1", "web2"],
    ("admin", "nodes", "tag"): ["web1", "tag:web"],
    ("admin", "policy", "set"): ["policy.hujson"],
    ("admin", "policy", "check"): ["policy.hujson"],
    ("admin", "policy", "rollback"): ["1"],
    ("admin", "policy", "explain"): ["web1", "db1:5432"],
    ("admin", "dns", "records", "add"): ["db", "A", "10.99.0.50"],
    ("admin", "dns", "records", "remove"): ["db"],
    ("admin", "dns", "forward"): ["corp.example", "10.0.0.53"],
    ("admin", "routes", "approve"): ["router1", "192.168.1.0/24"],
    ("admin", "routes", "reject"): ["router1", "192.168.1.0/24"],
}


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command and subcommand of the parser, as name paths (``("admin", "keys")``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,)
                yield from command_paths(sub, path + (name,))


def runnable_paths() -> list[tuple[str, ...]]:
    """The command paths that name something to run (no further subcommand needed)."""
    paths = list(command_paths(cli.build_parser()))
    return [p for p in paths if not any(q[: len(p)] == p and len(q) > len(p) for q in paths)]


class DemoKeptMessageTests(unittest.TestCase):
    def test_a_kept_demo_says_where_its_dirs_are_and_how_to_look_and_to_clean(self):
        from wire.demo import kept_message

        message = kept_message({
            "prefix": "wl8406", "workdir": "/tmp/wire-lab-x", "nodes": ["alpha", "beta"], "server_url": "https://198.18.0.3:8787",
            "dashboard_origin": "https://127.0.0.1:8787", "dashboard_link": "https://127.0.0.1:8787/ui/login#secret",
        })
        self.assertIn("namespaces wl8406-*, config and data dirs in /tmp/wire-lab-x", message)
        self.assertIn("\n    https://127.0.0.1:8787/ui/login#secret\n", message)
        self.assertIn("sudo wire admin --data-dir /tmp/wire-lab-x/server dashboard, opened at https://127.0.0.1:8787 instead of https://198.18.0.3:8787", message)
        self.assertIn("sudo ip netns exec wl8406-alpha wire --config-dir /tmp/wire-lab-x/alpha status", message)
        self.assertIn("sudo wire admin --data-dir /tmp/wire-lab-x/server nodes list", message)
        self.assertTrue(message.endswith("remove it with: wire demo --clean wl8406"))


class AdminSocketAccessTests(unittest.TestCase):
    """Item 8 for ``wire admin``: a socket this user may not open is a
    permission problem told as such; root is not told to use sudo."""

    def setUp(self):
        import socket

        from wire.datadir import admin_socket_path

        self.data_dir = tempfile.mkdtemp(prefix="wire-adm-")
        self.addCleanup(shutil.rmtree, self.data_dir, ignore_errors=True)
        self.socket_path = admin_socket_path(self.data_dir)

        def listen():
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(self.socket_path)
            server.listen(1)
            self.addCleanup(server.close)

        self.listen = listen

    async def message(self) -> str:
        from wire.admin_ops import AdminError, AdminOps

        with self.assertRaises(AdminError) as caught:
            await AdminOps(reactor, self.data_dir).keys()
        return str(caught.exception)

    async def test_a_socket_this_user_may_not_open_says_permission_denied_and_sudo(self):
        import wire.admin_ops

        self.listen()
        self.patch(wire.admin_ops.os, "access", lambda path, mode: False)
        message = await self.message()
        self.assertEqual(
            message,
            f"permission denied on {self.socket_path}: the admin socket is root-only; run as root (sudo wire admin ...)",
        )
        self.assertNotIn("wire-admin is unreachable", message)

    async def test_no_socket_as_root_does_not_say_use_sudo(self):
        import wire.admin_ops

        self.patch(wire.admin_ops.os, "geteuid", lambda: 0)
        message = await self.message()
        self.assertIn(f"no admin socket at {self.socket_path}: is wire-server running with this --data-dir", message)
        self.assertNotIn("sudo", message)

    async def test_no_socket_as_another_user_says_use_sudo(self):
        import wire.admin_ops

        self.patch(wire.admin_ops.os, "geteuid", lambda: 1000)
        self.assertIn("The socket is root-only: use sudo", await self.message())


class GlobalOptionTests(unittest.TestCase):
    """--config-dir, --data-dir and --json before or after any (sub)command."""

    def parse(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        args = cli.parse_args(list(argv), out, err)
        self.assertFalse(isinstance(args, int), f"{argv}: {err.getvalue()}")
        return args

    def test_every_command_is_walked(self):
        paths = runnable_paths()
        for expected in (("up",), ("status",), ("demo",), ("admin", "keys", "create"), ("admin", "nodes", "list"), ("admin", "audit")):
            self.assertIn(expected, paths)

    def test_before_and_after_every_command(self):
        options = ["--config-dir", "/c", "--data-dir", "/d", "--json"]
        for path in runnable_paths():
            tail = POSITIONALS.get(path, [])
            # Before everything, after each level of (sub)command, after the positionals.
            for at in range(len(path) + 1):
                argv = [*path[:at], *options, *path[at:], *tail]
                args = self.parse(*argv)
                self.assertEqual((args.config_dir, args.data_dir, args.json), ("/c", "/d", True), argv)
            args = self.parse(*path, *tail, *options)
            self.assertEqual((args.config_dir, args.data_dir, args.json), ("/c", "/d", True), path)

    def test_defaults_when_not_given(self):
        for path in runnable_paths():
            args = self.parse(*path, *POSITIONALS.get(path, []))
            self.assertEqual((args.config_dir, args.data_dir, args.json), (None, None, False), path)

    def test_the_issue_s_examples(self):
        args = self.parse("up", "--config-dir", "/n1", "--join", "wire1.x")
        self.assertEqual((args.command, args.config_dir, args.join), ("up", "/n1", "wire1.x"))
        args = self.parse("admin", "keys", "create", "--data-dir", "/srv", "--expires", "7d")
        self.assertEqual((args.topic, args.action, args.data_dir, args.expires), ("keys", "create", "/srv", 7 * 86400))
        args = self.parse("--data-dir", "/x", "admin", "nodes", "list")
        self.assertEqual((args.topic, args.action, args.data_dir), ("nodes", "list", "/x"))
        args = self.parse("--json", "status")
        self.assertTrue(args.json)

    def test_the_last_one_wins(self):
        args = self.parse("--config-dir", "/a", "status", "--config-dir", "/b")
        self.assertEqual(args.config_dir, "/b")
        args = self.parse("--data-dir", "/a", "admin", "--data-dir", "/b", "keys", "--data-dir", "/c", "list")
        self.assertEqual(args.data_dir, "/c")
        args = self.parse("admin", "keys", "list", "--data-dir", "/a", "--data-dir", "/b")
        self.assertEqual(args.data_dir, "/b")

    def test_every_help_shows_them(self):
        for path in [(), *command_paths(cli.build_parser())]:
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(cli.parse_args([*path, "--help"], out, err), 0, path)
            text = out.getvalue()
            self.assertIn("global options (before or after the command):", text, path)
            for option in ("--config-dir DIR", "--data-dir DIR", "--json"):
                self.assertIn(option, text, path)

    def test_up_and_keys_create_help_say_what_they_do(self):
        for path, words in (
            (("up",), "The first time: sudo wire up --join TOKEN"),
            (("up",), "Later runs need no arguments, and running the join command again is harmless."),
            (("admin", "keys", "create"), "prints the command to run on the new machine: sudo wire up --join TOKEN"),
        ):
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(cli.parse_args([*path, "--help"], out, err), 0, path)
            self.assertIn(words, " ".join(out.getvalue().split()), path)

    def test_an_empty_directory_is_bad_usage(self):
        for argv in (["status", "--config-dir", ""], ["--data-dir", " ", "admin", "audit"]):
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(cli.parse_args(argv, out, err), 2, argv)
            self.assertIn("must not be empty", err.getvalue(), argv)
            self.assertEqual(out.getvalue(), "")


class CommandTests(unittest.TestCase):
    """cli.run in process: the real parser, operations and printing."""

    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)

    def make_context(self, reactor_, config_dir):
        self.assertEqual(config_dir, self.mesh.config_dir)
        return ops.Context(reactor_, config_dir, runner=self.mesh.runner, is_root=lambda: self.mesh.root, check_install=self.mesh._check_install)

    async def wire(self, *argv) -> tuple[int, str, str]:
        return await self.wire_as_given("--config-dir", self.mesh.config_dir, *argv)

    async def wire_as_given(self, *argv) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await cli.run(reactor, list(argv), out, err, make_context=self.make_context)
        return code, out.getvalue(), err.getvalue()

    async def test_global_options_after_the_command(self):
        self.mesh.configure("web1")
        await self.mesh.register("web1")
        # make_context checks the config dir given after the command is the one used.
        code, out, err = await self.wire_as_given("--json", "status", "--config-dir", self.mesh.config_dir)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual([n["node_name"] for n in json.loads(out)["nodes"]], ["web1"])
        code, out, err = await self.wire_as_given("peers", "--config-dir", "/nowhere", "--config-dir", self.mesh.config_dir)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("1 online peer(s)", out)

    async def three_nodes(self) -> dict:
        self.mesh.configure("web1")
        views = {name: await self.mesh.register(name) for name in ("web1", "db1", "old1")}
        self.mesh.coordinator.registry.mark_offline(views["old1"]["node_id"])
        return views

    async def test_status(self):
        views = await self.three_nodes()
        code, out, err = await self.wire("status")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[1:3], [f"wire status  {self.mesh.url}", "  2 online / 1 offline / 3 total"])
        self.assertRegex(lines[4], rf"^  ● db1            {views['db1']['vpn_ip']:<16} 127\.0\.0\.1             \d+s ago$")
        self.assertRegex(lines[5], r"^  ○ old1 ")
        self.assertRegex(lines[6], r"^  ● web1 .* \d+s ago +\(this node\)$")

    async def test_status_json_is_the_operation_result(self):
        await self.three_nodes()
        code, out, err = await self.wire("status", "--json")
        expected = await ops.status(self.make_context(reactor, self.mesh.config_dir))
        self.assertEqual((code, err), (0, ""))

        def timeless(result):
            return {**result, "nodes": [{k: v for k, v in n.items() if k != "last_seen_ago"} for n in result["nodes"]]}

        self.assertEqual(timeless(json.loads(out)), timeless(expected))

    async def test_status_with_paths(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        code, out, _ = await self.wire("status")
        self.assertEqual(code, 0)
        self.assertRegex(out, r"● db1 .* \d+s ago   lan 10\.1\.1\.1:51820, handshake \d+s ago\n")

    async def test_failure_goes_to_stderr_and_exits_1(self):
        self.mesh.configure("web1")
        await self.mesh.stop_server()
        code, out, err = await self.wire("status")
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith(f"wire status: {self.mesh.url} is unreachable"), err)

    async def test_failure_with_json(self):
        self.mesh.configure("web1")
        await self.mesh.stop_server()
        code, out, err = await self.wire("peers", "--json")
        answer = json.loads(out)
        self.assertEqual((code, answer["ok"]), (1, False))
        self.assertIn("is unreachable", answer["error"])
        self.assertEqual(err, f"wire peers: {answer['error']}\n")

    async def test_corrupt_config(self):
        with open(config_path(self.mesh.config_dir), "w") as f:
            f.write("{not json")
        for command in ("status", "peers", "watchdog", "netcheck"):
            code, out, err = await self.wire(command)
            self.assertEqual((code, out), (1, ""), command)
            self.assertIn(f"wire {command}: {config_path(self.mesh.config_dir)} is not valid JSON", err)
        # down always works (item 7): it names the file and says how to recover.
        self.mesh.runner.expect(["ip", "link", "delete", "dev", "wire0"], rc=1, stderr=b'Cannot find device "wire0"\n')
        code, out, err = await self.wire("down")
        self.assertEqual(code, 0, err)
        self.assertIn(f"note: {config_path(self.mesh.config_dir)} is not valid JSON", out)
        self.assertIn("to join again: sudo wire up --join TOKEN", out)
        code, out, _ = await self.wire("diagnose")
        self.assertEqual(code, 1)
        self.assertIn(f"✗ config        {config_path(self.mesh.config_dir)} is not valid JSON", out)

    async def test_not_root(self):
        self.mesh.root = False
        self.mesh.configure("web1")
        for command in ("up", "down"):
            code, _, err = await self.wire(command)
            self.assertEqual(code, 1)
            self.assertEqual(err, f"wire {command}: wire {command} changes network interfaces and must run as root (sudo wire {command} ...)\n")

    async def test_ping(self):
        self.mesh.configure("web1")
        db1 = await self.mesh.register("db1")
        self.mesh.runner.expect(ops.ping_argv(db1["vpn_ip"], 4), stdout=PING_OK)
        self.mesh.runner.expect(ops.ping_argv(db1["vpn_ip"], 4), stdout=PING_LOST, rc=1)
        code, out, _ = await self.wire("ping", "db1")
        self.assertEqual(code, 0)
        self.assertIn("4 packets transmitted, 4 received", out)
        code, out, _ = await self.wire("ping", "db1", "--json")
        self.assertEqual((code, json.loads(out)["loss_percent"]), (1, 100.0))
        self.mesh.runner.assert_all_called()

    async def test_unknown_peer(self):
        self.mesh.configure("web1")
        for command in ("ping", "explain"):
            code, _, err = await self.wire(command, "ghost")
            self.assertEqual(code, 1)
            self.assertIn("ghost", err)
            self.assertIn("(see: wire status)", err)

    async def test_install_check(self):
        self.mesh.tools = [NO_TOOLS]
        code, out, _ = await self.wire("install")
        self.assertEqual(code, 1)
        self.assertEqual(out, "missing: wg, wireguard-go (platform: debian)\ninstall with: apt-get install -y wireguard-go wireguard-tools   (or: wire install --yes)\n")

    async def test_diagnose_and_watchdog_without_a_daemon(self):
        self.mesh.configure("web1")
        code, out, _ = await self.wire("diagnose")
        self.assertEqual(code, 1)
        self.assertIn("✗ daemon        not running\n      → run: sudo wire up", out)
        code, out, _ = await self.wire("watchdog")
        self.assertEqual((code, out), (1, "the node daemon is not running (sudo wire up)\n"))

    async def test_explain(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        code, out, _ = await self.wire("explain", "db1")
        self.assertEqual(code, 0)
        self.assertRegex(out.splitlines()[0], r"^db1 \(10\.99\.\d+\.\d+\): path lan, endpoint 10\.1\.1\.1:51820, handshake \d+s ago$")

    async def test_netcheck(self):
        mesh = self.mesh = Mesh(self, stun=True)
        mesh.configure("web1")
        code, out, _ = await self.wire("netcheck")
        self.assertEqual(code, 0)
        port = int(mesh.url.rsplit(":", 1)[1])
        self.assertIn(f"UDP  STUN :{port + 1:<6} ok, mapped 127.0.0.1:", out)
        self.assertIn("NAT               no NAT: this host's own address is public", out)


async def run_wire(*argv: str, env: dict | None = None) -> tuple[int, str, str]:
    """The real ``wire`` command in a child process: exit code, stdout, stderr."""
    env = {**os.environ, "PYTHONPATH": CHECKOUT, **(env or {})}
    env.pop("WIRE_CONFIG_DIR", None)
    out, err, code = await getProcessOutputAndValue(sys.executable, ["-m", "wire.cli", *argv], env=env, path=CHECKOUT, reactor=reactor)
    return code, out.decode(), err.decode()


class ProcessTests(unittest.TestCase):
    """The real ``wire`` command in a child process, against the server in this one."""

    timeout = 60

    def setUp(self):
        self.mesh = Mesh(self)

    async def wire(self, *argv) -> tuple[int, str, str]:
        return await run_wire("--config-dir", self.mesh.config_dir, *argv)

    async def test_global_options_after_the_command(self):
        self.mesh.configure("web1")
        await self.mesh.register("web1")
        code, out, err = await run_wire("--json", "status", "--config-dir", self.mesh.config_dir)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out)["nodes"][0]["node_name"], "web1")
        code, out, err = await run_wire("status", "--help")
        self.assertEqual(code, 0)
        self.assertIn("global options (before or after the command):", out)

    async def test_status(self):
        self.mesh.configure("web1")
        await self.mesh.register("web1")
        code, out, err = await self.wire("status")
        self.assertEqual((code, err), (0, ""))
        self.assertRegex(out, r"\n  ● web1 .* \d+s ago +\(this node\)\n")
        code, out, err = await self.wire("status", "--json")
        self.assertEqual((code, json.loads(out)["nodes"][0]["node_name"]), (0, "web1"))

    async def test_errors_without_traceback(self):
        with open(config_path(self.mesh.config_dir), "w") as f:
            f.write("[1, 2")
        code, out, err = await self.wire("status")
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"wire status: {config_path(self.mesh.config_dir)} is not valid JSON", err)
        self.assertNotIn("Traceback", err)

    async def test_the_cli_imports_no_server_internals(self):
        # In a fresh interpreter: this one has the server loaded for other tests.
        script = "import sys, wire.cli, wire.cli.admin, wire.admin_ops; print(sorted(m for m in sys.modules if m.startswith('wire.server')))"
        out, err, code = await getProcessOutputAndValue(sys.executable, ["-c", script], env={**os.environ, "PYTHONPATH": CHECKOUT}, path=CHECKOUT, reactor=reactor)
        self.assertEqual((code, out.decode().strip()), (0, "[]"), err.decode())

    async def test_unreachable_server_and_usage(self):
        await self.mesh.stop_server()
        code, _, err = await self.wire("peers", "--server", self.mesh.url)
        self.assertEqual(code, 1)
        self.assertIn("is unreachable", err)
        code, _, err = await self.wire("ping")
        self.assertEqual(code, 2)
        self.assertIn("the following arguments are required: target", err)


class AdminProcessTests(unittest.TestCase):
    """The real ``wire admin`` command against a real ``twistd wire-server`` on 127.0.0.1."""

    timeout = 90

    async def setUp(self):
        # UNIX socket paths are short (108 bytes): a short data dir.
        self.data_dir = tempfile.mkdtemp(prefix="wire-cli-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.server = ServerProcess(self, self.data_dir)
        await self.server.start()

    async def tearDown(self):
        await self.server.stop()

    async def key_ids(self) -> list[str]:
        code, out, err = await run_wire("admin", "keys", "list", "--json", "--data-dir", self.data_dir)
        self.assertEqual(code, 0, err)
        return [k["key_id"] for k in json.loads(out)["keys"]]

    async def test_data_dir_anywhere_and_key_states(self):
        code, out, err = await run_wire("admin", "keys", "create", "--data-dir", self.data_dir, "--expires", "1s", "--json")
        self.assertEqual((code, err), (0, ""))
        expiring = json.loads(out)["key"]
        code, out, err = await run_wire("--data-dir", self.data_dir, "admin", "keys", "create", "--reusable", "--expires", "7d", "--note", "office")
        self.assertEqual((code, err), (0, ""))
        self.assertRegex(out, r"^join key [0-9a-f]{8} \(reusable, expires \d{4}-\d\d-\d\d \d\d:\d\d \(in 7d\)\); on the new machine run:\n\n  sudo wire up --join wire1\.")
        revoked_id = out.split()[2]
        code, out, err = await run_wire("admin", "--data-dir", self.data_dir, "keys", "revoke", revoked_id)
        self.assertEqual((code, out, err), (0, f"join key {revoked_id} revoked: no node may join with it any more\n", ""))
        await deferLater(reactor, 1.1, lambda: None)
        code, out, err = await run_wire("admin", "keys", "list", env={"WIRE_DATA_DIR": self.data_dir})
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["KEY", "ID", "STATE", "KIND", "USES", "CREATED", "EXPIRES", "TAGS", "NOTE"])
        rows = {line.split()[0]: line for line in lines[1:]}
        self.assertRegex(rows[expiring["key_id"]], r"  expired  one-time  0     \d{4}-\d\d-\d\d \d\d:\d\d  \d{4}-\d\d-\d\d \d\d:\d\d \(\d+s ago\)")
        self.assertRegex(rows[revoked_id], r"  revoked  reusable  0     \d{4}-\d\d-\d\d \d\d:\d\d  \d{4}-\d\d-\d\d \d\d:\d\d \(in 6d\) +-  +office$")
        # The only other key: the first start's, in first-join.txt (valid 24 h).
        [first] = [row for key_id, row in rows.items() if key_id not in (expiring["key_id"], revoked_id)]
        self.assertRegex(first, r"  usable   one-time  0     \d{4}-\d\d-\d\d \d\d:\d\d  \d{4}-\d\d-\d\d \d\d:\d\d \(in 23h\)")

    async def test_expires_without_a_unit_is_refused_before_the_server_hears_of_it(self):
        before = await self.key_ids()
        code, out, err = await run_wire("admin", "keys", "create", "--data-dir", self.data_dir, "--expires", "5")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(err.splitlines()[-1], "wire admin keys create: error: argument --expires: '5' needs a unit (s, m, h, d, w), e.g. 5m, 5h or 5d")
        self.assertEqual(await self.key_ids(), before)

    async def test_tags_and_the_access_policy_through_the_real_cli(self):
        code, out, err = await run_wire("admin", "keys", "create", "--tag", "web", "--ephemeral", "--data-dir", self.data_dir)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("tags tag:web; ephemeral: removed 30m offline", out)
        path = os.path.join(self.data_dir, "policy.hujson")
        with open(path, "w") as f:
            f.write('{\n  // web may reach ssh anywhere\n  "acls": [{"action": "accept", "src": ["tag:web"], "dst": ["*:22"],},],\n}\n')
        code, out, err = await run_wire("admin", "policy", "check", path, "--data-dir", self.data_dir)
        self.assertEqual((code, out, err), (0, "the policy is valid: 1 rule(s), 0 test(s) pass; nothing was changed\n", ""))
        code, out, err = await run_wire("admin", "policy", "set", path, "--data-dir", self.data_dir)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("access policy version 1 in force (admin)", out)
        with open(path, "w") as f:
            f.write('{"acls": [{"action": "accept", "src": ["tag:nobody"], "dst": ["*:22"]}]}')
        code, out, err = await run_wire("admin", "policy", "set", path, "--data-dir", self.data_dir)
        self.assertEqual(code, 1)
        self.assertIn("tag:nobody", err)
        code, out, err = await run_wire("admin", "policy", "get", "--json", "--data-dir", self.data_dir)
        self.assertEqual((code, json.loads(out)["version"]), (0, 1))
        code, out, err = await run_wire("admin", "policy", "history", "--data-dir", self.data_dir)
        self.assertIn("← in force", out)
        code, out, err = await run_wire("admin", "policy", "clear", "--data-dir", self.data_dir)
        self.assertIn("access policy cleared (version 2)", out)

    async def test_nodes_list_has_headers_and_ids(self):
        token = json.loads((await run_wire("admin", "keys", "create", "--json", "--data-dir", self.data_dir))[1])["token"]
        join = decode_join_token(token)
        http = make_http_client(reactor, persistent=False, tls_fingerprint=join.fingerprint)
        web1 = await CoordinationClient(http, self.server.url).enroll(registration_for("web1"), join.secret)
        code, out, err = await run_wire("--data-dir", self.data_dir, "admin", "nodes", "list")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], "1 online / 0 offline / 1 total")
        self.assertEqual(lines[2].split(), ["NAME", "NODE", "ID", "VPN", "IP", "VPN", "IPV6", "STATUS", "LAST", "SEEN", "PUBLIC", "IP", "NAT", "TAGS"])
        self.assertEqual(lines[3].split()[:5], ["web1", web1.node_id, web1.vpn_ip, web1.vpn_ip6, "online"])
        self.assertTrue(web1.vpn_ip6.startswith("fd"), "the server drew its prefix and gave one")
        code, out, err = await run_wire("admin", "nodes", "list", "--data-dir", self.data_dir, "--json")
        self.assertEqual([n["node_id"] for n in json.loads(out)["nodes"]], [web1.node_id])

    async def test_a_wrong_data_dir_says_so_in_one_line(self):
        code, out, err = await run_wire("admin", "nodes", "list", "--data-dir", os.path.join(self.data_dir, "nowhere"))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(f"no admin socket at {os.path.join(self.data_dir, 'nowhere', 'admin.sock')}", err)
