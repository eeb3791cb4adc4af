"""The node's life, owned by its daemon (issue 12): ``wire up`` leaves a join
request and waits on the daemon's events; the daemon probes, enrolls with
its real NAT facts, and is the only writer of config.json.

In memory: a real coordination server on 127.0.0.1 (authenticated or open),
in-process daemons with a fake WireGuard, a scripted process runner; the
daemon's phases and its event ring on a fake clock.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import sys

from twisted.internet import protocol, reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fakes import FakeProcessRunner, FakeWireGuard, fixed_nat
from tests.helpers import body_for, registration_for, settled
from tests.test_daemon import eventually
from tests.test_ops import Mesh, NO_DEVICE
from wire import cli, ops
from wire.client import NetmapAnswers, ServerError
from wire.jointoken import decode_join_token
from wire.keys import load_or_create_keys
from wire.node import launcher
from wire.node.config import NodeConfig, config_path, load_config, save_config
from wire.node.control import build_control_site, node_status
from wire.node.daemon import REFUSED_RETRY, NodeDaemon
from wire.node.messages import NEEDS_TOKEN
from wire.node.state import Phase
from wire.node.enroll import (
    JoinRequest,
    credential_path,
    join_request_path,
    load_join_request,
    save_join_request,
)
from wire.node.events import EventLog
from wire.node.tap import node_start
from wire.server.admin import Admin
from wire.server.api import build_site
from wire.server.auth import Authority
from wire.tls import ensure_self_signed
from wire.tlsserver import PLAIN_HTTP_MESSAGE, TLSServerFactory, server_context


class AuthMesh(Mesh):
    """The Mesh, with authentication on (plain HTTP, as behind a TLS proxy)."""

    def __init__(self, test: unittest.TestCase):
        super().__init__(test)
        self.coordinator.authority = Authority(self.coordinator.store, reactor)
        self.coordinator.registry.unique_names = True
        self.admin = Admin(self.coordinator, self.url, "")

    def token(self) -> str:
        return settled(self.admin.create_key())["token"]


class TLSAuthMesh(AuthMesh):
    """The AuthMesh served over the server's own TLS transport, as a default
    wire-server is; ``url`` says http:// as a user might type it wrongly."""

    def _listen(self, stun: bool):
        data_dir = self.test.mktemp()
        os.makedirs(data_dir)
        cert_path, key_path = ensure_self_signed(data_dir)
        factory = TLSServerFactory(server_context(cert_path, key_path), build_site(self.coordinator))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.test.addCleanup(port.stopListening)
        return port


class _Exits(protocol.ProcessProtocol):
    def __init__(self, on_exit):
        self._on_exit = on_exit
        self.ended: Deferred = Deferred()

    def processEnded(self, reason):
        self._on_exit()
        self.ended.callback(None)


def launch_with_process(mesh: Mesh) -> None:
    """What ``twistd ... wire-node`` leaves: the in-process daemon, with a
    process of its own in the pidfile (its command line says wire-node):
    ``wire up`` and ``wire down`` stop it with a signal, and the in-process
    daemon stops with it."""
    mesh.launch_daemon()
    stop_daemon = Mesh.stop_daemon.__get__(mesh)
    daemon = mesh.daemon
    exits = _Exits(lambda: stop_daemon() if mesh.daemon is daemon else None)
    stand_in = reactor.spawnProcess(
        exits, sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "wire-node"], env=None,
    )

    def killed() -> Deferred:
        # Reaped before the test ends: its pipes are not left in the reactor.
        _kill(stand_in)
        return exits.ended

    mesh.test.addCleanup(killed)

    def exit_process():
        # The daemon exits (POST /down): so does its process.
        _kill(stand_in, "TERM")
        return stop_daemon()

    mesh.stop_daemon = exit_process
    with open(os.path.join(mesh.config_dir, launcher.PIDFILE), "w") as f:
        f.write(f"{stand_in.pid}\n")


def _kill(process, signal_name: str = "KILL") -> None:
    if process.pid is not None:
        try:
            process.signalProcess(signal_name)
        except ProcessExitedAlready:
            pass


def launching(test: unittest.TestCase, mesh: Mesh, times: int = 1) -> FakeProcessRunner:
    """The scripted runner, where each ``twistd ... wire-node`` starts the
    in-process daemon with its stand-in process (and returns once it has
    started, as twistd does)."""
    runner = FakeProcessRunner()
    for _ in range(times):
        expect_launch(runner, mesh)
    mesh.runner = runner
    test.addCleanup(runner.assert_all_called)
    return runner


