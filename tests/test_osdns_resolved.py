"""Tests for the systemd-resolved mode, the "none" mode and the choice
between the modes (wire.node.osdns), on a scripted runner and temp files."""

from __future__ import annotations

import json
import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.fakes import FakeProcessRunner
from tests.test_osdns import ORIGINAL, HostUntouched
from wire.node.osdns import (
    NoOsDns,
    OsDnsError,
    OsDnsPaths,
    ResolvConfDns,
    ResolvedDns,
    choose,
    detect,
    parse_resolv_conf,
)
from wire.runner import CommandNotFound, CommandTimeout

STUB = b"# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
UPLINK = b"nameserver 192.0.2.1\nnameserver 10.99.0.1\nnameserver 192.0.2.2\n"
STATUS = ["resolvectl", "status"]
DOMAIN = ["resolvectl", "domain", "wire0", "wire.internal"]
DNS = ["resolvectl", "dns", "wire0", "10.99.0.1"]
NO_DEFAULT_ROUTE = ["resolvectl", "default-route", "wire0", "false"]
REVERT = ["resolvectl", "revert", "wire0"]


def run(coroutine) -> Deferred:
    return Deferred.fromCoroutine(coroutine)


class Machine(HostUntouched, TestCase):
    """A temp root with etc/resolv.conf, a state dir and resolved's run dir (when it runs)."""

    def setUp(self) -> None:
        super().setUp()
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.root, "etc"))
        self.run_dir = os.path.join(self.root, "run", "systemd", "resolve")
        self.paths = OsDnsPaths(
            state_dir=os.path.join(self.root, "state"),
            resolv_conf=os.path.join(self.root, "etc", "resolv.conf"),
            resolved_run_dir=self.run_dir,
        )
        self.runner = FakeProcessRunner()
        self.addCleanup(self.runner.assert_all_called)

    def resolv_conf(self, data: bytes) -> None:
        with open(self.paths.resolv_conf, "wb") as f:
            f.write(data)

    def read(self) -> bytes:
        with open(self.paths.resolv_conf, "rb") as f:
            return f.read()

    def resolved_runs(self, uplink: bytes | None = UPLINK) -> None:
        os.makedirs(self.run_dir)
        with open(os.path.join(self.run_dir, "stub-resolv.conf"), "wb") as f:
            f.write(STUB)
        if uplink is not None:
            with open(os.path.join(self.run_dir, "resolv.conf"), "wb") as f:
                f.write(uplink)

    def detect(self) -> tuple[str, str]:
        return self.successResultOf(run(detect(self.runner, self.paths)))


class DetectionTests(Machine):
    def test_stub_run_dir_and_resolvectl_mean_resolved(self) -> None:
        self.resolved_runs()
        self.resolv_conf(STUB)
        self.runner.expect(STATUS, stdout=b"Global\n")
        mode, reason = self.detect()
        self.assertEqual(mode, "systemd-resolved")
        self.assertIn("127.0.0.53", reason)

    def test_a_symlink_to_the_stub_file(self) -> None:
        self.resolved_runs()
        os.symlink(os.path.join(self.run_dir, "stub-resolv.conf"), self.paths.resolv_conf)
        self.runner.expect(STATUS)
        self.assertEqual(self.detect()[0], "systemd-resolved")

    def test_resolved_running_but_bypassed_by_resolv_conf(self) -> None:
        # A symlink to resolved's non-stub file, or a network namespace's own
        # resolv.conf on a host that runs resolved: no resolvectl is run.
        self.resolved_runs()
        for data in (UPLINK, ORIGINAL, b"nameserver 127.0.0.53\nnameserver 192.0.2.1\n", b"nameserver 127.0.0.54\n"):
            with self.subTest(data=data):
                self.resolv_conf(data)
                mode, reason = self.detect()
                self.assertEqual(mode, "resolv.conf")
                self.assertIn("not systemd-resolved's stub 127.0.0.53 alone", reason)

    def test_stub_left_behind_by_a_stopped_resolved(self) -> None:
        self.resolv_conf(STUB)
        mode, reason = self.detect()
        self.assertEqual(mode, "resolv.conf")
        self.assertIn("is missing", reason)

    def test_resolvectl_missing_or_failing(self) -> None:
        self.resolved_runs()
        self.resolv_conf(STUB)
        self.runner.expect(STATUS, error=CommandNotFound("resolvectl"))
        self.assertEqual(self.detect(), ("resolv.conf", f"{self.paths.resolv_conf} names 127.0.0.53 but the 'resolvectl' program is missing"))
        self.runner.expect(STATUS, rc=1, stderr=b"Failed to get global data: Could not activate remote peer.\n")
        self.assertIn("exited with code 1", self.detect()[1])
        self.runner.expect(STATUS, error=CommandTimeout(STATUS, 10, 1234))
        self.assertIn("timed out", self.detect()[1])

    def test_missing_or_empty_resolv_conf(self) -> None:
        self.assertEqual(self.detect(), ("resolv.conf", f"{self.paths.resolv_conf} is missing"))
        self.resolv_conf(b"")
        self.assertIn("no nameserver", self.detect()[1])


