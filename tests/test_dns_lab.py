"""Mesh DNS for real: twistd nodes in namespaces, their resolver on the VPN
address, the OS resolver (each namespace's own /etc/netns/NAME/resolv.conf)
pointed at it, an upstream and an office DNS inside the lab.

From one node: ``getent hosts web2.wire.internal`` and ``ping web2`` (the
short name, through the search domain) reach the peer; asking the mesh
resolver directly gives A, PTR and NXDOMAIN right; other names go to the
machine's old resolver; an admin record and a forwarded zone work; a rename
resolves within 2 s; ``wire down`` puts the namespace's resolv.conf back
byte for byte; the host's /etc/resolv.conf never changes.
"""

from __future__ import annotations

import ipaddress
import json
import os
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

UPSTREAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dns_upstream.py")
# Asks a DNS server directly (as dig would): each question's rcode and answers, as JSON.
ASK = (
    "import json, sys\n"
    "from twisted.internet import reactor, defer\n"
    "from twisted.names import client, dns\n"
    "import socket\n"
    "def shown(a):\n"
    "    if a.type == dns.A: return a.payload.dottedQuad()\n"
    "    if a.type == dns.AAAA: return socket.inet_ntop(socket.AF_INET6, a.payload.address)\n"
    "    return a.payload.name.name.decode()\n"
    "async def main():\n"
    "    resolver = client.Resolver(servers=[(sys.argv[1], 53)], reactor=reactor, timeout=(2,))\n"
    "    out = []\n"
    "    for question in sys.argv[2:]:\n"
    "        name, kind = question.split('/')\n"
    "        query = dns.Query(name, getattr(dns, kind))\n"
    "        try:\n"
    "            message = await resolver.queryUDP([query], timeout=(2,))\n"
    "        except Exception as e:\n"
    "            out.append({'q': question, 'error': repr(e)}); continue\n"
    "        out.append({'q': question, 'rcode': message.rCode, 'answers': [shown(a) for a in message.answers\n"
    "            if a.type in (dns.A, dns.AAAA, dns.PTR)]})\n"
    "    print(json.dumps(out))\n"
    "defer.ensureDeferred(main()).addBoth(lambda _: reactor.stop())\n"
    "reactor.run()\n"
)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class DnsLabTests(unittest.TestCase):
    timeout = 300
    skip = lab_unavailable()

    async def test_mesh_names_through_the_os_resolver(self):
        host_resolv_conf = read("/etc/resolv.conf")
        self.addCleanup(lambda: self.assertEqual(read("/etc/resolv.conf"), host_resolv_conf, "the host's resolver is never touched"))
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        lab = mesh.lab
        # The resolver the machines had before wire (every lab namespace's resolv.conf names it),
        lab.start("internet", [sys.executable, UPSTREAM, lab.resolver_address, "53", "example.test=203.0.113.80"], log_prefix="upstream")
        # and an office DNS on the server's host, reached only through a forwarded zone.
        office = lab.hosts["server"].address
        lab.start("server", [sys.executable, UPSTREAM, office, "5353", "printer.office.lan=192.168.50.5"], log_prefix="office")
        admin = AdminOps(reactor, mesh.server_data_dir)
        names = ("web1", "web2")
        for name in names:
            await mesh.add_host(name)
        files = {name: os.path.join(lab.etc_netns, lab.hosts[name].namespace, "resolv.conf") for name in names}
        before = {name: read(path) for name, path in files.items()}
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in names])
        web1, web2 = (mesh.nodes[name].vpn_ip for name in names)

        # The OS resolver: the full name, then the short one through the search domain.
        waited = await eventually(lambda: self.resolves(mesh, "web1", "web2.wire.internal", web2), timeout=15, what="web2.wire.internal from web1")
        log.info("web2.wire.internal resolved from web1 {waited:.2f}s after both were up", waited=waited)
        self.assertIn(f"nameserver {web1}", read(files["web1"]).decode())
        web2_v6 = json.loads((await mesh.cli("web2", "ip", "-6", "--json")).stdout)["vpn_ip6"]

        async def pings_by_short_name() -> bool:
            # Both families through the OS resolver: A and AAAA, each over the tunnel.
            results = [await mesh.lab.run("web1", ["ping", flag, "-c1", "-W2", "web2"], timeout=15) for flag in ("-4", "-6")]
            return all(r.rc == 0 for r in results) and f"({web2})".encode() in results[0].stdout and f"({web2_v6})".encode() in results[1].stdout

        await eventually(pings_by_short_name, timeout=15, step=0.5, what="ping -4 and -6 web2 (the short name) from web1")
        # Everything else goes where it went before wire.
        self.assertTrue(await self.resolves(mesh, "web1", "example.test", "203.0.113.80"))

        # Asked directly: A, PTR, NXDOMAIN, and NOERROR with no data for a type the name lacks.
        reverse = ipaddress.ip_address(web2).reverse_pointer
        answers = await self.ask(mesh, "web1", web1, "web2.wire.internal/A", f"{reverse}/PTR", "nosuch.wire.internal/A", "web2.wire.internal/MX")
        self.assertEqual(answers, [
            {"q": "web2.wire.internal/A", "rcode": 0, "answers": [web2]},
            {"q": f"{reverse}/PTR", "rcode": 0, "answers": ["web2.wire.internal"]},
            {"q": "nosuch.wire.internal/A", "rcode": 3, "answers": []},
            {"q": "web2.wire.internal/MX", "rcode": 0, "answers": []},
        ])

        # The admin's record and a forwarded zone, pushed with the netmap.
        self.assertTrue((await admin.dns_action("add-record", name="nas", type="A", value="192.168.1.20"))["ok"])
        await eventually(lambda: self.resolves(mesh, "web2", "nas.wire.internal", "192.168.1.20"), timeout=5, what="the admin's record")
        self.assertFalse(await self.resolves(mesh, "web2", "printer.office.lan", "192.168.50.5"), "not before the zone is forwarded")
        self.assertTrue((await admin.dns_action("forward", domain="office.lan", resolvers=[f"{office}:5353"]))["ok"])
        await eventually(lambda: self.resolves(mesh, "web2", "printer.office.lan", "192.168.50.5"), timeout=5, what="the forwarded zone")

        # A rename is resolvable within 2 s, and the old name is gone.
        await admin.rename_node("web2", "api2")
        renamed = await eventually(lambda: self.resolves(mesh, "web1", "api2.wire.internal", web2), timeout=2.5, step=0.1, what="the new name")
        log.info("api2.wire.internal resolved {renamed:.2f}s after the rename", renamed=renamed)
        self.assertLess(renamed, 2.5)
        (gone,) = await self.ask(mesh, "web1", web1, "web2.wire.internal/A")
        self.assertEqual(gone["rcode"], 3)

        # wire down: the namespace's resolv.conf as it was, byte for byte.
        await mesh.down("web1")
        del mesh.nodes["web1"]
        self.assertEqual(read(files["web1"]), before["web1"])

    # -- helpers -------------------------------------------------------------

    async def resolves(self, mesh: MeshLab, host: str, name: str, address: str) -> bool:
        """Through the OS resolver, as every program asks (getent: glibc, resolv.conf)."""
        # ahosts: every address (a mesh name has an IPv6 one too, which "hosts" would give first).
        result = await mesh.lab.run(host, ["getent", "ahosts", name], timeout=10)
        return result.rc == 0 and address.encode() in {line.split()[0] for line in result.stdout.splitlines() if line.split()}

    async def ask(self, mesh: MeshLab, host: str, server: str, *questions: str) -> list:
        result = await mesh.lab.run(host, [sys.executable, "-c", ASK, server, *questions], timeout=20)
        self.assertEqual(result.rc, 0, result.stderr)
        return json.loads(result.stdout)

    async def logs(self, mesh: MeshLab, names: list[str]) -> str:
        return "\n".join(f"--- {n}:\n{launcher.log_tail(mesh.nodes[n].config_dir, lines=40)}" for n in names)
