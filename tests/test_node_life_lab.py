"""The node's life for real (issue 12): a real ``twistd wire-server`` with
authentication, real ``wire up`` in lab namespaces, real wireguard-go."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.test_e2e import _env, eventually, lab_unavailable, public_mesh, wire_cli
from wire.demo import MeshLab, MeshNode

# Long-polls the server as an enrolled node, for SECONDS, and prints every
# upsert of the node named NAME it is told of: what every peer's daemon hears.
WATCH = r"""
import json, ssl, sys, time, urllib.request
url, credential, name, seconds = sys.argv[1], open(sys.argv[2]).read().strip(), sys.argv[3], float(sys.argv[4])
ctx = ssl._create_unverified_context()
def get(path):
    request = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + credential})
    return json.load(urllib.request.urlopen(request, context=ctx, timeout=30))
cursor = get("/peers?since=0&wait=0")["cursor"]
deadline = time.time() + seconds
while time.time() < deadline:
    answer = get("/peers?since=%s&wait=%d" % (cursor, max(1, int(deadline - time.time()))))
    cursor = answer["cursor"]
    for view in answer.get("upserts", []):
        if view.get("node_name") == name:
            print(json.dumps({"nat_type": view.get("nat_type"), "nat_port": view.get("nat_port"), "port": view.get("port")}), flush=True)