class ResolvedTests(Machine):
    def make(self, **kwargs) -> ResolvedDns:
        self.resolved_runs(**kwargs)
        return ResolvedDns(self.runner, "wire0", self.paths, "test")

    def test_apply_and_revert_argument_lists(self) -> None:
        os_dns = self.make()
        self.runner.expect(DOMAIN)
        self.runner.expect(NO_DEFAULT_ROUTE)
        self.runner.expect(DNS)
        self.successResultOf(run(os_dns.apply("10.99.0.1")))
        status = os_dns.status()
        self.assertEqual(
            {k: status[k] for k in ("mode", "interface", "nameserver", "domain", "search", "upstreams", "applied", "problem")},
            {
                "mode": "systemd-resolved",
                "interface": "wire0",
                "nameserver": "10.99.0.1",
                "domain": "wire.internal",
                "search": ["wire.internal"],
                "upstreams": ["192.0.2.1", "192.0.2.2"],  # resolved's uplink list, without the mesh resolver
                "applied": True,
                "problem": None,
            },
        )
        json.dumps(status)
        self.runner.expect(REVERT)
        self.successResultOf(run(os_dns.restore()))
        self.assertFalse(os_dns.status()["applied"])

    def test_routing_only_without_search_and_extra_search_domains(self) -> None:
        os_dns = self.make()
        self.runner.expect(["resolvectl", "domain", "wire0", "~wire.internal"])
        self.runner.expect(NO_DEFAULT_ROUTE)
        self.runner.expect(DNS)
        self.successResultOf(run(os_dns.apply("10.99.0.1", "wire.internal", ())))
        self.runner.expect(["resolvectl", "domain", "wire0", "~wire.internal", "corp.example"])
        self.runner.expect(NO_DEFAULT_ROUTE)
        self.runner.expect(["resolvectl", "dns", "wire0", "fd7a:115c::1"])
        self.successResultOf(run(os_dns.apply("fd7a:115c:0::1", "wire.internal", ["corp.example"])))

    def test_reverse_zones_of_the_mesh_networks_route_too(self) -> None:
        os_dns = self.make()
        self.runner.expect(
            ["resolvectl", "domain", "wire0", "wire.internal", "~99.10.in-addr.arpa", "~100.in-addr.arpa", "~0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa"]
        )
        self.runner.expect(NO_DEFAULT_ROUTE)
        self.runner.expect(DNS)
        self.successResultOf(run(os_dns.apply("10.99.0.1", networks=["10.99.0.0/16", "10.99.7.0/24", "100.64.0.0/10", "fd7a:115c:a1e0::/48"])))
        # 10.99.7.0/24 is inside 10.99.0.0/16's zone: no route of its own.
        self.assertEqual(os_dns.status()["reverse_zones"], ["99.10.in-addr.arpa", "100.in-addr.arpa", "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa"])

    def test_without_resolved_upstream_file_the_stub_is_the_upstream(self) -> None:
        self.assertEqual(self.make(uplink=None).upstreams, ("127.0.0.53",))

    def test_a_failure_is_a_sentence_and_leaves_no_half_configuration(self) -> None:
        os_dns = self.make()
        self.runner.expect(DOMAIN)
        self.runner.expect(NO_DEFAULT_ROUTE)
        self.runner.expect(DNS, rc=1, stderr=b"Failed to set DNS configuration: Access denied\n")
        self.runner.expect(REVERT)
        error = self.failureResultOf(run(os_dns.apply("10.99.0.1")), OsDnsError).value
        self.assertEqual(
            str(error),
            "resolvectl failed: `resolvectl dns wire0 10.99.0.1` exited with code 1: Failed to set DNS configuration: Access denied",
        )
        self.assertEqual(os_dns.status()["problem"], str(error))
        self.assertFalse(os_dns.status()["applied"])

    def test_resolvectl_missing(self) -> None:
        os_dns = self.make()
        self.runner.expect(DOMAIN, error=CommandNotFound("resolvectl"))
        self.runner.expect(REVERT, error=CommandNotFound("resolvectl"))
        error = self.failureResultOf(run(os_dns.apply("10.99.0.1")), OsDnsError).value
        self.assertIn("resolvectl failed: the 'resolvectl' program is missing", str(error))

    def test_an_old_resolvectl_without_default_route_is_a_note(self) -> None:
        os_dns = self.make()
        self.runner.expect(DOMAIN)
        self.runner.expect(NO_DEFAULT_ROUTE, rc=1, stderr=b"Unknown operation default-route\n")
        self.runner.expect(DNS)
        self.successResultOf(run(os_dns.apply("10.99.0.1")))
        self.assertTrue(os_dns.status()["applied"])
        self.assertIn("default route", str(os_dns.status()["note"]))
        self.assertIsNone(os_dns.status()["problem"])

    def test_revert_of_a_vanished_link_is_fine(self) -> None:
        os_dns = self.make()
        self.runner.expect(REVERT, rc=1, stderr=b"Failed to resolve interface \"wire0\": No such device\n")
        self.successResultOf(run(os_dns.restore()))

    def test_revert_refused(self) -> None:
        os_dns = self.make()
        self.runner.expect(REVERT, rc=1, stderr=b"Failed to revert interface configuration: Access denied\n")
        error = self.failureResultOf(run(os_dns.restore()), OsDnsError).value
        self.assertIn("resolvectl failed: `resolvectl revert wire0` exited with code 1", str(error))

    def test_bad_values_run_nothing(self) -> None:
        os_dns = self.make()
        for args in (
            ("10.99.0.1; reboot",),
            ("10.99.0.1", "--help"),
            ("10.99.0.1", "wire.internal", ["-x"]),
            ("10.99.0.1", "wire.internal", None, ["0.0.0.0/0"]),
            ("10.99.0.1", "wire.internal", None, ["--all"]),
        ):
            with self.subTest(args=args):
                self.failureResultOf(run(os_dns.apply(*args)), OsDnsError)
        self.assertEqual(self.runner.calls, [])

    def test_bad_interface_names_run_nothing(self) -> None:
        for name in ("-h", "wire0 x", "", "a" * 16, "../x"):
            with self.subTest(name=name):
                self.assertRaises(OsDnsError, ResolvedDns, self.runner, name, self.paths)
                self.failureResultOf(run(choose(self.runner, name, self.paths)), OsDnsError)
        self.assertEqual(self.runner.calls, [])

    def test_the_machines_resolv_conf_is_not_touched(self) -> None:
        self.resolv_conf(STUB)
        os_dns = self.make()
        self.runner.expect(DOMAIN)
        self.runner.expect(NO_DEFAULT_ROUTE)
        self.runner.expect(DNS)
        self.successResultOf(run(os_dns.apply("10.99.0.1")))
        self.assertEqual(self.read(), STUB)
        self.assertFalse(os.path.exists(self.paths.state_dir))


