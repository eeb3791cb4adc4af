"""Tests for wire.lab: build steps in memory, then real namespaces and NAT."""

from __future__ import annotations

import os
import json
import sys
from collections.abc import Sequence
from ipaddress import IPv4Interface

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_runner import process_gone, wait_for
from tests.fakes import FakeProcessRunner, PassThroughRunner
from wire.lab import (
    Host,
    Lab,
    LabError,
    LabUnavailable,
    NatType,
    Role,
    Step,
    bridge_steps,
    check_requirements,
    namespace_steps,
    nat_ruleset,
    router_steps,
    silence_ruleset,
    uplink_steps,
)
from wire.runner import (
    CommandFailed,
    CommandNotFound,
    IProcessRunner,
    ProcessResult,
    ProcessRunner,
    find_program,
)

# Answers every datagram with the source address it came from, as "ip:port".
ECHO_SERVER = """\
import select, socket, sys
sockets = []
for port in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(port)))
    sockets.append(s)
print("ready", flush=True)
while True:
    for s in select.select(sockets, [], [])[0]:
        data, source = s.recvfrom(2048)
        s.sendto(f"{source[0]}:{source[1]}".encode(), source)
"""

# A TCP connection's fate within 2 s: "connected", "refused" or "timeout".
CONNECT = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    print("connected")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""

# From one local port, asks each server port what it saw; prints a JSON list.
PROBE = """\
import json, socket, sys
server, local_port, ports = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", local_port))
s.settimeout(0.2)
seen = []
for port in ports:
    for attempt in range(25):
        s.sendto(b"probe", (server, port))
        try:
            data, source = s.recvfrom(2048)
        except socket.timeout:
            continue
        if source == (server, port):  # not a late answer to an earlier port
            seen.append(data.decode())
            break
    else:
        sys.exit(f"no answer from {server}:{port}")
print(json.dumps(seen))
"""

ECHO_PORTS = ["3478", "3479", "3480"]


def lab_skip_reason() -> str | None:
    try:
        check_requirements()
        find_program("ping")
    except (LabUnavailable, CommandNotFound) as e:
        return f"needs root, ip, nft, sysctl and ping: {e}"
    return None


def steps_outside_namespaces(steps: list[Step]) -> list[tuple[str, ...]]:
    """The argvs among steps that would act on the root namespace."""
    outside = []
    for step in steps:
        argv = step.argv
        if argv[:2] == ("ip", "-n") or argv[:3] in (("ip", "netns", "add"), ("ip", "netns", "exec")):
            continue
        outside.append(argv)
    return outside


class BuildStepTests(SynchronousTestCase):
    """What the lab would run, checked without running it."""

    def test_easy_nat_is_plain_masquerade_with_firewall(self) -> None:
        ruleset = nat_ruleset(NatType.EASY, "wan0", "lan0")
        self.assertIn('oifname "wan0" masquerade\n', ruleset)
        self.assertNotIn("random", ruleset)
        self.assertIn("hook input priority filter; policy drop;", ruleset)
        self.assertIn("hook forward priority filter; policy drop;", ruleset)
        self.assertIn("ct state established,related accept", ruleset)

    def test_hard_nat_randomises_ports(self) -> None:
        ruleset = nat_ruleset(NatType.HARD, "wan0", "lan0")
        self.assertIn('oifname "wan0" masquerade random,fully-random\n', ruleset)

    def test_every_step_stays_inside_a_namespace(self) -> None:
        gateway, address = IPv4Interface("198.18.0.1/15"), IPv4Interface("198.18.0.2/15")
        steps = [
            *namespace_steps("wl0000-a"),
            *bridge_steps("wl0000-a", "wl0000b0", gateway),
            *uplink_steps("wl0000-b", "wl0000e1", "wl0000-a", "wl0000p1", "wl0000b0", address, gateway.ip),
            *router_steps("wl0000-b", NatType.HARD, "wl0000e1", "wl0000b1"),
        ]
        self.assertEqual(steps_outside_namespaces(steps), [])

    def test_ruleset_goes_on_stdin(self) -> None:
        sysctl, nft = router_steps("wl0000-r", NatType.EASY, "wan0", "lan0")
        self.assertEqual(sysctl.argv[-1], "net.ipv4.ip_forward=1")
        self.assertEqual(nft.argv[-2:], ("-f", "-"))
        self.assertEqual(nft.stdin, nat_ruleset(NatType.EASY, "wan0", "lan0").encode())


