"""Starting the coordination server, in memory: options, the config file,
the public URL and first-join.txt, listen failures, and the server's layering
(what it imports, which reactor times its sites)."""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
import sys
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from tests.helpers import make_coordinator, settled, short_dir
from tests.test_hardening import _UdpMemoryReactor
from wire.jointoken import decode_join_token
from wire.relayproto import enlarge_socket_buffers
from wire.server.admin import Admin, build_admin_site
from wire.server.api import build_site
from wire.server.auth import Authority
from wire.server.firstjoin import FIRST_JOIN_FILE
from wire.server.listening import StartFailure
from wire.server.metrics import ServerMetrics, exposition
from wire.server.options import Options
from wire.server.tap import makeService
from wire.urls import is_loopback_host, is_loopback_url

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str) -> str:
    """Run code in a fresh interpreter (a clean sys.modules); its stdout."""
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=CHECKOUT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout


class LayeringTests(unittest.TestCase):
    def test_the_server_imports_no_node_module(self):
        loaded = run_python(
            """
            import sys
            import wire.server.tap
            print(" ".join(sorted(m for m in sys.modules if m.startswith("wire."))))
            """
        ).split()
        self.assertIn("wire.server.tap", loaded)
        self.assertEqual([m for m in loaded if m.startswith(("wire.node", "wire.ops", "wire.cli"))], [])

    def test_metrics_change_no_global_state_at_import(self):
        changed = run_python(
            """
            import prometheus_client, prometheus_client.metrics as m
            before = (m._use_created, sorted(prometheus_client.REGISTRY._names_to_collectors))
            import wire.server.metrics
            after = (m._use_created, sorted(prometheus_client.REGISTRY._names_to_collectors))
            print(before != after)
            """
        )
        self.assertEqual(changed.strip(), "False")

    def test_a_scrape_has_no_created_series(self):
        metrics = ServerMetrics()
        metrics.registrations.labels("new").inc()
        text = exposition(metrics).decode()
        self.assertIn('wire_registrations_total{outcome="new"} 1.0', text)
        self.assertNotIn("_created", text)

    def test_sites_are_timed_by_the_coordinators_clock(self):
        clock = Clock()
        coordinator = make_coordinator(self, clock=clock)
        self.assertIs(build_site(coordinator).reactor, clock)
        coordinator.authority = Authority(coordinator.store, clock)
        self.assertIs(build_admin_site(Admin(coordinator, "https://vpn.example:8787", "")).reactor, clock)

    def test_socket_buffers_are_set_through_get_handle(self):
        class Socket:
            def __init__(self):
                self.options = []

            def setsockopt(self, level, option, value):
                self.options.append(value)

        class Port:  # only the public API: no .socket attribute
            def __init__(self, sock):
                self._sock = sock

            def getHandle(self):
                return self._sock

        sock = Socket()
        enlarge_socket_buffers(Port(sock), size=12345)
        self.assertEqual(sock.options, [12345, 12345])


# -- options: one-line usage errors, the default public URL ------------------


class UsageErrorTests(unittest.TestCase):
    def parse_as_twistd_does(self, *args) -> tuple[int, list[str]]:
        options = Options()
        options.parent = usage.Options()  # twistd's ServerOptions, for a subcommand
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(list(args))
        return caught.exception.code, stderr.getvalue().splitlines()

    def test_a_bad_value_is_one_line_naming_the_option_and_exit_2(self):
        code, lines = self.parse_as_twistd_does("--subnet", "banana", "--data-dir", short_dir(self))
        self.assertEqual(code, 2)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("wire-server: --subnet: 'banana'"), lines)
        self.assertIn("twistd wire-server --help", lines[0])

    def test_an_unknown_option_is_one_line_naming_it(self):
        code, lines = self.parse_as_twistd_does("--prot", "8787")
        self.assertEqual((code, len(lines)), (2, 1), lines)
        self.assertIn("--prot", lines[0])

    def test_a_stray_argument_is_named(self):
        code, lines = self.parse_as_twistd_does("--data-dir", short_dir(self), "8787")
        self.assertEqual(code, 2)
        self.assertEqual(
            lines,
            ["wire-server: unexpected argument '8787': wire-server takes options only (e.g. --port 8787) (see: twistd wire-server --help)"],
        )

    def test_called_directly_it_raises_usage_error(self):
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--subnet", "banana"])


