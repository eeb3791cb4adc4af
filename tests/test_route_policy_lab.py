"""The access policy on a subnet router, for real: wireguard-go, the
kernel's forwarding and nftables in namespaces.

A home LAN behind a NAT router holds a wire subnet router (gw1, tag:router)
and a plain host with no wire (lanhost) listening on two ports. On the
internet: web1 (tag:web) and other (untagged), both accepting routes. With
no policy both reach lanhost on either port. Under a policy that lets
tag:web reach lanhost:443 only (and lets other reach gw1 itself, so that it
holds gw1 and its route: what stops it is the router's forward chain, not
its view), web1 reaches lanhost:443 and not :8080, and other reaches
neither. A wider policy is in force at once.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial import unittest

from tests.test_e2e import eventually, lab_unavailable
from tests.test_policy_lab import CONNECT, LISTEN
from wire.admin_ops import AdminOps
from wire.demo import MeshLab
from wire.node import launcher
from wire.runner import ProcessRunner



def policy(web_ports: str, other_dst: list[str]) -> str:
    return json.dumps({
        "tagOwners": {"tag:web": [], "tag:router": []},
        "acls": [
            {"action": "accept", "src": ["tag:web"], "dst": [f"lanhost:{web_ports}"]},
            {"action": "accept", "src": ["other"], "dst": other_dst},
        ],
    })


class RoutePolicyLabTests(unittest.TestCase):
    timeout = 300
    skip = lab_unavailable()

    async def test_the_router_forwards_only_what_the_policy_allows(self):
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        lab = mesh.lab
        admin = AdminOps(reactor, mesh.server_data_dir)
        home = await lab.add_router("home", nat="easy")
        lan = home.lan_network
        assert lan is not None
        nodes = {"gw1": ("tag:router",), "web1": ("tag:web",), "other": ()}
        tokens = {name: (await admin.create_key(tags=tags, note=name))["token"] for name, tags in nodes.items()}
        await mesh.add_host("gw1", router="home")
        await mesh.add_host("lanhost", router="home")
        await mesh.add_host("web1")
        await mesh.add_host("other")
        lab.start("lanhost", [sys.executable, "-c", LISTEN, "443", "8080"], log_prefix="lanhost")
        target = lab.hosts["lanhost"].lan_address
        assert target is not None
        await gatherResults([Deferred.fromCoroutine(mesh.up(name, token=tokens[name])) for name in nodes])
        await self.wire_set(mesh, "gw1", "--advertise-routes", lan)
        for name in ("web1", "other"):
            await self.wire_set(mesh, name, "--accept-routes")
        answer = await admin.route_action("approve", "gw1", lan)
        self.assertTrue(answer["ok"], answer)

        # No policy: the router forwards everything to its LAN, as before.
        await self.until(mesh, "other", target, 8080, True)
        self.assertTrue(await self.reaches(mesh, "web1", target, 443, tries=10))

        # tag:web -> lanhost:443 only; other may reach gw1 itself (so it holds gw1 and the route).
        narrow = policy("443", ["tag:router:22"]).replace('"tagOwners"', f'"hosts": {{"lanhost": "{target}"}}, "tagOwners"')
        await self.set_policy(admin, narrow)
        await self.until(mesh, "other", target, 8080, False)
        expected = {
            ("web1", 443): True,
            ("web1", 8080): False,
            ("other", 443): False,
            ("other", 8080): False,
        }
        await self.until(mesh, "web1", target, 443, True)
        seen = {(src, port): await self.reaches(mesh, src, target, port) for src, port in expected}
        self.assertEqual(seen, expected, await self.logs(mesh, ["gw1", "web1"]))
        status = await mesh.status("other")
        self.assertEqual({n["node_name"]: n.get("routes") for n in status["nodes"]}.get("gw1"), [lan],
                         "other holds gw1 and its route: the forward chain is what stops it")
        table = await lab.run("gw1", ["nft", "list", "table", "inet", f"wire_{mesh.nodes['gw1'].interface}_route"])
        self.assertIn(f"ip daddr {target} meta l4proto {{ tcp, udp }} th dport 443 accept", table.stdout.decode())

        # A wider policy is in force at once: web1 on both ports, other on 8080.
        wider = policy("443,8080", ["tag:router:22", "lanhost:8080"]).replace(
            '"tagOwners"', f'"hosts": {{"lanhost": "{target}"}}, "tagOwners"')
        await self.set_policy(admin, wider)
        await self.until(mesh, "other", target, 8080, True, timeout=5)
        self.assertTrue(await self.reaches(mesh, "web1", target, 8080))
        self.assertFalse(await self.reaches(mesh, "other", target, 443))

        # No policy again: everything forwarded.
        answer = await admin.policy_action("clear")
        self.assertTrue(answer["ok"], answer)
        await self.until(mesh, "other", target, 443, True)

    # -- helpers -------------------------------------------------------------

    async def set_policy(self, admin: AdminOps, text: str) -> None:
        answer = await admin.policy_action("set", text=text)
        self.assertTrue(answer["ok"], answer)

    async def wire_set(self, mesh: MeshLab, name: str, *args: str) -> None:
        result = await mesh.cli(name, "set", *args, "--json")
        self.assertEqual(result.rc, 0, result.stdout + result.stderr)

    async def until(self, mesh: MeshLab, src: str, address: str, port: int, allowed: bool, timeout: float = 20) -> float:
        async def check() -> bool:
            return await self.reaches(mesh, src, address, port) == allowed

        return await eventually(check, timeout=timeout, step=0.2,
                                what=f"{src} -> {address}:{port} {'allowed' if allowed else 'blocked'}")

    async def reaches(self, mesh: MeshLab, src: str, address: str, port: int, tries: int = 1) -> bool:
        for _ in range(tries):
            result = await mesh.lab.run(src, [sys.executable, "-c", CONNECT, address, str(port)], timeout=10)
            if result.rc == 0:
                return True
        return False

    async def logs(self, mesh: MeshLab, names: list[str]) -> str:
        return "\n".join(f"--- {n}:\n{launcher.log_tail(mesh.nodes[n].config_dir, lines=40)}" for n in names)