def expect_launch(runner: FakeProcessRunner, mesh: Mesh, with_process: bool = True) -> None:
    launch = launch_with_process if with_process else Mesh.launch_daemon
    runner.expect(launcher.node_argv(mesh.config_dir, foreground=False), then=lambda: launch(mesh))


class JoinTests(unittest.TestCase):
    """A: the daemon enrolls with its real NAT facts; one netmap change per join."""

    timeout = 30

    def setUp(self):
        self.mesh = AuthMesh(self)

    async def test_join_is_one_enrollment_with_the_nat_facts_and_the_daemon_writes_config(self):
        launching(self, self.mesh)
        serial = self.mesh.coordinator.registry.changes.serial
        seen: list[dict] = []
        result = await ops.up(self.mesh.context(), join=self.mesh.token(), name="web1", progress=seen.append)
        self.assertEqual((result["ok"], result["already_running"], result["node_name"]), (True, False, "web1"))
        record = next(r for r in self.mesh.coordinator.registry.records() if r.node_name == "web1")
        self.assertEqual((record.nat_type, record.nat_port, record.lan_ip), ("easy", 40000, "192.168.1.10"))
        kinds = [e["kind"] for e in seen]
        self.assertEqual(kinds, ["probing", "nat", "enrolling", "enrolled", "interface", "registered"])
        self.assertNotIn("registering", kinds, "no POST /register before enrolling")
        # Settled: the long-poll is the heartbeat, nothing registers again.
        await eventually(lambda: self.mesh.daemon.netmap.cursor != "0")
        self.assertEqual(self.mesh.coordinator.registry.changes.serial - serial, 1, "one netmap change for the join")
        saved = load_config(self.mesh.config_dir)
        self.assertEqual((saved.node_name, saved.vpn_ip, saved.nat_type, saved.nat_port), ("web1", record.vpn_ip, "easy", 40000))
        self.assertFalse(os.path.exists(join_request_path(self.mesh.config_dir)), "the token is gone once used")
        self.assertEqual(stat.S_IMODE(os.stat(credential_path(self.mesh.config_dir)).st_mode), 0o600)
        self.assertNotIn(self.mesh.token().split(".")[1][:10], json.dumps(seen), "no secret in the events")

    async def test_the_request_holds_the_token_0600_and_the_cli_writes_no_config(self):
        runner = self.mesh.runner
        runner.expect(launcher.node_argv(self.mesh.config_dir, foreground=False), rc=1, stderr=b"boom\n")
        token = self.mesh.token()
        seen_request: list = []
        original = runner.run

        def run(argv, **kwargs):
            # What the daemon would find when it starts.
            seen_request.append((load_join_request(self.mesh.config_dir), os.stat(join_request_path(self.mesh.config_dir)).st_mode))
            return original(argv, **kwargs)

        runner.run = run
        with self.assertRaises(ops.OpError):
            await ops.up(self.mesh.context(), join=token, name="web1", port=51999, interface="wt0")
        request, mode = seen_request[0]
        self.assertEqual(request, JoinRequest(self.mesh.url, token, "web1", 51999, "wt0"))
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        self.assertFalse(os.path.exists(config_path(self.mesh.config_dir)), "only the daemon writes config.json")
        self.assertFalse(os.path.exists(join_request_path(self.mesh.config_dir)), "a daemon that never started leaves no request")
        self.assertNotIn(token, " ".join(runner.calls[0].argv), "never on a command line")

    async def test_rejoining_a_healthy_node_is_harmless(self):
        """Item 2."""
        token = self.mesh.token()
        launching(self, self.mesh)
        await ops.up(self.mesh.context(), join=token, name="web1")
        daemon = self.mesh.daemon
        result = await ops.up(self.mesh.context(), join=token)
        self.assertEqual((result["ok"], result["already_running"], result["node_name"]), (True, True, "web1"))
        self.assertIn("the join token was not needed", result["note"])
        self.assertIs(self.mesh.daemon, daemon, "the daemon was not restarted")
        self.assertEqual(daemon.state.phase, Phase.REGISTERED)

    async def test_rejoining_a_stopped_node_uses_its_credential(self):
        """Item 2, with the daemon stopped: it comes up, the token unused."""
        token = self.mesh.token()
        launching(self, self.mesh, times=2)
        await ops.up(self.mesh.context(), join=token, name="web1")
        await self.mesh.stop_daemon()
        seen: list[dict] = []
        result = await ops.up(self.mesh.context(), join=token, progress=seen.append)
        self.assertEqual((result["ok"], result["node_name"], result["already_running"]), (True, "web1", False))
        kinds = [e["kind"] for e in seen]
        self.assertEqual(kinds[-1], "registered")
        self.assertNotIn("enrolling", kinds, "the saved config and credential are enough")
        self.assertIn("already enrolled with this server: the join token was not needed", [e["message"] for e in seen])

    async def test_a_token_for_a_stopped_removed_node_joins_it_again(self):
        """Removed while its daemon was down: the token given joins it again at once."""
        launching(self, self.mesh, times=2)
        await ops.up(self.mesh.context(), join=self.mesh.token(), name="web1")
        await self.mesh.stop_daemon()
        await self.mesh.admin.remove_node("web1")
        seen: list[dict] = []
        result = await ops.up(self.mesh.context(), join=self.mesh.token(), progress=seen.append)
        self.assertEqual((result["ok"], result["node_name"]), (True, "web1"))
        self.assertEqual([e["kind"] for e in seen][-3:], ["enrolling", "enrolled", "registered"])
        self.assertNotIn("removed", [e["kind"] for e in seen], "a credential refused with a token at hand is no removal")


