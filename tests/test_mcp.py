"""``wire-mcp`` in a child process, driven over stdio by the MCP SDK's own
client, against the coordination server and node daemon of test_ops' Mesh
running in this process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.test_daemon import eventually
from tests.test_e2e import lab_unavailable
from tests.test_ops import Mesh, short_tempdir
from wire import cli
from wire.demo import MeshLab
from wire.node.config import config_path
from wire.runner import ProcessRunner

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEED_TOOLS = {"wire_status", "wire_up", "wire_down", "wire_peers", "wire_ping", "wire_install", "wire_diagnose", "wire_watchdog"}
DESTRUCTIVE = {"wire_up", "wire_set", "wire_down", "wire_install"}
ROOT = os.geteuid() == 0
# Times, latencies, and netcheck's mapped address (its probe port is ephemeral).
# What moves between two calls a second apart (a path proven meanwhile moves
# from "trying" to "working").
VOLATILE = {"last_seen", "last_seen_ago", "handshake_age", "rtt_ms", "mapped", "path_since_ago", "path_phase"}


@dataclass
class Session:
    """What one ``wire-mcp`` run answered: its tools by name, one result per
    call, its stderr, and anything on its stdout that was not an MCP message."""

    tools: dict
    results: list
    stderr: str
    junk: list


async def _drive(argv: list[str], env: dict, calls: list[tuple[str, dict]], stderr_path: str) -> Session:
    """Start wire-mcp (``argv``), list its tools, make ``calls`` in order
    (asyncio: runs in a thread of its own, while the reactor serves the mesh)."""
    junk = []

    async def on_message(message) -> None:
        if isinstance(message, Exception):  # a stdout line that is not JSON-RPC
            junk.append(message)

    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=CHECKOUT)
    with open(stderr_path, "w") as errlog, anyio.fail_after(60):
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write, message_handler=on_message) as session:
            await session.initialize()
            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            results = [await session.call_tool(name, arguments) for name, arguments in calls]
    with open(stderr_path) as f:
        return Session(tools, results, f.read(), junk)


async def drive(test: unittest.TestCase, config_dir: str, *calls: tuple[str, dict], netns: str | None = None) -> Session:
    """One ``wire-mcp`` session (inside network namespace ``netns`` if given)
    whose default config dir is ``config_dir``."""
    argv = [sys.executable, "-m", "wire.mcp"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = {"PYTHONPATH": CHECKOUT, "WIRE_CONFIG_DIR": config_dir}
    stderr_path = os.path.join(short_tempdir(test), "stderr")
    session = await deferToThread(asyncio.run, _drive(argv, env, list(calls), stderr_path))
    test.assertEqual(session.junk, [], f"wire-mcp wrote something else than MCP to stdout; stderr:\n{session.stderr}")
    return session


def text(result) -> str:
    return "\n".join(block.text for block in result.content)


def steady(value):
    """A result without what changes from one second to the next."""
    if isinstance(value, dict):
        return {k: steady(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [steady(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"\d+s ago", "Ns ago", value)
    return value


class ResultAssertions:
    def assertResult(self, result, cli_json: dict | None = None) -> dict:
        self.assertFalse(result.is_error, text(result))
        # The text is the CLI's rendering, then the structured content as JSON.
        self.assertEqual(json.loads(result.content[-1].text), result.structured_content)
        if cli_json is not None:
            self.assertEqual(steady(result.structured_content), steady(cli_json))
        return result.structured_content

    def assertToolError(self, result, message: str) -> None:
        self.assertTrue(result.is_error, f"expected a tool error, got: {text(result)}")
        self.assertIn(message, text(result))


class MCPTests(ResultAssertions, unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.mesh = Mesh(self, stun=True)
        self.empty_dir = short_tempdir(self)

    async def mcp(self, *calls: tuple[str, dict]) -> Session:
        return await drive(self, self.mesh.config_dir, *calls)

    async def wire_json(self, *argv: str, config_dir: str | None = None) -> dict:
        """What ``wire ARGV --json`` prints, run as a child process."""
        argv = ("--config-dir", config_dir or self.mesh.config_dir, *argv, "--json")
        env = {**os.environ, "PYTHONPATH": CHECKOUT}
        out, _, _ = await getProcessOutputAndValue(sys.executable, ["-m", "wire.cli", *argv], env=env, path=CHECKOUT, reactor=reactor)
        return json.loads(out)

    async def test_tools_have_typed_described_inputs_and_annotations(self):
        session = await self.mcp()
        self.assertLessEqual(SEED_TOOLS, set(session.tools))
        self.assertLessEqual({"wire_netcheck", "wire_explain", "wire_ip"}, set(session.tools))
        for name, tool in session.tools.items():
            self.assertTrue(tool.description, name)
            self.assertTrue(tool.annotations.title, name)
            self.assertEqual(tool.output_schema["type"], "object", name)
            for parameter, schema in tool.input_schema["properties"].items():
                self.assertTrue(schema.get("description"), f"{name}.{parameter}")
            self.assertIn("config_dir", tool.input_schema["properties"], name)
            if name in DESTRUCTIVE:
                self.assertEqual((tool.annotations.read_only_hint, tool.annotations.destructive_hint), (False, True), name)
                self.assertIn("DESTRUCTIVE", tool.description, name)
            else:
                self.assertTrue(tool.annotations.read_only_hint, name)
        ping = session.tools["wire_ping"].input_schema
        self.assertEqual((ping["required"], ping["properties"]["count"]["type"]), (["target"], "integer"))

    async def test_results_are_the_cli_json(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        calls = [
            ("wire_status", {}),
            ("wire_peers", {}),
            ("wire_install", {}),
            ("wire_diagnose", {}),
            ("wire_watchdog", {}),
            ("wire_netcheck", {}),
            ("wire_explain", {"peer": "db1"}),
            ("wire_status", {"server": self.mesh.url, "config_dir": self.empty_dir}),
        ]
        session = await self.mcp(*calls)
        status, peers, install, diagnose, watchdog, netcheck, explain, other = session.results
        self.assertResult(status, await self.wire_json("status"))
        self.assertEqual([(n["node_name"], n["this_node"]) for n in status.structured_content["nodes"]], [("db1", False), ("web1", True)])
        self.assertEqual(status.structured_content["nodes"][0]["path"], "lan")
        self.assertIn("web1", status.content[0].text)
        self.assertResult(peers, await self.wire_json("peers"))
        self.assertEqual(peers.content[0].text, cli.format_peers(peers.structured_content, cli.Style(False)))
        self.assertResult(install, await self.wire_json("install"))
        self.assertResult(diagnose, await self.wire_json("diagnose"))
        self.assertResult(watchdog, await self.wire_json("watchdog"))
        self.assertEqual([p["node_name"] for p in watchdog.structured_content["peers"]], ["db1"])
        self.assertResult(netcheck, await self.wire_json("netcheck"))
        self.assertTrue(netcheck.structured_content["udp"]["reachable"])
        self.assertResult(explain, await self.wire_json("explain", "db1"))
        self.assertEqual(explain.structured_content["path"], "lan")
        self.assertResult(other, await self.wire_json("status", "--server", self.mesh.url, config_dir=self.empty_dir))

    async def test_wire_ip_is_the_cli_json(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        session = await self.mcp(("wire_ip", {}), ("wire_ip", {"peer": "db1", "family": 4}), ("wire_ip", {"family": 6}))
        mine, db1, six = session.results
        self.assertEqual(self.assertResult(mine, await self.wire_json("ip"))["this_node"], True)
        self.assertEqual(self.assertResult(db1, await self.wire_json("ip", "-4", "db1"))["node_name"], "db1")
        self.assertEqual(db1.content[0].text, db1.structured_content["addresses"][0])
        # The server gives every node an IPv6 mesh address too.
        self.assertEqual(self.assertResult(six, await self.wire_json("ip", "-6"))["addresses"], [six.structured_content["vpn_ip6"]])
        self.assertIn(":", six.structured_content["vpn_ip6"])

    async def test_status_with_the_server_down_is_the_last_known_mesh(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1", lan_ip="10.1.1.1")
        daemon = await self.mesh.start_daemon(peers=1)
        await self.mesh.stop_server()
        await eventually(lambda: not daemon.contact.reachable)
        session = await self.mcp(("wire_status", {}), ("wire_peers", {}))
        status, peers = (self.assertResult(result) for result in session.results)
        self.assertEqual((status["stale"], status["source"], status["ok"]), (True, "daemon", False))
        self.assertEqual([n["node_name"] for n in status["nodes"]], ["db1", "web1"])
        self.assertIn("showing the mesh as this node last saw it", session.results[0].content[0].text)
        cli_json = await self.wire_json("status")
        self.assertEqual({k: v for k, v in steady(status).items() if k != "last_contact_ago"}, {k: v for k, v in steady(cli_json).items() if k != "last_contact_ago"})
        self.assertEqual((peers["stale"], [p["node_name"] for p in peers["peers"]]), (True, ["db1"]))
        await self.mesh.stop_daemon()
        session = await self.mcp(("wire_status", {}))
        self.assertToolError(session.results[0], "And the node daemon is not running here, so there is no last known mesh to show either")

    async def test_status_tells_the_daemons_troubles_escaped(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1")
        daemon = await self.mesh.start_daemon(peers=1)
        refused = "netmap: skipped \x1b[2Jdb9\u202e: vpn_ip 8.8.8.8 is outside the mesh 10.99.0.0/16"
        daemon.bad_answers.note(refused, daemon.clock.seconds())
        session = await self.mcp(("wire_status", {}))
        status = self.assertResult(session.results[0])
        self.assertEqual(status["bad_answers"]["latest"], refused, "the structured content is the exact data")
        self.assertEqual(len(status["daemon_problems"]), 1)
        shown = session.results[0].content[0].text
        # The CLI's own rendering of the same view, the server's words escaped.
        self.assertEqual(shown, cli.render(cli.format_status, status, cli.Style(False)).strip("\n"))
        self.assertRegex(shown, r"\n  ! server answers: 1 entr\(y/ies\) refused since the daemon started, the latest \d+s ago: netmap: skipped \\x1b\[2Jdb9\\u202e: vpn_ip 8\.8\.8\.8")
        self.assertNotIn("\x1b", shown)
        self.assertNotIn("\u202e", shown)

    async def test_ping_runs_the_real_ping(self):
        session = await self.mcp(("wire_ping", {"target": "127.0.0.1", "count": 1}))
        result = self.assertResult(session.results[0])
        self.assertEqual((result["ok"], result["transmitted"], result["received"]), (True, 1, 1))

    async def test_failures_are_tool_errors_and_the_server_keeps_serving(self):
        self.mesh.configure("web1")
        await self.mesh.register("web1")
        corrupt_dir = short_tempdir(self)
        with open(config_path(corrupt_dir), "w") as f:
            f.write("[1, 2")
        failures = [
            (("wire_ping", {"target": "nosuchnode"}), "no node named nosuchnode in the mesh"),
            (("wire_ping", {"target": "web1", "count": "abc"}), "count"),
            (("wire_ping", {}), "target"),
            (("wire_status", {"config_dir": self.empty_dir}), "has not joined a mesh"),
            (("wire_explain", {"peer": "db1", "config_dir": self.empty_dir}), "run: sudo wire up --join TOKEN (a join token from 'wire admin keys create'"),
            (("wire_watchdog", {"config_dir": corrupt_dir}), "is not valid JSON"),
            (("wire_status", {"server": "not a url"}), "--server"),
            # As root these get past the root check, and go no further.
            (("wire_up", {"server": "not a url", "config_dir": self.empty_dir}), "--server" if ROOT else "must run as root"),
            (("wire_down", {"config_dir": self.empty_dir}), "has not joined a mesh" if ROOT else "must run as root"),
            (("wire_set", {"advertise_routes": ["10.0.0.1/8"], "config_dir": self.empty_dir}),
             "--advertise-routes: '10.0.0.1/8' is not a network" if ROOT else "must run as root"),
            (("wire_ping", {"target": "web1", "count": 0}), "count must be from 1 to 100"),
            # An exception ops does not expect: an internal error, and a traceback on stderr.
            (("wire_peers", {"config_dir": "nul\x00byte"}), "internal error: ValueError('embedded null byte')"),
            (("wire_nosuchtool", {}), "wire_nosuchtool"),
        ]
        calls = []
        for call, _ in failures:
            calls += [call, ("wire_peers", {})]
        session = await self.mcp(*calls)
        for (call, message), failed, answered in zip(failures, session.results[::2], session.results[1::2]):
            self.assertToolError(failed, message)
            self.assertEqual(self.assertResult(answered)["count"], 1, f"after {call}")
        self.assertRegex(session.stderr, r"Traceback[^\n]*\n(.*\n)*.*ValueError: embedded null byte")


class LabTests(ResultAssertions, unittest.TestCase):
    """wire-mcp on a real lab node: real tunnels, real pings, and the
    destructive tools for real."""

    timeout = 240
    skip = lab_unavailable()

    async def test_down_and_up_through_mcp(self):
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        for name in ("alpha", "beta"):
            await mesh.add_host(name)
            await mesh.up(name)
        session = await drive(
            self,
            mesh.nodes["alpha"].config_dir,
            ("wire_ping", {"target": "beta", "count": 3}),
            ("wire_explain", {"peer": "beta"}),
            ("wire_status", {}),
            ("wire_down", {}),
            ("wire_up", {}),
            ("wire_ping", {"target": "beta", "count": 5}),
            netns=mesh.lab.hosts["alpha"].namespace,
        )
        ping, explain, status, down, up, ping_again = session.results
        self.assertEqual((self.assertResult(ping)["path"], ping.structured_content["ok"]), ("direct", True))
        self.assertEqual(self.assertResult(explain)["path"], "direct")
        beta = next(n for n in self.assertResult(status)["nodes"] if n["node_name"] == "beta")
        self.assertEqual((beta["path"], beta["vpn_ip"]), ("direct", mesh.nodes["beta"].vpn_ip))
        self.assertTrue(self.assertResult(down)["ok"])
        self.assertEqual((self.assertResult(up)["already_running"], up.structured_content["vpn_ip"]), (False, mesh.nodes["alpha"].vpn_ip))
        self.assertTrue(self.assertResult(ping_again)["ok"], text(ping_again))
