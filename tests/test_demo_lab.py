"""``wire demo --keep`` as a newcomer runs it (the real CLI, as root, real
wireguard-go in namespaces) leaves a mesh whose dashboard this host's
browser opens (wire.labforward), and the topology there shows the demo's
pairs as the nodes themselves see them: direct ones, and the hard-NAT
node's relayed ones. Then ``wire demo --clean`` removes all of it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

from twisted.internet import reactor
from twisted.trial import unittest

from tests.browser import Browser, browser_unavailable, wait_for
from tests.test_dashboard_browser import _edges_drawn, _nodes_drawn
from tests.test_e2e import lab_unavailable
from wire.demo import DEMO_NODES, wire_argv
from wire.runner import ProcessRunner
from wire.twistd import wire_environment

LINK = re.compile(r"^\s+(https://127\.0\.0\.1:\d+)(/ui/login#\S+)$", re.MULTILINE)
KEPT = re.compile(r"--keep: the lab stays up \(namespaces (\w+)-\*, config and data dirs in (\S+)\)")
# A lab's namespaces: its prefix (wire.lab), a dash, the host's name.
LAB_NAMESPACE = re.compile(r"(wl[0-9a-f]{4})-")


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


class KeptDemoDashboardTests(unittest.TestCase):
    timeout = 600
    skip = lab_unavailable() or browser_unavailable()

    def setUp(self):
        self.runner = ProcessRunner(reactor)
        before = _namespaces()
        # Whatever lab this test's demo left, also when it failed or was cut
        # short before saying its name: lab tests run one at a time, so a
        # lab that appeared meanwhile is this one's.
        self.addCleanup(self.clean_new_labs, before)

    async def clean_new_labs(self, before: set[str]) -> None:
        for prefix in sorted({m.group(1) for ns in _namespaces() - before if (m := LAB_NAMESPACE.match(ns))}):
            await self.runner.run(wire_argv("demo", "--clean", prefix), env=wire_environment(), timeout=120)

    async def wire_json(self, *argv: str, namespace: str | None = None) -> dict:
        command = wire_argv(*argv, "--json")
        if namespace is not None:
            command = ["ip", "netns", "exec", namespace, *command]
        result = await self.runner.run(command, env=wire_environment(), timeout=30)
        self.assertEqual(result.rc, 0, result.stderr.decode(errors="replace"))
        return json.loads(result.stdout)

    async def test_the_kept_demo_shows_its_direct_and_relayed_pairs_in_the_dashboard(self):
        demo = await self.runner.run(wire_argv("demo", "--keep"), env=wire_environment(), timeout=420)
        out = demo.stdout.decode(errors="replace")
        self.assertEqual(demo.rc, 0, out[-3000:] + demo.stderr.decode(errors="replace")[-3000:])
        self.assertIn("all pairs reach each other", out)
        kept, link = KEPT.search(out), LINK.search(out)
        self.assertIsNotNone(kept, out[-2000:])
        self.assertIsNotNone(link, out[-2000:])
        assert kept is not None and link is not None
        prefix, workdir = kept.groups()
        origin = link.group(1)

        # The nodes' own words about each pair (their daemons').
        listed = await self.wire_json("admin", "--data-dir", os.path.join(workdir, "server"), "nodes", "list")
        ids = {n["node_name"]: n["node_id"] for n in listed["nodes"]}
        self.assertEqual(set(ids), {name for name, _ in DEMO_NODES})
        seen: dict[frozenset, set[str]] = {}
        for name in ids:
            status = await self.wire_json("--config-dir", os.path.join(workdir, name), "status", namespace=f"{prefix}-{name}")
            for peer in status["nodes"]:
                if not peer["this_node"]:
                    seen.setdefault(frozenset((ids[name], peer["node_id"])), set()).add(peer["path"])
        told = {pair: paths.pop() for pair, paths in seen.items() if len(paths) == 1}
        self.assertEqual(len(told), 10, f"both sides of every pair agree: {seen}")
        self.assertEqual(set(told.values()), {"direct", "relay"}, "the demo has direct and relayed pairs")

        browser = Browser(self, os.path.join(self.mktemp(), "screenshots"))

        def open_dashboard(driver):
            driver.get(origin + link.group(2))
            wait_for(driver, lambda d: d.find_elements("css selector", 'meta[name="wire-csrf"]'), timeout=30, what="the dashboard page")
            landed = driver.current_url
            # Every node, and every pair once both of its sides reported it (within a report round).
            try:
                drawn, _ = wait_for(
                    driver, lambda d: len(_nodes_drawn(d)) == len(ids) and _edges_drawn(d) == told and _edges_drawn(d),
                    timeout=90, what="the demo's topology, each pair as its nodes see it",
                )
            except AssertionError as e:
                browser.screenshot("demo-topology-wrong")
                raise AssertionError(f"{e}: drawn {_nodes_drawn(driver)}, {_edges_drawn(driver)}; the nodes say {told}") from None
            browser.screenshot("demo-topology")
            return landed, _nodes_drawn(driver), drawn

        landed, nodes, edges = await browser.call(open_dashboard)
        self.assertEqual(landed, origin + "/ui/")
        self.assertEqual(set(nodes), set(ids.values()))
        self.assertEqual(set(nodes.values()), {"true"}, "every demo node online")
        names = {node_id: name for name, node_id in ids.items()}
        relayed = sorted(tuple(sorted(names[i] for i in pair)) for pair, kind in edges.items() if kind == "relay")
        print(f"\ndemo dashboard at {origin}: relayed pairs {relayed}, {len(edges) - len(relayed)} direct")
