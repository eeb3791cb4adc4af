"""The access policy for real: wireguard-go and nftables in namespaces.

Policy: tag:web may reach tag:db on tcp 5432; group:ops (the node ops1)
may reach every server (tag:web, tag:db). The web node connects to the db
node's 5432 and not its 22; the db node cannot open a connection to the web
node; the ops node reaches both; an untagged node sees no peers at all
(``wg show`` is empty) and reaches nothing. A policy change is in force
within 2 s, and ``wire down`` leaves no nftables table behind.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.trial import unittest

from tests.test_e2e import eventually, lab_unavailable
from wire.admin_ops import AdminOps
from wire.demo import MeshLab
from wire.node import launcher
from wire.runner import ProcessRunner

log = Logger()

POLICY = """{
  "groups": {"group:ops": ["ops1"]},
  "acls": [
    {"action": "accept", "src": ["tag:web"], "proto": "tcp", "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:web:*", "tag:db:*"]},
  ],
  "tests": [{"src": "web1", "accept": ["db1:5432"], "deny": ["db1:22"]}],
}"""
# The same, and web may also reach the db's ssh.
WIDER = POLICY.replace('"dst": ["tag:db:5432"]', '"dst": ["tag:db:5432,22"]').replace(', "deny": ["db1:22"]', "")

LISTEN = (
    "import socket, sys, threading\n"
    "def serve(port):\n"
    "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind(('0.0.0.0', port)); s.listen(16)\n"
    "    while True:\n"
    "        c, _ = s.accept(); c.sendall(b'hello'); c.close()\n"
    "for p in sys.argv[1:]:\n"
    "    threading.Thread(target=serve, args=(int(p),), daemon=True).start()\n"
    "threading.Event().wait()\n"
)
CONNECT = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)\n"
    "sys.exit(0 if s.recv(5) == b'hello' else 1)\n"
)


class PolicyLabTests(unittest.TestCase):
    timeout = 300
    skip = lab_unavailable()

    async def test_the_policy_decides_who_connects_to_what(self):
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        admin = AdminOps(reactor, mesh.server_data_dir)
        nodes = {"web1": ("tag:web",), "db1": ("tag:db",), "ops1": (), "plain1": ()}
        tokens = {}
        for name, tags in nodes.items():
            tokens[name] = (await admin.create_key(tags=tags, note=name))["token"]
            await mesh.add_host(name)
        await gatherResults([Deferred.fromCoroutine(mesh.up(name, token=tokens[name])) for name in nodes])
        for name in nodes:
            mesh.lab.start(name, [sys.executable, "-c", LISTEN, "22", "5432", "8080"], log_prefix=f"listen-{name}")
        # Open, as before any policy: everyone reaches everyone.
        self.assertTrue(await self.reaches(mesh, "plain1", "db1", 22, tries=10))

        await self.set_policy(admin, POLICY)
        await self.until_enforced(mesh, "web1", "db1", 22, allowed=False)
        expected = {
            ("web1", "db1", 5432): True,
            ("web1", "db1", 22): False,
            ("db1", "web1", 8080): False,  # the db cannot open a connection to web
            ("db1", "web1", 22): False,
            ("ops1", "db1", 22): True,
            ("ops1", "web1", 8080): True,
            ("plain1", "db1", 5432): False,
            ("plain1", "web1", 22): False,
            ("web1", "ops1", 22): False,  # ops may reach web; not the other way
        }
        seen = {case: await self.reaches(mesh, *case) for case in expected}
        self.assertEqual(seen, expected, await self.logs(mesh, ["web1", "db1"]))
        self.assertFalse(await self.pings(mesh, "plain1", "db1"))
        self.assertTrue(await self.pings(mesh, "ops1", "db1"))
        # Nothing relates to plain1: it holds no peers, and no one holds it.
        self.assertEqual(await self.peer_keys(mesh, "plain1"), set())
        self.assertEqual(len(await self.peer_keys(mesh, "db1")), 2, "web1 and ops1")
        self.assertEqual(len(await self.peer_keys(mesh, "ops1")), 2, "web1 and db1")

        # A wider policy is in force within 2 s (the nodes' filters replaced).
        await self.set_policy(admin, WIDER)
        waited = await self.until_enforced(mesh, "web1", "db1", 22, allowed=True, timeout=2.5)
        log.info("the wider policy was in force on db1 {waited:.2f}s after it was set", waited=waited)
        self.assertLess(waited, 2.5)
        self.assertFalse(await self.reaches(mesh, "db1", "web1", 8080), "still one way")

        # wire down takes each node's table with its interface.
        for name in nodes:
            self.assertIn(f"wire_{mesh.nodes[name].interface}", await self.tables(mesh, name))
        await mesh.down("db1")
        self.assertNotIn(f"wire_{mesh.nodes['db1'].interface}", await self.tables(mesh, "db1"))
        del mesh.nodes["db1"]

    # -- helpers -------------------------------------------------------------

    async def set_policy(self, admin: AdminOps, text: str) -> None:
        """As ``wire admin policy set`` does, over the server's admin socket."""
        answer = await admin.policy_action("set", text=text)
        self.assertTrue(answer["ok"], answer)

    async def until_enforced(self, mesh: MeshLab, src: str, dst: str, port: int, allowed: bool, timeout: float = 15) -> float:
        async def check() -> bool:
            return await self.reaches(mesh, src, dst, port) == allowed

        return await eventually(check, timeout=timeout, step=0.1, what=f"{src} -> {dst}:{port} {'allowed' if allowed else 'blocked'}")

    async def reaches(self, mesh: MeshLab, src: str, dst: str, port: int, tries: int = 1) -> bool:
        for _ in range(tries):
            result = await mesh.lab.run(src, [sys.executable, "-c", CONNECT, mesh.nodes[dst].vpn_ip, str(port)], timeout=10)
            if result.rc == 0:
                return True
        return False

    async def pings(self, mesh: MeshLab, src: str, dst: str) -> bool:
        return await mesh.ping(src, dst, count=2, wait=1)

    async def peer_keys(self, mesh: MeshLab, name: str) -> set[str]:
        result = await mesh.lab.run(name, ["wg", "show", mesh.nodes[name].interface, "peers"], timeout=10)
        return set(result.stdout.decode().split())

    async def tables(self, mesh: MeshLab, name: str) -> str:
        result = await mesh.lab.run(name, ["nft", "list", "tables"], timeout=10)
        return result.stdout.decode()

    async def logs(self, mesh: MeshLab, names: list[str]) -> str:
        return "\n".join(f"--- {n}:\n{launcher.log_tail(mesh.nodes[n].config_dir, lines=30)}" for n in names)
