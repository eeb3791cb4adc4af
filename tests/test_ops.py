"""The shared operations against a real coordination server on 127.0.0.1 and
a real node daemon (with a fake WireGuard) serving its control API on a UNIX
socket; every external command is scripted with FakeProcessRunner."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.fakes import FakeProcessRunner, FakeWireGuard, fixed_nat
from tests.helpers import body_for, make_coordinator, registration_for, settled
from tests.serverproc import CHECKOUT, ServerProcess
from tests.test_daemon import eventually
from wire import cli, ops
from wire.admin_ops import AdminOps
from wire.client import BadAnswer, CoordinationClient, ServerError
from wire.install import InstallCheck
from wire.jointoken import decode_join_token
from wire.keys import load_or_create_keys
from wire.node import launcher
from wire.node.config import NodeConfig, config_path, load_config, save_config
from wire.node.control import build_control_site, control_socket_path
from wire.node.daemon import NodeDaemon
from wire.protocol import ProtocolError
from wire.node.enroll import JoinRequest, coordination_client, credential_path, save_join_request
from wire.node.tap import node_start
from wire.node.wireguard import InterfaceStatus
from wire.ops import context as context_module
from wire.ops.troubles import duration
from wire.runner import CommandNotFound
from wire.server.admin import Admin
from wire.server.api import build_site
from wire.server.auth import Authority
from wire.stun import StunServerProtocol

OK_TOOLS = InstallCheck("debian", "/usr/bin/wg", "/usr/bin/wireguard-go", False, (), ())
NO_TOOLS = InstallCheck(
    "debian", None, None, False, ("wg", "wireguard-go"), ("apt-get", "install", "-y", "wireguard-go", "wireguard-tools")
)
NO_DEVICE = b'Cannot find device "wire0"\n'

# Real iputils 20221126 output.
PING_OK = b"""PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.
64 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=0.512 ms
64 bytes from 10.99.0.2: icmp_seq=2 ttl=64 time=0.433 ms
64 bytes from 10.99.0.2: icmp_seq=3 ttl=64 time=0.401 ms
64 bytes from 10.99.0.2: icmp_seq=4 ttl=64 time=0.455 ms

--- 10.99.0.2 ping statistics ---
4 packets transmitted, 4 received, 0% packet loss, time 3051ms
rtt min/avg/max/mdev = 0.401/0.450/0.512/0.040 ms
"""
PING_LOST = b"""PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.

--- 10.99.0.2 ping statistics ---
4 packets transmitted, 0 received, 100% packet loss, time 3068ms

"""
PING_PARTIAL = b"""PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.
64 bytes from 10.99.0.2: icmp_seq=2 ttl=64 time=1.20 ms

--- 10.99.0.2 ping statistics ---
2 packets transmitted, 1 received, 50% packet loss, time 1002ms
rtt min/avg/max/mdev = 1.200/1.200/1.200/0.000 ms
"""
PING_UNREACHABLE = b"""PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.
From 10.99.0.1 icmp_seq=1 Destination Host Unreachable

--- 10.99.0.2 ping statistics ---
1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms

"""
PING_MACOS = b"""PING 10.99.0.2 (10.99.0.2): 56 data bytes
64 bytes from 10.99.0.2: icmp_seq=0 ttl=64 time=3.114 ms

