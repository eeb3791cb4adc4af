"""The real thing: ``twistd -n wire-server`` on 127.0.0.1, over real HTTP and UDP."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import sqlite3
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.helpers import body_for
from tests.serverproc import ServerProcess, http_client
from wire.jointoken import decode_join_token


class UdpAsker(DatagramProtocol):
    """Sends one datagram and waits for one answer."""

    def __init__(self):
        self.answer: Deferred | None = None

    def datagramReceived(self, data, addr):
        if self.answer is not None and not self.answer.called:
            self.answer.callback(data)

    async def ask(self, data: bytes, port: int, timeout: float = 2.0) -> bytes | None:
        self.answer = Deferred()
        self.transport.write(data, ("127.0.0.1", port))
        timer = reactor.callLater(timeout, lambda: self.answer.called or self.answer.callback(None))
        result = await self.answer
        if timer.active():
            timer.cancel()
        return result


class ServerProcessTests(unittest.TestCase):
    """The seed-compatible server (--open): plain HTTP, no credentials."""

    timeout = 60

    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.server = ServerProcess(self, self.data_dir, extra_args=("--open",))
        self.http = http_client()

    async def post(self, path, body):
        response = await self.http.post(self.server.url + path, data=json.dumps(body).encode(), timeout=5)
        return response.code, json.loads(await response.content())

    async def get(self, path):
        response = await self.http.get(self.server.url + path, timeout=35)
        return response.code, await response.content()

    async def udp(self, data: bytes, port_offset: int = 1) -> bytes | None:
        asker = UdpAsker()
        listening = reactor.listenUDP(0, asker, interface="127.0.0.1")
        try:
            return await asker.ask(data, self.server.port + port_offset)
        finally:
            await listening.stopListening()

    async def test_registration_survives_sigkill(self):
        await self.server.start()
        code, answer = await self.post("/register", body_for("web1"))
        self.assertEqual(code, 200, answer)
        self.assertNotIn("heartbeat", answer, "an open server cannot tell who long-polls")
        # Killed the instant after it answered: the answer must still hold.
        await self.server.kill(signal.SIGKILL)
        await self.server.start()
        code, raw = await self.get("/status")
        status = json.loads(raw)
        self.assertEqual([(n["node_name"], n["vpn_ip"]) for n in status["nodes"]], [("web1", answer["vpn_ip"])])
        code, again = await self.post("/register", body_for("web1"))
        self.assertEqual(again["vpn_ip"], answer["vpn_ip"])
        await self.server.stop()

    async def test_the_ipv6_address_and_the_drawn_prefix_survive_sigkill(self):
        await self.server.start()
        code, answer = await self.post("/register", body_for("web1"))
        self.assertEqual(code, 200, answer)
        prefix = ipaddress.IPv6Network(answer["vpn_subnet6"])
        self.assertEqual((prefix.prefixlen, ipaddress.IPv6Address(answer["vpn_ip6"]) in prefix), (48, True))
        await self.server.kill(signal.SIGKILL)
        await self.server.start()
        code, raw = await self.get("/status")
        self.assertEqual([n["vpn_ip6"] for n in json.loads(raw)["nodes"]], [answer["vpn_ip6"]])
        code, again = await self.post("/register", body_for("web1"))
        self.assertEqual((again["vpn_ip6"], again["vpn_subnet6"]), (answer["vpn_ip6"], answer["vpn_subnet6"]))
        await self.server.stop()

    async def test_a_pair_path_survives_sigkill(self):
        await self.server.start()
        web, db = body_for("web1", nat_type="easy"), body_for("db1", nat_type="easy")
        for body in (web, db):
            await self.post("/register", body)
        report = {"node_id": web["node_id"], "wg_public_key": web["wg_public_key"], "peer_node_id": db["node_id"], "failure": "stopped"}
        code, answer = await self.post("/path", report)
        self.assertEqual((code, answer.get("accepted")), (200, True), answer)
        # Killed the instant after it answered: the relayed pair stays relayed.
        await self.server.kill(signal.SIGKILL)
        await self.server.start()
        code, raw = await self.get(f"/peers?since=0&node_id={db['node_id']}")
        snapshot = json.loads(raw)
        self.assertEqual(snapshot["paths_full"], True)
        self.assertEqual([(p["peer"], p["mode"], p["since"]) for p in snapshot["paths"]], [(web["node_id"], "relay", answer["path"]["since"])])
        code, again = await self.post("/path", report)
        self.assertEqual((code, again["accepted"]), (200, False))
        await self.server.stop()

    async def test_longpoll_pushes_a_new_node_at_once(self):
        await self.server.start()
        await self.post("/register", body_for("web1"))
        code, raw = await self.get("/peers?since=0")
        cursor = json.loads(raw)["cursor"]
        waiting = Deferred.fromCoroutine(self.get(f"/peers?since={cursor}&wait=30"))
        await deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called, "the long-poll must wait for a change")
        started = reactor.seconds()
        await self.post("/register", body_for("db1"))
        code, raw = await waiting
        elapsed = reactor.seconds() - started
        delta = json.loads(raw)
        self.assertEqual([p["node_name"] for p in delta["upserts"]], ["db1"])
        self.assertLess(elapsed, 5, "a change must arrive long before the wait ends")
        await self.server.stop()

    async def test_stun_legacy_json_and_garbage(self):
        await self.server.start()
        from wire.stun import encode_binding_request, parse_mapped_address, parse_message

        for offset in (1, 2):
            request, _ = encode_binding_request()
            answer = await self.udp(request, offset)
            self.assertIsNotNone(answer, f"no STUN answer on port+{offset}")
            ip, port = parse_mapped_address(parse_message(answer))
            self.assertEqual(ip, "127.0.0.1")
        for garbage in (b"\x00", b"\xff" * 300, b"\x00\x01\x00\x00" + b"\x00" * 16, os.urandom(64)):
            await self.udp(garbage)
        legacy = await self.udp(b"ping")
        self.assertEqual(json.loads(legacy)["ip"], "127.0.0.1")
        code, raw = await self.get("/health")
        self.assertEqual(code, 200, "garbage datagrams must not hurt the server")
        code, raw = await self.get("/metrics")
        self.assertIn(b"wire_stun_datagrams_total", raw)
        await self.server.stop()

    async def test_bad_input_over_real_http(self):
        await self.server.start()
        response = await self.http.post(self.server.url + "/register", data=b"x" * (2 * 1024 * 1024), timeout=10)
        self.assertEqual(response.code, 413)
        self.assertIn("error", json.loads(await response.content()))
        code, answer = await self.post("/register", [1, 2])
        self.assertEqual(code, 400)
        code, raw = await self.get("/nope")
        self.assertEqual(code, 404)
        code, raw = await self.get("/metrics")
        self.assertIn(b'wire_http_errors_total{status="413"} 1.0', raw)
        self.assertIn(b'wire_http_errors_total{status="404"} 1.0', raw)
        self.assertNotIn("Traceback", self.server.output)
        await self.server.stop()

    async def test_corrupt_database_stops_the_server_and_is_left_untouched(self):
        os.makedirs(self.data_dir)
        path = os.path.join(self.data_dir, "registry.sqlite3")
        garbage = b"this is not a database" * 100
        with open(path, "wb") as f:
            f.write(garbage)
        proto = self.server.spawn()
        code = await proto.ended
        self.assertNotEqual(code, 0)
        self.assertIn("registry.sqlite3", self.server.output)
        self.assertIn("untouched", self.server.output)
        self.assertNotIn("Traceback", self.server.output)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), garbage)

    async def test_bad_option_is_a_usage_error_naming_it(self):
        self.server.extra_args = ["--open", "--subnet=banana"]
        proto = self.server.spawn()
        code = await proto.ended
        self.assertNotEqual(code, 0)
        self.assertIn("--subnet", self.server.output)
        self.assertNotIn("Traceback", self.server.output)
        # One line, not twistd's whole help; exit 2, as usage errors do.
        self.assertEqual(code, 2)
        self.assertEqual(self.server.output.strip().splitlines(), [
            "wire-server: --subnet: 'banana' is neither a CIDR like 10.99.0.0/16 nor a prefix like 10.99 "
            "(see: twistd wire-server --help)"
        ])  # fmt: skip

    async def test_unknown_option_is_one_line_naming_it(self):
        self.server.extra_args = ["--open", "--prot=9000"]
        code = await self.server.spawn().ended
        self.assertEqual(code, 2)
        lines = self.server.output.strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("--prot", lines[0])

    async def test_a_port_in_use_is_one_line_naming_it(self):
        from twisted.internet.protocol import Factory

        taken = reactor.listenTCP(self.server.port, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        code = await self.server.spawn().ended
        self.assertNotEqual(code, 0)
        output = self.server.output
        self.assertNotIn("Traceback", output)
        self.assertEqual(
            [line.split("] ", 1)[-1] for line in output.splitlines() if "cannot listen" in line and "#critical]" in line],
            [f"wire-server: cannot listen on TCP port {self.server.port} of 127.0.0.1: address already in use "
             "(another wire-server? choose another --port)"],
        )  # fmt: skip
        # twistd's two start-up lines, (maybe) the open-files warning, the error.
        self.assertLessEqual(len(output.strip().splitlines()), 4, output)
        self.assertNotIn("HTTP on", output, "a server that did not start must not say it serves")
        self.assertEqual(code, 1)

    async def test_a_port_in_use_fails_a_daemonized_server_at_once(self):
        """Without -n, twistd's parent waits for the daemon's word: it must get
        one (an exit without it would leave the parent waiting for ever)."""
        from twisted.internet.protocol import Factory

        from tests.serverproc import CHECKOUT, _Collector
        from wire.twistd import twistd_argv

        taken = reactor.listenTCP(self.server.port, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        os.makedirs(self.data_dir)
        log_file = os.path.join(self.data_dir, "twistd.log")
        argv = twistd_argv() + [
            f"--pidfile={os.path.join(self.data_dir, 'twistd.pid')}", f"--logfile={log_file}",
            "wire-server", "--open", "--interface=127.0.0.1", f"--port={self.server.port}", f"--data-dir={self.data_dir}",
        ]  # fmt: skip
        proto = _Collector()
        reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ, PYTHONPATH=CHECKOUT), path=CHECKOUT)
        self.assertEqual(await proto.ended, 1)
        output = proto.output.decode(errors="replace")
        self.assertIn("An error has occurred", output)
        self.assertIn(f"cannot listen on TCP port {self.server.port}", output)
        with open(log_file) as f:
            logged = [line for line in f if "#critical]" in line]
        self.assertEqual(len(logged), 1)
        self.assertIn("address already in use (another wire-server? choose another --port)", logged[0])

    async def test_second_server_on_same_data_dir_refused(self):
        await self.server.start()
        second = ServerProcess(self, self.data_dir, extra_args=("--open",))
        proto = second.spawn()
        code = await proto.ended
        self.assertNotEqual(code, 0)
        self.assertIn("already using", second.output)
        await self.server.stop()

    async def test_import_seed_state(self):
        state_path = os.path.abspath(self.mktemp())
        seed_body = body_for("oldnode", lan_ip="192.168.1.9")
        seed_body.update(vpn_ip="10.99.12.34", public_ip="203.0.113.5", registered=1, last_seen=reactor.seconds() - 60)
        with open(state_path, "w") as f:
            json.dump({seed_body["node_id"]: seed_body, "broken": {"node_id": "broken", "wg_public_key": "x"}}, f)
        self.server.extra_args = ["--open", f"--import-seed-state={state_path}"]
        await self.server.start()
        code, raw = await self.get("/status")
        nodes = json.loads(raw)["nodes"]
        self.assertEqual([(n["node_name"], n["vpn_ip"], n["public_ip"]) for n in nodes], [("oldnode", "10.99.12.34", "203.0.113.5")])
        self.assertIn("1 skipped", self.server.output)
        await self.server.stop()
        with sqlite3.connect(os.path.join(self.data_dir, "registry.sqlite3")) as db:
            self.assertEqual(db.execute("SELECT count(*) FROM nodes").fetchone()[0], 1)


class PublicUrlProcessTests(unittest.TestCase):
    """The URL in first-join.txt, with authentication on (the default)."""

    timeout = 60

    def setUp(self):
        # UNIX socket paths are short (108 bytes): a short data dir.
        self.data_dir = tempfile.mkdtemp(prefix="wire-url-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)

    def first_join(self):
        with open(os.path.join(self.data_dir, "first-join.txt")) as f:
            lines = f.read().splitlines()
        (command,) = [line for line in lines if not line.startswith("#")]
        return [line for line in lines if line.startswith("#")], decode_join_token(command.rsplit(" ", 1)[1])

    async def test_loopback_warned_then_first_join_follows_the_public_url(self):
        server = ServerProcess(self, self.data_dir)
        await server.start()
        await server.stop()
        self.assertIn(f"public URL https://127.0.0.1:{server.port}", server.output)
        self.assertIn(f"the public URL https://127.0.0.1:{server.port} is a loopback address", server.output)
        notes, token = self.first_join()
        self.assertEqual(token.server_url, f"https://127.0.0.1:{server.port}")
        self.assertIn("loopback", notes[0])

        public = f"https://vpn.example.org:{server.port}"
        again = ServerProcess(self, self.data_dir, port=server.port, extra_args=(f"--public-url={public}",))
        await again.start()
        await again.stop()
        self.assertNotIn("loopback", again.output)
        self.assertIn("first-join.txt rewritten", again.output)
        notes, rewritten = self.first_join()
        self.assertEqual((notes, rewritten.server_url), ([], public))
        self.assertEqual((rewritten.secret, rewritten.fingerprint), (token.secret, token.fingerprint))
        self.assertNotIn(token.secret, server.output + again.output, "secrets never reach the log")


class ConfigFileProcessTests(unittest.TestCase):
    """``twistd wire-server --config FILE``, for real."""

    timeout = 60

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="wire-cfg-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "server.toml")

    async def test_a_server_started_from_its_config_file(self):
        server = ServerProcess(self, os.path.join(self.dir, "data"), config=self.path, tls=False)
        with open(self.path, "w") as f:
            f.write(
                "# wire-server settings\n"
                f"port = {server.port}\n"
                'interface = "127.0.0.1"\n'
                'data-dir = "data"\n'
                'subnet = "10.42.0.0/16"\n'
                "open = true\n"
                f'public-url = "http://vpn.example.org:{server.port}"\n'
            )
        await server.start()
        response = await http_client().post(f"{server.url}/register", data=json.dumps(body_for("web1")).encode(), timeout=5)
        answer = json.loads(await response.content())
        self.assertEqual(response.code, 200, answer)
        self.assertTrue(answer["vpn_ip"].startswith("10.42."), answer)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "data", "registry.sqlite3")), "data-dir relative to the file")
        self.assertIn(f"public URL http://vpn.example.org:{server.port}", server.output)
        await server.stop()

    async def test_a_bad_config_file_is_one_line_and_exit_2(self):
        with open(self.path, "w") as f:
            f.write("port = 8787\ndata_dir = '/tmp'\n")
        server = ServerProcess(self, self.dir, config=self.path)
        code = await server.spawn().ended
        self.assertEqual(code, 2)
        self.assertEqual(
            server.output.strip().splitlines(),
            [f"wire-server: --config: {self.path}: unknown key 'data_dir' (did you mean 'data-dir'?) (see: twistd wire-server --help)"],
        )