class DnsDomainTests(unittest.TestCase):
    def parse(self, *args) -> Options:
        options = Options()
        options.machine_names = lambda: ["vm.example.org"]
        options.parseOptions(["--data-dir", short_dir(self), *args])
        return options

    def test_the_default_a_given_one_and_none(self):
        self.assertEqual(self.parse()["dns-domain"], "wire.internal")
        self.assertEqual(self.parse("--dns-domain", "Corp.Internal.")["dns-domain"], "corp.internal")
        self.assertIsNone(self.parse("--dns-domain=")["dns-domain"], "empty: no mesh DNS")

    def test_a_bad_one_is_named(self):
        for bad, words in (("bad_domain", "is not a DNS label"), ("10.in-addr.arpa", "under arpa"), ("caf\u00e9.internal", "not ASCII")):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--dns-domain", bad)
            self.assertTrue(str(caught.exception).startswith("--dns-domain: "), caught.exception)
            self.assertIn(words, str(caught.exception))

    def test_the_config_file_sets_it(self):
        path = os.path.join(short_dir(self), "server.toml")
        for text, expected in (('dns-domain = "mesh.internal"', "mesh.internal"), ('dns-domain = ""', None)):
            with open(path, "w") as f:
                f.write(text + "\n")
            self.assertEqual(self.parse("--config", path)["dns-domain"], expected)
        with open(path, "w") as f:
            f.write('dns-domain = "-bad"\n')
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--config", path)
        self.assertTrue(str(caught.exception).startswith(f"dns-domain in {path}: "), caught.exception)


class PublicUrlTests(unittest.TestCase):
    def parse(self, *args, names=("vm.example.org", "vm")) -> Options:
        options = Options()
        options.machine_names = lambda: list(names)
        options.parseOptions(["--data-dir", short_dir(self), *args])
        return options

    def test_the_default_is_this_machines_name_not_localhost(self):
        options = self.parse("--port", "9000")
        self.assertEqual((options["public-url"], options.public_url_from), ("https://vm.example.org:9000", "this machine's name"))
        # getfqdn() says "localhost" where /etc/hosts lists the hostname beside it.
        self.assertEqual(self.parse(names=("localhost", "vm"))["public-url"], "https://vm:8787")
        self.assertEqual(self.parse("--open", names=("", "vm"))["public-url"], "http://vm:8787")
        self.assertEqual(self.parse(names=("localhost", "localhost"))["public-url"], "https://localhost:8787")

    def test_a_specific_interface_is_the_default_host(self):
        options = self.parse("--interface", "192.0.2.7")
        self.assertEqual((options["public-url"], options.public_url_from), ("https://192.0.2.7:8787", "--interface"))
        self.assertEqual(self.parse("--interface", "2001:db8::7")["public-url"], "https://[2001:db8::7]:8787")

    def test_a_given_url_is_checked_and_kept(self):
        options = self.parse("--public-url", "https://vpn.example.org:443/")
        self.assertEqual((options["public-url"], options.public_url_from), ("https://vpn.example.org:443", ""))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--public-url", "vpn.example.org")
        self.assertIn("--public-url", str(caught.exception))

    def test_the_url_given_again_names_the_replicas(self):
        database = ("--database", "postgresql://wire@db.example.org/wire")
        options = self.parse("--public-url", "https://a.example.org:443", "--public-url", "https://b.example.org:443/",
                             "--public-url", "https://a.example.org:443", *database)
        self.assertEqual((options["public-url"], options["replica-urls"]), ("https://a.example.org:443", ("https://b.example.org:443",)))
        self.assertEqual(self.parse("--public-url", "https://a.example.org")["replica-urls"], ())
        for bad, said in (
            (("--public-url", "https://a.example.org", "--public-url", "gopher://b", *database), "--public-url"),
            (("--public-url", "https://a.example.org", "--public-url", "http://b.example.org", *database), "mix http:// and https://"),
            (("--public-url", "https://a.example.org", "--public-url", "https://b.example.org"), "which need --database"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*bad)
            self.assertIn(said, str(caught.exception))

    def test_loopback_hosts(self):
        for host in ("localhost", "LOCALHOST.", "app.localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1", "0.0.0.0", "::"):
            self.assertTrue(is_loopback_host(host), host)
        for host in ("vm", "vpn.example.org", "10.0.0.1", "192.0.2.7", "2001:db8::1", "localhost.example.org", "mylocalhost"):
            self.assertFalse(is_loopback_host(host), host)
        self.assertTrue(is_loopback_url("https://[::1]:8787"))
        self.assertFalse(is_loopback_url("https://vm:8787"))


# -- the service, in memory ---------------------------------------------------


class _RefusingReactor(_UdpMemoryReactor):
    """A memory reactor on which some ports are taken."""

    def __init__(self, taken_tcp=(), taken_udp=()):
        super().__init__()
        self.taken_tcp, self.taken_udp = set(taken_tcp), set(taken_udp)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.taken_tcp:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)))
        return super().listenTCP(port, factory, backlog, interface)

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port in self.taken_udp:
            raise CannotListenError(interface, port, OSError(errno.EACCES, os.strerror(errno.EACCES)))
        return super().listenUDP(port, protocol, interface, maxPacketSize)