--- 10.99.0.2 ping statistics ---
1 packets transmitted, 1 packets received, 0.0% packet loss
round-trip min/avg/max/stddev = 3.114/3.114/3.114/0.000 ms
"""


def short_tempdir(test: unittest.TestCase) -> str:
    """A config dir under /tmp: a UNIX socket path must fit in 108 bytes."""
    path = tempfile.mkdtemp(prefix="wire-test-")
    test.addCleanup(shutil.rmtree, path, True)
    return path


class SilentWireGuard(FakeWireGuard):
    """Peers are configured but never answer: no handshake, ever."""

    async def status(self) -> InterfaceStatus:
        status = await super().status()
        return replace(status, peers=tuple(replace(p, latest_handshake=0) for p in status.peers))


class Mesh:
    """A coordination server on 127.0.0.1, a node config dir, and (on request)
    an in-process node daemon serving the control API there, as ``twistd
    wire-node`` would. Contexts it makes run commands through ``self.runner``."""

    def __init__(self, test: unittest.TestCase, stun: bool = False):
        self.test = test
        self.coordinator = make_coordinator(test, clock=reactor)
        self.http = self._listen(stun)
        self.url = f"http://127.0.0.1:{self.http.getHost().port}"
        self.config_dir = short_tempdir(test)
        self.runner = FakeProcessRunner()
        self.root = True
        self.tools = [OK_TOOLS]  # check_install answers these in turn; the last one sticks
        self.daemon: NodeDaemon | None = None
        self._control_closed = None
        self.wireguard: FakeWireGuard | None = None

    def _listen(self, stun: bool):
        """HTTP on some port P; with ``stun``, STUN on UDP P+1 and P+2 (the convention)."""
        site = build_site(self.coordinator)
        for _ in range(20):
            http = reactor.listenTCP(0, site, interface="127.0.0.1")
            self.test.addCleanup(http.stopListening)
            if not stun:
                return http
            port = http.getHost().port
            try:
                for offset in (1, 2):
                    udp = reactor.listenUDP(port + offset, StunServerProtocol(reactor), interface="127.0.0.1")
                    self.test.addCleanup(udp.stopListening)
                return http
            except CannotListenError:
                continue  # P+1 or P+2 taken: another P
        raise RuntimeError("no port P with UDP P+1, P+2 free")

    def context(self) -> ops.Context:
        return ops.Context(reactor, self.config_dir, runner=self.runner, is_root=lambda: self.root, check_install=self._check_install)

    def _check_install(self) -> InstallCheck:
        return self.tools.pop(0) if len(self.tools) > 1 else self.tools[0]

    def configure(self, name: str = "web1", **fields) -> NodeConfig:
        config = NodeConfig(server_url=self.url, node_name=name, node_id=body_for(name)["node_id"], **fields)
        save_config(self.config_dir, config)
        return config

    async def register(self, name: str, public_ip: str = "127.0.0.1", **fields) -> dict:
        """Another node, registered as if from ``public_ip``; its server view."""
        await self.coordinator.register(registration_for(name, **fields), public_ip)
        return self.view(name)

    def view(self, name: str) -> dict:
        return next(n for n in self.coordinator.status()["nodes"] if n["node_name"] == name)

    def launch_daemon(self, wireguard: FakeWireGuard | None = None, nat_type: str = "easy") -> NodeDaemon:
        """Start the daemon for the saved config (or the join request), as ``twistd wire-node`` does."""
        start = node_start(self.config_dir)
        config = start.config
        self.wireguard = wireguard or FakeWireGuard(config.interface, clock=reactor)
        daemon = NodeDaemon(
            clock=reactor,
            config_dir=self.config_dir,
            config=config,
            keys=load_or_create_keys(self.config_dir),
            wireguard=self.wireguard,
            # As twistd wire-node does: the config's server, its pinned certificate, its credential.
            client=coordination_client(reactor, config, self.config_dir, persistent=False, credential=start.credential),
            probe_nat=fixed_nat(nat_type=nat_type),
            lan_ip=lambda: "192.168.1.10",
            join_token=start.token,
            join_pending=start.pending,
        )
        control = reactor.listenUNIX(
            control_socket_path(self.config_dir), build_control_site(daemon, reactor, lambda: self.stop_daemon()), mode=0o600
        )
        self._control = control
        daemon.startService()
        self.daemon = daemon
        self.test.addCleanup(self.stop_daemon)
        return daemon

    async def start_daemon(self, wireguard: FakeWireGuard | None = None, nat_type: str = "easy", peers: int = 0) -> NodeDaemon:
        daemon = self.launch_daemon(wireguard, nat_type)
        await daemon.when_registered()
        await eventually(lambda: daemon.interface_ready and len(self.wireguard.peers) == peers)
        # The fake has handshaken by now: let the daemon see it, as its path check would.
        await daemon.reconciler.reconcile()
        return daemon

    def stop_daemon(self):
        """The daemon process exits (``wire down``, or a test's end)."""
        if self.daemon is None:
            # Stopped already (by POST /down): a test's end waits for its socket to close.
            closed = self._control_closed
            return closed if closed is not None and not closed.called else None
        daemon, self.daemon = self.daemon, None
        daemon.stopService()
        self._control_closed = self._control.stopListening()
        return self._control_closed

    async def stop_server(self) -> None:
        """Gone: refuses connections, and answers the open long-polls first."""
        await self.http.stopListening()
        self.coordinator.close()


class StatusTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)

    async def test_the_server_view_without_a_daemon(self):
        self.mesh.configure("web1")
        await self.mesh.register("web1")
        await self.mesh.register("db1")
        result = await ops.status(self.mesh.context())
        self.assertEqual([(n["node_name"], n["status"], n["this_node"]) for n in result["nodes"]], [("db1", "online", False), ("web1", "online", True)])
        self.assertEqual((result["total"], result["online"], result["offline"]), (2, 2, 0))
        self.assertEqual((result["server"], result["daemon_running"]), (self.mesh.url, False))
        self.assertEqual(result["my_node_id"], body_for("web1")["node_id"])
        self.assertNotIn("path", result["nodes"][0], "no daemon: no path to tell")

    async def test_paths_come_from_the_running_daemon(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        result = await ops.status(self.mesh.context())
        db1 = next(n for n in result["nodes"] if n["node_name"] == "db1")
        # Both seen from 127.0.0.1: the same NAT, so the LAN address.
        self.assertEqual((db1["path"], db1["endpoint"]), ("lan", "10.1.1.1:51820"))
        self.assertLess(db1["handshake_age"], 5)
        self.assertEqual(db1["path_reason"], "lan: same public address as this node, via 10.1.1.1:51820")
        self.assertTrue(result["daemon_running"])

    async def test_the_daemons_troubles_are_told_as_diagnose_tells_them(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1")
        daemon = await self.mesh.start_daemon(peers=1)
        result = await ops.status(self.mesh.context())
        self.assertEqual((result["failing"], result["daemon_problems"]), ([], []), "a daemon that is well: nothing to tell")
        try:
            raise RuntimeError("wg set refused: 65537 peers")
        except RuntimeError:
            daemon.failures.failed("path check")
        daemon.bad_answers.note("netmap: skipped db9: vpn_ip 8.8.8.8 is outside the mesh 10.99.0.0/16", daemon.clock.seconds())
        result = await ops.status(self.mesh.context())
        self.assertEqual([(f["what"], f["count"], f["error"]) for f in result["failing"]], [("path check", 1, "wg set refused: 65537 peers")])
        self.assertEqual((result["bad_answers"]["count"], result["bad_answers"]["latest"]), (1, "netmap: skipped db9: vpn_ip 8.8.8.8 is outside the mesh 10.99.0.0/16"))
        loops, answers = (c["detail"] for c in (await ops.diagnose(self.mesh.context()))["checks"] if c["check"] in ("daemon loops", "server answers"))
        # Asked a moment apart: a second may tick between the two.
        timeless = [re.sub(r"\d+s\b", "Ns", line) for line in result["daemon_problems"]]
        self.assertEqual(timeless, [re.sub(r"\d+s\b", "Ns", line) for line in (loops, f"server answers: {answers}")], "one description, in diagnose and in status")
        self.assertRegex(loops, r"^path check: 1 failure\(s\) in a row for \d+s \(wg set refused: 65537 peers\)$")
        self.assertRegex(answers, r"^1 entr\(y/ies\) refused since the daemon started, the latest \d+s ago: netmap: skipped db9: ")
        self.assertTrue(result["ok"], "the mesh answered: the daemon's troubles are told, not a failed status")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_durations_keep_two_units(self):
        self.assertEqual([duration(s) for s in (0, 45.9, 130, 3600 + 5 * 60 + 59, 50 * 3600)], ["0s", "45s", "2m10s", "1h05m", "50h00m"])

    async def test_another_server_needs_no_config(self):
        await self.mesh.register("db1")
        result = await ops.status(self.mesh.context(), server=self.mesh.url + "/")
        self.assertEqual((result["server"], result["my_node_id"]), (self.mesh.url, None))
        self.assertEqual([n["node_name"] for n in result["nodes"]], ["db1"])

    async def test_unreachable_server(self):
        self.mesh.configure()
        await self.mesh.stop_server()
        with self.assertRaises(ops.OpError) as caught:
            await ops.status(self.mesh.context())
        self.assertIn(f"{self.mesh.url} is unreachable", str(caught.exception))
        self.assertIn("is the wire server running?", str(caught.exception))

    async def test_bad_server_url_names_the_flag(self):
        for call in (ops.status, ops.peers, ops.netcheck):
            with self.assertRaises(ops.OpError) as caught:
                await call(self.mesh.context(), server="ftp://example.com")
            self.assertTrue(str(caught.exception).startswith("--server: 'ftp://example.com' is not an http"), str(caught.exception))

    async def test_no_config(self):
        for call in (ops.status, ops.peers, ops.watchdog, ops.netcheck):
            with self.assertRaises(ops.OpError) as caught:
                await call(self.mesh.context())
            self.assertIn("has not joined a mesh", str(caught.exception))
            self.assertIn("wire up --server URL", str(caught.exception))

    async def test_corrupt_config_is_named(self):
        with open(config_path(self.mesh.config_dir), "w") as f:
            f.write('{"server_url": ')
        for call in (ops.status, ops.peers, ops.watchdog, ops.netcheck, lambda ctx: ops.explain(ctx, "db1")):
            with self.assertRaises(ops.OpError) as caught:
                await call(self.mesh.context())
            self.assertIn(config_path(self.mesh.config_dir), str(caught.exception))
            self.assertIn("not valid JSON", str(caught.exception))
        # down still works (issue 12, item 7), and names the file in its note.
        self.mesh.runner.expect(["ip", "link", "delete", "dev", "wire0"], rc=1, stderr=NO_DEVICE)
        note = (await ops.down(self.mesh.context()))["note"]
        self.assertIn(config_path(self.mesh.config_dir), note)
        self.assertIn("not valid JSON", note)
        diagnosis = await ops.diagnose(self.mesh.context())
        self.assertEqual([(c["check"], c["ok"]) for c in diagnosis["checks"]], [("wireguard", True), ("config", False)])
        self.assertIn(config_path(self.mesh.config_dir), diagnosis["checks"][1]["detail"])

    async def test_invalid_config_value_is_named(self):
        with open(config_path(self.mesh.config_dir), "w") as f:
            f.write('{"server_url": "http://h:1", "node_name": "web1", "node_id": "abc", "listen_port": 70000}')
        with self.assertRaises(ops.OpError) as caught:
            await ops.status(self.mesh.context())
        self.assertIn("listen_port", str(caught.exception))

    async def test_peers(self):
        self.mesh.configure()
        await self.mesh.register("db1")
        result = await ops.peers(self.mesh.context())
        self.assertEqual((result["ok"], result["count"], result["server"]), (True, 1, self.mesh.url))
        self.assertEqual(result["peers"][0]["node_name"], "db1")


class PingTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)
        self.mesh.configure("web1")

    def expect_ping(self, address: str, count: int = 4, **result):
        self.mesh.runner.expect(ops.ping_argv(address, count), **result)
        self.addCleanup(self.mesh.runner.assert_all_called)

    async def test_by_name_through_the_daemon(self):
        db1 = await self.mesh.register("db1", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        self.expect_ping(db1["vpn_ip"], stdout=PING_OK)
        result = await ops.ping(self.mesh.context(), "db1")
        self.assertEqual((result["ok"], result["node_name"], result["vpn_ip"]), (True, "db1", db1["vpn_ip"]))
        self.assertEqual((result["transmitted"], result["received"], result["loss_percent"]), (4, 4, 0.0))
        self.assertEqual((result["rtt_min_ms"], result["rtt_avg_ms"], result["rtt_max_ms"]), (0.401, 0.450, 0.512))
        self.assertEqual(result["path"], "lan")
        self.assertIn("rtt min/avg/max/mdev", result["output"])

    async def test_by_name_through_the_server(self):
        db1 = await self.mesh.register("db1")
        self.expect_ping(db1["vpn_ip"], count=2, stdout=PING_PARTIAL)
        result = await ops.ping(self.mesh.context(), "DB1", count=2)
        self.assertEqual((result["ok"], result["received"], result["loss_percent"], result["rtt_avg_ms"]), (True, 1, 50.0, 1.2))
        self.assertNotIn("path", result, "no daemon: no path")

    async def test_by_address_needs_no_lookup(self):
        await self.mesh.stop_server()
        self.expect_ping("10.99.0.2", stdout=PING_OK)
        result = await ops.ping(self.mesh.context(), "10.99.0.2")
        self.assertEqual((result["ok"], result["node_name"], result["vpn_ip"]), (True, "10.99.0.2", "10.99.0.2"))

    async def test_all_lost(self):
        self.expect_ping("10.99.0.2", stdout=PING_LOST, rc=1)
        result = await ops.ping(self.mesh.context(), "10.99.0.2")
        self.assertEqual((result["ok"], result["transmitted"], result["received"], result["loss_percent"]), (False, 4, 0, 100.0))
        self.assertIsNone(result["rtt_avg_ms"])

    async def test_unreachable_with_errors(self):
        self.expect_ping("10.99.0.2", count=1, stdout=PING_UNREACHABLE, rc=1)
        result = await ops.ping(self.mesh.context(), "10.99.0.2", count=1)
        self.assertEqual((result["ok"], result["received"], result["loss_percent"]), (False, 0, 100.0))
        self.assertIn("Destination Host Unreachable", result["output"])

    async def test_error_on_stderr_is_shown(self):
        self.expect_ping("10.99.0.2", stderr=b"ping: connect: Network is unreachable\n", rc=2)
        result = await ops.ping(self.mesh.context(), "10.99.0.2")
        self.assertEqual((result["ok"], result["received"]), (False, 0))
        self.assertEqual(result["output"], "ping: connect: Network is unreachable")

    async def test_ping_not_installed(self):
        self.expect_ping("10.99.0.2", error=CommandNotFound("ping"))
        with self.assertRaises(ops.OpError) as caught:
            await ops.ping(self.mesh.context(), "10.99.0.2")
        self.assertIn("ping failed to run: program 'ping' not found", str(caught.exception))

    async def test_unknown_name(self):
        await self.mesh.register("db1")
        with self.assertRaises(ops.OpError) as caught:
            await ops.ping(self.mesh.context(), "ghost")
        self.assertEqual(str(caught.exception), "no node named ghost in the mesh (see: wire status)")
        self.assertEqual(self.mesh.runner.calls, [])

    async def test_unknown_name_and_no_server(self):
        await self.mesh.stop_server()
        with self.assertRaises(ops.OpError) as caught:
            await ops.ping(self.mesh.context(), "db1")
        self.assertIn("cannot resolve db1: the daemon does not know it", str(caught.exception))

    async def test_bad_target_and_count(self):
        with self.assertRaises(ops.OpError) as caught:
            await ops.ping(self.mesh.context(), "no such; host")
        self.assertIn("is neither a node name, a mesh DNS name nor an IP address", str(caught.exception))
        for count in (0, 101):
            with self.assertRaises(ops.OpError):
                await ops.ping(self.mesh.context(), "10.99.0.2", count=count)
        self.assertEqual(self.mesh.runner.calls, [])

    def test_parse_macos_output(self):
        parsed = ops.parse_ping(PING_MACOS.decode(), 1)
        self.assertEqual((parsed["transmitted"], parsed["received"], parsed["rtt_avg_ms"]), (1, 1, 3.114))

    def test_parse_without_summary(self):
        self.assertEqual(ops.parse_ping("", 3)["transmitted"], 3)
        self.assertEqual(ops.parse_ping("", 3)["loss_percent"], 100.0)

    def test_wait_is_milliseconds_on_macos(self):
        self.assertEqual(ops.ping_argv("10.99.0.2", 4, platform="darwin"), ["ping", "-c", "4", "-W", "2000", "-n", "10.99.0.2"])
        self.assertEqual(ops.ping_argv("10.99.0.2", 4, platform="linux"), ["ping", "-c", "4", "-W", "2", "-n", "10.99.0.2"])


class UpTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)

    def launching_runner(self, **daemon_options) -> FakeProcessRunner:
        """The scripted runner, where ``twistd ... wire-node`` starts the
        in-process daemon (and returns once it has started, as twistd does)."""
        runner = FakeProcessRunner()
        runner.expect(
            launcher.node_argv(self.mesh.config_dir, foreground=False),
            then=lambda: self.mesh.launch_daemon(**daemon_options),
        )
        self.mesh.runner = runner
        self.addCleanup(runner.assert_all_called)
        return runner

    async def assert_refused(self, message: str, **options) -> None:
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(self.mesh.context(), **options)
        self.assertIn(message, str(caught.exception))
        self.assertEqual(self.mesh.runner.calls, [], "nothing may run")

    async def test_first_up_starts_the_daemon_and_waits_for_registration(self):
        runner = self.launching_runner()
        result = await ops.up(self.mesh.context(), server=self.mesh.url, name="Web1", port=51999, interface="wt0")
        record = self.coordinator_record("web1")
        self.assertEqual((result["ok"], result["already_running"], result["started_by"]), (True, False, "twistd"))
        self.assertEqual((result["node_name"], result["vpn_ip"], result["interface"]), ("web1", record.vpn_ip, "wt0"))
        self.assertEqual((result["server"], result["nat_type"], result["peers"]), (self.mesh.url, "easy", 0))
        self.assertIn("will not start again at boot", result["note"])
        saved = load_config(self.mesh.config_dir)
        self.assertEqual((saved.server_url, saved.node_name, saved.listen_port, saved.interface, saved.vpn_ip), (self.mesh.url, "web1", 51999, "wt0", record.vpn_ip))
        self.assertIn("PYTHONPATH", runner.calls[0].env)

    def coordinator_record(self, name):
        return next(r for r in self.mesh.coordinator.registry.records() if r.node_name == name)

    async def test_up_again_with_the_same_settings_is_a_no_op(self):
        self.mesh.configure("web1")
        await self.mesh.start_daemon()
        result = await ops.up(self.mesh.context(), server=self.mesh.url)
        self.assertEqual((result["already_running"], result["node_name"]), (True, "web1"))
        self.assertEqual(self.mesh.runner.calls, [])

    async def test_new_settings_with_a_daemon_wire_did_not_start(self):
        self.mesh.configure("web1")
        await self.mesh.start_daemon()
        with self.assertRaises(ops.OpError) as caught:
            # A new port needs a new daemon (a new name does not: see RenameTests).
            await ops.up(self.mesh.context(), name="web2", port=51998)
        self.assertIn("a node daemon that wire did not start is serving", str(caught.exception))
        self.assertEqual(load_config(self.mesh.config_dir).node_name, "web1", "the config stays")

    async def test_a_new_server_forgets_the_old_assignment(self):
        self.mesh.configure("web1", vpn_ip="10.99.7.7", vpn_subnet="10.99.0.0/16", nat_port=40000, nat_type="easy")
        self.launching_runner()
        other = Mesh(self)
        other.config_dir = self.mesh.config_dir
        self.mesh.url = other.url  # the daemon talks to the new server
        result = await ops.up(self.mesh.context(), server=other.url)
        self.assertEqual(result["server"], other.url)
        self.assertNotEqual(result["vpn_ip"], "10.99.7.7")
        self.assertEqual(load_config(self.mesh.config_dir).node_id, body_for("web1")["node_id"], "the identity stays")

    async def test_launch_failure_quotes_twistd(self):
        self.mesh.runner.expect(launcher.node_argv(self.mesh.config_dir, foreground=False), rc=1, stderr=b"wire-node: no node configured\n")
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(self.mesh.context(), server=self.mesh.url, name="web1")
        self.assertEqual(str(caught.exception), "the node daemon did not start: wire-node: no node configured")

    async def test_daemon_that_dies_at_once_shows_its_log(self):
        self.mesh.runner.expect(launcher.node_argv(self.mesh.config_dir, foreground=False))
        with open(os.path.join(self.mesh.config_dir, launcher.LOGFILE), "w") as f:
            f.write("line 1\nKeyFileError: /x/private.key is not a WireGuard private key\n")
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(self.mesh.context(), server=self.mesh.url, name="web1", wait=20)
        message = str(caught.exception)
        self.assertIn("the node did not register within 20s; the daemon is not running", message)
        self.assertIn("KeyFileError: /x/private.key", message)

    async def test_not_root(self):
        self.mesh.root = False
        await self.assert_refused("wire up changes network interfaces and must run as root", server=self.mesh.url)

    async def test_first_up_needs_a_server(self):
        await self.assert_refused("the first 'wire up' needs a join token")

    async def test_bad_values_name_their_flags(self):
        await self.assert_refused("--port: 0 is not a UDP port", server=self.mesh.url, port=0)
        await self.assert_refused("--name: 'web 1' is not a DNS label", server=self.mesh.url, name="web 1")
        await self.assert_refused("--server: 'web1' is not an http:// or https:// URL", server="web1")
        await self.assert_refused("--interface: 'a/b' is not an interface name", server=self.mesh.url, interface="a/b")
        await self.assert_refused("--interface: 'wiré0' is not an interface name", server=self.mesh.url, interface="wiré0")
        await self.assert_refused("--wait must be a positive number of seconds", server=self.mesh.url, wait=0)
        self.assertIsNone(load_config(self.mesh.config_dir), "nothing saved")

    async def test_missing_wireguard(self):
        self.mesh.tools = [NO_TOOLS]
        await self.assert_refused(
            "missing wg, wireguard-go; install them with: apt-get install -y wireguard-go wireguard-tools (or run: wire install --yes)",
            server=self.mesh.url,
        )
        self.assertIsNone(load_config(self.mesh.config_dir), "nothing saved")


class DownTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)
        self.config = self.mesh.configure("web1")

    def expect_link_delete(self, rc: int = 1, stderr: bytes = NO_DEVICE):
        self.mesh.runner.expect(["ip", "link", "delete", "dev", "wire0"], rc=rc, stderr=stderr)
        self.addCleanup(self.mesh.runner.assert_all_called)

    async def test_running_daemon_leaves_and_exits(self):
        daemon = await self.mesh.start_daemon()
        self.expect_link_delete()
        result = await ops.down(self.mesh.context())
        self.assertEqual(result, {"ok": True, "node_name": "web1", "interface": "wire0", "interface_removed": True, "server_told": True})
        self.assertFalse(self.mesh.coordinator.registry.is_online(self.config.node_id))
        self.assertTrue(self.mesh.wireguard.is_down)
        await eventually(lambda: not daemon.running)

    async def test_without_a_daemon_the_server_is_told_directly(self):
        _, public_key = load_or_create_keys(self.mesh.config_dir)
        await self.mesh.register("web1", wg_public_key=public_key)
        self.expect_link_delete()
        result = await ops.down(self.mesh.context())
        self.assertEqual((result["server_told"], result["interface_removed"]), (True, True))
        self.assertFalse(self.mesh.coordinator.registry.is_online(self.config.node_id))

    async def test_without_a_daemon_a_resolver_a_crashed_daemon_left_is_restored(self):
        from wire.node.osdns import OsDnsPaths, ResolvConfDns

        resolv_conf = os.path.abspath(self.mktemp())
        original = b"nameserver 192.168.1.1\nsearch lan\n"
        with open(resolv_conf, "wb") as f:
            f.write(original)
        # The daemon pointed it at the mesh, then was killed (no restore).
        await ResolvConfDns("wire0", OsDnsPaths(state_dir=self.mesh.config_dir, resolv_conf=resolv_conf)).apply("10.99.0.1")
        with open(resolv_conf, "rb") as f:
            self.assertIn(b"nameserver 10.99.0.1", f.read())
        load_or_create_keys(self.mesh.config_dir)
        await self.mesh.stop_server()
        self.expect_link_delete(rc=0, stderr=b"")
        context = self.mesh.context()
        context.resolv_conf = resolv_conf
        result = await ops.down(context)
        with open(resolv_conf, "rb") as f:
            self.assertEqual(f.read(), original)
        self.assertIn("restored the original", result["resolver_restored"])

    async def test_without_a_daemon_the_routing_a_crashed_daemon_left_is_undone(self):
        import json as json_module

        from tests.test_routes_node import expect_listing

        save_config(self.mesh.config_dir, replace(load_config(self.mesh.config_dir), accept_routes=True))
        # The crashed router's saved forwarding, and its table and a route of proto 87 left behind.
        with open(os.path.join(self.mesh.config_dir, "forwarding-wire0.json"), "w") as f:
            json_module.dump({"net.ipv4.ip_forward": "0"}, f)
        load_or_create_keys(self.mesh.config_dir)
        await self.mesh.stop_server()
        self.expect_link_delete(rc=0, stderr=b"")
        runner = self.mesh.runner
        runner.expect(["nft", "-f", "-"])  # the router's table removed
        runner.expect(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])  # forwarding as it was
        expect_listing(runner, routes4=b'[{"dst":"10.5.0.0/24","dev":"wire0"}]')
        runner.expect(["ip", "-4", "-force", "-batch", "-"])
        result = await ops.down(self.mesh.context())
        self.assertNotIn("routing_problem", result)
        self.assertFalse(os.path.exists(os.path.join(self.mesh.config_dir, "forwarding-wire0.json")))

    async def test_without_a_daemon_or_server(self):
        load_or_create_keys(self.mesh.config_dir)
        await self.mesh.stop_server()
        self.expect_link_delete(rc=0, stderr=b"")
        result = await ops.down(self.mesh.context())
        self.assertEqual((result["ok"], result["server_told"]), (True, False))

    async def test_a_join_that_never_enrolled_is_called_off_not_told_to_a_server(self):
        os.remove(config_path(self.mesh.config_dir))
        save_join_request(self.mesh.config_dir, JoinRequest(server_url="https://198.51.100.7:8787", node_name="eve"))
        self.expect_link_delete()
        result = await ops.down(self.mesh.context())
        self.assertEqual((result["ok"], result["node_name"], result["join_called_off"]), (True, "eve", "https://198.51.100.7:8787"))
        self.assertFalse(os.path.exists(os.path.join(self.mesh.config_dir, "join.json")))
        from wire.cli.formatting import Style, format_down

        self.assertEqual(
            format_down(result, Style(False)),
            "eve is down: interface wire0 removed; the join with https://198.51.100.7:8787 was called off "
            "(it never enrolled, so no server knows this node)",
        )

    async def test_interface_that_cannot_be_removed(self):
        self.expect_link_delete(rc=2, stderr=b"RTNETLINK answers: Operation not permitted\n")
        with self.assertRaises(ops.OpError) as caught:
            await ops.down(self.mesh.context())
        self.assertIn("could not remove interface wire0", str(caught.exception))
        self.assertIn("Operation not permitted", str(caught.exception))

    async def test_not_root(self):
        self.mesh.root = False
        with self.assertRaises(ops.OpError) as caught:
            await ops.down(self.mesh.context())
        self.assertIn("wire down changes network interfaces and must run as root", str(caught.exception))
        self.assertEqual(self.mesh.runner.calls, [])


