"""A network-namespace lab: an internet, a server, public hosts and NAT routers.

The lab builds a small world on one machine, all of it inside network
namespaces whose names carry a random per-run prefix:

- "internet": a namespace holding a bridge that every public host plugs into,
  addressed from 198.18.0.0/15 (RFC 2544's benchmarking range, never routed
  on the real internet);
- "server": the coordination server's host, with a public address;
- public nodes: hosts with a public address of their own;
- routers: a public address on the internet side, a LAN 172.16.N.0/24 behind
  it, and nftables NAT: "easy" (plain masquerade, which keeps a flow's source
  port towards every destination) or "hard" (random,fully-random masquerade,
  a new port per destination, as a symmetric NAT does); both drop whatever
  comes in that is not part of a flow from inside;
- NAT nodes: hosts on a router's LAN, routed through it.

With ``ipv6=True`` the world is dual-stack, as most home networks are now:
the internet namespace routes 2001:db8::/32 (the documentation prefix,
never routed on the real internet), public hosts sit on 2001:db8:ffff::/64,
and each router gives its LAN a routed /64 (2001:db8:N::/64) with no NAT,
behind a stateful firewall that forwards what comes in only as part of a
flow from inside (what home routers do: two hosts behind two of them reach
each other only by sending to each other at once, as WireGuard does).

Every command is an argument list run through an IProcessRunner, inside one
of the lab's namespaces (veth pairs are created directly in their target
namespaces): the host's own interfaces, routes and ruleset are never touched.
"""

from __future__ import annotations

import enum
import glob
import itertools
import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from types import TracebackType

from twisted.internet.defer import gatherResults
from twisted.logger import Logger

from wire.runner import CommandError, CommandNotFound, IProcessRunner, IRunningProcess, ProcessResult, find_program

log = Logger()

PUBLIC_NETWORK = IPv4Network("198.18.0.0/15")
# With ipv6=True: the public hosts' segment, and LAN N's prefix.
PUBLIC_NETWORK6 = IPv6Network("2001:db8:ffff::/64")
LAN6 = "2001:db8:{number:x}::/64"
_MAX_INTERFACE_NAME = 15  # IFNAMSIZ - 1
_HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,29}\Z")
# wireguard-go keeps its UAPI sockets here, shared by every namespace.
_WIREGUARD_RUN_DIR = "/var/run/wireguard"
# Per-namespace files ip netns exec mounts over /etc (resolv.conf).
ETC_NETNS = "/etc/netns"
_BRIDGE_NETFILTER = "/proc/sys/net/bridge/bridge-nf-call-iptables"
# Programs the lab itself runs; the tests and the demo need more (ping, wg...).
_REQUIRED_PROGRAMS = {"ip": "iproute2", "nft": "nftables", "sysctl": "procps", "conntrack": "conntrack"}


class LabError(Exception):
    """The lab was asked for something it cannot build."""


class LabUnavailable(LabError):
    """This machine cannot host the lab; the message says what is missing."""


class NatType(enum.StrEnum):
    EASY = "easy"
    HARD = "hard"


class Role(enum.StrEnum):
    INTERNET = "internet"
    SERVER = "server"
    PUBLIC = "public"
    ROUTER = "router"
    NAT_NODE = "nat-node"


@dataclass(frozen=True)
class Host:
    """One namespace of the lab and how it is addressed."""

    name: str
    role: Role
    namespace: str
    # The address the internet knows it by; None for a host behind NAT.
    address: str | None
    # On a LAN: a router's own LAN address, or a NAT node's address.
    lan_address: str | None
    # The interface towards its network (a router's WAN side).
    uplink: str
    # A WireGuard interface name unique across the lab's namespaces (and runs).
    wireguard_interface: str
    # For a router: its LAN bridge, its LAN (e.g. "172.16.1.0/24"), its NAT type.
    lan_interface: str | None = None
    lan_network: str | None = None
    nat: NatType | None = None
    # For a NAT node: the name of the router it sits behind.
    router: str | None = None


@dataclass(frozen=True)
class Step:
    """One build command and the stdin it is fed."""

    argv: tuple[str, ...]
    stdin: bytes | None = None


