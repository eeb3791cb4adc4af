"""The dashboard in a real browser: headless Chromium (tests/browser.py)
against a real ``twistd wire-server`` over HTTPS, with nodes that enrolled
and report their paths over the real API.

What it proves: the one-time link logs in once and then never again; the
topology shows every node and each pair's path kind; a node that leaves
turns grey without a reload (the time it took is printed); removing a node
from the table removes it from the mesh; a changing request without the
CSRF token is refused. Screenshots are saved under the test's temp dir.
"""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.trial import unittest

from tests.browser import Browser, browser_unavailable, wait_for
from tests.helpers import key_for, registration_for, short_dir
from tests.serverproc import ServerProcess
from tests.test_cli import run_wire
from wire.admin_ops import AdminOps
from wire.client import CoordinationClient
from wire.jointoken import decode_join_token
from wire.protocol import PathMode
from wire.protocol.report import NodeReport, PeerReport

NODES = ("web1", "db1", "cache1", "laptop1")
# Who reports what about whom: the edges the topology must draw.
PATHS = {
    ("web1", "db1"): (PathMode.DIRECT, "public", "198.51.100.7:51820"),
    ("web1", "cache1"): (PathMode.RELAY, "relay-kernel", "203.0.113.1:3481"),
    ("db1", "laptop1"): (PathMode.RELAY_TCP, "relay-shim", None),
    ("cache1", "laptop1"): (PathMode.LAN, "lan", "192.168.1.20:51820"),
}


def _nodes_drawn(driver):
    return {g.get_attribute("data-node-id"): g.get_attribute("data-online") for g in driver.find_elements("css selector", "#topology g.node")}


def _edges_drawn(driver):
    return {
        frozenset((line.get_attribute("data-a"), line.get_attribute("data-b"))): line.get_attribute("data-kind")
        for line in driver.find_elements("css selector", "#topology line.edge")
    }


