"""A whole wire mesh on one Linux host: ``wire demo`` and the end-to-end tests.

On top of :mod:`wire.lab`'s namespaces this starts the real coordination
server (``twistd -n wire-server``) in the server namespace and joins each
node through the real CLI (``wire up``) inside its own namespace, with its
own config dir and a WireGuard interface name unique to the run. Teardown
takes every node down and removes everything, also after a failure.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from wire.admin_ops import AdminOps
from wire.client import ControlClient
from wire.lab import Lab
from wire.node import launcher
from wire.node.control import control_socket_path
from wire.runner import IProcessRunner, IRunningProcess, ProcessResult, find_program
from wire.twistd import twistd_argv, wire_environment

log = Logger()

SERVER_PORT = 8787
# Only "is it answering": the certificate is checked by the nodes, not here.
HEALTH_PROBE = (
    "import ssl, sys, urllib.request; "
    "urllib.request.urlopen(sys.argv[1], timeout=1, context=ssl._create_unverified_context())"
)


class DemoError(Exception):
    pass


def wire_argv(*args: str) -> list[str]:
    """The ``wire`` CLI of this very Python environment."""
    return [sys.executable, "-m", "wire.cli", *args]


@dataclass
class MeshNode:
    name: str
    config_dir: str
    interface: str
    vpn_ip: str = ""


class MeshLab:
    """A lab with a running wire server and nodes that joined through ``wire up``."""

    def __init__(
        self,
        reactor,
        runner: IProcessRunner,
        open_server: bool = False,
        server_args: tuple[str, ...] = (),
        ipv6: bool = False,
        server_forwarding: bool = False,
    ):
        self.reactor = reactor
        # The server's host forwards IPv4 (so the relay's kernel fast path,
        # wire.server.fastpath, can carry verified sessions).
        self.server_forwarding = server_forwarding
        self.runner = runner
        # More wire-server options (a test's --offline-after, say).
        self.server_args = tuple(server_args)
        # By default the server authenticates (nodes join with a token);
        # open_server runs it the seed's way (--open, plain HTTP).
        self.open_server = open_server
        self.join_token = ""
        self.lab = Lab(runner, ipv6=ipv6)  # ipv6: a dual-stack underlay (wire.lab)
        self.nodes: dict[str, MeshNode] = {}
        self.server: IRunningProcess | None = None
        self._workdir = tempfile.mkdtemp(prefix="wire-lab-")
        self._server_restarts = itertools.count()

    @property
    def server_url(self) -> str:
        scheme = "http" if self.open_server else "https"
        return f"{scheme}://{self.lab.hosts['server'].address}:{SERVER_PORT}"

    @property
    def server_data_dir(self) -> str:
        return os.path.join(self._workdir, "server")

    async def setup(self) -> None:
        await self.lab.setup()
        if self.server_forwarding:
            (await self.lab.run("server", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], timeout=10)).check()
        await self.start_server()
        if not self.open_server:
            created = await AdminOps(self.reactor, self.server_data_dir).create_key(reusable=True, note="lab")
            self.join_token = created["token"]

    def server_argv(self, data_dir: str, public_urls: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
        """``twistd -n wire-server`` as the lab runs it: on SERVER_PORT, with
        ``public_urls`` (its own first), then ``extra`` and the lab's server_args."""
        argv = twistd_argv() + [
            "-n",
            "--pidfile=",
            "wire-server",
            f"--port={SERVER_PORT}",
            f"--data-dir={data_dir}",
            *(f"--public-url={url}" for url in public_urls),
        ]
        if self.open_server:
            argv.append("--open")
        return argv + [*extra, *self.server_args]

    async def start_server(self) -> None:
        argv = self.server_argv(self.server_data_dir, [self.server_url])
        self.server = self.lab.start(
            "server", argv, env=wire_environment(), log_prefix=f"wire-server#{next(self._server_restarts)}"
        )
        await self.wait_for_server()

    async def wait_for_server(
        self, timeout: float = 20.0, host: str | None = "server", url: str | None = None, process: IRunningProcess | None = None
    ) -> None:
        """Until the server answers ``/health`` at ``url``, asked from the lab's
        ``host`` (its own by default; None: this host)."""
        url = url or self.server_url
        process = process or self.server
        probe = [sys.executable, "-c", HEALTH_PROBE, url + "/health"]
        for _ in range(int(timeout / 0.2)):
            if process is not None and not process.running:
                raise DemoError(f"the wire server on {host or 'server'} exited:\n" + "\n".join(process.tail))
            asked = self.lab.run(host, probe, timeout=5) if host is not None else self.runner.run(probe, timeout=5)
            if (await asked).rc == 0:
                return
            await deferLater(self.reactor, 0.2, lambda: None)
        raise DemoError(f"the wire server did not answer on {url}")

    async def kill_server(self, signal_number: int = 9) -> None:
        assert self.server is not None
        self.server.kill(signal_number)
        await self.server.when_exited()

    # -- nodes --------------------------------------------------------------

    async def add_host(self, name: str, router: str | None = None) -> None:
        """A namespace for a node: public, or behind ``router``."""
        if router is None:
            await self.lab.add_public_node(name)
        else:
            await self.lab.add_nat_node(name, router)

    def wire(self, name: str, *args: str) -> list[str]:
        node = self.nodes[name]
        return wire_argv("--config-dir", node.config_dir, *args)

    async def up(self, name: str, timeout: float = 60, token: str | None = None, extra: tuple[str, ...] = ()) -> dict:
        """``wire up`` inside the node's namespace; returns its --json answer.
        ``token``: a join token of its own (a tagged key, say), else the lab's;
        ``extra``: more options (``--proxy URL``)."""
        host = self.lab.hosts[name]
        node = self.nodes.setdefault(
            name, MeshNode(name, os.path.join(self._workdir, name), host.wireguard_interface)
        )
        joining = ["--server", self.server_url] if self.open_server else ["--join", token or self.join_token]
        result = await self.cli(
            name, "up", *joining, "--name", name, "--interface", node.interface, *extra, "--json", timeout=timeout
        )
        try:
            answer = _json_answer(result, f"wire up on {name}")
        except DemoError as e:
            # What the daemon said: a failed join is told by its log.
            tail = launcher.log_tail(node.config_dir, lines=40)
            raise DemoError(f"{e}\n{name}'s daemon log ends:\n{tail}" if tail else str(e)) from None
        node.vpn_ip = answer["vpn_ip"]
        return answer

    async def down(self, name: str) -> dict:
        return _json_answer(await self.cli(name, "down", "--json"), f"wire down on {name}")

    async def cli(self, name: str, *args: str, timeout: float = 60) -> ProcessResult:
        return await self.lab.run(name, self.wire(name, *args), env=wire_environment(), timeout=timeout)

    async def status(self, name: str) -> dict:
        return _json_answer(await self.cli(name, "status", "--json"), f"wire status on {name}")

    async def daemon_status(self, name: str) -> dict:
        """The node daemon's own view (what ``wire status`` reads from it),
        asked over its control socket: no CLI process to start, so a test can
        poll it often on a loaded machine."""
        socket = control_socket_path(self.nodes[name].config_dir)
        return await ControlClient(self.reactor, socket).status()

    async def ping(self, source: str, target: str, count: int = 1, wait: int = 2) -> bool:
        address = self.nodes[target].vpn_ip
        result = await self.lab.run(source, ["ping", "-c", str(count), "-W", str(wait), "-n", "-q", address], timeout=count * wait + 10)
        return result.rc == 0

    async def ping_matrix(self, attempts: int = 3) -> dict[tuple[str, str], bool]:
        """Every ordered pair; a pair gets a few tries while handshakes complete."""
        names = sorted(self.nodes)
        pairs = [(a, b) for a in names for b in names if a != b]

        async def one(pair):
            for _ in range(attempts):
                if await self.ping(*pair):
                    return pair, True
            return pair, False

        results = await gatherResults([_deferred(one(pair)) for pair in pairs])
        return dict(results)

    async def teardown(self) -> None:
        for name in list(self.nodes):
            try:
                await self.cli(name, "down", "--json", timeout=30)
            except Exception as e:  # teardown goes on whatever happens
                log.warn("wire down on {name} failed: {error}", name=name, error=e)
        try:
            await self.stop_control_plane()
        except Exception as e:
            log.warn("stopping the control plane failed: {error}", error=e)
        await self.lab.teardown()
        shutil.rmtree(self._workdir, ignore_errors=True)

    async def stop_control_plane(self) -> None:
        """Before the lab goes: what serves the mesh, stopped in order (here
        nothing to do: the lab's teardown stops the one server)."""