class ServiceStartTests(unittest.TestCase):
    def setUp(self):
        self.data_dir = short_dir(self)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def options(self, *args, names=("vm.example.org",)) -> Options:
        options = Options()
        options.machine_names = lambda: list(names)
        options.parseOptions(["--port", "18787", "--data-dir", self.data_dir, *args])
        return options

    def start(self, *args, reactor=None, **kwargs):
        self.reactor = reactor or _RefusingReactor()
        service = makeService(self.options(*args, **kwargs), self.reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def logged(self, level=None) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if level is None or e["log_level"] == level]

    def admin(self) -> Admin:
        """The Admin behind the admin socket the service listens on."""
        (_, site, _, _, _), = self.reactor.unixServers
        return site.resource.children[b"keys"].admin

    def first_join(self) -> tuple[list[str], object]:
        path = os.path.join(self.data_dir, FIRST_JOIN_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            lines = f.read().splitlines()
        notes = [line for line in lines if line.startswith("#")]
        (command,) = [line for line in lines if not line.startswith("#")]
        return notes, decode_join_token(command.rsplit(" ", 1)[1])

    def test_the_public_url_is_logged_at_start(self):
        self.start("--interface", "192.0.2.7", "--public-url", "https://vpn.example.org:18787")
        self.assertTrue([line for line in self.logged() if "public URL https://vpn.example.org:18787" in line], self.logged())
        self.assertEqual([line for line in self.logged(LogLevel.warn) if "loopback" in line], [])
        notes, token = self.first_join()
        self.assertEqual((notes, token.server_url), ([], "https://vpn.example.org:18787"))

    def test_a_guessed_url_says_where_it_came_from(self):
        self.start()
        self.assertTrue([line for line in self.logged() if "public URL https://vm.example.org:18787 (from this machine's name" in line])
        notes, token = self.first_join()
        self.assertEqual(token.server_url, "https://vm.example.org:18787")
        self.assertIn("--public-url", notes[0])

    def test_a_loopback_url_is_warned_about_in_the_log_and_in_first_join(self):
        self.start(names=("localhost",))
        warnings = [line for line in self.logged(LogLevel.warn) if "loopback" in line]
        self.assertEqual(len(warnings), 1, self.logged())
        self.assertIn("https://localhost:18787 is a loopback address", warnings[0])
        self.assertIn("--public-url https://NAME:18787", warnings[0])
        notes, token = self.first_join()
        self.assertEqual(token.server_url, "https://localhost:18787")
        self.assertTrue(notes[0].startswith("# warning: the public URL https://localhost:18787 is a loopback address"), notes)
        self.assertNotIn(token.secret, "\n".join(self.logged()), "secrets never reach the log")

    def test_first_join_follows_the_public_url_while_its_key_is_unused(self):
        service = self.start("--interface", "127.0.0.1")
        _, first = self.first_join()
        self.assertEqual(first.server_url, "https://127.0.0.1:18787")
        service.stopService()
        self.start("--public-url", "https://vpn.example.org:18787")
        notes, second = self.first_join()
        self.assertEqual((notes, second.server_url, second.fingerprint), ([], "https://vpn.example.org:18787", first.fingerprint))
        self.assertEqual(second.secret, first.secret, "the same one-time key, not a new one")
        self.assertEqual(len(self.admin().keys()["keys"]), 1)
        self.assertTrue([line for line in self.logged() if "rewritten" in line and "vpn.example.org" in line])
        self.assertNotIn(second.secret, "\n".join(self.logged()))

    def test_first_join_is_left_alone_once_its_key_is_unusable(self):
        service = self.start("--public-url", "https://old.example.org:18787")
        admin = self.admin()
        settled(admin.revoke_key(admin.keys()["keys"][0]["key_id"]))
        service.stopService()
        self.start("--public-url", "https://new.example.org:18787")
        _, token = self.first_join()
        self.assertEqual(token.server_url, "https://old.example.org:18787")

    def test_a_taken_tcp_port_is_one_line_and_nothing_is_made(self):
        with self.assertRaises(SystemExit) as caught:
            self.start("--interface", "127.0.0.1", reactor=_RefusingReactor(taken_tcp=[18787]))
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(
            self.logged(LogLevel.critical),
            ["wire-server: cannot listen on TCP port 18787 of 127.0.0.1: address already in use (another wire-server? choose another --port)"],
        )
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, FIRST_JOIN_FILE)), "no join key for a server that did not start")
        self.assertEqual([line for line in self.logged() if "HTTP on" in line], [], "a server that did not start says not that it serves")

    def test_a_refused_udp_port_names_it_and_its_job(self):
        with self.assertRaises(SystemExit):
            self.start("--open", reactor=_RefusingReactor(taken_udp=[18789]))
        self.assertEqual(
            self.logged(LogLevel.critical),
            ["wire-server: cannot listen on UDP port 18789 (STUN, --port + 2): permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"],
        )

    def test_twistd_privileged_start_fails_the_same_way(self):
        service = makeService(self.options("--open"), _RefusingReactor(taken_udp=[18788]))
        self.addCleanup(service.stopService)
        with self.assertRaises(SystemExit):
            service.privilegedStartService()
        self.assertEqual(
            self.logged(LogLevel.critical),
            ["wire-server: cannot listen on UDP port 18788 (STUN and relay, --port + 1): permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"],
        )

    def test_a_daemon_hands_the_failure_to_twistd(self):
        """Daemonized, twistd's parent waits for the child's word: an exception
        (a SystemExit would leave it waiting for ever)."""
        options = self.options("--open")
        options.parent = {"nodaemon": False}
        service = makeService(options, _RefusingReactor(taken_tcp=[18787]))
        self.addCleanup(service.stopService)
        with self.assertRaises(StartFailure) as caught:
            service.privilegedStartService()
        self.assertIn("cannot listen on TCP port 18787", str(caught.exception))
        self.assertEqual(self.logged(LogLevel.critical), [str(caught.exception)])


