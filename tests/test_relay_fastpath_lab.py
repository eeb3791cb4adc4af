"""The relay's kernel fast path for real: two nodes behind hard NATs relay
through a server that runs as root with forwarding on; the server's
``/metrics`` shows the session in the kernel, pings pass while the Python
relay forwards (almost) nothing, and forged frames from a third namespace,
with and without the session's source address, change nothing.

With side ports (the default), each node's WireGuard sends to the server's
port for its side, no shim in the way: ``wg show`` in the node's namespace
says so, and a ping stream goes on through the table's removal and a server
restart (back to the shims, and into the kernel again).
"""

from __future__ import annotations

import re
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.test_e2e import eventually, lab_unavailable
from wire.demo import MeshLab
from wire.node.relay import KEEPALIVE_INTERVAL, KERNEL_VALID
from wire.relayproto import MAGIC
from wire.runner import ProcessRunner

TABLE = "wire_relay_8788"
DIRECT_PORTS = range(8790, 8990)  # --port 8787's default --relay-direct-ports
SHIMS_ONLY = ("--relay-direct-ports", "off")
METRICS = (
    "import ssl, sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], context=ssl._create_unverified_context()).read().decode())"
)
# A frame with the session side's token and junk for counter, payload and
# MAC, from a source address of the caller's choosing (raw socket).
SPOOF = r"""
import os, socket, struct, sys
src, sport, dst, dport, token, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), bytes.fromhex(sys.argv[5]), int(sys.argv[6])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(count):
    body = sys.argv[7].encode() + token + b"\x00" + (10**9 + i).to_bytes(8, "big") + os.urandom(120) + os.urandom(16)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
"""