class FakeRunnerLabTests(SynchronousTestCase):
    """Setup and teardown against a scripted runner: no root needed."""

    def test_namespace_failure_is_lab_unavailable_and_teardown_cleans(self) -> None:
        runner = FakeProcessRunner()
        etc_netns = self.mktemp()
        lab = Lab(runner, etc_netns=etc_netns)
        internet = f"{lab.prefix}-internet"
        runner.expect(["ip", "netns", "list"], stdout=b"otherns (id: 0)\n")
        runner.expect(
            ["ip", "netns", "add", internet], rc=1, stderr=b"mount --make-shared /run/netns failed: Operation not permitted"
        )
        error = self.failureResultOf(Deferred.fromCoroutine(lab.setup()), LabUnavailable).value
        self.assertIn("Operation not permitted", str(error))
        # Each namespace has a resolv.conf of its own (ip netns exec mounts it over /etc/resolv.conf).
        with open(os.path.join(etc_netns, internet, "resolv.conf")) as f:
            self.assertIn(f"nameserver {lab.resolver_address}", f.read())
        # Teardown deletes only what exists and carries this run's prefix.
        runner.expect(["ip", "netns", "list"], stdout=f"otherns (id: 0)\n{lab.prefix}-stray (id: 1)\n".encode())
        runner.expect(["ip", "netns", "pids", f"{lab.prefix}-stray"], stdout=b"")
        runner.expect(["ip", "netns", "delete", f"{lab.prefix}-stray"])
        runner.expect(["ip", "-o", "link", "show"], stdout=b"1: lo: <LOOPBACK,UP> mtu 65536\n2: eth0: <UP> mtu 1500\n")
        self.successResultOf(Deferred.fromCoroutine(lab.teardown()))
        runner.assert_all_called()
        self.assertFalse(os.path.exists(etc_netns), "the namespaces' files go with them")

    def test_bad_names_are_refused(self) -> None:
        lab = Lab(FakeProcessRunner(), etc_netns=self.mktemp())
        self.failureResultOf(Deferred.fromCoroutine(lab.add_public_node("Bad_Name")), LabError)
        self.failureResultOf(Deferred.fromCoroutine(lab.add_nat_node("n1", "nowhere")), LabError)
        self.failureResultOf(Deferred.fromCoroutine(lab.silence("nowhere")), LabError)

    def test_silence_is_one_ruleset_inside_the_hosts_namespace(self) -> None:
        runner = FakeProcessRunner()
        lab = Lab(runner, etc_netns=self.mktemp())
        lab.hosts["server"] = Host("server", Role.SERVER, "wl0000-server", "198.18.0.2", None, "e1", "w1")
        runner.expect(["ip", "netns", "exec", "wl0000-server", "nft", "-f", "-"])
        self.successResultOf(Deferred.fromCoroutine(lab.silence("server")))
        runner.assert_all_called()
        self.assertEqual(runner.calls[0].stdin, silence_ruleset().encode())
        # Everything in and out is dropped, before any other hook sees it.
        self.assertEqual(silence_ruleset().count("policy drop;"), 2)
        self.assertEqual(silence_ruleset().count("priority -400;"), 2)


def fail_nft(argv: tuple[str, ...]) -> None:
    """Every nft command fails (a build gone wrong halfway)."""
    if "nft" in argv:
        raise CommandFailed(ProcessResult(argv, 1, b"", b"injected failure"))