# -- the --config file ---------------------------------------------------------


class ConfigFileTests(unittest.TestCase):
    def setUp(self):
        self.dir = short_dir(self)
        self.path = os.path.join(self.dir, "server.toml")
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("WIRE_")})

    def write(self, text: str) -> str:
        with open(self.path, "w") as f:
            f.write(textwrap.dedent(text))
        return self.path

    def parse(self, *args) -> Options:
        options = Options()
        options.machine_names = lambda: ["vm.example.org"]
        options.parseOptions(["--config", self.path, *args])
        return options

    def refused(self, text: str, *args) -> str:
        self.write(text)
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*args)
        message = str(caught.exception)
        self.assertEqual(len(message.splitlines()), 1, message)
        return message

    def test_every_option_can_be_set(self):
        for name in ("cert.pem", "key.pem", "state.json"):
            open(os.path.join(self.dir, name), "w").close()
        self.write(
            """
            port = 9000
            interface = "127.0.0.1"
            data-dir = "data"                      # relative to the file's directory
            subnet = "10.42"
            offline-after = 60
            expire-after = 3600.5
            import-seed-state = "state.json"
            tls-cert = "cert.pem"
            tls-key = "key.pem"
            public-url = "https://vpn.example.org:9000"
            rate-limit-register = "2/20"
            rate-limit-enroll = "1/5"
            rate-limit-stun = "10/30"
            trusted-proxy = ["10.0.0.1", "fd00::/8"]
            open = false
            plain-http = true
            no-rate-limits = true
            """
        )
        options = self.parse()
        self.assertEqual(
            (options["port"], options["interface"], options["data-dir"], str(options["subnet"])),
            (9000, "127.0.0.1", os.path.join(self.dir, "data"), "10.42.0.0/16"),
        )
        self.assertEqual((options["offline-after"], options["expire-after"]), (60.0, 3600.5))
        self.assertEqual(
            (options["import-seed-state"], options["tls-cert"], options["tls-key"]),
            tuple(os.path.join(self.dir, name) for name in ("state.json", "cert.pem", "key.pem")),
        )
        self.assertEqual(options["public-url"], "https://vpn.example.org:9000")
        self.assertEqual(
            [options[f"rate-limit-{name}"] for name in ("register", "enroll", "stun")], [(2, 20), (1, 5), (10, 30)]
        )
        self.assertEqual([str(n) for n in options["trusted-proxy"]], ["10.0.0.1/32", "fd00::/8"])
        self.assertEqual((options["open"], options["plain-http"], options["no-rate-limits"], options["tls"]), (False, True, True, False))

    def test_the_file_knows_every_option(self):
        from wire.server.options import config_kinds

        # trusted-proxy and public-url are repeatable: opt_ methods of their own.
        repeatable = {"trusted-proxy", "public-url"}
        options = {name for name, *_ in Options.optParameters} | {name for name, *_ in Options.optFlags} | repeatable
        self.assertEqual(set(config_kinds()), options - {"config"})

    def test_the_file_may_list_the_replicas(self):
        self.write('public-url = ["https://a.example.org:9000", "https://b.example.org:9000"]\ndatabase = "postgresql://wire@db/wire"\n')
        options = self.parse()
        self.assertEqual((options["public-url"], options["replica-urls"]), ("https://a.example.org:9000", ("https://b.example.org:9000",)))
        options = self.parse("--public-url", "https://c.example.org")
        self.assertEqual((options["public-url"], options["replica-urls"]), ("https://c.example.org", ()), "the command line's list replaces the file's")
        self.write("public-url = 7\n")
        with self.assertRaises(usage.UsageError) as caught:
            self.parse()
        self.assertIn("public-url must be a string or a list of strings", str(caught.exception))

    def test_the_command_line_overrides_the_file_and_the_file_the_environment(self):
        self.write(
            """
            port = 9000
            subnet = "10.42.0.0/16"
            trusted-proxy = ["10.0.0.1"]
            open = true
            """
        )
        self.patch(os, "environ", dict(os.environ, WIRE_PORT="9300", WIRE_VPN_SUBNET="10.77.0.0/16", WIRE_DATA_DIR=self.dir))
        options = self.parse("--port", "9100", "--trusted-proxy", "192.0.2.1")
        self.assertEqual(options["port"], 9100)
        self.assertEqual([str(n) for n in options["trusted-proxy"]], ["192.0.2.1/32"], "the command line's list replaces the file's")
        self.assertEqual(str(options["subnet"]), "10.42.0.0/16", "the file before $WIRE_VPN_SUBNET")
        self.assertEqual(options["data-dir"], self.dir, "$WIRE_DATA_DIR where the file says nothing")
        self.assertTrue(options["open"])
        options = self.parse()
        self.assertEqual((options["port"], [str(n) for n in options["trusted-proxy"]]), (9000, ["10.0.0.1/32"]))
        self.write("open = false\n")
        self.assertTrue(self.parse("--open")["open"], "a flag on the command line stands")

    def test_an_unreadable_file_is_named(self):
        missing = os.path.join(self.dir, "nope.toml")
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--config", missing])
        self.assertEqual(str(caught.exception), f"--config: {missing}: cannot read it (no such file or directory)")
        self.assertIn(f"--config: {self.path}: not a TOML file (", self.refused("port = \n"))
        self.assertIn(f"--config: {self.path}: not a TOML file (", self.refused("[open"))
        with open(self.path, "wb") as f:
            f.write(b'interface = "\xff"\n')
        with self.assertRaises(usage.UsageError) as caught:
            self.parse()
        self.assertIn("not a TOML file", str(caught.exception))

    def test_unknown_keys_are_named(self):
        self.assertEqual(
            self.refused("data_dir = '/tmp'\n"), f"--config: {self.path}: unknown key 'data_dir' (did you mean 'data-dir'?)"
        )
        message = self.refused("colour = 'blue'\n")
        self.assertTrue(message.startswith(f"--config: {self.path}: unknown key 'colour' (the keys are the long options: "), message)
        self.assertIn("unknown key 'config'", self.refused("config = 'other.toml'\n"))
        self.assertIn("unknown key 'server'", self.refused("[server]\nport = 1\n"))

    def test_wrong_types_are_named(self):
        for text, words in [
            ('port = "8787"', "port must be an integer, not '8787'"),
            ("port = 8787.0", "port must be an integer, not 8787.0"),
            ("port = true", "port must be an integer, not True"),
            ("offline-after = '90'", "offline-after must be a number, not '90'"),
            ("interface = 127", "interface must be a string, not 127"),
            ("data-dir = ['a']", "data-dir must be a string (a path; relative to the file's directory), not ['a']"),
            ("open = 'yes'", "open must be true or false, not 'yes'"),
            ("plain-http = 1", "plain-http must be true or false, not 1"),
            ("trusted-proxy = '10.0.0.1'", 'trusted-proxy must be a list of strings (for example ["10.0.0.1"]), not \'10.0.0.1\''),
            ("trusted-proxy = [1]", 'trusted-proxy must be a list of strings (for example ["10.0.0.1"]), not [1]'),
            ("subnet = { a = 1 }", "subnet must be a string, not a table"),
        ]:
            self.assertEqual(self.refused(text + "\n"), f"--config: {self.path}: {words}")

    def test_bad_values_name_the_key_in_the_file(self):
        for text, words in [
            ("port = 70000", "port in {path}: 70000 is outside 1..65533"),
            ("subnet = 'banana'", "subnet in {path}: 'banana' is neither"),
            ("rate-limit-stun = '5'", "rate-limit-stun in {path}: '5' is not RATE/BURST"),
            ("trusted-proxy = ['10.0.0.1', 'proxy']", "trusted-proxy in {path}: 'proxy' is not an IP address"),
            ("public-url = 'vpn.example.org'", "public-url in {path}: "),
            ("expire-after = 30", "expire-after in {path}: 30.0 is outside"),
            ("offline-after = 600\nexpire-after = 60", "expire-after in {path} must be longer than offline-after in {path}"),
            ("tls-cert = 'none.pem'\ntls-key = 'none.pem'", "tls-cert in {path}: " + os.path.join(self.dir, "none.pem") + " is not a file"),
        ]:
            self.assertIn(words.format(path=self.path), self.refused(text + "\n", "--data-dir", self.dir))
        # The same value on the command line is named as an option there.
        self.assertIn("--port: 70000 is outside", self.refused("port = 8787\n", "--port", "70000"))

    def test_the_readmes_example_is_a_valid_config_file(self):
        with open(os.path.join(CHECKOUT, "README.md")) as f:
            readme = f.read()
        example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
        self.write(example)
        options = self.parse()
        self.assertEqual((options["port"], options["data-dir"], options["public-url"]), (8787, "/var/lib/wire", "https://vpn.example.org:8787"))
        self.assertEqual(options.from_file, {"port", "data-dir", "public-url", "subnet", "offline-after", "expire-after", "open"})

    def test_the_readme_runs_wire_server_through_twistd(self):
        # A newcomer copies these: a bare 'wire-server' is no command.
        import re

        with open(os.path.join(CHECKOUT, "README.md")) as f:
            readme = " ".join(f.read().split())
        for match in re.finditer(r"`([^`]*\bwire-server --[^`]*)`", readme):
            self.assertIn("twistd", match.group(1), match.group(1))

    def test_a_bad_environment_variable_is_named(self):
        self.write("open = true\n")
        self.patch(os, "environ", {"WIRE_PORT": "abc", "WIRE_VPN_SUBNET": "banana"})
        self.assertIn("$WIRE_PORT: 'abc' is not an integer", self.refused("open = true\n"))
        self.assertIn("$WIRE_VPN_SUBNET: 'banana' is neither", self.refused("port = 9000\n"))
        self.assertIn("subnet in ", self.refused("port = 9000\nsubnet = '10.500'\n"))