"""

# Holds UDP PORT while it runs the command after it; prints its exit code and output.
HOLD_PORT = r"""
import json, socket, subprocess, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
result = subprocess.run(sys.argv[2:], capture_output=True, text=True)
print(json.dumps({"rc": result.returncode, "stdout": result.stdout, "stderr": result.stderr}))
"""


class NodeLifeLabTests(unittest.TestCase):
    timeout = 240
    skip = lab_unavailable()

    async def build(self, names=("alpha",)) -> MeshLab:
        return await public_mesh(self, names)

    def config_dir(self, mesh: MeshLab, name: str) -> str:
        return os.path.join(mesh._workdir, name)

    async def wire(self, mesh: MeshLab, name: str, *args: str, timeout: float = 60):
        return await mesh.lab.run(name, wire_cli("--config-dir", self.config_dir(mesh, name), *args), env=_env(), timeout=timeout)

    async def test_a_join_is_one_upsert_with_its_nat_facts_and_joining_again_is_harmless(self):
        mesh = await self.build()
        await mesh.lab.add_router("home", nat="easy")
        await mesh.add_host("beta", "home")
        mesh.nodes["beta"] = MeshNode("beta", self.config_dir(mesh, "beta"), mesh.lab.hosts["beta"].wireguard_interface)
        credential = os.path.join(self.config_dir(mesh, "alpha"), "credential")
        watch = Deferred.fromCoroutine(
            mesh.lab.run("alpha", [sys.executable, "-c", WATCH, mesh.server_url, credential, "beta", "12"], timeout=40)
        )
        await deferLater(reactor, 1.0, lambda: None)  # the watcher's long-poll is open
        interface = mesh.nodes["beta"].interface
        joined = await self.wire(mesh, "beta", "up", "--join", mesh.join_token, "--name", "beta", "--interface", interface, "--json")
        self.assertEqual(joined.rc, 0, joined.stderr.decode())
        answer = json.loads(joined.stdout)  # --json: stdout is one JSON object
        self.assertEqual((answer["node_name"], answer["already_running"]), ("beta", False))
        mesh.nodes["beta"].vpn_ip = answer["vpn_ip"]
        progress = joined.stderr.decode()
        for line in ("wire up: probing NAT from UDP port", "wire up: NAT ", "wire up: enrolling with", "wire up: enrolled with", "wire up: registered as beta"):
            self.assertIn(line, progress)
        self.assertNotIn(mesh.join_token, progress)
        upserts = [json.loads(line) for line in (await watch).stdout.decode().splitlines()]
        self.assertEqual(len(upserts), 1, f"the join reached alpha as one upsert: {upserts}")
        self.assertEqual(upserts[0]["nat_type"], "easy", "it already holds the NAT type")
        self.assertIn(f"mapped {mesh.lab.public_address('beta')}:{upserts[0]['nat_port']}", progress, "and the STUN mapping")
        config_dir = self.config_dir(mesh, "beta")
        self.assertFalse(os.path.exists(os.path.join(config_dir, "join.json")), "the token is deleted once used")
        with open(os.path.join(config_dir, "wire-node.pid")) as f:
            pid = f.read().strip()
        # Item 2: the same join command again is harmless.
        again = await self.wire(mesh, "beta", "up", "--join", mesh.join_token, "--json")
        self.assertEqual(again.rc, 0, again.stderr.decode())
        answer = json.loads(again.stdout)
        self.assertEqual((answer["already_running"], answer["node_name"]), (True, "beta"))
        self.assertIn("the join token was not needed", answer["note"])
        with open(os.path.join(config_dir, "wire-node.pid")) as f:
            self.assertEqual(f.read().strip(), pid, "the daemon was not restarted")
        self.assertTrue(await mesh.ping("alpha", "beta", count=3, wait=2), "and the tunnel works")

    async def test_first_hour_refusals_are_quick_and_clear(self):
        mesh = await self.build()
        await mesh.add_host("eve")
        config_dir = self.config_dir(mesh, "eve")
        # Item 5: an authenticated server without a token.
        started = reactor.seconds()
        result = await self.wire(mesh, "eve", "up", "--server", mesh.server_url, "--name", "eve", "--interface", mesh.lab.hosts["eve"].wireguard_interface)
        self.assertEqual(result.rc, 1)
        stderr = result.stderr.decode()
        self.assertIn("this server needs a join token: get one with 'wire admin keys create' on the server", stderr)
        self.assertIn("the daemon was stopped", stderr)
        self.assertNotIn("Traceback", stderr)
        self.assertLess(reactor.seconds() - started, 15, "no 30 s wait")
        self.assertFalse(os.path.exists(os.path.join(config_dir, "config.json")))
        self.assertFalse(os.path.exists(os.path.join(config_dir, "join.json")))
        # Item 4: the WireGuard port held by another program: refused before enrolling.
        argv = wire_cli("--config-dir", config_dir, "up", "--join", mesh.join_token, "--name", "eve", "--port", "51820")
        held = await mesh.lab.run("eve", [sys.executable, "-c", HOLD_PORT, "51820", *argv], env=_env(), timeout=60)
        outcome = json.loads(held.stdout)
        self.assertEqual(outcome["rc"], 1)
        self.assertEqual(outcome["stderr"], "wire up: UDP port 51820 is in use by another program; choose another with --port\n")
        names = [n["node_name"] for n in (await mesh.status("alpha"))["nodes"]]
        self.assertEqual(names, ["alpha"], "nothing enrolled")

    async def test_removed_node_is_told_and_joins_again_and_an_admin_rename_shows(self):
        from wire.admin_ops import AdminOps

        mesh = await self.build(("alpha", "beta"))
        admin = AdminOps(reactor, mesh.server_data_dir)
        # Item 9: the admin renames beta; beta's daemon adopts it.
        await admin.rename_node("beta", "bravo")

        async def renamed() -> bool:
            status = json.loads((await self.wire(mesh, "beta", "status", "--json")).stdout)
            return any(n["node_name"] == "bravo" and n["this_node"] for n in status["nodes"])

        async def adopted() -> bool:
            # The server's view shows it at once; the daemon adopts it from its next netmap answer.
            with open(os.path.join(self.config_dir(mesh, "beta"), "config.json")) as f:
                return json.load(f)["node_name"] == "bravo"

        await eventually(renamed, timeout=10, what="beta shows its new name")
        await eventually(adopted, timeout=10, what="beta's daemon keeps its new name in config.json")
        refused = await self.wire(mesh, "beta", "up", "--name", "other")
        self.assertEqual(refused.rc, 1)
        self.assertIn("ask them to run 'wire admin nodes rename bravo other'", refused.stderr.decode())
        # Item 6: removed by the admin.
        await admin.remove_node("bravo")
        result = None
        for _ in range(50):
            result = await self.wire(mesh, "beta", "up")
            if result.rc != 0:
                break
            await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(result.rc, 1)
        self.assertIn("it was removed from the mesh by the admin (or its credential was revoked)", result.stderr.decode())
        self.assertIn("wire up --join TOKEN", result.stderr.decode())
        fresh = (await admin.create_key())["token"]
        again = await self.wire(mesh, "beta", "up", "--join", fresh, "--json")
        self.assertEqual(again.rc, 0, again.stderr.decode())
        self.assertEqual(json.loads(again.stdout)["node_name"], "bravo")
        names = sorted(n["node_name"] for n in (await mesh.status("alpha"))["nodes"])
        self.assertEqual(names, ["alpha", "bravo"])