class CommandLineTests(unittest.TestCase):
    """B: ``wire up`` prints the daemon's progress on stderr; --json's stdout stays one object."""

    timeout = 30

    async def test_progress_on_stderr_and_one_json_object_on_stdout(self):
        mesh = AuthMesh(self)
        launching(self, mesh)
        out, err = io.StringIO(), io.StringIO()
        argv = ["--config-dir", mesh.config_dir, "up", "--join", mesh.token(), "--name", "web1", "--json"]
        code = await cli.run(reactor, argv, out, err, make_context=lambda reactor, config_dir: mesh.context())
        self.assertEqual(code, 0, err.getvalue())
        self.assertEqual(json.loads(out.getvalue())["node_name"], "web1")
        lines = err.getvalue().splitlines()
        self.assertEqual(lines[0], "wire up: probing NAT from UDP port 51820")
        self.assertTrue(lines[-1].startswith("wire up: registered as web1 with 10.99."), lines)
        self.assertIn("wire up: enrolling with", err.getvalue())


class FailureTests(unittest.TestCase):
    """Items 3, 4 and 5: a failed ``wire up`` says why, at once, and what is left running."""

    timeout = 30

    async def test_unreachable_server_shows_progress_and_says_the_daemon_keeps_trying(self):
        mesh = Mesh(self)
        await mesh.stop_server()
        launching(self, mesh)
        seen: list[dict] = []
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context(), server=mesh.url, name="web1", wait=2, progress=seen.append)
        message = str(caught.exception)
        self.assertIn("the node did not register within 2s", message)
        self.assertIn("the daemon keeps trying in the background", message)
        self.assertIn("sudo wire down", message)
        self.assertIn("unreachable", [e["kind"] for e in seen])
        self.assertEqual([e["kind"] for e in seen][:2], ["probing", "nat"])

    async def test_a_daemon_that_dies_leaves_no_join_request(self):
        mesh = Mesh(self)
        mesh.runner.expect(launcher.node_argv(mesh.config_dir, foreground=False))
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context(), server=mesh.url, name="web1")
        self.assertIn("the daemon is not running", str(caught.exception))
        self.assertFalse(os.path.exists(join_request_path(mesh.config_dir)))

    async def test_a_taken_port_is_refused_before_anything_is_asked(self):
        """Item 4."""
        mesh = AuthMesh(self)
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind(("0.0.0.0", 0))
        port = holder.getsockname()[1]
        keys_before = [k.uses for k in mesh.coordinator.authority.keys()]
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context(), join=mesh.token(), name="web1", port=port)
        self.assertEqual(str(caught.exception), f"UDP port {port} is in use by another program; choose another with --port")
        self.assertEqual(mesh.runner.calls, [], "no daemon started")
        self.assertEqual(sorted(os.listdir(mesh.config_dir)), [], "nothing written")
        self.assertEqual(len(mesh.coordinator.registry), 0)
        self.assertEqual([k.uses for k in mesh.coordinator.authority.keys()][: len(keys_before)], keys_before)

    async def test_an_authenticated_server_asks_for_a_join_token(self):
        """Item 5: refused at once, with what to do, and the daemon stopped."""
        mesh = AuthMesh(self)
        launching(self, mesh)
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context(), server=mesh.url, name="web1", wait=20)
        self.assertEqual(str(caught.exception), f"{NEEDS_TOKEN}; the daemon was stopped")
        self.assertFalse(os.path.exists(config_path(mesh.config_dir)))
        self.assertFalse(os.path.exists(join_request_path(mesh.config_dir)))

    async def test_plain_http_to_an_https_server_is_refused_at_once(self):
        """Item 5 with http://: the server's TLS port answers plain HTTP
        with a 400 saying what to do, so nothing waits or retries."""
        mesh = TLSAuthMesh(self)
        launching(self, mesh)
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context(), server=mesh.url, name="web1", wait=20)
        self.assertIn(PLAIN_HTTP_MESSAGE, str(caught.exception))
        self.assertIn("the daemon was stopped", str(caught.exception))
        self.assertNotIn("did not register within", str(caught.exception), "refused, not waited out")
        self.assertFalse(os.path.exists(join_request_path(mesh.config_dir)))

    async def test_a_spent_join_key_is_refused_at_once(self):
        mesh = AuthMesh(self)
        token = mesh.token()
        await mesh.coordinator.enroll(decode_join_token(token).secret, registration_for("other"), "127.0.0.1")
        launching(self, mesh)
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context(), join=token, name="web1", wait=20)
        self.assertIn("the server refused the join token", str(caught.exception))
        self.assertIn("wire admin keys create", str(caught.exception))