_KEYS = st.sampled_from(["port", "data-dir", "open", "trusted-proxy", "offline-after", "data_dir", "x"])
_VALUES = st.sampled_from(["8787", "'a'", '"/tmp"', "true", "1.5", "[]", "['10.0.0.1']", "[1, 'a']", "{ a = 1 }", "'\\u00e9'"])


class ConfigFilePropertyTests(unittest.TestCase):
    """Whatever a file holds, reading it gives checked settings or one line naming the file."""

    def setUp(self):
        from wire.server.options import config_kinds

        self.kinds = config_kinds()
        self.path = os.path.join(short_dir(self), "server.toml")

    def check(self, data: bytes) -> None:
        from wire.server.configfile import ConfigFileError, read_config_file

        with open(self.path, "wb") as f:
            f.write(data)
        try:
            settings = read_config_file(self.path, self.kinds)
        except ConfigFileError as e:
            self.assertTrue(str(e).startswith(self.path + ": "), str(e))
            self.assertNotIn("\n", str(e))
        else:
            self.assertLessEqual(set(settings), set(self.kinds))

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=200))
    def test_any_bytes(self, data):
        self.check(data)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(_KEYS, _VALUES), max_size=5))
    def test_toml_like_lines(self, lines):
        self.check("".join(f"{key} = {value}\n" for key, value in lines).encode())
