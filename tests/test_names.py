"""The mesh's names on a node (wire.node.names): the DNS server follows the
netmap, the OS resolver is pointed at it and put back, and nothing there
ever stops the mesh. Then the daemon carrying it, and one real server on
127.0.0.1 answering a peer's name."""

from __future__ import annotations

import os
import socket
from dataclasses import replace

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.names import client, dns
from twisted.names.error import DNSNameError
from twisted.trial import unittest

from tests.fakes import FakeWireGuard, started_daemon
from tests.helpers import body_for
from tests.test_daemon import ScriptedServer, peer_view
from wire.node.config import NodeConfig, save_config
from wire.node.dns.server import DnsBindError
from wire.node.names import MeshNames, resolver_shared_with_host
from wire.node.osdns import OsDnsError, OsDnsPaths
from wire.protocol.dns import DnsConfig, DnsRecord, dns_digest

CONFIG = DnsConfig(records=(DnsRecord("nas", "A", "192.168.1.20"),))


class FakeServer:
    """MeshDns in memory: what it was started on and last given."""

    def __init__(self, reactor, address, port, *, reverse_networks=(), upstream=()):
        self.address, self.requested_port = address, port
        self.reverse_networks, self.machine_upstream = list(reverse_networks), tuple(upstream)
        self.started = self.stopped = False
        self.updates: list = []
        self.fail_start: str | None = None

    @property
    def port(self):
        return self.requested_port

    def start(self):
        if FakeServer.fail_next:
            FakeServer.fail_next = None
            return defer.fail(DnsBindError("cannot listen for DNS on UDP 10.99.0.1:53: address in use"))
        self.started = True
        return defer.succeed(None)

    def stop(self):
        self.stopped = True
        return defer.succeed(None)

    def update(self, peers, config, *, own_name=None):
        self.updates.append((sorted(peers), config, own_name))

    def set_machine_upstream(self, upstream):
        self.machine_upstream = tuple(upstream)

    def set_exit_resolver(self, address):
        self.exit_resolver = address

    fail_next: str | None = None


class FakeOsDns:
    def __init__(self, mode="resolv.conf", accept_dns=True):
        self.mode = mode if accept_dns else "none"
        self.interface = "wire0"
        self.upstreams = ("192.168.1.1",)
        self.applied: list = []
        self.restores = 0
        self.checks = 0
        self.fail_with: str | None = None

    async def apply(self, vpn_address, domain="wire.internal", search=None, networks=()):
        if self.fail_with:
            raise OsDnsError(self.fail_with)
        self.applied.append((vpn_address, domain, search, list(networks)))
        self.upstreams = ("192.168.1.1", "192.168.1.2")

    async def restore(self):
        self.restores += 1

    async def check(self):
        self.checks += 1
        return False

    def status(self):
        return {"mode": self.mode}