class RemovedTests(unittest.TestCase):
    """Item 6: a removed node says so, stops asking, and joins again with a new key."""

    timeout = 30

    async def test_removed_node_says_so_and_joins_again(self):
        mesh = AuthMesh(self)
        launching(self, mesh, times=2)
        await ops.up(mesh.context(), join=mesh.token(), name="web1")
        daemon = mesh.daemon
        await mesh.admin.remove_node("web1")
        await eventually(lambda: daemon.state.phase is Phase.REMOVED)
        status = await node_status(daemon)
        self.assertEqual((status["node"]["state"], status["server"]["last_status"]), ("removed", 401))
        self.assertIn("removed from the mesh", status["server"]["last_error"])
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context())
        self.assertIn("it was removed from the mesh by the admin (or its credential was revoked)", str(caught.exception))
        self.assertIn("wire up --join TOKEN", str(caught.exception))
        # A new key: the node joins again (the old credential is forgotten).
        result = await ops.up(mesh.context(), join=mesh.token())
        self.assertEqual((result["ok"], result["node_name"]), (True, "web1"))
        self.assertEqual(mesh.daemon.state.phase, Phase.REGISTERED)


class CorruptConfigTests(unittest.TestCase):
    """Item 7: down always works; up --join recovers."""

    timeout = 30

    async def test_down_and_join_again_with_a_corrupt_config(self):
        mesh = AuthMesh(self)
        token = mesh.token()
        runner = launching(self, mesh)
        await ops.up(mesh.context(), join=token, name="web1")
        with open(config_path(mesh.config_dir), "w") as f:
            f.write("{not json")
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context())
        self.assertIn("is not valid JSON", str(caught.exception))
        self.assertIn("sudo wire down, then sudo wire up --join TOKEN", str(caught.exception))
        mesh.runner.expect(["ip", "link", "delete", "dev", "wire0"], rc=1, stderr=NO_DEVICE)
        result = await ops.down(mesh.context())
        self.assertEqual((result["ok"], result["interface"], result["server_told"]), (True, "wire0", True))
        self.assertIn("to join again: sudo wire up --join TOKEN", result["note"])
        await eventually(lambda: mesh.daemon is None)
        expect_launch(runner, mesh)
        # The same (reusable or not) token is no longer needed: the credential still works.
        result = await ops.up(mesh.context(), join=token)
        self.assertEqual((result["ok"], result["node_name"]), (True, "web1"))
        self.assertEqual(load_config(mesh.config_dir).node_name, "web1", "config.json rewritten by the daemon")

    async def test_join_again_over_a_corrupt_config_while_the_daemon_runs_removes_its_interface(self):
        # Found trying it: the new daemon made wire0 while the old one's
        # interface stayed, holding the port ("Address already in use").
        mesh = AuthMesh(self)
        token = mesh.token()
        runner = launching(self, mesh)
        await ops.up(mesh.context(), join=token, name="web1", interface="wt9")
        with open(config_path(mesh.config_dir), "w") as f:
            f.write("{not json")
        mesh.runner.expect(["ip", "link", "delete", "dev", "wt9"])
        expect_launch(runner, mesh)
        result = await ops.up(mesh.context(), join=token)
        self.assertEqual((result["ok"], result["node_name"], result["interface"]), (True, "web1", "wire0"))

    async def test_down_with_nothing_but_a_pending_join(self):
        mesh = Mesh(self)
        save_join_request(mesh.config_dir, JoinRequest(mesh.url, interface="wt9"))
        mesh.runner.expect(["ip", "link", "delete", "dev", "wt9"], rc=1, stderr=b'Cannot find device "wt9"\n')
        self.addCleanup(mesh.runner.assert_all_called)
        result = await ops.down(mesh.context())
        self.assertEqual((result["ok"], result["interface"]), (True, "wt9"))
        self.assertFalse(os.path.exists(join_request_path(mesh.config_dir)), "the pending join is called off")

    def test_a_join_request_wins_over_a_corrupt_config(self):
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        with open(config_path(config_dir), "w") as f:
            f.write("{not json")
        save_join_request(config_dir, JoinRequest("http://127.0.0.1:1", node_name="web1"))
        start = node_start(config_dir)
        self.assertEqual((start.config.server_url, start.config.node_name, start.pending), ("http://127.0.0.1:1", "web1", True))


