"""The "resolv.conf" mode for real: a network namespace with its own
/etc/netns/NAME/resolv.conf, which ``ip netns exec`` bind-mounts over
/etc/resolv.conf, as the lab gives every node. A small python inside the
namespace chooses, applies, crashes (exits without restoring) and recovers;
the test checks the bytes and the inode from outside. The host's own
/etc/resolv.conf is asserted byte-identical afterwards."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

import wire
from tests.helpers import namespace_skip_reason
from tests.test_osdns import ORIGINAL, HostUntouched
from wire.node.osdns import parse_resolv_conf
from wire.runner import ProcessRunner

NETNS_ETC = "/etc/netns"

# argv: phase (apply | up-down | recover), state dir. Prints the mode, then the status as JSON.
NODE = """\
import json, sys
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from wire.runner import ProcessRunner
from wire.node.osdns import OsDnsPaths, choose

async def main(reactor, phase, state_dir):
    os_dns = await choose(ProcessRunner(reactor), "wire0", OsDnsPaths(state_dir=state_dir))
    if phase in ("apply", "up-down"):
        await os_dns.apply("10.99.0.1")
    if phase == "up-down":
        await os_dns.restore()
    print(json.dumps(os_dns.status()))

react(lambda reactor, phase, state_dir: Deferred.fromCoroutine(main(reactor, phase, state_dir)), sys.argv[1:])
"""


def real_skip_reason() -> str | None:
    reason = namespace_skip_reason(needs="a network namespace and /etc/netns")
    if reason is None and not os.path.isfile("/etc/resolv.conf"):
        return "ip netns exec needs /etc/resolv.conf to mount the namespace's own over"
    return reason


class NamespaceResolvConfTests(HostUntouched, TestCase):
    skip = real_skip_reason()
    timeout = 60

    async def setUp(self) -> None:
        super().setUp()
        self.runner = ProcessRunner(reactor)
        self.namespace = f"wire-osdns-{secrets.token_hex(4)}"
        self.state_dir = os.path.abspath(self.mktemp())
        # Cleanups run last first: the namespace goes before its /etc/netns
        # dir. /etc/netns itself stays: the lab may be using it at the same time.
        self.etc_dir = os.path.join(NETNS_ETC, self.namespace)
        self.addCleanup(shutil.rmtree, self.etc_dir, ignore_errors=True)
        os.makedirs(self.etc_dir)
        self.file = os.path.join(self.etc_dir, "resolv.conf")
        with open(self.file, "wb") as f:
            f.write(ORIGINAL)
        self.inode = os.stat(self.file).st_ino
        await self.sh(["ip", "netns", "add", self.namespace])
        self.addCleanup(self.sh, ["ip", "netns", "delete", self.namespace])

    async def sh(self, argv: list[str]) -> str:
        return (await self.runner.run(argv, timeout=20)).check().stdout.decode()

    async def node(self, phase: str) -> dict:
        pythonpath = os.path.dirname(os.path.dirname(os.path.abspath(wire.__file__)))
        result = await self.runner.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", NODE, phase, self.state_dir],
            env={"PYTHONPATH": pythonpath},
            timeout=30,
        )
        result.check()
        return json.loads(result.stdout.decode().splitlines()[-1])

    def content(self) -> bytes:
        with open(self.file, "rb") as f:
            return f.read()

    async def seen_inside(self) -> bytes:
        return (await self.runner.run(["ip", "netns", "exec", self.namespace, "cat", "/etc/resolv.conf"], timeout=10)).check().stdout

    async def test_apply_crash_and_recover(self) -> None:
        status = await self.node("apply")  # exits without restoring: a crash
        self.assertEqual(status["mode"], "resolv.conf")
        self.assertEqual(status["upstreams"], ["192.0.2.1", "2001:db8::53"])
        self.assertIsNone(status["problem"])
        managed = self.content()
        self.assertEqual(parse_resolv_conf(managed).nameservers, ("10.99.0.1",))
        self.assertEqual(os.stat(self.file).st_ino, self.inode)  # the mounted file itself, rewritten
        self.assertEqual(await self.seen_inside(), managed)
        status = await self.node("recover")
        self.assertIn("restored", status["recovery"])
        self.assertEqual(self.content(), ORIGINAL)
        self.assertEqual(os.stat(self.file).st_ino, self.inode)
        self.assertEqual(os.listdir(self.state_dir), [])

    async def test_up_and_down(self) -> None:
        status = await self.node("up-down")
        self.assertEqual(status["mode"], "resolv.conf")
        self.assertIn("restored", status["restored"])
        self.assertEqual(self.content(), ORIGINAL)
        self.assertEqual(await self.seen_inside(), ORIGINAL)
        self.assertEqual(os.stat(self.file).st_ino, self.inode)