class RelayFastPathLabTests(unittest.TestCase):
    timeout = 300
    skip = lab_unavailable()

    async def metrics(self, mesh: MeshLab) -> str:
        result = await mesh.lab.run("mallory", [sys.executable, "-c", METRICS, mesh.server_url + "/metrics"], timeout=20)
        return result.check().stdout.decode()

    @staticmethod
    def value(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    @staticmethod
    def rules(listing: str) -> list[tuple[str, str, str, str]]:
        """(source, port, token, destination) of each side in the kernel (nft drops the token's leading zeros)."""
        found = re.findall(r"ip saddr (\S+) udp sport (\d+) udp dport 8788 @th,96,64 0x([0-9a-f]+) dnat to (\S+)", listing)
        return [(a, p, t.zfill(16), b) for a, p, t, b in found]

    async def relayed_pair(self, server_args: tuple[str, ...] = ()) -> MeshLab:
        """hard1 and hard2 behind hard NATs (relayed), mallory on the internet, the server forwarding."""
        mesh = MeshLab(reactor, ProcessRunner(reactor), server_forwarding=True, server_args=server_args)
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        await mesh.lab.add_router("corp", nat="hard")
        await mesh.lab.add_router("cgn", nat="hard")
        await mesh.add_host("hard1", "corp")
        await mesh.add_host("hard2", "cgn")
        await mesh.add_host("mallory")
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in ("hard1", "hard2")])
        await eventually(lambda: self.pings(mesh), timeout=60, step=0.5, what="the relayed pair pinging")
        return mesh

    async def pings(self, mesh: MeshLab) -> bool:
        return await mesh.ping("hard1", "hard2", wait=1) and await mesh.ping("hard2", "hard1", wait=1)

    @staticmethod
    def direct_rules(listing: str) -> list[tuple[str, str, str, str]]:
        """(source, sport, side port, destination) of each WireGuard flow the kernel forwards."""
        return re.findall(r"ip saddr (\S+) udp sport (\d+) udp dport (\d+) dnat to (\S+)", listing)

    async def endpoints(self, mesh: MeshLab, name: str) -> list[str]:
        """WireGuard's endpoints in a node's namespace, as ``wg`` shows them."""
        result = await mesh.lab.run(name, ["wg", "show", mesh.nodes[name].interface, "endpoints"], timeout=10)
        return [line.split()[1] for line in result.check().stdout.decode().splitlines() if len(line.split()) == 2]

    async def on_kernel_path(self, mesh: MeshLab) -> bool:
        """Both nodes' WireGuard sends to the server's side ports."""
        server = mesh.lab.hosts["server"].address
        for name in ("hard1", "hard2"):
            found = await self.endpoints(mesh, name)
            if len(found) != 1 or found[0].rsplit(":", 1)[0] != server or int(found[0].rsplit(":", 1)[1]) not in DIRECT_PORTS:
                return False
        return True

    async def listing(self, mesh: MeshLab) -> str:
        return (await mesh.lab.run("server", ["nft", "list", "table", "ip", TABLE], timeout=10)).check().stdout.decode()

    async def test_a_hard_nat_pair_relays_through_the_kernel(self):
        # The shims' frames in the kernel: how nodes that cannot bind from
        # WireGuard's port are relayed (here: no side ports at all).
        mesh = await self.relayed_pair(SHIMS_ONLY)

        async def on_fast_path() -> bool:
            text = await self.metrics(mesh)
            return self.value(text, 'wire_relay_fastpath{state="on"}') == 1 and self.value(text, "wire_relay_fastpath_sessions") == 1

        await eventually(on_fast_path, timeout=30, step=0.5, what="the session on the kernel fast path")
        before = await self.metrics(mesh)
        forwarded = 'wire_stun_datagrams_total{outcome="relay_forwarded"}'
        result = await mesh.lab.run("hard1", ["ping", "-c", "50", "-i", "0.05", "-W", "1", "-q", mesh.nodes["hard2"].vpn_ip], timeout=30)
        summary = result.stdout.decode()
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", summary).groups())
        self.assertGreaterEqual(received, 49, summary)
        after = await self.metrics(mesh)
        in_python = self.value(after, forwarded) - self.value(before, forwarded)
        self.assertLess(in_python, 10, f"{in_python} frames went through Python for 100 ping packets")

        # The table says where the sides are and which tokens they carry.
        listing = await self.listing(mesh)
        rules = self.rules(listing)
        self.assertEqual(len(rules), 2, listing)
        counter_before = sum(int(b) for b in re.findall(r"packets \d+ bytes (\d+)", listing))

        # Forged frames from mallory: with her own address, the Python path
        # sees them (refused); with a side's address spoofed, the kernel
        # forwards them to the other side, whose shim drops them (its MAC
        # check); WireGuard never sees them and the pair goes on.
        server = mesh.lab.hosts["server"].address
        source, sport, token, _ = rules[0]
        mallory = mesh.lab.hosts["mallory"].address
        forged = 'wire_stun_datagrams_total{outcome="relay_forged"}'
        before = await self.metrics(mesh)
        for src, port in ((mallory, "40404"), (source, sport)):
            run = await mesh.lab.run(
                "mallory", [sys.executable, "-c", SPOOF, src, port, server, "8788", token, "20", MAGIC.decode("ascii")], timeout=20
            )
            self.assertEqual(run.rc, 0, run.stderr)
        await deferLater(reactor, 0.5, lambda: None)
        after = await self.metrics(mesh)
        self.assertGreaterEqual(self.value(after, forged) - self.value(before, forged), 1, "mallory's own frames: refused in Python")
        listing = await self.listing(mesh)
        self.assertEqual(len(self.rules(listing)), 2, "the session stays where it was")
        self.assertEqual(len(re.findall(r"dnat to", listing)), 2 + len(self.direct_rules(listing)), "and nothing else")
        self.assertTrue(await mesh.ping("hard1", "hard2", count=3), "the pair is unaffected")
        self.assertTrue(await mesh.ping("hard2", "hard1", count=3))
        listing = await self.listing(mesh)
        counter_after = sum(int(b) for b in re.findall(r"packets \d+ bytes (\d+)", listing))
        self.assertGreater(counter_after, counter_before)

        # hard2's daemon restarts: its new side leaves hard1's shim with a
        # token that is gone, so the session is back in Python; the server
        # says so to hard1 (its keepalive answer), hard1 asks for hard2's side
        # keeping its own, and the session goes back into the kernel.
        tokens = {token for _, _, token, _ in rules}
        await mesh.down("hard2")
        await mesh.up("hard2")
        await eventually(lambda: self.pings(mesh), timeout=60, step=0.5, what="the pair pinging after hard2's restart")

        async def back_in_the_kernel() -> bool:
            now = self.rules(await self.listing(mesh))
            return len(now) == 2 and {token for _, _, token, _ in now} != tokens and len({t for _, _, t, _ in now} & tokens) == 1

        waited = await eventually(back_in_the_kernel, timeout=45, step=0.5, what="the session back on the fast path")
        self.assertTrue(await self.pings(mesh), f"back in the kernel after {waited:.1f}s")

    async def test_a_killed_server_leaves_nothing_that_outlives_its_restart(self):
        """SIGKILL leaves the table and its flows behind; the next run
        deletes both at start, the pair recovers as fast as on the Python
        path, and goes back into the kernel."""
        mesh = await self.relayed_pair(SHIMS_ONLY)

        async def in_kernel() -> bool:
            return len(self.rules(await self.listing(mesh))) == 2

        await eventually(in_kernel, timeout=30, step=0.5, what="the session in the kernel")
        old = {token for _, _, token, _ in self.rules(await self.listing(mesh))}
        await mesh.kill_server(signal.SIGKILL)
        self.assertEqual(len(self.rules(await self.listing(mesh))), 2, "a killed server cleans nothing up")
        await mesh.start_server()
        restarted = reactor.seconds()
        waited = await eventually(lambda: self.pings(mesh), timeout=30, step=0.5, what="the pair pinging after the restart")
        self.assertLess(reactor.seconds() - restarted, 15, f"took {waited:.1f}s")

        async def new_sessions_in_kernel() -> bool:
            now = self.rules(await self.listing(mesh))
            return len(now) == 2 and not ({token for _, _, token, _ in now} & old)

        await eventually(new_sessions_in_kernel, timeout=30, step=0.5, what="the new session in the kernel, none of the old")
        self.assertTrue(await self.pings(mesh))

    async def test_wireguard_sends_to_the_relay_with_no_shim_in_the_way(self):
        """Both WireGuards send to their sides' ports; a ping stream survives
        the table's removal and a server restart; forged datagrams to the
        ports reach no one."""
        mesh = await self.relayed_pair()
        await eventually(lambda: self.on_kernel_path(mesh), timeout=40, step=0.5, what="both WireGuards sending to side ports")
        text = await self.metrics(mesh)
        self.assertEqual(self.value(text, "wire_relay_fastpath_direct_sessions"), 1, text)
        status = await mesh.status("hard1")
        [peer] = [n for n in status["nodes"] if n["node_name"] == "hard2"]
        self.assertEqual(peer.get("endpoint_kind"), "relay-kernel", peer)
        listing = await self.listing(mesh)
        direct = self.direct_rules(listing)
        self.assertEqual(len(direct), 2, listing)
        self.assertEqual({int(port) for _, _, port, _ in direct} - set(DIRECT_PORTS), set(), "side ports from the range")

        # The pair pings with neither shim nor Python relay in the way.
        forwarded = 'wire_stun_datagrams_total{outcome="relay_forwarded"}'
        before = await self.metrics(mesh)
        result = await mesh.lab.run("hard1", ["ping", "-c", "50", "-i", "0.05", "-W", "1", "-q", mesh.nodes["hard2"].vpn_ip], timeout=30)
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", result.stdout.decode()).groups())
        self.assertGreaterEqual(received, 49, result.stdout.decode())
        self.assertLess(self.value(await self.metrics(mesh), forwarded) - self.value(before, forwarded), 10)
        self.assertTrue(await self.on_kernel_path(mesh), "WireGuard's roaming kept the side ports")

        # Forged datagrams to a side port, from mallory's address (the
        # server's socket refuses them) and from a side's own (the kernel
        # forwards them to the other WireGuard, which drops them): the pair
        # goes on, its sides where they were.
        server, mallory = mesh.lab.hosts["server"].address, mesh.lab.hosts["mallory"].address
        source, sport, port, _ = direct[0]
        refused = ('relay_forged', 'relay_unknown', 'relay_malformed')
        before = await self.metrics(mesh)
        for src, from_port in ((mallory, "40404"), (source, sport)):
            run = await mesh.lab.run(
                "mallory", [sys.executable, "-c", SPOOF, src, from_port, server, port, "00" * 8, "20", MAGIC.decode("ascii")], timeout=20
            )
            self.assertEqual(run.rc, 0, run.stderr)
        await deferLater(reactor, 0.5, lambda: None)
        after = await self.metrics(mesh)
        moved = sum(self.value(after, f'wire_stun_datagrams_total{{outcome="{o}"}}') - self.value(before, f'wire_stun_datagrams_total{{outcome="{o}"}}') for o in refused)
        self.assertGreaterEqual(moved, 20, "mallory's own datagrams: refused by the side port's socket")
        self.assertEqual(self.direct_rules(await self.listing(mesh)), direct, "no side moved")
        self.assertTrue(await self.pings(mesh), "the pair is unaffected")

        # The server's word is renewed every keepalive round: long after it
        # would have lapsed, both still send to their side ports.
        await deferLater(reactor, KERNEL_VALID + KEEPALIVE_INTERVAL + 1, lambda: None)
        self.assertTrue(await self.on_kernel_path(mesh), "still on the kernel path")

        # A ping stream through two fallbacks: the table removed behind the
        # server's back (WireGuard's packets reach the side port's socket: the
        # server builds it again), then the server restarted (the nodes go
        # back to their shims, then into the kernel again).
        stream = Deferred.fromCoroutine(
            mesh.lab.run("hard1", ["ping", "-c", "200", "-i", "0.2", "-W", "1", mesh.nodes["hard2"].vpn_ip], timeout=90)
        )
        await deferLater(reactor, 2, lambda: None)
        (await mesh.lab.run("server", ["nft", "delete", "table", "ip", TABLE], timeout=10)).check()
        await eventually(lambda: self.has_direct_rules(mesh), timeout=15, step=0.5, what="the table built again")
        await deferLater(reactor, 3, lambda: None)
        await mesh.kill_server(signal.SIGTERM)
        await mesh.start_server()
        await eventually(lambda: self.on_kernel_path(mesh), timeout=40, step=0.5, what="the side ports again after the restart")
        ping = await stream
        out = ping.stdout.decode()
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
        replies = [int(n) for n in re.findall(r"icmp_seq=(\d+)", out)]
        self.assertGreaterEqual(received, sent * 0.8, out[-2000:])
        self.assertTrue(replies and max(replies) >= sent - 3, "the stream still answered at its end: " + out[-500:])
        self.assertTrue(await self.pings(mesh))

    async def has_direct_rules(self, mesh: MeshLab) -> bool:
        result = await mesh.lab.run("server", ["nft", "list", "table", "ip", TABLE], timeout=10)
        return result.rc == 0 and len(self.direct_rules(result.stdout.decode())) == 2