class NewSettingsTests(unittest.TestCase):
    timeout = 30

    async def test_a_new_interface_removes_the_old_one(self):
        mesh = Mesh(self)
        mesh.configure("web1", vpn_ip="10.99.7.7", vpn_subnet="10.99.0.0/16")
        runner = FakeProcessRunner()
        runner.expect(["ip", "link", "delete", "dev", "wire0"])
        expect_launch(runner, mesh, with_process=False)
        mesh.runner = runner
        self.addCleanup(runner.assert_all_called)
        result = await ops.up(mesh.context(), interface="wt1")
        self.assertEqual((result["interface"], result["node_name"]), ("wt1", "web1"))
        self.assertEqual(load_config(mesh.config_dir).interface, "wt1", "saved by the daemon")


class RenameTests(unittest.TestCase):
    """Item 9: renames from either side show everywhere."""

    timeout = 30

    async def test_up_with_a_new_name_renames_a_running_node(self):
        mesh = Mesh(self)
        mesh.configure("web1")
        await mesh.start_daemon()
        result = await ops.up(mesh.context(), name="web2")
        self.assertEqual((result["node_name"], result["renamed"]), ("web2", True))
        self.assertEqual(mesh.coordinator.registry.get(body_for("web1")["node_id"]).node_name, "web2")
        self.assertEqual(load_config(mesh.config_dir).node_name, "web2")
        self.assertEqual(mesh.runner.calls, [], "no restart")

    async def test_a_taken_name_is_refused_and_the_old_one_kept(self):
        mesh = Mesh(self)
        await mesh.register("db1")
        mesh.configure("web1")
        await mesh.start_daemon(peers=1)
        mesh.coordinator.registry.unique_names = True
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context(), name="db1")
        self.assertIn("the server did not take the name db1", str(caught.exception))
        self.assertEqual(load_config(mesh.config_dir).node_name, "web1")

    async def test_renames_are_the_admins_on_an_authenticated_server(self):
        mesh = AuthMesh(self)
        launching(self, mesh)
        await ops.up(mesh.context(), join=mesh.token(), name="web1")
        with self.assertRaises(ops.OpError) as caught:
            await ops.up(mesh.context(), name="web2")
        self.assertEqual(
            str(caught.exception),
            "on this server renames are the admin's: ask them to run 'wire admin nodes rename web1 web2' on the server",
        )
        # The admin renames: the node hears it in its netmap and shows it.
        await mesh.admin.rename_node("web1", "frontend")
        await eventually(lambda: mesh.daemon.config.node_name == "frontend")
        status = await mesh.context().daemon_status()
        self.assertEqual(status["node"]["node_name"], "frontend")
        self.assertEqual(load_config(mesh.config_dir).node_name, "frontend")


class ScriptedClient:
    """A coordination client that refuses, on a fake clock."""

    def __init__(self, credential: str | None, error: ServerError):
        self.credential = credential
        self.error = error
        self.calls = 0

    def use_credential(self, credential):
        self.credential = credential

    async def register(self, registration):
        self.calls += 1
        raise self.error

    async def enroll(self, registration, join_key):
        self.calls += 1
        raise self.error

    def netmap_stream(self, cursor, wait, holds_filter=None, holds_dns=None, holds_route_filter=None):
        # A server that does not stream: each stream carries one answer.
        return NetmapAnswers.of_one(self.netmap(cursor, wait, holds_filter, holds_dns, holds_route_filter))

    def netmap(self, cursor, wait, holds_filter=None, holds_dns=None, holds_route_filter=None):
        return Deferred()