class LabTests(TestCase):
    """Real namespaces, real NAT. Needs root; CI runs these."""

    skip = lab_skip_reason()

    def setUp(self) -> None:
        self.runner = ProcessRunner(reactor)

    async def build(self, runner: IProcessRunner | None = None) -> Lab:
        """Server, a public node, and a node behind each kind of NAT."""
        lab = Lab(runner or self.runner)
        self.addCleanup(lab.teardown)
        await lab.setup()
        await lab.add_public_node("public")
        await lab.add_router("easy-router", nat="easy")
        await lab.add_nat_node("easy-node", "easy-router")
        await lab.add_router("hard-router", nat=NatType.HARD)
        await lab.add_nat_node("hard-node", "hard-router")
        return lab

    async def assert_nothing_left(self, prefix: str, pids: Sequence[int] = ()) -> None:
        namespaces = (await self.runner.run(["ip", "netns", "list"])).check().stdout.decode()
        self.assertNotIn(prefix, namespaces)
        links = (await self.runner.run(["ip", "-o", "link", "show"])).check().stdout.decode()
        self.assertNotIn(prefix, links)
        for pid in pids:
            self.assertTrue(process_gone(pid), f"process {pid} is still there")

    async def ping(self, lab: Lab, host: str, address: str) -> int:
        result = await lab.run(host, ["ping", "-c", "1", "-W", "1", address])
        return result.rc

    async def mapped_addresses(self, lab: Lab, node: str) -> list[tuple[str, int]]:
        """The source address the server sees for one node port, per server port."""
        echo = lab.start("server", [sys.executable, "-c", ECHO_SERVER, *ECHO_PORTS], log_prefix="echo")
        await wait_for(lambda: "ready" in echo.tail or not echo.running, "the echo server")
        self.assertTrue(echo.running, f"echo server died: {echo.tail}")
        server = lab.hosts["server"].address
        assert server is not None
        result = await lab.run(node, [sys.executable, "-c", PROBE, server, "40000", *ECHO_PORTS], timeout=20)
        seen = json.loads(result.check().stdout)
        return [(ip, int(port)) for ip, port in (entry.rsplit(":", 1) for entry in seen)]

    async def test_hosts_and_addresses(self) -> None:
        lab = await self.build()
        self.assertEqual(lab.hosts["server"].role, Role.SERVER)
        self.assertEqual(lab.hosts["easy-router"].nat, NatType.EASY)
        self.assertEqual(lab.hosts["easy-node"].router, "easy-router")
        self.assertIsNone(lab.hosts["easy-node"].address)
        self.assertEqual(lab.public_address("easy-node"), lab.hosts["easy-router"].address)
        self.assertNotEqual(lab.hosts["easy-router"].lan_network, lab.hosts["hard-router"].lan_network)
        names = [host.wireguard_interface for host in lab.hosts.values()]
        self.assertEqual(len(set(names)), len(names))
        self.assertTrue(all(name.startswith(lab.prefix) and len(name) <= 15 for name in names))
        addresses = (await lab.run("easy-node", ["ip", "-o", "-4", "addr", "show"])).check().stdout.decode()
        self.assertIn(f"{lab.hosts['easy-node'].lan_address}/24", addresses)

    async def test_every_host_reaches_the_server(self) -> None:
        lab = await self.build()
        server = lab.hosts["server"].address
        assert server is not None
        for name in lab.hosts:
            if name != "internet":
                self.assertEqual(await self.ping(lab, name, server), 0, f"{name} cannot ping the server")

    async def test_server_cannot_reach_into_a_lan(self) -> None:
        lab = await self.build()
        for node in ("easy-node", "hard-node"):
            router = lab.hosts[lab.hosts[node].router or ""]
            lan_address = lab.hosts[node].lan_address
            assert router.address and router.lan_network and lan_address
            # Route the LAN to the router explicitly: it is the firewall that must say no.
            await lab.run("server", ["ip", "route", "add", router.lan_network, "via", router.address])
            self.assertNotEqual(await self.ping(lab, "server", lan_address), 0, f"server reached {node}")
            self.assertEqual(await self.ping(lab, router.name, lan_address), 0, f"{router.name} lost {node}")

    async def test_easy_nat_keeps_one_mapping(self) -> None:
        lab = await self.build()
        seen = await self.mapped_addresses(lab, "easy-node")
        self.assertEqual({ip for ip, _ in seen}, {lab.hosts["easy-router"].address})
        self.assertEqual(len({port for _, port in seen}), 1, f"mappings changed per destination: {seen}")

    async def test_hard_nat_maps_each_destination_anew(self) -> None:
        lab = await self.build()
        seen = await self.mapped_addresses(lab, "hard-node")
        self.assertEqual({ip for ip, _ in seen}, {lab.hosts["hard-router"].address})
        # Random ports: three the same by chance is about one in 10^9.
        self.assertGreater(len({port for _, port in seen}), 1, f"one mapping for all destinations: {seen}")

    async def test_public_node_is_seen_as_itself(self) -> None:
        lab = await self.build()
        seen = await self.mapped_addresses(lab, "public")
        self.assertEqual(set(seen), {(lab.hosts["public"].address, 40000)})

    async def test_a_silenced_host_answers_nothing_not_even_a_refusal(self) -> None:
        lab = await self.build()
        server = lab.hosts["server"].address
        assert server is not None
        self.assertEqual(await self.ping(lab, "public", server), 0)
        connect = [sys.executable, "-c", CONNECT, server, "9"]  # a port nobody listens on
        self.assertEqual((await lab.run("public", connect, timeout=10)).stdout.strip(), b"refused")
        await lab.silence("server")
        self.assertNotEqual(await self.ping(lab, "public", server), 0)
        self.assertEqual((await lab.run("public", connect, timeout=10)).stdout.strip(), b"timeout")
        self.assertEqual(await self.ping(lab, "public", lab.hosts["internet"].address or ""), 0, "the rest goes on")

    async def test_teardown_leaves_nothing_behind(self) -> None:
        lab = await self.build()
        tracked = lab.start("public", ["sleep", "60"])
        # A process in a lab namespace that the lab did not start itself.
        stray = self.runner.start(["ip", "netns", "exec", lab.hosts["easy-node"].namespace, "sleep", "60"])
        self.addCleanup(stray.stop)
        await lab.teardown()
        self.assertEqual(tracked.rc, -15)
        await stray.when_exited()
        await self.assert_nothing_left(lab.prefix, [tracked.pid, stray.pid])
        self.assertEqual(lab.hosts, {})
        await lab.teardown()  # idempotent

    async def test_teardown_after_failed_build(self) -> None:
        lab = Lab(PassThroughRunner(self.runner, inspect=fail_nft))
        self.addCleanup(lab.teardown)
        await lab.setup()
        with self.assertRaises(CommandFailed):
            await lab.add_router("broken", nat="easy")
        namespaces = (await self.runner.run(["ip", "netns", "list"])).check().stdout.decode()
        self.assertIn(f"{lab.prefix}-broken", namespaces)  # the build really stopped halfway
        self.assertNotIn("broken", lab.hosts)
        await lab.teardown()
        await self.assert_nothing_left(lab.prefix)

    async def test_async_context_manager(self) -> None:
        async with Lab(self.runner) as lab:
            prefix = lab.prefix
            echo = lab.start("server", ["sleep", "60"])
            self.assertEqual(await self.ping(lab, "server", lab.hosts["internet"].address or ""), 0)
        self.assertFalse(echo.running)
        await self.assert_nothing_left(prefix, [echo.pid])