class NoneTests(Machine):
    def test_nothing_changes_and_the_upstreams_are_the_machines(self) -> None:
        self.resolv_conf(ORIGINAL)
        os_dns = NoOsDns("wire0", self.paths)
        self.successResultOf(run(os_dns.apply("10.99.0.1")))
        self.successResultOf(run(os_dns.check()))
        self.successResultOf(run(os_dns.restore()))
        self.assertEqual(self.read(), ORIGINAL)
        self.assertEqual(os_dns.upstreams, ("192.0.2.1", "2001:db8::53"))
        self.assertEqual(os_dns.status()["mode"], "none")
        self.assertFalse(os.path.exists(self.paths.state_dir))


class ChooseTests(Machine):
    def test_accept_dns_false_looks_at_nothing(self) -> None:
        self.resolved_runs()
        self.resolv_conf(STUB)
        os_dns = self.successResultOf(run(choose(self.runner, "wire0", self.paths, accept_dns=False)))
        self.assertIsInstance(os_dns, NoOsDns)
        self.assertEqual(os_dns.status()["reason"], "--accept-dns=false")

    def test_other_systems_are_left_alone(self) -> None:
        self.resolv_conf(ORIGINAL)
        os_dns = self.successResultOf(run(choose(self.runner, "wire0", self.paths, platform="darwin")))
        self.assertIsInstance(os_dns, NoOsDns)
        self.assertIn("Linux only", str(os_dns.status()["reason"]))
        self.assertEqual(os_dns.upstreams, ("192.0.2.1", "2001:db8::53"))

    def test_resolved(self) -> None:
        self.resolved_runs()
        self.resolv_conf(STUB)
        self.runner.expect(STATUS)
        self.assertIsInstance(self.successResultOf(run(choose(self.runner, "wire0", self.paths))), ResolvedDns)

    def test_resolv_conf(self) -> None:
        self.resolv_conf(ORIGINAL)
        os_dns = self.successResultOf(run(choose(self.runner, "wire0", self.paths)))
        self.assertIsInstance(os_dns, ResolvConfDns)
        self.assertEqual(os_dns.upstreams, ("192.0.2.1", "2001:db8::53"))
        self.assertIsNone(os_dns.status()["recovery"])

    def crashed_run(self) -> None:
        self.resolv_conf(ORIGINAL)
        self.successResultOf(run(ResolvConfDns("wire0", self.paths).apply("10.99.0.1")))  # and the daemon dies

    def test_a_crashed_runs_resolv_conf_is_restored_before_detection(self) -> None:
        self.crashed_run()
        os_dns = self.successResultOf(run(choose(self.runner, "wire0", self.paths)))
        self.assertEqual(self.read(), ORIGINAL)
        self.assertIn("restored", str(os_dns.status()["recovery"]))
        self.assertEqual(os_dns.upstreams, ("192.0.2.1", "2001:db8::53"))

    def test_restored_even_when_dns_is_no_longer_accepted(self) -> None:
        self.crashed_run()
        os_dns = self.successResultOf(run(choose(self.runner, "wire0", self.paths, accept_dns=False)))
        self.assertEqual(self.read(), ORIGINAL)
        self.assertIn("restored", str(os_dns.status()["recovery"]))

    def test_a_corrupt_save_file_does_not_stop_choose(self) -> None:
        self.crashed_run()
        managed = self.read()
        with open(self.paths.save_file, "wb") as f:
            f.write(b"{")
        os_dns = self.successResultOf(run(choose(self.runner, "wire0", self.paths)))
        self.assertIn("could not restore", str(os_dns.status()["recovery"]))
        self.assertIn("corrupt", str(os_dns.status()["recovery"]))
        self.assertEqual(self.read(), managed)
        self.assertEqual(parse_resolv_conf(managed).nameservers, ("10.99.0.1",))