def check_requirements() -> None:
    """Raise LabUnavailable naming everything this machine lacks for the lab."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root privileges")
    if not os.path.exists("/proc/self/ns/net"):
        missing.append("network namespace support in the kernel")
    for program, package in _REQUIRED_PROGRAMS.items():
        try:
            find_program(program)
        except CommandNotFound:
            missing.append(f"the {program!r} program (package {package})")
    if missing:
        raise LabUnavailable("the namespace lab needs " + ", ".join(missing))


def nat_ruleset(nat: NatType, wan: str, lan: str) -> str:
    """The nftables ruleset of a NAT router with the given WAN and LAN devices."""
    masquerade = "masquerade random,fully-random" if nat is NatType.HARD else "masquerade"
    return f"""\
table ip wire_lab {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" {masquerade}
    }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        iifname "{lan}" accept
        ct state established,related accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        iifname "{lan}" oifname "{wan}" accept
        ct state established,related accept
    }}
}}
"""


def firewall6_ruleset(wan: str, lan: str) -> str:
    """A home router's IPv6 firewall: routed, not translated; from outside,
    only what belongs to a flow from inside (and ICMPv6, which IPv6 needs)."""
    return f"""\
table ip6 wire_lab6 {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        iifname "{lan}" oifname "{wan}" accept
        ct state established,related accept
        meta l4proto ipv6-icmp accept
    }}
}}
"""


def silence_ruleset() -> str:
    """A host that neither sends nor answers anything, as a dead machine
    (or one cut off by a partition) does: no reset, no ICMP; ARP is not
    IP, so neighbours keep sending to it and hear nothing back."""
    return """\