class MeshNamesTests(unittest.TestCase):
    def setUp(self):
        FakeServer.fail_next = None
        self.servers: list[FakeServer] = []
        self.chosen: list = []

        def make_server(*args, **kwargs):
            server = FakeServer(*args, **kwargs)
            self.servers.append(server)
            return server

        async def choose_os(runner, interface, paths, *, accept_dns=True):
            self.os_dns = FakeOsDns(accept_dns=accept_dns)
            self.chosen.append(accept_dns)
            return self.os_dns

        self.shared = False
        self.names = MeshNames(
            None, None, "wire0", OsDnsPaths(state_dir=self.mktemp()), make_server=make_server, choose_os=choose_os,
            shared_with_host=lambda path: self.shared,
        )

    def follow(self, config=CONFIG, vpn_ip="10.99.0.1", peers=(("web2", "10.99.0.2"), ("Bad Name!", "10.99.0.3")), **v6):
        self.successResultOf(defer.ensureDeferred(self.names.follow(config, vpn_ip, "10.99.0.0/16", "web1", peers, **v6)))

    def test_ipv6_addresses_give_aaaa_names_and_reverse_lookups(self):
        v6 = {"vpn_ip6": "fd7a:115c:a1e0::1", "subnet6": "fd7a:115c:a1e0::/48"}
        self.follow(peers=(("web2", ("10.99.0.2", "fd7a:115c:a1e0::2")), ("web3", "10.99.0.3")), **v6)
        (server,) = self.servers
        self.assertEqual(server.reverse_networks, ["10.99.0.0/16", "fd7a:115c:a1e0::/48"])
        self.assertEqual(server.updates[-1][0], sorted([
            ("web2", ("10.99.0.2", "fd7a:115c:a1e0::2")),
            ("web3", ("10.99.0.3",)),
            ("web1", ("10.99.0.1", "fd7a:115c:a1e0::1")),
        ]))
        # The mesh's IPv6 subnet goes (a node re-enrolled without it): reverse lookups follow.
        self.follow()
        self.assertEqual(self.servers[-1].reverse_networks, ["10.99.0.0/16"])
        self.assertEqual(self.servers[-1].updates[-1][0][0], ("web1", ("10.99.0.1",)))

    def test_no_mesh_dns_no_server_and_the_os_resolver_untouched(self):
        self.follow(config=None)
        self.assertEqual(self.servers, [])
        self.assertEqual(self.chosen, [])
        self.assertFalse(self.names.status()["enabled"])

    def test_the_server_answers_the_netmap_and_the_os_resolver_points_at_it(self):
        self.follow()
        (server,) = self.servers
        self.assertTrue(server.started)
        self.assertEqual((server.address, server.requested_port, server.reverse_networks), ("10.99.0.1", 53, ["10.99.0.0/16"]))
        # Only names that are DNS labels; this node too.
        self.assertEqual(server.updates[-1], (sorted([("web2", ("10.99.0.2",)), ("web1", ("10.99.0.1",))]), CONFIG, "web1"))
        self.assertEqual(self.os_dns.applied, [("10.99.0.1", "wire.internal", None, ["10.99.0.0/16"])])
        self.assertEqual(server.machine_upstream, ("192.168.1.1", "192.168.1.2"), "what the machine had, learnt by apply")
        # The same again: the zone follows, the OS resolver is only checked.
        self.follow(peers=(("web3", "10.99.0.4"),))
        self.assertEqual(len(self.servers), 1)
        self.assertEqual(server.updates[-1][0], sorted([("web3", ("10.99.0.4",)), ("web1", ("10.99.0.1",))]))
        self.assertEqual(len(self.os_dns.applied), 1)
        self.assertEqual(self.os_dns.checks, 1)
        # Another domain: applied again.
        self.follow(config=DnsConfig(domain="corp.internal"))
        self.assertEqual(self.os_dns.applied[-1][1], "corp.internal")
        status = self.names.status()
        self.assertEqual((status["enabled"], status["domain"], status["listening"], status["problem"]),
                         (True, "corp.internal", "10.99.0.1:53", None))

    def test_a_new_vpn_address_moves_the_server(self):
        self.follow()
        self.follow(vpn_ip="10.99.0.9")
        self.assertTrue(self.servers[0].stopped)
        self.assertEqual(self.servers[1].address, "10.99.0.9")

    def test_a_port_that_cannot_be_bound_is_a_problem_tried_again(self):
        FakeServer.fail_next = "in use"
        self.follow()
        self.assertIn("address in use", self.names.status()["problem"])
        self.assertEqual(self.os_dns.applied, [], "never point the OS at a resolver that is not there")
        self.follow()
        self.assertTrue(self.servers[-1].started)
        self.assertIsNone(self.names.status()["problem"])

    def test_an_os_resolver_that_cannot_be_written_is_a_problem(self):
        self.successResultOf(defer.ensureDeferred(self.names.prepare()))
        self.os_dns.fail_with = "cannot write /etc/resolv.conf: read-only file system"
        self.follow()
        self.assertIn("the OS resolver is not pointed at the mesh: cannot write", self.names.status()["problem"])
        self.assertTrue(self.servers[0].started, "the mesh DNS still answers on the VPN address")

    def test_stop_restores_the_os_resolver_and_stops_the_server(self):
        self.follow()
        self.successResultOf(defer.ensureDeferred(self.names.stop()))
        self.assertEqual(self.os_dns.restores, 1)
        self.assertTrue(self.servers[0].stopped)
        # The mesh's DNS switched off by the server: the same.
        self.follow()
        self.follow(config=None)
        self.assertEqual(self.os_dns.restores, 2)

    def test_accept_dns_false_and_a_host_resolver_are_left_alone(self):
        self.names.accept_dns = False
        self.follow()
        self.assertEqual(self.chosen, [False])
        self.assertEqual(self.os_dns.applied, [])
        self.assertTrue(self.servers[0].started)

    def test_a_namespace_without_its_own_resolv_conf_leaves_the_hosts_alone(self):
        self.shared = True
        self.follow()
        self.assertEqual(self.chosen, [False])
        self.assertIn("is the host's", self.names.status()["problem"])