def _deferred(coroutine):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


def _json_answer(result: ProcessResult, what: str) -> dict:
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        answer = None
    if result.rc != 0 or not isinstance(answer, dict):
        message = answer.get("error") if isinstance(answer, dict) else (result.stderr or result.stdout).decode(errors="replace")
        raise DemoError(f"{what} failed (exit {result.rc}): {message}")
    return answer


def format_matrix(names: list[str], matrix: dict[tuple[str, str], bool]) -> str:
    width = max(len(n) for n in names) + 2
    lines = [" " * width + "".join(f"{n:>{width}}" for n in names)]
    for a in names:
        cells = ["-" if a == b else ("ok" if matrix[(a, b)] else "FAIL") for b in names]
        lines.append(f"{a:<{width}}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


DEMO_ROUTERS = {"home": "easy", "office": "easy", "corp": "hard"}
DEMO_NODES = (("alpha", None), ("beta", None), ("gamma", "home"), ("delta", "office"), ("epsilon", "corp"))


async def run_demo(reactor, runner: IProcessRunner, keep: bool = False, out=print) -> dict:
    """``wire demo``: build a mesh, show status, paths and a ping matrix, tear
    down; with ``keep``, a mesh that was built stays, with its dashboard open
    to this host (what is left and how to use it is in the answer)."""
    mesh = MeshLab(reactor, runner)
    kept = False
    try:
        out(
            "building the lab: an internet, a coordination server, two public nodes, two nodes behind "
            "easy NATs (home, office) and one behind a hard, symmetric NAT (corp)"
        )
        await mesh.setup()
        for router, nat in DEMO_ROUTERS.items():
            await mesh.lab.add_router(router, nat=nat)
        for name, behind in DEMO_NODES:  # behind a router, or None: public
            await mesh.add_host(name, behind)
        out(f"coordination server: {mesh.server_url}")
        answers = await gatherResults([_deferred(mesh.up(name)) for name, _ in DEMO_NODES])
        for answer in answers:
            out(f"  wire up {answer['node_name']:<8} -> {answer['vpn_ip']} on {answer['interface']} ({answer['backend']}, NAT {answer['nat_type']})")
        matrix = await mesh.ping_matrix(attempts=5)
        status = await mesh.cli("gamma", "status")
        out(status.stdout.decode(errors="replace"))
        names = sorted(mesh.nodes)
        out("ping over the VPN (row pings column):")
        out(format_matrix(names, matrix))
        ok = all(matrix.values())
        out("all pairs reach each other" if ok else "some pairs failed")
        result: dict = {"ok": ok}
        if keep:
            window = await open_dashboard_window(mesh)
            link = (await AdminOps(reactor, mesh.server_data_dir).dashboard_link())["url"]
            result["kept"] = kept_lab = {
                "prefix": mesh.lab.prefix,
                "workdir": mesh._workdir,
                "nodes": names,
                "server_url": mesh.server_url,
                "dashboard_origin": window,
                "dashboard_link": window + link[len(mesh.server_url):] if link.startswith(mesh.server_url) else link,
            }
            out(kept_message(kept_lab))
            kept = True
        return result
    finally:
        # Only a mesh that was built is kept: a failure on the way leaves nothing behind.
        if not kept:
            await mesh.teardown()


async def open_dashboard_window(mesh: MeshLab) -> str:
    """``https://127.0.0.1:PORT``, where this host's browser reaches the
    server inside the lab (wire.labforward): 8787 when it is free."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listening.bind(("127.0.0.1", SERVER_PORT))
        except OSError:
            listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        port = listening.getsockname()[1]
        argv = mesh.lab.inside("server", [sys.executable, "-m", "wire.labforward", "--to", f"{mesh.lab.hosts['server'].address}:{SERVER_PORT}"])
        # Not the runner's (it cannot hand a socket over): no one reads this
        # process's output after --keep, and the lab's teardown ends it with
        # the namespace's other processes.
        mesh.reactor.spawnProcess(
            ProcessProtocol(), find_program(argv[0]), argv, env=dict(os.environ, **wire_environment()),
            childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()},
        )
    finally:
        listening.close()  # the forwarder holds its own copy
    origin = f"https://127.0.0.1:{port}"
    # Answering: the forwarder started and reaches the server (asked from this host).
    await mesh.wait_for_server(timeout=10, host=None, url=origin)
    return origin


def kept_message(kept: dict) -> str:
    """What ``--keep`` leaves and how to use it: each node's config dir is in
    the workdir and its commands run inside its namespace."""
    prefix, workdir, window = kept["prefix"], kept["workdir"], kept["dashboard_origin"]
    example = kept["nodes"][0] if kept["nodes"] else "NODE"
    return (
        f"--keep: the lab stays up (namespaces {prefix}-*, config and data dirs in {workdir})\n"
        f"  the dashboard, from this host (once, for 10 minutes; its certificate is the server's own, self-signed):\n"
        f"    {kept['dashboard_link']}\n"
        f"  another link: sudo wire admin --data-dir {workdir}/server dashboard, opened at {window} instead of {kept['server_url']}\n"
        f"  a node's view: sudo ip netns exec {prefix}-{example} wire --config-dir {workdir}/{example} status\n"
        f"  the server's: sudo wire admin --data-dir {workdir}/server nodes list\n"
        f"  remove it with: wire demo --clean {prefix}"
    )


async def clean_demo(reactor, runner: IProcessRunner, prefix: str) -> None:
    """Remove a lab kept by ``wire demo --keep``: its processes and namespaces."""
    lab = Lab(runner)
    lab.prefix = prefix
    await lab.teardown()
