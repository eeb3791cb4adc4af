"""Text from the network reaches the terminal escaped: a hostile server's
node names, reasons and errors in ``wire status``, ``peers``, ``explain``,
``admin nodes list`` and the MCP adapter's text; ``--json`` stays exact."""

from __future__ import annotations

import io
import json

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web import resource, server

from tests.fakes import FakeProcessRunner
from tests.helpers import body_for
from tests.test_mcp import drive, text
from tests.test_ops import OK_TOOLS, short_tempdir
from wire import cli, ops
from wire.datadir import admin_socket_path
from wire.node.config import NodeConfig, save_config
from wire.textsafe import escaped, escaped_line, escaped_strings

# Clears the screen, writes the clipboard (OSC 52), returns to the line's start.
EVIL = "evil\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07\rok\x9b31m\x7f\u202e"
SHOWN = "evil\\x1b[2J\\x1b]52;c;cm0gLXJmIH4=\\x07\\rok\\x9b31m\\x7f\\u202e"


def evil_node(vpn_ip: str = "10.99.0.9") -> dict:
    return {
        **body_for("evil"),
        "node_name": EVIL,
        "vpn_ip": vpn_ip,
        "public_ip": "203.0.113.9",
        "nat_type": "easy\x1b[31m",
        "status": "online",
        "online": True,
        "last_seen_ago": 3,
    }


class Hostile(resource.Resource):
    """A server (the coordination API, or the admin socket) whose every name is an attack."""

    isLeaf = True

    def render_GET(self, request):
        path = request.path
        if path == b"/status":
            body = {"nodes": [evil_node()], "total": 1, "online": 1, "offline": 0, "version": "1\x1b[5m"}
        elif path == b"/peers":
            body = {"count": 1, "peers": [evil_node()]}
        elif path == b"/nodes":
            body = {"ok": True, "nodes": [evil_node()], "total": 1, "online": 1, "offline": 0}
        else:
            request.setResponseCode(404)
            body = {"error": f"no such thing\x1b[2J{EVIL}"}
        return json.dumps(body).encode()


class EscapedTests(unittest.TestCase):
    def test_control_characters_become_visible_escapes(self):
        self.assertEqual(escaped(EVIL), SHOWN)
        self.assertEqual(escaped("a\tb\nc\x00d"), "a\\tb\\nc\\x00d")
        self.assertEqual(escaped("a\nb\rc", keep_newlines=True), "a\nb\\rc")
        self.assertEqual(escaped_line("a\tb\r\nc\u202e"), "a\tb\\r\\nc\\u202e", "a log line: tabs kept, newlines shown")
        self.assertEqual(escaped("café 日本 ✓ → node-1"), "café 日本 ✓ → node-1", "any script is shown as it is")
        self.assertEqual(escaped(escaped(EVIL)), escaped(EVIL), "escaping twice changes nothing")

    def test_every_string_of_a_result_is_escaped_keys_and_numbers_kept(self):
        result = {"ok": True, "n": 3, "nodes": [{"node_name": EVIL, "age": None}], "output": "line 1\nline\x1b 2"}
        self.assertEqual(
            escaped_strings(result),
            {"ok": True, "n": 3, "nodes": [{"node_name": SHOWN, "age": None}], "output": "line 1\nline\\x1b 2"},
        )


class HostileServerTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        port = reactor.listenTCP(0, server.Site(Hostile()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.config_dir = short_tempdir(self)
        save_config(self.config_dir, NodeConfig(server_url=self.url, node_name="web1", node_id=body_for("web1")["node_id"]))

    def make_context(self, reactor_, config_dir):
        return ops.Context(reactor_, config_dir, runner=FakeProcessRunner(), is_root=lambda: True, check_install=lambda: OK_TOOLS)

    async def wire(self, *argv) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await cli.run(reactor, ["--config-dir", self.config_dir, *argv], out, err, make_context=self.make_context)
        return code, out.getvalue(), err.getvalue()

    def assertShownEscaped(self, output: str):
        self.assertIn(SHOWN, output)
        for control in "\x1b\x07\r\x9b\x7f\u202e":
            self.assertNotIn(control, output)

    async def test_status_and_peers(self):
        for command in ("status", "peers"):
            code, out, err = await self.wire(command)
            self.assertEqual((code, err), (0, ""), command)
            self.assertShownEscaped(out)
            self.assertIn("203.0.113.9", out)

    async def test_json_stays_the_exact_data(self):
        code, out, _ = await self.wire("status", "--json")
        self.assertEqual(code, 0)
        self.assertNotIn("\x1b", out, "JSON escapes control characters itself")
        self.assertEqual(json.loads(out)["nodes"][0]["node_name"], EVIL)

    async def test_explain(self):
        code, out, err = await self.wire("explain", "10.99.0.9")
        self.assertShownEscaped(out)
        self.assertNotIn("\x1b", err)

    async def test_a_servers_error_message_is_escaped_on_stderr_and_exact_in_json(self):
        code, out, err = await self.wire("admin", "audit", "--data-dir", self.admin_dir())
        self.assertEqual(code, 1)
        self.assertShownEscaped(err)
        code, out, err = await self.wire("admin", "audit", "--data-dir", self.admin_dir(), "--json")
        self.assertIn(EVIL, json.loads(out)["error"])

    def admin_dir(self) -> str:
        if not hasattr(self, "_admin_dir"):
            self._admin_dir = short_tempdir(self)
            port = reactor.listenUNIX(admin_socket_path(self._admin_dir), server.Site(Hostile()))
            self.addCleanup(port.stopListening)
        return self._admin_dir

    async def test_admin_nodes_list(self):
        code, out, err = await self.wire("admin", "nodes", "list", "--data-dir", self.admin_dir())
        self.assertEqual((code, err), (0, ""))
        self.assertShownEscaped(out)
        row = next(line for line in out.splitlines() if SHOWN in line)
        self.assertIn("easy\\x1b[31m", row, "one row, its columns in place")

    async def test_mcp_text(self):
        session = await drive(self, self.config_dir, ("wire_status", {}), ("wire_peers", {}), ("wire_explain", {"peer": "10.99.0.9"}))
        for result in session.results:
            shown = result.content[0].text  # what `wire CMD` prints
            self.assertShownEscaped(shown)
            self.assertNotIn("\x1b", text(result))
        self.assertEqual(session.results[0].structured_content["nodes"][0]["node_name"], EVIL, "structured content is exact")