class InstallTests(unittest.TestCase):
    def setUp(self):
        self.runner = FakeProcessRunner()
        self.root = True
        self.tools = [OK_TOOLS]

    def context(self) -> ops.Context:
        return ops.Context(reactor, "/nonexistent", runner=self.runner, is_root=lambda: self.root, check_install=lambda: self.tools.pop(0))

    def test_check_only(self):
        self.tools = [NO_TOOLS]
        result = ops.install(self.context())
        self.assertEqual((result["ok"], result["missing"]), (False, ["wg", "wireguard-go"]))
        self.assertEqual(result["install_command"], "apt-get install -y wireguard-go wireguard-tools")

    async def test_nothing_missing_runs_nothing(self):
        result = await ops.install_now(self.context())
        self.assertEqual((result["ok"], result["installed"]), (True, []))
        self.assertEqual(self.runner.calls, [])

    async def test_runs_the_package_manager(self):
        self.tools = [NO_TOOLS, OK_TOOLS]
        self.runner.expect(list(NO_TOOLS.command))
        result = await ops.install_now(self.context())
        self.runner.assert_all_called()
        self.assertEqual((result["ok"], result["installed"]), (True, ["wg", "wireguard-go"]))

    async def test_package_manager_failure_is_quoted(self):
        self.tools = [NO_TOOLS]
        self.runner.expect(list(NO_TOOLS.command), rc=100, stderr=b"E: Unable to locate package wireguard-go\n")
        with self.assertRaises(ops.OpError) as caught:
            await ops.install_now(self.context())
        self.assertEqual(
            str(caught.exception),
            "apt-get install -y wireguard-go wireguard-tools failed (exit 100): E: Unable to locate package wireguard-go",
        )

    async def test_needs_root_except_on_macos(self):
        self.root = False
        self.tools = [NO_TOOLS]
        with self.assertRaises(ops.OpError) as caught:
            await ops.install_now(self.context())
        self.assertIn("must run as root", str(caught.exception))
        mac = InstallCheck("macos", None, None, False, ("wg", "wireguard-go"), ("brew", "install", "wireguard-go", "wireguard-tools"))
        self.tools = [mac, OK_TOOLS]
        self.runner.expect(["brew", "install", "wireguard-go", "wireguard-tools"])
        await ops.install_now(self.context())
        self.runner.assert_all_called()

    async def test_unknown_platform(self):
        self.tools = [InstallCheck("unknown", None, "/usr/bin/wireguard-go", False, ("wg",), ())]
        with self.assertRaises(ops.OpError) as caught:
            await ops.install_now(self.context())
        self.assertIn("cannot install wg on this platform (unknown)", str(caught.exception))


class DiagnoseTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)

    def checks(self, result: dict) -> dict:
        return {c["check"]: c for c in result["checks"]}

    async def test_healthy_node(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1")
        await self.mesh.start_daemon(peers=1)
        result = await ops.diagnose(self.mesh.context())
        self.assertEqual([(c["check"], c["ok"]) for c in result["checks"]], [
            ("wireguard", True), ("config", True), ("daemon", True), ("interface", True),
            ("server", True), ("registered", True), ("peers synced", True), ("daemon loops", True),
            ("server answers", True), ("handshakes", True),
        ])
        self.assertTrue(result["ok"])
        self.assertEqual(self.checks(result)["peers synced"]["detail"], "1 of 1 peers configured")

    async def test_failing_loops_and_refused_answers_are_reported(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1")
        daemon = await self.mesh.start_daemon(peers=1)
        try:
            raise RuntimeError("wg set refused: 65537 peers")
        except RuntimeError:
            daemon.failures.failed("path check")
        daemon.bad_answers.note("netmap: skipped db9: vpn_ip 8.8.8.8 is outside the mesh 10.99.0.0/16", daemon.clock.seconds())
        result = await ops.diagnose(self.mesh.context())
        loops, answers = self.checks(result)["daemon loops"], self.checks(result)["server answers"]
        self.assertFalse(result["ok"])
        self.assertFalse(loops["ok"])
        self.assertIn("path check: 1 failure(s) in a row", loops["detail"])
        self.assertIn("wg set refused: 65537 peers", loops["detail"])
        self.assertFalse(answers["ok"])
        self.assertIn("vpn_ip 8.8.8.8 is outside the mesh", answers["detail"])
        daemon.failures.worked("path check")
        self.assertTrue(self.checks(await ops.diagnose(self.mesh.context()))["daemon loops"]["ok"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1, "the failure was logged, once")

    async def test_nothing_set_up(self):
        self.mesh.tools = [NO_TOOLS]
        result = await ops.diagnose(self.mesh.context())
        checks = self.checks(result)
        self.assertFalse(result["ok"])
        self.assertEqual(list(checks), ["wireguard", "config"])
        self.assertEqual(checks["wireguard"]["suggestion"], "install: apt-get install -y wireguard-go wireguard-tools")
        # Item 8: the join token first, the open mode only as the alternative.
        self.assertEqual(
            checks["config"]["suggestion"],
            "run: sudo wire up --join TOKEN (a join token from 'wire admin keys create' on the server); for an open server: sudo wire up --server URL",
        )

    async def test_server_down_and_no_daemon(self):
        self.mesh.configure("web1")
        await self.mesh.stop_server()
        result = await ops.diagnose(self.mesh.context())
        checks = self.checks(result)
        self.assertEqual(list(checks), ["wireguard", "config", "daemon", "server"])
        self.assertFalse(checks["daemon"]["ok"])
        self.assertIn("is unreachable", checks["server"]["detail"])
        self.assertIn("UDP port+1, port+2", checks["server"]["suggestion"])

    async def test_silent_peer_points_to_explain(self):
        self.mesh.configure("web1")
        await self.mesh.register("db1")
        await self.mesh.start_daemon(SilentWireGuard(clock=reactor), peers=1)
        checks = self.checks(await ops.diagnose(self.mesh.context()))
        self.assertFalse(checks["handshakes"]["ok"])
        self.assertIn("none with db1", checks["handshakes"]["detail"])
        self.assertEqual(checks["handshakes"]["suggestion"], "see why: wire explain db1")


class WatchdogTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)
        self.mesh.configure("web1")

    async def test_no_daemon(self):
        result = await ops.watchdog(self.mesh.context())
        self.assertEqual((result["ok"], result["daemon_running"]), (False, False))
        self.assertEqual(result["problems"], ["the node daemon is not running (sudo wire up)"])

    async def test_healthy(self):
        await self.mesh.register("db1")
        await self.mesh.start_daemon(peers=1)
        result = await ops.watchdog(self.mesh.context())
        self.assertEqual((result["ok"], result["server_reachable"], result["problems"]), (True, True, []))
        self.assertEqual([(p["node_name"], p["stale"], p["path"]) for p in result["peers"]], [("db1", False, "direct")])

    async def test_stale_peer_and_lost_server(self):
        await self.mesh.register("db1")
        daemon = await self.mesh.start_daemon(SilentWireGuard(clock=reactor), peers=1)
        await self.mesh.stop_server()
        await eventually(lambda: not daemon.contact.reachable)
        result = await ops.watchdog(self.mesh.context())
        self.assertFalse(result["ok"])
        self.assertEqual(result["peers"][0]["stale"], True)
        self.assertIn("db1: trying direct: via 127.0.0.1:51820 (nothing from the peer yet: 0s of 15s)", result["problems"])
        self.assertTrue(any(p.startswith("coordination server unreachable") for p in result["problems"]))


class NetcheckTests(unittest.TestCase):
    timeout = 30

    async def test_udp_and_http_answer(self):
        mesh = Mesh(self, stun=True)
        mesh.configure("web1")
        result = await ops.netcheck(mesh.context())
        port = int(mesh.url.rsplit(":", 1)[1])
        self.assertTrue(result["ok"], result["problems"])
        self.assertEqual((result["http"]["reachable"], result["udp"]["reachable"]), (True, True))
        self.assertEqual([(p["port"], p["answered"]) for p in result["udp"]["ports"]], [(port + 1, True), (port + 2, True)])
        # Seen as our own address, same port: no NAT.
        self.assertEqual((result["nat_type"], result["local_ips"]), ("none", ["127.0.0.1"]))
        ip, mapped_port = result["mapped"].rsplit(":", 1)
        self.assertEqual(ip, "127.0.0.1")
        self.assertNotEqual(int(mapped_port), 51820, "never the WireGuard port")
        self.assertGreaterEqual(result["udp"]["rtt_ms"], 0)
        self.assertGreaterEqual(result["http"]["rtt_ms"], 0)
        self.assertIn("no NAT", result["nat_meaning"])
        self.assertEqual(result["relay"]["transport"], "udp")

    async def test_udp_blocked(self):
        mesh = Mesh(self)
        result = await ops.netcheck(mesh.context(), server=mesh.url, timeout=0.05, attempts=2)
        self.assertFalse(result["ok"])
        self.assertEqual((result["http"]["reachable"], result["udp"]["reachable"]), (True, False))
        self.assertEqual((result["nat_type"], result["mapped"]), ("unknown", None))
        (problem,) = result["problems"]
        self.assertIn("UDP is blocked on this network", problem)
        self.assertIn("through the relay over TCP on the server's HTTPS port (relay-tcp)", problem)
        self.assertIn("no STUN answer", result["udp"]["error"])
        self.assertEqual(result["relay"]["transport"], "relay-tcp")
        self.assertIn("UDP to the server blocked", result["relay"]["why"])

    async def test_server_down(self):
        mesh = Mesh(self)
        await mesh.stop_server()
        result = await ops.netcheck(mesh.context(), server=mesh.url, timeout=0.05, attempts=1)
        self.assertEqual((result["ok"], result["http"]["reachable"], len(result["problems"])), (False, False, 2))
        self.assertIn("HTTP API does not answer", result["problems"][0])


class ExplainTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)
        self.mesh.configure("web1")

    async def test_same_public_ip_uses_the_lan_address(self):
        db1 = await self.mesh.register("db1", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        for target in ("db1", db1["vpn_ip"]):
            result = await ops.explain(self.mesh.context(), target)
            self.assertEqual((result["ok"], result["path"], result["peer"]), (True, "lan", "db1"))
            self.assertEqual((result["endpoint"], result["endpoint_kind"]), ("10.1.1.1:51820", "lan"))
            self.assertIn("has the same public IP as this node (127.0.0.1)", result["reasons"][0])
            self.assertRegex(result["reasons"][-1], r"^handshake \d+s ago: the tunnel is up$")
            self.assertEqual(result["nat"], {"this_node": "easy", "peer": "unknown"})
            self.assertEqual(result["suggestions"], [])

    async def test_other_public_ip_uses_the_mapped_endpoint(self):
        await self.mesh.register("db1", public_ip="203.0.113.9", nat_port=40001, nat_type="easy", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        result = await ops.explain(self.mesh.context(), "db1")
        self.assertEqual((result["endpoint"], result["endpoint_kind"], result["path"]), ("203.0.113.9:40001", "public", "direct"))
        self.assertIn("NAT-mapped endpoint, learned by STUN", result["reasons"][0])
        self.assertEqual(result["nat"], {"this_node": "easy", "peer": "easy"})

    async def test_no_handshake_yet_while_trying_direct(self):
        await self.mesh.register("db1", public_ip="203.0.113.9", nat_port=40001, nat_type="easy")
        await self.mesh.start_daemon(SilentWireGuard(clock=reactor), peers=1)
        result = await ops.explain(self.mesh.context(), "db1")
        self.assertEqual((result["ok"], result["path"], result["handshake_age"]), (False, "connecting", None))
        self.assertEqual(result["endpoint"], "203.0.113.9:40001")
        self.assertIn("trying direct: via 203.0.113.9:40001 (nothing from the peer yet: 0s of 15s)", result["reasons"])
        self.assertEqual(result["suggestions"], ["ask again in a few seconds: wire explain db1"])

    async def test_hard_nat_goes_through_the_relay(self):
        await self.mesh.register("db1", public_ip="203.0.113.9", nat_port=40001, nat_type="hard")
        await self.mesh.start_daemon(peers=1)
        result = await ops.explain(self.mesh.context(), "db1")
        # This test's daemon has no relay shim: WireGuard keeps the public
        # endpoint, and explain says so rather than calling it the relay.
        self.assertEqual((result["ok"], result["path"], result["endpoint_kind"]), (True, "connecting", "public"))
        self.assertIn("goes through the relay on the coordination server (hard NAT on db1)", result["reasons"][0])
        self.assertIn("its relay session is not ready yet, and WireGuard sends to 203.0.113.9:40001", result["reasons"][0])
        self.assertIn("hard (symmetric) NAT on db1", result["reasons"][1])
        self.assertEqual(result["nat"], {"this_node": "easy", "peer": "hard"})

    async def test_without_a_daemon(self):
        await self.mesh.register("db1")
        result = await ops.explain(self.mesh.context(), "db1")
        self.assertEqual((result["path"], result["suggestions"]), ("none", ["start it: sudo wire up"]))
        self.assertIn("the node daemon is not running here", result["reasons"])

    async def test_server_unreachable_uses_the_daemon_netmap(self):
        await self.mesh.register("db1", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        await self.mesh.stop_server()
        result = await ops.explain(self.mesh.context(), "db1")
        self.assertEqual((result["path"], result["endpoint"]), ("lan", "10.1.1.1:51820"))
        self.assertIn("the server is unreachable", result["reasons"][0])

    async def test_unknown_peer_and_this_node(self):
        await self.mesh.register("web1")
        with self.assertRaises(ops.OpError) as caught:
            await ops.explain(self.mesh.context(), "ghost")
        self.assertEqual(str(caught.exception), "no node ghost in the mesh (see: wire status)")
        with self.assertRaises(ops.OpError) as caught:
            await ops.explain(self.mesh.context(), "web1")
        self.assertEqual(str(caught.exception), "web1 is this node")


class ExplainPathTests(unittest.TestCase):
    """The reasoning alone, for each situation a mesh can be in."""

    ME = {"node_name": "web1", "public_ip": "198.51.100.1", "nat_type": "easy"}
    LOCAL = {"interface": {"name": "wire0", "up": True}}
    SHIM = "127.0.0.1:40123"

    def record(self, **fields) -> dict:
        view = {**body_for("db1"), "vpn_ip": "10.99.0.2", "public_ip": "203.0.113.9", "nat_port": 40001, "lan_ip": "", "nat_type": "easy", "status": "online", "last_seen_ago": 3}
        view.update(fields)
        return view

    def wg(self, **fields) -> dict:
        """The peer in the daemon's status: by default a direct path gone quiet."""
        peer = {"node_name": "db1", "vpn_ip": "10.99.0.2", "online": True, "endpoint": "203.0.113.9:40001", "handshake_age": 500.0, "path": "direct", "reason": "direct: via 203.0.113.9:40001"}
        peer.update(fields)
        return peer

    def explain(self, record=None, wg=None, local=LOCAL, me=ME) -> dict:
        return ops.explain_path(me, record if record is not None else self.record(), wg, local)

    def test_direct_and_up(self):
        result = self.explain(wg=self.wg(handshake_age=4.0))
        self.assertEqual((result["ok"], result["path"], result["endpoint_kind"]), (True, "direct", "public"))
        self.assertEqual(result["reasons"], [
            "db1 is at 203.0.113.9, this node at 198.51.100.1: WireGuard uses its public NAT-mapped endpoint, learned by STUN, 203.0.113.9:40001",
            "handshake 4s ago: the tunnel is up",
        ])

    def test_stale_direct_path_behind_nat(self):
        result = self.explain(wg=self.wg())
        self.assertEqual((result["ok"], result["path"]), (False, "direct"))
        self.assertIn("last handshake 500s ago: the path worked, then stopped", result["reasons"])
        self.assertIn("db1 is behind NAT", result["reasons"][-1])
        self.assertEqual(result["suggestions"], ["check neither network blocks UDP: wire netcheck (on both nodes)"])

    def test_public_peer_behind_a_firewall(self):
        result = self.explain(self.record(nat_type="none"), self.wg())
        self.assertIn("its own address (it has no NAT)", result["reasons"][0])
        self.assertIn("a firewall on db1", result["reasons"][-1])
        self.assertEqual(result["suggestions"], ["allow UDP port 40001 in on db1"])

    def test_lan_peer_behind_a_firewall(self):
        me = {**self.ME, "public_ip": "203.0.113.9"}
        result = self.explain(self.record(lan_ip="10.1.1.1", port=51820), self.wg(endpoint="10.1.1.1:51820"), me=me)
        self.assertEqual(result["endpoint_kind"], "lan")
        self.assertIn("has the same public IP as this node (203.0.113.9)", result["reasons"][0])
        self.assertIn("LAN address 10.1.1.1:51820 gets no answer", result["reasons"][-1])

    def test_connecting(self):
        result = self.explain(wg=self.wg(path="connecting", handshake_age=None))
        self.assertEqual(result["path"], "connecting")
        self.assertIn("the server moves the pair (both nodes at once) to the relay", result["reasons"][-1])

    def test_relay_for_hard_nat(self):
        wg = self.wg(path="relay", reason="relay: hard NAT on db1", why="hard NAT on db1", endpoint=self.SHIM, handshake_age=2.0)
        result = self.explain(self.record(nat_type="hard"), wg)
        self.assertEqual((result["ok"], result["path"], result["endpoint"], result["endpoint_kind"]), (True, "relay", self.SHIM, "relay"))
        self.assertEqual(result["reasons"][0], f"traffic to db1 goes through the relay on the coordination server (hard NAT on db1); WireGuard sends it to the local relay shim {self.SHIM}")
        self.assertIn("hard (symmetric) NAT on db1:", result["reasons"][1])
        self.assertEqual(result["reasons"][2], "handshake 2s ago: the tunnel is up")
        self.assertIn("forward the WireGuard UDP port", result["suggestions"][0])

    def test_a_pair_relayed_by_a_replica_names_it(self):
        wg = self.wg(
            path="relay", reason="relay: hard NAT on db1", why="hard NAT on db1", endpoint=self.SHIM, handshake_age=2.0,
            relay_replica="b", relay_address="b.example.org:8788",
        )
        result = self.explain(self.record(nat_type="hard"), wg)
        self.assertEqual(
            result["reasons"][0],
            "traffic to db1 goes through the relay on the coordination server (replica b, b.example.org:8788) "
            f"(hard NAT on db1); WireGuard sends it to the local relay shim {self.SHIM}",
        )

    def test_relay_after_direct_failed(self):
        wg = self.wg(path="relay", reason="relay: no direct handshake within 15s", why="no direct handshake within 15s", endpoint=self.SHIM, handshake_age=2.0)
        result = self.explain(self.record(nat_type="none"), wg)
        self.assertIn("(no direct handshake within 15s)", result["reasons"][0])
        self.assertEqual(result["reasons"][1], "the direct path got no handshake: UDP to 203.0.113.9:40001 gets no answer: a firewall on db1 or in front of it drops it")
        self.assertEqual(result["suggestions"], ["for a direct path: allow UDP port 40001 in on db1"])

    def test_relay_without_handshake(self):
        wg = self.wg(path="relay", reason="relay: hard NAT on this node", why="hard NAT on this node", endpoint=self.SHIM, handshake_age=None)
        result = self.explain(wg=wg, me={**self.ME, "nat_type": "hard"})
        self.assertFalse(result["ok"])
        self.assertIn("no handshake through the relay either", result["reasons"][-1])
        self.assertIn("see what the network lets through: wire netcheck (on both nodes)", result["suggestions"])

    def test_offline_peer(self):
        result = self.explain(self.record(status="offline", last_seen_ago=900), self.wg(online=False))
        self.assertEqual(result["peer_online"], False)
        self.assertIn("db1 is offline at the server (last seen 900s ago)", result["reasons"])
        self.assertEqual(result["suggestions"], ["start db1: sudo wire up (on db1)"])

    def test_not_configured_yet(self):
        result = self.explain(self.record(), None)
        self.assertEqual(result["path"], "none")
        self.assertIn("db1 is not configured in WireGuard yet", result["reasons"])
        self.assertEqual(result["endpoint"], "203.0.113.9:40001", "the endpoint the daemon will use")

    def test_daemon_not_running(self):
        result = self.explain(self.record(), None, local=None)
        self.assertEqual((result["path"], result["suggestions"]), ("none", ["start it: sudo wire up"]))

    def test_interface_down(self):
        result = self.explain(self.record(), self.wg(), local={"interface": {"name": "wire0", "up": False, "error": "wg failed"}})
        self.assertIn("interface wire0 is not up: wg failed", result["reasons"])

    def test_unknown_nat_suggests_netcheck(self):
        result = self.explain(self.record(nat_type="unknown"), self.wg())
        self.assertIn("NAT type unknown on db1 (its STUN probe got no answer)", result["reasons"])
        self.assertIn("see what the network lets through: wire netcheck", result["suggestions"])

    def test_roamed_endpoint(self):
        result = self.explain(self.record(), self.wg(endpoint="203.0.113.9:40999", handshake_age=4.0))
        self.assertEqual((result["ok"], result["endpoint"]), (True, "203.0.113.9:40999"))
        self.assertIn("WireGuard now sends to 203.0.113.9:40999", result["reasons"][1])

    def test_no_public_address(self):
        result = self.explain(self.record(public_ip=""), self.wg(endpoint=None, handshake_age=None))
        self.assertEqual((result["endpoint"], result["endpoint_kind"]), (None, "none"))
        self.assertIn("the server knows no public address for db1", result["reasons"][0])
        self.assertIn("neither side knows where db1 is", result["reasons"])

    def test_server_unreachable(self):
        result = ops.explain_path(self.ME, None, self.wg(handshake_age=1.0), self.LOCAL, "http://h:1 is unreachable")
        self.assertEqual(result["reasons"][0], "the server is unreachable (http://h:1 is unreachable): only the daemon's last netmap is known")
        self.assertEqual((result["endpoint"], result["endpoint_kind"]), ("203.0.113.9:40001", "unknown"))

    def test_result_shape(self):
        result = self.explain(wg=self.wg(handshake_age=1.0))
        self.assertEqual(set(result), {"ok", "peer", "vpn_ip", "path", "endpoint", "endpoint_kind", "handshake_age", "peer_online", "nat", "reasons", "suggestions"})


# -- issue 12, items 8, 10 and 6 (the views) ---------------------------------------------

JOIN_FIRST = "run: sudo wire up --join TOKEN (a join token from 'wire admin keys create' on the server); for an open server: sudo wire up --server URL"


class DaemonView(ops.Context):
    """A context whose daemon answers ``local`` (a control /status), for the
    states a real daemon takes long to reach."""

    local: dict | None = None

    async def daemon_status(self) -> dict | None:
        return self.local


def denied_config(config_dir: str):
    """load_config as a user meets a root-only config: the real function, with open() refused."""
    real_open = builtins.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("config.json"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    builtins.open = refuse
    try:
        return load_config(config_dir)
    finally:
        builtins.open = real_open


class NotJoinedHintTests(unittest.TestCase):
    """Item 8: every hint for an unjoined machine names the join token first;
    a config this user may not read is a permission problem, not a broken one."""

    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)

    async def test_every_view_suggests_the_join_token_first(self):
        calls = (ops.status, ops.peers, ops.watchdog, ops.netcheck, lambda ctx: ops.explain(ctx, "db1"), lambda ctx: ops.ping(ctx, "db1"))
        for call in calls:
            with self.assertRaises(ops.OpError) as caught:
                await call(self.mesh.context())
            message = str(caught.exception)
            self.assertEqual(message, f"this machine has not joined a mesh ({self.mesh.config_dir} has no config); {JOIN_FIRST}")
            self.assertLess(message.index("--join TOKEN"), message.index("--server URL"))
        config = self.check(await ops.diagnose(self.mesh.context()), "config")
        self.assertEqual((config["ok"], config["suggestion"]), (False, JOIN_FIRST))
        self.assertNotIn("wire up --server URL", config["detail"], "the hint is said once, as the suggestion")

    def check(self, result: dict, name: str) -> dict:
        return next(c for c in result["checks"] if c["check"] == name)

    async def test_a_join_still_under_way_is_not_told_as_not_joined(self):
        # Item 3: 'wire up' gave up waiting on an unreachable server and said
        # "see 'wire status'"; the daemon still holds the join request.
        save_join_request(self.mesh.config_dir, JoinRequest(server_url="https://198.51.100.7:8787", node_name="web1"))
        log = os.path.join(self.mesh.config_dir, "wire-node.log")
        expected = (
            "this machine is still joining https://198.51.100.7:8787: the daemon keeps trying in the background "
            f"(its log: {log}); wait, or stop it with: sudo wire down"
        )
        for call in (ops.status, ops.peers, ops.watchdog, lambda ctx: ops.explain(ctx, "db1")):
            with self.assertRaises(ops.OpError) as caught:
                await call(self.mesh.context())
            self.assertEqual(str(caught.exception), expected)
        config = self.check(await ops.diagnose(self.mesh.context()), "config")
        self.assertEqual((config["ok"], config["suggestion"]), (False, "wait, or stop it with: sudo wire down"))

    async def test_permission_denied_says_run_as_root(self):
        self.mesh.configure("web1")
        self.patch(context_module, "load_config", denied_config)
        path = config_path(self.mesh.config_dir)
        for call in (ops.status, ops.peers, ops.watchdog, ops.netcheck, lambda ctx: ops.explain(ctx, "db1")):
            with self.assertRaises(ops.OpError) as caught:
                await call(self.mesh.context())
            self.assertEqual(str(caught.exception), f"permission denied reading {path}; run as root (sudo wire ...)")
        config = self.check(await ops.diagnose(self.mesh.context()), "config")
        self.assertEqual((config["ok"], config["detail"], config["suggestion"]), (False, f"permission denied reading {path}", "run as root (sudo wire ...)"))

    async def test_an_unreadable_credential_says_run_as_root(self):
        self.mesh.configure("web1")
        with open(credential_path(self.mesh.config_dir), "w") as f:
            f.write("secret")
        real_open = builtins.open

        def refuse(path, *args, **kwargs):
            if str(path) == credential_path(self.mesh.config_dir):
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real_open(path, *args, **kwargs)

        self.patch(builtins, "open", refuse)
        for call in (ops.status, ops.peers, lambda ctx: ops.ping(ctx, "db1")):
            with self.assertRaises(ops.OpError) as caught:
                await call(self.mesh.context())
            self.assertEqual(str(caught.exception), f"permission denied reading {credential_path(self.mesh.config_dir)}; run as root (sudo wire ...)")
        credential = self.check(await ops.diagnose(self.mesh.context()), "credential")
        self.assertEqual((credential["ok"], credential["suggestion"]), (False, "run as root (sudo wire ...)"))

    async def test_a_user_on_a_node_joined_as_root_is_told_to_use_sudo(self):
        root_dir = short_tempdir(self)
        self.mesh.root = False
        with self.assertRaises(ops.OpError) as caught:
            await ops.status(replace(self.mesh.context(), system_config_dir=root_dir))
        self.assertIn(JOIN_FIRST, str(caught.exception), "an empty /etc/wire: nobody joined")
        save_config(root_dir, NodeConfig(server_url=self.mesh.url, node_name="web1", node_id=body_for("web1")["node_id"]))
        self.mesh.root = False
        ctx = replace(self.mesh.context(), system_config_dir=root_dir)
        with self.assertRaises(ops.OpError) as caught:
            await ops.status(ctx)
        self.assertEqual(
            str(caught.exception),
            f"{self.mesh.config_dir} has no config, and this machine's node is set up as root in {root_dir}; run as root (sudo wire ...)",
        )
        # As root, an empty dir is an unjoined machine, whatever else exists.
        self.mesh.root = True
        with self.assertRaises(ops.OpError) as caught:
            await ops.status(replace(self.mesh.context(), system_config_dir=root_dir))
        self.assertIn(JOIN_FIRST, str(caught.exception))

    async def test_corrupt_config_suggests_fixing_it_then_joining(self):
        with open(config_path(self.mesh.config_dir), "w") as f:
            f.write("{")
        config = self.check(await ops.diagnose(self.mesh.context()), "config")
        self.assertIn("is not valid JSON", config["detail"])
        self.assertTrue(config["suggestion"].startswith(f"fix or remove {config_path(self.mesh.config_dir)}, then join again: sudo wire up --join TOKEN"))

    async def test_an_authenticated_server_without_a_credential_asks_for_a_token(self):
        self.mesh.configure("web1")
        self.mesh.coordinator.authority = Authority(self.mesh.coordinator.store, reactor)
        with self.assertRaises(ops.OpError) as caught:
            await ops.status(self.mesh.context())
        message = str(caught.exception)
        self.assertIn("server said 401: this server needs a node credential", message)
        self.assertIn(f"this machine holds no credential for {self.mesh.url}; to join it: sudo wire up --join TOKEN", message)
        registered = self.check(await ops.diagnose(self.mesh.context()), "registered")
        self.assertEqual((registered["ok"], registered["suggestion"]), (False, JOIN_FIRST))


class LastKnownMeshTests(unittest.TestCase):
    """Item 10: with the server down, status and peers show what the running
    daemon last heard, marked stale; with neither, one message says both."""

    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)
        self.mesh.configure("web1")

    async def server_goes_away(self) -> dict:
        db1 = await self.mesh.register("db1", lan_ip="10.1.1.1")
        daemon = await self.mesh.start_daemon(peers=1)
        await self.mesh.stop_server()
        await eventually(lambda: not daemon.contact.reachable)
        return db1

    async def test_status_shows_the_daemons_netmap(self):
        db1 = await self.server_goes_away()
        result = await ops.status(self.mesh.context())
        self.assertEqual((result["ok"], result["stale"], result["source"], result["daemon_running"]), (False, True, "daemon", True))
        self.assertRegex(
            result["warning"],
            rf"^server unreachable \({self.mesh.url} is unreachable: .*\): showing the mesh as this node last saw it, \d+s ago$",
        )
        self.assertIn(f"{self.mesh.url} is unreachable", result["server_error"])
        self.assertGreaterEqual(result["last_contact_ago"], 0)
        self.assertEqual((result["total"], result["online"], result["offline"]), (2, 2, 0))
        self.assertEqual(result["my_node_id"], body_for("web1")["node_id"])
        by_name = {n["node_name"]: n for n in result["nodes"]}
        self.assertEqual(list(by_name), ["db1", "web1"])
        self.assertEqual((by_name["web1"]["this_node"], by_name["web1"]["node_id"]), (True, body_for("web1")["node_id"]))
        self.assertEqual(by_name["web1"]["vpn_ip"], load_config(self.mesh.config_dir).vpn_ip)
        peer = by_name["db1"]
        self.assertEqual((peer["this_node"], peer["status"], peer["vpn_ip"]), (False, "online", db1["vpn_ip"]))
        self.assertEqual((peer["path"], peer["endpoint"]), ("lan", "10.1.1.1:51820"))
        self.assertEqual(peer["path_reason"], "lan: same public address as this node, via 10.1.1.1:51820")

    async def test_a_server_without_status_or_answering_nonsense_is_as_good_as_absent(self):
        # A hostile or odd server must not cost the admin the daemon's view.
        await self.mesh.register("db1", lan_ip="10.1.1.1")
        await self.mesh.start_daemon(peers=1)
        nonsense = BadAnswer("GET /status", ProtocolError("nodes", "must be a list"))
        missing = ServerError(404, "GET /status: answer is not JSON")
        for error in (nonsense, missing):
            self.patch(CoordinationClient, "status", lambda client, error=error: fail(error))
            result = await ops.status(self.mesh.context())
            self.assertEqual((result["ok"], result["stale"], result["source"]), (False, True, "daemon"), error)
            self.assertEqual(result["server_error"], str(error))
            self.assertEqual(sorted(n["node_name"] for n in result["nodes"]), ["db1", "web1"])
        self.patch(CoordinationClient, "status", lambda client: fail(ServerError(403, "not yours")))
        with self.assertRaises(ops.OpError):
            await ops.status(self.mesh.context())  # a refusal is the server's answer

    async def test_an_answering_server_is_not_stale(self):
        await self.mesh.register("db1")
        result = await ops.status(self.mesh.context())
        self.assertEqual((result["ok"], result["stale"], result["source"]), (True, False, "server"))
        self.assertNotIn("warning", result)

    async def test_neither_server_nor_daemon(self):
        await self.mesh.stop_server()
        for call in (ops.status, ops.peers):
            with self.assertRaises(ops.OpError) as caught:
                await call(self.mesh.context())
            message = str(caught.exception)
            self.assertTrue(message.startswith(f"{self.mesh.url} is unreachable: "), message)
            self.assertTrue(
                message.endswith(
                    "; is the wire server running? And the node daemon is not running here, so there is no last known mesh "
                    "to show either (start it: sudo wire up)."
                ),
                message,
            )

    async def test_another_server_is_not_the_daemons_mesh(self):
        await self.server_goes_away()
        other = Mesh(self)
        await other.stop_server()
        with self.assertRaises(ops.OpError) as caught:
            await ops.status(self.mesh.context(), server=other.url)
        self.assertTrue(
            str(caught.exception).endswith(f"And the node daemon here belongs to {self.mesh.url}, so there is no last known mesh of this server to show."),
            str(caught.exception),
        )

    async def test_peers_from_the_daemon(self):
        db1 = await self.server_goes_away()
        result = await ops.peers(self.mesh.context())
        self.assertEqual((result["ok"], result["stale"], result["source"], result["count"]), (False, True, "daemon", 1))
        self.assertEqual(result["peers"], [{"node_name": "db1", "node_id": db1["node_id"], "vpn_ip": db1["vpn_ip"], "endpoint": "10.1.1.1:51820", "path": "lan"}])
        self.assertIn("showing the mesh as this node last saw it", result["warning"])

    async def test_ping_by_name_resolves_through_the_daemon(self):
        db1 = await self.server_goes_away()
        self.mesh.runner.expect(ops.ping_argv(db1["vpn_ip"], 4), stdout=PING_OK)
        result = await ops.ping(self.mesh.context(), "db1")
        self.mesh.runner.assert_all_called()
        self.assertEqual((result["ok"], result["vpn_ip"], result["path"]), (True, db1["vpn_ip"], "lan"))

    async def test_ping_of_a_name_nobody_can_resolve(self):
        await self.server_goes_away()
        with self.assertRaises(ops.OpError) as caught:
            await ops.ping(self.mesh.context(), "ghost")
        message = str(caught.exception)
        self.assertTrue(
            message.startswith(
                f"cannot resolve ghost: the daemon does not know it (it is not in the daemon's netmap), and the server cannot be asked: {self.mesh.url} is unreachable"
            ),
            message,
        )
        self.assertTrue(message.endswith("(a VPN address needs no lookup: wire ping 10.99.x.y)"), message)
        self.assertEqual(self.mesh.runner.calls, [])

    async def test_a_daemon_that_never_reached_the_server(self):
        ctx = DaemonView(reactor, self.mesh.config_dir)
        ctx.local = {
            "node": {"node_name": "web1", "node_id": body_for("web1")["node_id"], "vpn_ip": "10.99.0.7", "public_ip": ""},
            "server": {"url": self.mesh.url, "reachable": False, "last_status": 0, "last_error": "x", "last_contact_ago": None},
            "peers": [],
        }
        await self.mesh.stop_server()
        result = await ops.status(ctx)
        self.assertTrue(result["warning"].endswith("showing the mesh as this node last saw it (it has not reached the server since its daemon started)"))
        self.assertEqual([(n["node_name"], n["this_node"]) for n in result["nodes"]], [("web1", True)])

    async def test_the_cli_marks_the_mesh_as_last_known(self):
        await self.server_goes_away()
        code, out, err = await run_wire(self.mesh, "status")
        self.assertEqual((code, err), (1, ""))
        lines = out.splitlines()
        self.assertEqual(lines[1], f"wire status  {self.mesh.url}")
        self.assertRegex(lines[2], rf"^  ! server unreachable \({self.mesh.url} is unreachable: .*\): showing the mesh as this node last saw it, \d+s ago$")
        self.assertEqual(lines[3], "  2 online / 0 offline / 2 total (last known)")
        self.assertRegex(lines[5], r"^  ● db1 +10\.99\.\d+\.\d+ +- +lan 10\.1\.1\.1:51820, handshake \d+s ago$")
        self.assertRegex(lines[6], r"^  ● web1 +10\.99\.\d+\.\d+ +127\.0\.0\.1 +- +\(this node\)$")
        code, out, _ = await run_wire(self.mesh, "status", "--json")
        answer = json.loads(out)
        self.assertEqual((code, answer["stale"], answer["source"]), (1, True, "daemon"))
        code, out, _ = await run_wire(self.mesh, "peers")
        self.assertEqual(code, 1)
        self.assertRegex(out, r"^! server unreachable .*\n1 peer\(s\) online when last heard, from this node's daemon\n  db1 +10\.99\.\d+\.\d+ +10\.1\.1\.1:51820 \(lan\)$")


async def run_wire(mesh: Mesh, *argv) -> tuple[int, str, str]:
    """``wire ...`` in process: the real parser, operations and printing."""
    out, err = io.StringIO(), io.StringIO()
    code = await cli.run(reactor, ["--config-dir", mesh.config_dir, *argv], out, err, make_context=lambda r, d: mesh.context())
    return code, out.getvalue(), err.getvalue()


REMOVED = (
    "the server no longer accepts this node: it was removed from the mesh by the admin (or its credential was revoked); "
    "to join again: get a new join key ('wire admin keys create' on the server) and run: sudo wire up --join TOKEN"
)


class RemovedNodeTests(unittest.TestCase):
    """Item 6 (the views): a node the admin removed is told so, and how to
    join again, by status, diagnose, watchdog, explain, peers and ping; not
    that the server is down or the network broken."""

    timeout = 30

    def setUp(self):
        self.mesh = Mesh(self)
        coordinator = self.mesh.coordinator
        coordinator.authority = Authority(coordinator.store, reactor)
        self.admin = Admin(coordinator, self.mesh.url, "")

    async def enroll(self, name: str, **fields) -> str:
        _, secret = settled(self.mesh.coordinator.authority.create_key())
        _, credential = await self.mesh.coordinator.enroll(secret, registration_for(name, **fields), "127.0.0.1")
        return credential

    async def join_web1(self) -> None:
        """web1 enrolled as ``wire up --join`` leaves it: config and credential."""
        self.mesh.configure("web1")
        credential = await self.enroll("web1")
        with open(credential_path(self.mesh.config_dir), "w") as f:
            f.write(credential)
        await self.enroll("db1", lan_ip="10.1.1.1")

    def check(self, result: dict, name: str) -> dict:
        return next(c for c in result["checks"] if c["check"] == name)

    async def test_the_cli_itself_refused(self):
        await self.join_web1()
        self.assertEqual([n["node_name"] for n in (await ops.status(self.mesh.context()))["nodes"]], ["db1", "web1"])
        await self.admin.remove_node("web1")
        for call in (ops.status, ops.peers, lambda ctx: ops.explain(ctx, "db1"), lambda ctx: ops.ping(ctx, "db1")):
            with self.assertRaises(ops.OpError) as caught:
                await call(self.mesh.context())
            self.assertEqual(str(caught.exception), REMOVED)
        diagnosis = await ops.diagnose(self.mesh.context())
        self.assertEqual([(c["check"], c["ok"]) for c in diagnosis["checks"]], [("wireguard", True), ("config", True), ("daemon", False), ("server", True), ("registered", False)])
        registered = self.check(diagnosis, "registered")
        self.assertEqual(
            registered["detail"],
            "the server no longer accepts this node: it was removed from the mesh by the admin (or its credential was revoked)",
        )
        self.assertEqual(registered["suggestion"], "to join again: get a new join key ('wire admin keys create' on the server) and run: sudo wire up --join TOKEN")
        self.assertNotIn("is the server running", json.dumps(diagnosis))

    async def removed_with_daemon(self) -> DaemonView:
        """web1's daemon, after the admin removed web1: a context whose daemon
        view is the real daemon's control status once it carries the 401."""
        await self.join_web1()
        daemon = await self.mesh.start_daemon(peers=1)
        await self.admin.remove_node("web1")
        # The daemon's next registration meets the 401 (its heartbeat would, soon).
        with self.assertRaises(ServerError):
            await daemon.register()
        # Its long-poll, answered by the removal itself, may land after that
        # and count as contact; the next one meets the 401 too.
        ctx = DaemonView(reactor, self.mesh.config_dir, runner=self.mesh.runner, check_install=lambda: OK_TOOLS)
        for _ in range(250):
            ctx.local = await self.mesh.context().daemon_status()
            if ctx.local["server"]["last_status"] == 401:
                return ctx
            await deferLater(reactor, 0.02, lambda: None)
        self.fail(f"the daemon never showed the 401: {ctx.local['server']}")

    async def test_the_daemon_refused(self):
        ctx = await self.removed_with_daemon()
        watchdog = await ops.watchdog(ctx)
        self.assertFalse(watchdog["ok"])
        self.assertIn(REMOVED, watchdog["problems"])
        self.assertFalse(any("unreachable" in p for p in watchdog["problems"]), watchdog["problems"])
        registered = self.check(await ops.diagnose(ctx), "registered")
        self.assertEqual((registered["ok"], registered["suggestion"]), (False, "to join again: get a new join key ('wire admin keys create' on the server) and run: sudo wire up --join TOKEN"))
        with self.assertRaises(ops.OpError) as caught:
            await ops.status(ctx)
        self.assertEqual(str(caught.exception), REMOVED)

    async def test_the_daemon_refused_and_the_server_gone(self):
        # Today's daemon keeps only its latest failure: once a request finds the
        # server gone, last_status is 0 again. Its view after the 401 is the case.
        ctx = await self.removed_with_daemon()
        await self.mesh.stop_server()
        with self.assertRaises(ops.OpError) as caught:
            await ops.status(ctx)
        self.assertEqual(str(caught.exception), REMOVED, "the daemon's last word, not a stale mesh")
        result = await ops.explain(ctx, "db1")
        self.assertFalse(result["ok"])
        self.assertTrue(result["reasons"][0].startswith("the server no longer accepts this node: it was removed from the mesh by the admin"), result["reasons"])
        self.assertEqual(result["suggestions"][0], "to join again: get a new join key ('wire admin keys create' on the server) and run: sudo wire up --join TOKEN")
        watchdog = await ops.watchdog(ctx)
        self.assertIn(REMOVED, watchdog["problems"])
        diagnosis = await ops.diagnose(ctx)
        self.assertEqual(self.check(diagnosis, "registered")["detail"], "the server no longer accepts this node: it was removed from the mesh by the admin (or its credential was revoked)")

    async def test_a_daemon_that_says_removed(self):
        """The daemon's own state (``node.state``), without a 401 in sight."""
        self.mesh.coordinator.authority = None  # an open server: the daemon registers without a credential
        self.mesh.configure("web1")
        await self.mesh.register("db1")
        await self.mesh.start_daemon(peers=1)
        local = await self.mesh.context().daemon_status()
        local["node"]["state"] = "removed"
        self.assertEqual(local["server"]["last_status"], 0)
        ctx = DaemonView(reactor, self.mesh.config_dir, runner=self.mesh.runner, check_install=lambda: OK_TOOLS)
        ctx.local = local
        self.assertIn(REMOVED, (await ops.watchdog(ctx))["problems"])
        self.assertEqual(self.check(await ops.diagnose(ctx), "registered")["detail"], "the server no longer accepts this node: it was removed from the mesh by the admin (or its credential was revoked)")
        explained = await ops.explain(ctx, "db1")
        self.assertEqual((explained["ok"], explained["suggestions"][0]), (False, "to join again: get a new join key ('wire admin keys create' on the server) and run: sudo wire up --join TOKEN"))
        # The server still answers (for others): its mesh, and this node's warning.
        status = await ops.status(ctx)
        self.assertEqual((status["ok"], status["stale"], status["warning"]), (False, False, REMOVED))
        self.assertEqual(cli.format_status(status, cli.Style(False)).splitlines()[2], f"  ! {REMOVED}")

    async def test_the_cli_prints_it(self):
        await self.join_web1()
        await self.admin.remove_node("web1")
        code, out, err = await run_wire(self.mesh, "status")
        self.assertEqual((code, out, err), (1, "", f"wire status: {REMOVED}\n"))
        code, out, _ = await run_wire(self.mesh, "diagnose")
        self.assertEqual(code, 1)
        self.assertIn("  ✗ registered    the server no longer accepts this node", out)
        self.assertIn("      → to join again: get a new join key", out)


class RealServerTests(unittest.TestCase):
    """Items 10 and 6 for real: a real ``twistd wire-server`` process, the
    node daemon serving its control socket (WireGuard faked), and the real
    ``wire`` command in a child process."""

    timeout = 90

    async def wire(self, mesh: Mesh, *argv) -> tuple[int, str, str]:
        env = {**os.environ, "PYTHONPATH": CHECKOUT}
        env.pop("WIRE_CONFIG_DIR", None)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "wire.cli", "--config-dir", mesh.config_dir, *argv], env=env, path=CHECKOUT, reactor=reactor
        )
        return code, out.decode(), err.decode()

    async def start_server(self, *args: str) -> ServerProcess:
        data_dir = tempfile.mkdtemp(prefix="wire-real-")  # short: the admin socket lives there
        self.addCleanup(shutil.rmtree, data_dir, True)
        server = ServerProcess(self, data_dir, extra_args=args)
        await server.start()
        return server

    async def test_status_while_the_server_is_killed(self):
        server = await self.start_server("--open")
        mesh = Mesh(self)
        mesh.url = server.url
        mesh.configure("web1")
        db1 = await CoordinationClient(server.client(), server.url).register(registration_for("db1", lan_ip="10.1.1.1"))
        daemon = await mesh.start_daemon(peers=1)
        code, out, err = await self.wire(mesh, "status", "--json")
        self.assertEqual((code, json.loads(out)["source"]), (0, "server"), err)

        await server.kill()  # SIGKILL: no goodbye to the long-poll
        await eventually(lambda: not daemon.contact.reachable, timeout=10)
        code, out, err = await self.wire(mesh, "status")
        self.assertEqual((code, err), (1, ""))
        self.assertRegex(out, rf"\n  ! server unreachable \({server.url} is unreachable: .*\): showing the mesh as this node last saw it, \d+s ago\n")
        self.assertIn("  2 online / 0 offline / 2 total (last known)\n", out)
        self.assertRegex(out, rf"\n  ● db1 +{db1.vpn_ip} .* lan 10\.1\.1\.1:51820, handshake \d+s ago\n")
        self.assertRegex(out, r"\n  ● web1 .*\(this node\)\n")
        code, out, _ = await self.wire(mesh, "status", "--json")
        answer = json.loads(out)
        self.assertEqual((code, answer["ok"], answer["stale"], answer["source"]), (1, False, True, "daemon"))
        self.assertEqual(sorted(n["node_name"] for n in answer["nodes"]), ["db1", "web1"])
        code, out, _ = await self.wire(mesh, "peers")
        self.assertEqual(code, 1)
        self.assertIn("1 peer(s) online when last heard, from this node's daemon", out)

        await mesh.stop_daemon()
        code, out, err = await self.wire(mesh, "status")
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith(f"wire status: {server.url} is unreachable"), err)
        self.assertIn("And the node daemon is not running here, so there is no last known mesh to show either (start it: sudo wire up).", err)

    async def test_a_node_removed_by_the_admin(self):
        server = await self.start_server()  # authentication on, TLS pinned
        mesh = Mesh(self)
        admin = AdminOps(reactor, server.data_dir)
        token = (await admin.create_key())["token"]
        # As 'wire up --join' has it done: the daemon enrolls (config.json and
        # the credential are its to write), then this test stops it.
        save_join_request(mesh.config_dir, JoinRequest(decode_join_token(token).server_url, token, "web1", 51820, "wire0"))
        await mesh.start_daemon()
        await mesh.stop_daemon()
        code, out, err = await self.wire(mesh, "status", "--json")
        self.assertEqual((code, [n["node_name"] for n in json.loads(out)["nodes"]]), (0, ["web1"]), err)

        await admin.remove_node("web1")
        code, out, err = await self.wire(mesh, "status")
        self.assertEqual((code, out, err), (1, "", f"wire status: {REMOVED}\n"))
        code, out, _ = await self.wire(mesh, "diagnose")
        self.assertEqual(code, 1)
        self.assertIn("  ✓ server ", out)
        self.assertIn(
            "  ✗ registered    the server no longer accepts this node: it was removed from the mesh by the admin (or its credential was revoked)\n"
            "      → to join again: get a new join key ('wire admin keys create' on the server) and run: sudo wire up --join TOKEN",
            out,
        )