class SharedWithHostTests(unittest.TestCase):
    def test_only_a_named_namespace_without_a_file_of_its_own_shares(self):
        run = self.mktemp()
        etc = self.mktemp()
        os.makedirs(run)
        # This process's own namespace, under a name (as ip netns would bind it).
        os.symlink("/proc/self/ns/net", os.path.join(run, "mine"))
        self.assertTrue(resolver_shared_with_host("/etc/resolv.conf", run, etc))
        os.makedirs(os.path.join(etc, "mine"))
        with open(os.path.join(etc, "mine", "resolv.conf"), "w") as f:
            f.write("nameserver 10.0.0.1\n")
        self.assertFalse(resolver_shared_with_host("/etc/resolv.conf", run, etc))
        self.assertFalse(resolver_shared_with_host("/tmp/other/resolv.conf", run, etc), "a file of its own was named")
        self.assertFalse(resolver_shared_with_host("/etc/resolv.conf", self.mktemp(), etc), "no named namespaces")


class DaemonCarriesNamesTests(unittest.TestCase):
    """The daemon gives the names what the netmap says, says what it holds, and stops them."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = ScriptedServer(self.clock)
        self.server.peers = {"db": peer_view("db", 2), "ops": peer_view("ops", 3)}
        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)
        self.followed: list = []
        self.stops = 0
        test = self

        class RecordingNames:
            async def prepare(self):
                test.followed.append("prepare")

            async def follow(self, config, vpn_ip, subnet, own_name, peers, *, vpn_ip6="", subnet6="", exit_resolver=""):
                test.followed.append((config, vpn_ip, own_name, sorted(peers)))
                test.followed6 = (vpn_ip6, subnet6)

            async def stop(self):
                test.stops += 1

            def set_exit_resolver(self, address):
                test.exit_resolver = address

            def status(self):
                return {"enabled": True, "domain": "wire.internal"}

        config = NodeConfig(server_url="https://wire.test", node_name="web1", node_id=body_for("web1")["node_id"],
                            vpn_ip="10.99.1.1", vpn_subnet="10.99.0.0/16")
        save_config(self.config_dir, config)
        self.server.next_answer_extra = {"dns": CONFIG.to_json()}
        self.daemon = started_daemon(
            self, clock=self.clock, config_dir=self.config_dir, config=config,
            wireguard=FakeWireGuard(clock=self.clock), client=self.server, names=RecordingNames(),
        )
        self.clock.advance(0)
        self.clock.advance(1)

    def test_names_follow_the_netmap_and_the_poll_says_what_it_holds(self):
        self.assertEqual(self.followed[0], "prepare", "a crashed run's resolver is undone before any netmap")
        config, vpn_ip, own_name, peers = self.followed[-1]
        self.assertEqual((config, vpn_ip, own_name), (CONFIG, self.daemon.config.vpn_ip, "web1"))
        self.assertEqual(peers, [("db", ("10.99.1.2",)), ("ops", ("10.99.1.3",))])
        self.assertEqual(self.followed6, ("", ""), "a mesh without IPv6: A records only")
        self.assertEqual(self.server.held_dns, dns_digest(CONFIG.to_json()))

    def test_with_ipv6_each_name_carries_both_addresses(self):
        self.daemon.config = replace(self.daemon.config, vpn_ip6="fd7a:115c:a1e0::1", vpn_subnet6="fd7a:115c:a1e0::/48")
        self.server.push([peer_view("db", 2, vpn_ip6="fd7a:115c:a1e0::2")])
        self.clock.advance(1)
        _, _, _, peers = self.followed[-1]
        self.assertEqual(peers, [("db", ("10.99.1.2", "fd7a:115c:a1e0::2")), ("ops", ("10.99.1.3",))])
        self.assertEqual(self.followed6, ("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::/48"))

    def test_stopping_the_daemon_stops_the_names(self):
        self.successResultOf(self.daemon.stopService())
        self.assertEqual(self.stops, 1)


class RealServerTests(unittest.TestCase):
    """MeshNames with the real MeshDns on 127.0.0.1 (OS resolver left alone)."""

    async def test_a_peers_name_resolves_and_a_removed_one_does_not(self):
        names = MeshNames(reactor, None, "wire0", OsDnsPaths(state_dir=self.mktemp()), accept_dns=False, port=0)
        self.addCleanup(lambda: defer.ensureDeferred(names.stop()))
        await names.follow(CONFIG, "127.0.0.1", "127.0.0.0/8", "web1", [("web2", "127.0.0.2")])
        port = names.server.port
        resolver = client.Resolver(servers=[("127.0.0.1", port)], reactor=reactor)
        answers, _, _ = await resolver.lookupAddress("web2.wire.internal")
        self.assertEqual([a.payload.dottedQuad() for a in answers if a.type == dns.A], ["127.0.0.2"])
        answers, _, _ = await resolver.lookupAddress("nas.wire.internal")
        self.assertEqual([a.payload.dottedQuad() for a in answers if a.type == dns.A], ["192.168.1.20"])
        await names.follow(CONFIG, "127.0.0.1", "127.0.0.0/8", "web1", [])
        with self.assertRaises(DNSNameError):  # NXDOMAIN
            await client.Resolver(servers=[("127.0.0.1", port)], reactor=reactor).lookupAddress("web2.wire.internal")
        self.assertEqual(names.status()["os"]["mode"], "none")


class RealServerIPv6Tests(unittest.TestCase):
    """The real MeshDns on 127.0.0.1 answers AAAA for a peer's and this node's IPv6 mesh addresses."""

    async def test_aaaa_from_the_netmap(self):
        names = MeshNames(reactor, None, "wire0", OsDnsPaths(state_dir=self.mktemp()), accept_dns=False, port=0)
        self.addCleanup(lambda: defer.ensureDeferred(names.stop()))
        await names.follow(CONFIG, "127.0.0.1", "127.0.0.0/8", "web1", [("web2", ("127.0.0.2", "fd7a:115c:a1e0::2"))],
                           vpn_ip6="fd7a:115c:a1e0::1", subnet6="fd7a:115c:a1e0::/48")
        resolver = client.Resolver(servers=[("127.0.0.1", names.server.port)], reactor=reactor)
        for name, address in (("web2", "fd7a:115c:a1e0::2"), ("web1", "fd7a:115c:a1e0::1")):
            answers, _, _ = await resolver.lookupIPV6Address(f"{name}.wire.internal")
            self.assertEqual([socket.inet_ntop(socket.AF_INET6, a.payload.address) for a in answers if a.type == dns.AAAA],
                             [address], name)
        answers, _, _ = await resolver.lookupAddress("web2.wire.internal")
        self.assertEqual([a.payload.dottedQuad() for a in answers if a.type == dns.A], ["127.0.0.2"])
        answers, _, _ = await resolver.lookupPointer(
            ".".join(reversed("fd7a115ca1e000000000000000000002")) + ".ip6.arpa"
        )
        self.assertEqual([str(a.payload.name) for a in answers if a.type == dns.PTR], ["web2.wire.internal"])


class ShownTests(unittest.TestCase):
    """wire status and diagnose tell the names and where they are answered."""

    LOCAL = {"dns": {"enabled": True, "domain": "wire.internal", "listening": "10.99.0.1:53",
                     "os": {"mode": "resolv.conf"}, "problem": None}}

    def test_status_gives_each_node_its_dns_name(self):
        from wire.cli.formatting import format_status
        from wire.ops.views import with_dns_names

        result = {"server": "https://s", "online": 2, "offline": 0, "total": 2,
                  "nodes": [{"node_name": "web1", "vpn_ip": "10.99.0.1", "status": "online"},
                            {"node_name": "Odd Name", "vpn_ip": "10.99.0.2", "status": "online"}]}
        with_dns_names(result, self.LOCAL)
        self.assertEqual([n.get("dns_name") for n in result["nodes"]], ["web1.wire.internal", None])
        text = format_status(result, lambda code, s: s)
        self.assertIn("names: *.wire.internal on 10.99.0.1:53; the OS resolver sends it here (resolv.conf)", text)
        self.assertIn("web1.wire.internal", text)
        self.assertNotIn("dns_name", with_dns_names({"nodes": [{"node_name": "a"}]}, None)["nodes"][0])

    def test_diagnose_checks_the_mesh_dns(self):
        from wire.ops.health import _dns_check

        check = _dns_check(self.LOCAL["dns"])
        self.assertTrue(check["ok"], check)
        self.assertIn("*.wire.internal answered on 10.99.0.1:53; OS resolver: resolv.conf", check["detail"])
        broken = dict(self.LOCAL["dns"], listening=None, problem="cannot listen for DNS on UDP 10.99.0.1:53: in use")
        check = _dns_check(broken)
        self.assertFalse(check["ok"])
        self.assertIn("in use", check["detail"])

    def test_targets_take_mesh_dns_names(self):
        from wire.ops.context import OpError
        from wire.ops.targets import _parse_target

        self.assertEqual(_parse_target("web2.wire.internal"), "web2")
        self.assertEqual(_parse_target("WEB2.corp.internal.", "corp.internal"), "web2")
        self.assertEqual(_parse_target("10.99.0.2"), "10.99.0.2")
        self.assertRaises(OpError, _parse_target, "web2.example.com")