table inet wire_lab_silence {
    chain input {
        type filter hook input priority -400; policy drop;
    }
    chain output {
        type filter hook output priority -400; policy drop;
    }
}
"""


def lab_resolv_conf(namespace: str, nameserver: str) -> str:
    return f"# wire lab: {namespace}'s own resolv.conf (the host's is never touched)\nnameserver {nameserver}\n"


def namespace_steps(namespace: str) -> list[Step]:
    """A new namespace with its loopback up (local sockets, e.g. a relay shim, need it)."""
    return [
        Step(("ip", "netns", "add", namespace)),
        Step(("ip", "-n", namespace, "link", "set", "lo", "up")),
    ]


def bridge_steps(namespace: str, bridge: str, address: IPv4Interface) -> list[Step]:
    """A bridge that hosts plug into, holding the namespace's address on it."""
    steps = [
        Step(("ip", "-n", namespace, "link", "add", bridge, "type", "bridge")),
        Step(("ip", "-n", namespace, "addr", "add", str(address), "dev", bridge)),
        Step(("ip", "-n", namespace, "link", "set", bridge, "up")),
    ]
    if os.path.exists(_BRIDGE_NETFILTER):
        # br_netfilter (loaded wherever Docker runs) would send frames between
        # two hosts on one LAN through the router's forward chain, which no
        # real switch does; the setting is per namespace.
        steps.append(
            Step(("ip", "netns", "exec", namespace, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0"))
        )
    return steps


def uplink_steps(
    namespace: str,
    device: str,
    upstream_namespace: str,
    port: str,
    bridge: str,
    address: IPv4Interface,
    gateway: IPv4Address,
) -> list[Step]:
    """Plug a host into its upstream's bridge through a veth pair."""
    return [
        # Both ends are born in their namespaces: nothing passes through the root one.
        Step(("ip", "-n", namespace, "link", "add", device, "type", "veth",
              "peer", "name", port, "netns", upstream_namespace)),
        Step(("ip", "-n", upstream_namespace, "link", "set", port, "master", bridge, "up")),
        Step(("ip", "-n", namespace, "addr", "add", str(address), "dev", device)),
        Step(("ip", "-n", namespace, "link", "set", device, "up")),
        Step(("ip", "-n", namespace, "route", "add", "default", "via", str(gateway))),
    ]


def router_steps(namespace: str, nat: NatType, wan: str, lan: str) -> list[Step]:
    """Forwarding and NAT, enabled only inside the router's namespace."""
    return [
        Step(("ip", "netns", "exec", namespace, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")),
        Step(("ip", "netns", "exec", namespace, "nft", "-f", "-"), nat_ruleset(nat, wan, lan).encode()),
    ]


class Lab:
    """
    A lab built step by step and torn down completely::

        async with Lab(runner) as lab:      # the internet and the server
            await lab.add_public_node("alice")
            await lab.add_router("home", nat="easy")
            await lab.add_nat_node("bob", "home")
            result = await lab.run("bob", ["ping", "-c1", lab.hosts["server"].address])

    Call check_requirements() first to turn a missing tool into a clear error.
    """

    def __init__(
        self, runner: IProcessRunner, *, stop_timeout: float = 5.0, etc_netns: str = ETC_NETNS, ipv6: bool = False
    ) -> None:
        self.prefix = _new_prefix()
        # Dual-stack (see the module's docstring): every host's IPv6 address by name.
        self.ipv6 = ipv6
        self.addresses6: dict[str, str] = {}
        self._public_addresses6 = PUBLIC_NETWORK6.hosts()
        self.hosts: dict[str, Host] = {}
        self._runner = runner
        self._stop_timeout = stop_timeout
        self._names: set[str] = set()
        self._namespaces: list[str] = []  # everything created, for teardown
        self._processes: list[IRunningProcess] = []
        self._indices = itertools.count()
        self._public_addresses = PUBLIC_NETWORK.hosts()
        self._lan_numbers = itertools.count(1)
        self._lan_addresses: dict[str, Iterator[IPv4Address]] = {}
        self._lan_addresses6: dict[str, Iterator] = {}
        self._lan_gateways6: dict[str, str] = {}
        # The nameserver every host's resolv.conf names: the internet host's
        # address (a test may run a resolver there); where those files live.
        self.resolver_address = str(next(PUBLIC_NETWORK.hosts()))
        self.etc_netns = etc_netns

    async def __aenter__(self) -> Lab:
        try:
            await self.setup()
        except BaseException:
            await self.teardown()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.teardown()

    async def setup(self) -> None:
        """Build the internet and the server."""
        try:
            await self._choose_unused_prefix()
            claim = self._claim("internet")
            await self._run_steps(namespace_steps(claim.namespace))
        except CommandError as e:
            raise LabUnavailable(f"cannot create a network namespace: {e}") from e
        address = self._next_public_address()
        bridge = self._link(claim.index, "b")
        await self._run_steps(bridge_steps(claim.namespace, bridge, address))
        if self.ipv6:
            # The internet routes between the public segment and the routers' LANs.
            self.addresses6["internet"] = str(next(self._public_addresses6))
            await self._run_steps(
                [
                    Step(("ip", "netns", "exec", claim.namespace, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")),
                    _address6_step(claim.namespace, bridge, self.addresses6["internet"], PUBLIC_NETWORK6.prefixlen),
                ]
            )
        self._announce(
            Host(
                name="internet",
                role=Role.INTERNET,
                namespace=claim.namespace,
                address=str(address.ip),
                lan_address=None,
                uplink=bridge,
                wireguard_interface=self._link(claim.index, "w"),
            )
        )
        await self._add_public_host("server", Role.SERVER)

    async def add_public_node(self, name: str) -> Host:
        """A host with a public address of its own."""
        return await self._add_public_host(name, Role.PUBLIC)

    async def add_router(self, name: str, nat: NatType | str = NatType.EASY) -> Host:
        """A NAT router: a public address outside, a fresh 172.16.N.0/24 LAN inside."""
        nat = NatType(nat)
        number = next(self._lan_numbers)
        if number > 255:
            raise LabError("the lab has no LAN left for another router")
        lan = IPv4Network(f"172.16.{number}.0/24")
        lan_addresses = lan.hosts()
        lan_address = IPv4Interface(f"{next(lan_addresses)}/{lan.prefixlen}")
        claim = self._claim(name)
        address, wan = await self._plug_into_internet(claim)
        bridge = self._link(claim.index, "b")
        await self._run_steps(bridge_steps(claim.namespace, bridge, lan_address))
        await self._run_steps(router_steps(claim.namespace, nat, wan, bridge))
        self._lan_addresses[name] = lan_addresses
        if self.ipv6:
            await self._route_lan6(claim.namespace, name, number, wan, bridge)
        return self._announce(
            Host(
                name=name,
                role=Role.ROUTER,
                namespace=claim.namespace,
                address=str(address.ip),
                lan_address=str(lan_address.ip),
                uplink=wan,
                wireguard_interface=self._link(claim.index, "w"),
                lan_interface=bridge,
                lan_network=str(lan),
                nat=nat,
            )
        )

    async def _route_lan6(self, namespace: str, name: str, number: int, wan: str, bridge: str) -> None:
        """A router's IPv6 side: its LAN's /64 routed through it, behind its firewall."""
        lan6 = IPv6Network(LAN6.format(number=number))
        hosts6 = lan6.hosts()
        own = str(next(hosts6))
        self._lan_addresses6[name] = hosts6
        self._lan_gateways6[name] = own
        wan6 = self.addresses6[name]
        await self._run_steps(
            [
                Step(("ip", "netns", "exec", namespace, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")),
                _address6_step(namespace, bridge, own, lan6.prefixlen),
                Step(("ip", "netns", "exec", namespace, "nft", "-f", "-"), firewall6_ruleset(wan, bridge).encode()),
                # The internet knows the LAN is behind this router.
                Step(("ip", "-n", self.hosts["internet"].namespace, "-6", "route", "add", str(lan6), "via", wan6)),
            ]
        )

    async def rebind_nat(self, router: str, low_port: int, high_port: int) -> None:
        """The router forgets every NAT mapping and maps anew from ports
        ``low_port``-``high_port``: each flow from its LAN gets a new public
        port, as after a router's reboot or a mapping that timed out."""
        host = self.hosts.get(router)
        if host is None or host.role is not Role.ROUTER or host.nat is None:
            raise LabError(f"no router named {router!r} in the lab")
        if not 1024 <= low_port <= high_port <= 65535:
            raise LabError(f"{low_port}-{high_port} is not a range of unprivileged ports")
        fully_random = " random,fully-random" if host.nat is NatType.HARD else ""
        rules = (
            f"flush chain ip wire_lab postrouting\n"
            f'add rule ip wire_lab postrouting oifname "{host.uplink}" meta l4proto {{ tcp, udp }} '
            f"masquerade to :{low_port}-{high_port}{fully_random}\n"
            f'add rule ip wire_lab postrouting oifname "{host.uplink}" masquerade{fully_random}\n'
        )
        await self._run_steps(
            [
                Step(("ip", "netns", "exec", host.namespace, "nft", "-f", "-"), rules.encode()),
                Step(("ip", "netns", "exec", host.namespace, "conntrack", "-F")),
            ]
        )

    async def add_nat_node(self, name: str, router: str) -> Host:
        """A host on a router's LAN, reaching the internet through its NAT."""
        gateway = self.hosts.get(router)
        if gateway is None or gateway.role is not Role.ROUTER:
            raise LabError(f"no router named {router!r} in the lab")
        assert gateway.lan_address and gateway.lan_network and gateway.lan_interface
        claim = self._claim(name)
        address = self._next_lan_address(router, IPv4Network(gateway.lan_network))
        uplink = await self._plug(claim, gateway.namespace, gateway.lan_interface, address, gateway.lan_address)
        if self.ipv6:
            address6 = next(self._lan_addresses6[router])
            await self._give_address6(name, claim.namespace, uplink, str(address6), 64, self._lan_gateways6[router])
        return self._announce(
            Host(
                name=name,
                role=Role.NAT_NODE,
                namespace=claim.namespace,
                address=None,
                lan_address=str(address.ip),
                uplink=uplink,
                wireguard_interface=self._link(claim.index, "w"),
                router=router,
            )
        )

    async def silence(self, name: str) -> None:
        """The host goes silent (see silence_ruleset); its processes live on,
        unheard. Only its namespace is touched, and goes with it."""
        if name not in self.hosts:
            raise LabError(f"no host named {name!r} in the lab")
        namespace = self.hosts[name].namespace
        await self._run_steps([Step(("ip", "netns", "exec", namespace, "nft", "-f", "-"), silence_ruleset().encode())])

    def public_address(self, name: str) -> str:
        """The address the internet sees a host's traffic come from."""
        host = self.hosts[name]
        if host.router is not None:
            host = self.hosts[host.router]
        assert host.address is not None
        return host.address

    async def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 30,
    ) -> ProcessResult:
        """Run a command inside a host's namespace (not checked: see ProcessResult.check)."""
        return await self._runner.run(self.inside(host, argv), stdin=stdin, env=env, timeout=timeout)

    def start(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_prefix: str | None = None,
    ) -> IRunningProcess:
        """Start a long-running program inside a host's namespace; teardown stops it."""
        process = self._runner.start(
            self.inside(host, argv), env=env, log_prefix=log_prefix or f"{host}:{os.path.basename(argv[0])}"
        )
        self._processes.append(process)
        process.when_exited().addCallback(lambda _: self._forget(process))
        return process

    async def teardown(self) -> None:
        """
        Stop every process and delete every namespace and interface of this run.

        Best effort and idempotent: a step that fails is logged and the rest
        go on; whatever carries this run's prefix is removed, whether this
        object recorded creating it or not.
        """
        await self._best_effort("stop processes", self._stop_processes())
        namespaces = await self._namespaces_to_delete()
        for namespace in namespaces:
            await self._best_effort(f"end stray processes in {namespace}", self._kill_strays(namespace))
            await self._best_effort(f"delete namespace {namespace}", self._delete_namespace(namespace))
        await self._best_effort("delete leftover links", self._delete_root_links())
        self._remove_stale_wireguard_sockets()
        self._remove_resolv_confs()
        self._namespaces.clear()
        self.hosts.clear()
        self.addresses6.clear()
        self._names.clear()

    # -- building ----------------------------------------------------------

    async def _add_public_host(self, name: str, role: Role) -> Host:
        claim = self._claim(name)
        address, uplink = await self._plug_into_internet(claim)
        return self._announce(
            Host(
                name=name,
                role=role,
                namespace=claim.namespace,
                address=str(address.ip),
                lan_address=None,
                uplink=uplink,
                wireguard_interface=self._link(claim.index, "w"),
            )
        )

    async def _plug_into_internet(self, claim: _Claim) -> tuple[IPv4Interface, str]:
        """Create a claimed host's namespace on the internet: its address and uplink."""
        internet = self.hosts.get("internet")
        if internet is None:
            raise LabError("the lab has no internet yet: call setup() first")
        assert internet.address is not None
        address = self._next_public_address()
        uplink = await self._plug(claim, internet.namespace, internet.uplink, address, internet.address)
        if self.ipv6:
            address6 = str(next(self._public_addresses6))
            await self._give_address6(
                claim.name, claim.namespace, uplink, address6, PUBLIC_NETWORK6.prefixlen, self.addresses6["internet"]
            )
        return address, uplink

    async def _give_address6(self, name: str, namespace: str, device: str, address: str, prefixlen: int, gateway: str) -> None:
        self.addresses6[name] = address
        await self._run_steps(
            [
                _address6_step(namespace, device, address, prefixlen),
                Step(("ip", "-n", namespace, "-6", "route", "add", "default", "via", gateway)),
            ]
        )

    async def _plug(self, claim: _Claim, upstream: str, bridge: str, address: IPv4Interface, gateway: str) -> str:
        """A claimed host's namespace, plugged into ``bridge`` in ``upstream``; returns its uplink."""
        uplink = self._link(claim.index, "e")
        await self._run_steps(namespace_steps(claim.namespace))
        await self._run_steps(
            uplink_steps(
                claim.namespace, uplink, upstream, self._link(claim.index, "p"), bridge, address, IPv4Address(gateway)
            )
        )
        return uplink

    def _claim(self, name: str) -> _Claim:
        """Reserve a host name, its index and its namespace (tracked from now on)."""
        if not _HOST_NAME.match(name):
            raise LabError(f"bad host name {name!r}: lowercase letters, digits and '-', at most 30")
        if name in self._names:
            raise LabError(f"the lab already has a host named {name!r}")
        self._names.add(name)
        claim = _Claim(next(self._indices), f"{self.prefix}-{name}", name)
        self._namespaces.append(claim.namespace)
        self._give_own_resolv_conf(claim.namespace)
        return claim

    def _give_own_resolv_conf(self, namespace: str) -> None:
        """``ip netns exec`` bind-mounts /etc/netns/NAME/resolv.conf over
        /etc/resolv.conf: every lab host gets one of its own, so a node that
        manages its resolver (mesh DNS) never touches the host's."""
        directory = os.path.join(self.etc_netns, namespace)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "resolv.conf"), "w") as f:
            f.write(lab_resolv_conf(namespace, self.resolver_address))

    def _announce(self, host: Host) -> Host:
        self.hosts[host.name] = host
        log.info(
            "lab: {role} {name} up in {namespace} ({addresses})",
            role=host.role.value,
            name=host.name,
            namespace=host.namespace,
            addresses=", ".join(a for a in (host.address, host.lan_address) if a),
        )
        return host

    async def _run_steps(self, steps: list[Step]) -> None:
        for step in steps:
            (await self._runner.run(step.argv, stdin=step.stdin)).check()

    def _next_public_address(self) -> IPv4Interface:
        return IPv4Interface(f"{next(self._public_addresses)}/{PUBLIC_NETWORK.prefixlen}")

    def _next_lan_address(self, router: str, lan: IPv4Network) -> IPv4Interface:
        address = next(self._lan_addresses[router], None)
        if address is None:
            raise LabError(f"the LAN of {router} is full")
        return IPv4Interface(f"{address}/{lan.prefixlen}")

    def _link(self, index: int, tag: str) -> str:
        """An interface name unique to this run: e (uplink), p (its bridge port), b, w."""
        name = f"{self.prefix}{tag}{index}"
        assert len(name) <= _MAX_INTERFACE_NAME, name
        return name

    def inside(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside a host's namespace."""
        if host not in self.hosts:
            raise LabError(f"no host named {host!r} in the lab")
        return ["ip", "netns", "exec", self.hosts[host].namespace, *argv]

    def _forget(self, process: IRunningProcess) -> None:
        if process in self._processes:
            self._processes.remove(process)

    async def _choose_unused_prefix(self) -> None:
        """Make sure no leftover of another run shares our prefix (teardown deletes by it)."""
        existing = await self._listed_namespaces()
        while any(name.startswith(f"{self.prefix}-") for name in existing):
            self.prefix = _new_prefix()

    # -- tearing down ------------------------------------------------------

    async def _stop_processes(self) -> None:
        processes, self._processes = self._processes, []
        await gatherResults([p.stop(self._stop_timeout) for p in processes], consumeErrors=True)

    async def _namespaces_to_delete(self) -> list[str]:
        """Our namespaces that exist: the recorded ones, newest first, then strays."""
        try:
            existing = await self._listed_namespaces()
        except CommandError as e:
            log.warn("lab teardown: cannot list namespaces ({error}); trying ours", error=e)
            return list(reversed(self._namespaces))
        recorded = [n for n in reversed(self._namespaces) if n in existing]
        strays = [n for n in existing if n.startswith(f"{self.prefix}-") and n not in recorded]
        return recorded + strays

    async def _listed_namespaces(self) -> list[str]:
        listing = (await self._runner.run(["ip", "netns", "list"])).check()
        # Lines look like "wl3f2a-server (id: 2)" or just "wl3f2a-server".
        return [line.split()[0] for line in listing.stdout.decode().splitlines() if line.strip()]

    async def _kill_strays(self, namespace: str) -> None:
        """End processes the lab did not start itself but which live in its namespace."""
        listing = (await self._runner.run(["ip", "netns", "pids", namespace])).check()
        pids = listing.stdout.decode().split()
        if pids:
            log.warn("lab teardown: killing stray processes {pids} in {namespace}", pids=pids, namespace=namespace)
            (await self._runner.run(["kill", "-KILL", *pids])).check()

    async def _delete_namespace(self, namespace: str) -> None:
        # Deleting a namespace destroys its veth ends, and with them their peers.
        (await self._runner.run(["ip", "netns", "delete", namespace])).check()

    async def _delete_root_links(self) -> None:
        """Links are never made in the root namespace; remove any that carry our prefix."""
        listing = (await self._runner.run(["ip", "-o", "link", "show"])).check()
        for line in listing.stdout.decode().splitlines():
            # "7: wl3f2ae1@if6: <BROADCAST,..." -> "wl3f2ae1"
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(self.prefix):
                (await self._runner.run(["ip", "link", "delete", name])).check()

    def _remove_stale_wireguard_sockets(self) -> None:
        """A wireguard-go killed with SIGKILL leaves its UAPI socket behind."""
        for path in glob.glob(os.path.join(_WIREGUARD_RUN_DIR, f"{self.prefix}*.sock")):
            try:
                os.unlink(path)
            except OSError as e:
                log.warn("lab teardown: cannot remove {path}: {error}", path=path, error=e)

    def _remove_resolv_confs(self) -> None:
        """Each namespace's /etc/netns/NAME, ours whether recorded or not (a crashed run's)."""
        for directory in glob.glob(os.path.join(self.etc_netns, f"{self.prefix}-*")):
            shutil.rmtree(directory, ignore_errors=True)
        try:
            os.rmdir(self.etc_netns)  # only when empty: other tools' files stay
        except OSError:
            pass

    async def _best_effort(self, what: str, action: Awaitable[None]) -> None:
        try:
            await action
        except Exception as e:
            log.warn("lab teardown: could not {what}: {error}", what=what, error=e)


def _address6_step(namespace: str, device: str, address: str, prefixlen: int) -> Step:
    # nodad: usable at once (duplicate detection would hold it for a second or more).
    return Step(("ip", "-n", namespace, "-6", "addr", "add", str(IPv6Interface(f"{address}/{prefixlen}")), "dev", device, "nodad"))


@dataclass(frozen=True)
class _Claim:
    index: int
    namespace: str
    name: str = ""


def _new_prefix() -> str:
    # "wl" + 4 hex digits leaves 9 characters of a 15-character interface name.
    return "wl" + secrets.token_hex(2)