class PhaseTests(unittest.TestCase):
    """The daemon's phases on a fake clock."""

    def daemon(self, client) -> NodeDaemon:
        self.clock = Clock()
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        config = NodeConfig(server_url="http://wire.test", node_name="web1", node_id=body_for("web1")["node_id"], vpn_ip="10.99.0.5")
        save_config(config_dir, config)
        daemon = NodeDaemon(
            clock=self.clock,
            config_dir=config_dir,
            config=config,
            keys=load_or_create_keys(config_dir),
            wireguard=FakeWireGuard(clock=self.clock),
            client=client,
            probe_nat=fixed_nat(),
            lan_ip=lambda: "",
        )
        daemon.startService()
        self.addCleanup(daemon.stopService)
        return daemon

    def test_a_401_for_our_credential_is_removal_and_stops_asking(self):
        client = ScriptedClient("secret", ServerError(401, "unknown or revoked node credential"))
        daemon = self.daemon(client)
        self.clock.advance(0)
        self.assertEqual((daemon.state.phase, daemon.contact.last_status), (Phase.REMOVED, 401))
        self.assertTrue(daemon.state.interface_up, "the interface stays until wire down")
        self.clock.advance(3600)
        self.assertEqual(client.calls, 1, "no retries once removed")
        self.assertEqual([e["kind"] for e in daemon.events.since(0)], ["probing", "nat", "interface", "registering", "removed"])

    def test_a_401_without_a_credential_asks_for_a_join_token(self):
        client = ScriptedClient(None, ServerError(401, "this server needs a node credential"))
        daemon = self.daemon(client)
        self.assertEqual((daemon.state.phase, daemon.state.reason), (Phase.REFUSED, NEEDS_TOKEN))
        self.clock.advance(REFUSED_RETRY - 1)
        self.assertEqual(client.calls, 1, "a refusal is not asked again tightly")
        self.clock.advance(1)
        self.assertEqual(client.calls, 2)
        self.assertEqual([e["kind"] for e in daemon.events.since(0)].count("refused"), 1, "announced once")

    def test_stopping(self):
        daemon = self.daemon(ScriptedClient(None, ServerError(409, "name taken")))
        daemon.stopService()
        self.assertEqual(daemon.state.phase, Phase.STOPPING)


class EventLogTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = EventLog(self.clock, size=3)

    def test_a_waiter_wakes_on_the_next_event(self):
        d = Deferred.fromCoroutine(self.events.wait(0, 10))
        self.assertNoResult(d)
        self.clock.advance(1)
        self.events.emit("probing", "probing NAT")
        self.assertEqual([(e["seq"], e["kind"], e["at"]) for e in self.successResultOf(d)], [(1, "probing", 1.0)])

    def test_nothing_new_within_the_wait(self):
        self.events.emit("probing", "probing NAT")
        d = Deferred.fromCoroutine(self.events.wait(1, 10))
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_ring_is_bounded(self):
        for i in range(5):
            self.events.emit("nat", f"event {i}")
        self.assertEqual([e["seq"] for e in self.events.since(0)], [3, 4, 5])
        self.assertEqual(self.events.last, 5)

    def test_a_cancelled_wait_leaves_nothing_behind(self):
        d = Deferred.fromCoroutine(self.events.wait(0, 10))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((self.events._waiters, self.clock.getDelayedCalls()), ([], []))


class ControlSiteTests(unittest.TestCase):
    def test_the_control_site_runs_on_the_given_clock(self):
        """D: nothing below makeService falls back to the global reactor."""
        clock = Clock()
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        config = NodeConfig(server_url="http://wire.test", node_name="web1", node_id=body_for("web1")["node_id"])
        daemon = NodeDaemon(
            clock=clock,
            config_dir=config_dir,
            config=config,
            keys=load_or_create_keys(config_dir),
            wireguard=FakeWireGuard(clock=clock),
            client=ScriptedClient(None, ServerError(500, "x")),
            probe_nat=fixed_nat(),
        )
        site = build_control_site(daemon, clock, lambda: None)
        self.assertIs(site.reactor, clock)