class DashboardBrowserTests(unittest.TestCase):
    timeout = 240
    skip = browser_unavailable()

    async def setUp(self):
        self.server = ServerProcess(self, short_dir(self))
        await self.server.start()
        token = (await AdminOps(reactor, self.server.data_dir).create_key(reusable=True))["token"]
        self.ids: dict[str, str] = {}
        self.clients: dict[str, CoordinationClient] = {}
        for name in NODES:
            client = CoordinationClient(self.server.client(), self.server.url)
            answer = await client.enroll(registration_for(name), decode_join_token(token).secret)
            client.use_credential(answer.credential)
            self.ids[name], self.clients[name] = answer.node_id, client
        for name in NODES:
            peers = []
            for (a, b), (path, kind, endpoint) in PATHS.items():
                if name in (a, b):
                    other = b if name == a else a
                    peers.append(PeerReport(self.ids[other], path, kind, endpoint, 3.0, 1000, 2000))
            await self.clients[name].report(NodeReport(self.ids[name], key_for(name), tuple(peers), "0.1.0"))
        self.browser = Browser(self, os.path.join(self.mktemp(), "screenshots"))

    async def dashboard_link(self) -> str:
        code, out, err = await run_wire("admin", "--data-dir", self.server.data_dir, "dashboard", "--json")
        self.assertEqual(code, 0, err)
        url = json.loads(out)["url"]
        self.assertTrue(url.startswith(self.server.url + "/ui/login#"), url)
        return url

    async def node_names(self) -> list[str]:
        code, out, err = await run_wire("admin", "--data-dir", self.server.data_dir, "nodes", "list", "--json")
        self.assertEqual(code, 0, err)
        return sorted(n["node_name"] for n in json.loads(out)["nodes"])

    async def log_in(self, url: str) -> None:
        def go(driver):
            driver.get(url)
            wait_for(driver, lambda d: d.find_elements("css selector", 'meta[name="wire-csrf"]'), what="the dashboard page")
            # The link's token left the address bar.
            return driver.current_url

        landed = await self.browser.call(go)
        self.assertEqual(landed, self.server.url + "/ui/")

    async def test_the_dashboard_shows_the_mesh_and_acts_on_it(self):
        url = await self.dashboard_link()
        await self.log_in(url)

        # Every node, and each reported pair with its path's kind.
        names = {self.ids[n]: n for n in NODES}
        drawn, took = await self.browser.call(
            lambda d: wait_for(d, lambda d: len(_nodes_drawn(d)) == len(NODES) and len(_edges_drawn(d)) == len(PATHS) and _edges_drawn(d), what="the topology")
        )
        self.assertEqual({frozenset(names[i] for i in pair): kind for pair, kind in drawn.items()},
                         {frozenset(pair): str(path) for pair, (path, _, _) in PATHS.items()})
        self.assertEqual(set(await self.browser.call(_nodes_drawn)), set(self.ids.values()))
        await self.browser.call(lambda d: self.browser.screenshot("topology"))

        # A node goes offline (wire down): grey without a reload.
        await self.clients["db1"].leave(self.ids["db1"], key_for("db1"))
        _, took = await self.browser.call(
            lambda d: wait_for(d, lambda d: _nodes_drawn(d).get(self.ids["db1"]) == "false", timeout=10, what="db1 turning grey")
        )
        print(f"\ndashboard: db1 drawn offline {took:.2f} s after it left")
        await self.browser.call(lambda d: self.browser.screenshot("db1-offline"))

        # Removing a node from the table removes it from the mesh.
        def remove_laptop(driver):
            driver.find_element("css selector", 'a[data-tab="nodes"]').click()
            row = wait_for(driver, lambda d: d.find_elements("css selector", f'#node-table tr[data-node-id="{self.ids["laptop1"]}"]'), what="laptop1's row")[0][0]
            row.find_element("css selector", "button.remove").click()
            driver.switch_to.alert.accept()
            wait_for(driver, lambda d: not d.find_elements("css selector", f'#node-table tr[data-node-id="{self.ids["laptop1"]}"]'), what="laptop1's row gone")
            self.browser.screenshot("nodes")

        await self.browser.call(remove_laptop)
        self.assertEqual(await self.node_names(), ["cache1", "db1", "web1"])

        # A change without the CSRF token is refused, with the session's cookie and all.
        answer = await self.browser.call(lambda d: d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"fetch('/api/v1/nodes/{self.ids['web1']}/rename', {{method: 'POST', credentials: 'same-origin',"
            " headers: {'Content-Type': 'application/json'}, body: JSON.stringify({new_name: 'evil'})})"
            ".then(r => r.json().then(body => done([r.status, body.error])));"
        ))
        self.assertEqual(answer[0], 403, answer)
        self.assertIn("X-CSRF-Token", answer[1])
        self.assertIn("web1", await self.node_names())

        # The audit log names the session that removed laptop1.
        code, out, err = await run_wire("admin", "--data-dir", self.server.data_dir, "audit", "--json")
        events = {e["event"]: e["actor"] for e in json.loads(out)["events"]}
        self.assertTrue(events["node.remove"].startswith("dashboard:"), events)
        self.assertEqual(events["dashboard.link"], "admin")

    async def test_a_login_link_works_once(self):
        url = await self.dashboard_link()
        await self.log_in(url)

        def again(driver):
            driver.delete_all_cookies()
            driver.get(url)
            refused, _ = wait_for(driver, lambda d: "not valid" in d.find_element("id", "login-state").text and d.find_element("id", "login-state").text,
                                  what="the refusal")
            self.browser.screenshot("login-refused")
            return refused, bool(d_meta(driver))

        def d_meta(driver):
            return driver.find_elements("css selector", 'meta[name="wire-csrf"]')

        refused, has_page = await self.browser.call(again)
        self.assertIn("used already", refused)
        self.assertFalse(has_page)
        # And the API answers nothing without a session.
        answer = await self.browser.call(lambda d: d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/v1/nodes', {credentials: 'same-origin'}).then(r => done(r.status));"
        ))
        self.assertEqual(answer, 401)
