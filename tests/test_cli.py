"""The ``wire`` command line: parsing, exit codes, output, errors. In process
against the test mesh of test_ops, and a few runs of the real command."""

from __future__ import annotations

import io
import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.helpers import body_for
from tests.test_ops import NO_TOOLS, PING_LOST, PING_OK, Mesh
from wire import __version__, cli, ops
from wire.node.config import config_path

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


class CommandTests(unittest.TestCase):
    """cli.run in process: the real parser, operations and printing."""

    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)

    def make_context(self, reactor_, config_dir):
        self.assertEqual(config_dir, self.mesh.config_dir)
        return ops.Context(reactor_, config_dir, runner=self.mesh.runner, is_root=lambda: self.mesh.root, check_install=self.mesh._check_install)

    async def wire(self, *argv) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await cli.run(reactor, ["--config-dir", self.mesh.config_dir, *argv], out, err, make_context=self.make_context)
        return code, out.getvalue(), err.getvalue()

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
        self.assertRegex(out, r"● db1 .* \d+s ago   direct 10\.1\.1\.1:51820, handshake \d+s ago\n")

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
        for command in ("status", "peers", "watchdog", "down", "netcheck"):
            code, out, err = await self.wire(command)
            self.assertEqual((code, out), (1, ""), command)
            self.assertIn(f"wire {command}: {config_path(self.mesh.config_dir)} is not valid JSON", err)
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
        self.assertRegex(out.splitlines()[0], r"^db1 \(10\.99\.\d+\.\d+\): path direct, endpoint 10\.1\.1\.1:51820, handshake \d+s ago$")

    async def test_netcheck(self):
        mesh = self.mesh = Mesh(self, stun=True)
        mesh.configure("web1")
        code, out, _ = await self.wire("netcheck")
        self.assertEqual(code, 0)
        port = int(mesh.url.rsplit(":", 1)[1])
        self.assertIn(f"UDP  STUN :{port + 1:<6} ok, mapped 127.0.0.1:", out)
        self.assertIn("NAT               no NAT: this host's own address is public", out)


class ProcessTests(unittest.TestCase):
    """The real ``wire`` command in a child process, against the server in this one."""

    timeout = 60

    def setUp(self):
        self.mesh = Mesh(self)

    async def wire(self, *argv) -> tuple[int, str, str]:
        env = {**os.environ, "PYTHONPATH": CHECKOUT}
        env.pop("WIRE_CONFIG_DIR", None)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "wire.cli", "--config-dir", self.mesh.config_dir, *argv], env=env, path=CHECKOUT, reactor=reactor
        )
        return code, out.decode(), err.decode()

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

    async def test_unreachable_server_and_usage(self):
        await self.mesh.stop_server()
        code, _, err = await self.wire("peers", "--server", self.mesh.url)
        self.assertEqual(code, 1)
        self.assertIn("is unreachable", err)
        code, _, err = await self.wire("ping")
        self.assertEqual(code, 2)
        self.assertIn("the following arguments are required: target", err)
