"""The kernel routes for other nodes' networks: approved subnet routes
(``--accept-routes``) and the default route through an exit node.

Two halves:

- :func:`plan_routes`, pure: which prefixes go into which peer's AllowedIPs
  and the kernel's routing table, and which are skipped, each with a reason
  sentence for ``wire status`` (a route over this node's own LAN, over the
  mesh, or over the underlay path to the server or a peer is never
  installed: no loop, no lock-out).
- :class:`MeshRoutes`: makes the kernel match a plan with ``ip`` commands,
  and removes what is ours, also what a crashed run left.

What is ours is marked, not remembered: every route is added with ``proto
87`` (:data:`ROUTE_PROTO`, "W"; unused in iproute2's rt_protos), every rule
too, so ``ip route show proto 87`` finds exactly wire's routes after a crash.

The exit node works as wg-quick's and Tailscale's do, by policy routing,
not by splitting the default route (0.0.0.0/1 + 128.0.0.0/1 with /32
exceptions via the current gateway): exceptions that *look up the main
table* follow whatever the default gateway is now (DHCP renewals, a laptop
changing Wi-Fi), where /32 routes through a captured gateway go stale and
lock the node out of its server. The main table itself is never changed
for the exit. For each family the exit uses (priorities :data:`RULE_BASE`
+ n, all ``proto 87``)::

    5280: fwmark 0x5287 lookup main             WireGuard's own packets, when it marks them
    5281: to SERVER/32 lookup main              the server, every peer's endpoint (and the gateway)
    5282: to LAN lookup main | lookup 5287       the LAN out of the tunnel (--exit-node-allow-lan-access), or into it
    5283: lookup main suppress_prefixlength 0   every route but the default: the mesh, subnet routes, other links
    5284: lookup 5287                           table 5287: default dev IFACE

Rules are added top down and removed bottom up, so the catch-all never
stands without its exceptions. Without allow-LAN the networks on the
default route's interface go into the tunnel (the gateway's own address
stays out, so DHCP renewals and the path out keep working); other links
(a container bridge) stay local. If the daemon gives its WireGuard device
fwmark :data:`EXIT_FWMARK` (``wg set IFACE fwmark 0x5287``), its packets
skip the tunnel even to an endpoint that roamed since the last plan; without
the mark the endpoint rules do that job.

All the changes of one ``apply`` go to one ``ip -4 -batch -`` (and one
``ip -6 -batch -``) process, however many endpoints: an exit for a mesh of
a thousand peers is a thousand rules.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from wire.node.firewall import _stderr, check_interface
from wire.protocol.peers import PeerView
from wire.protocol.routes import EXIT_ROUTES, is_exit_route, route_order
from wire.runner import CommandError, CommandNotFound, IProcessRunner, ProcessResult, shown_argv

log = Logger()

ROUTE_PROTO = 87  # "W"; iproute2's rt_protos leaves it free
EXIT_TABLE = 5287
EXIT_FWMARK = 0x5287
RULE_BASE = 5280
IP_TIMEOUT = 15.0

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Interface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]


class RouteError(Exception):
    """ip could not be run, or refused a change; the message quotes it."""


# -- what the host looks like -------------------------------------------------------


@dataclass(frozen=True)
class LocalNetwork:
    """An address of this host on one of its links (``eth0 192.168.1.10/24``)."""

    interface: str
    address: Interface

    @property
    def network(self) -> Network:
        return self.address.network

    def __str__(self) -> str:
        return f"{self.interface} {self.address}"


@dataclass(frozen=True)
class Gateway:
    """A default route of the main table: its next hop (None for a point-to-point link) and link."""

    interface: str
    address: Address | None
    version: int


@dataclass(frozen=True)
class Underlay:
    """An address this node reaches outside the tunnel: the server, a peer's endpoint."""

    address: Address
    what: str  # "the server's address", "peer laptop's endpoint"
    why: str  # "the path to the server would loop"

    @classmethod
    def server(cls, address: str) -> Underlay:
        return cls(ipaddress.ip_address(address), "the server's address", "the path to the server would loop")

    @classmethod
    def endpoint(cls, peer: str, address: str) -> Underlay:
        return cls(ipaddress.ip_address(address), f"peer {peer}'s endpoint", f"the path to {peer} would loop")


def parse_local_networks(output: bytes | str, exclude: Collection[str] = ()) -> list[LocalNetwork]:
    """This host's global addresses from ``ip -j addr show``, but on ``exclude``
    (the wire interface) and loopback. Whatever does not parse is left out."""
    networks = []
    for link in _json_list(output):
        name, flags, addresses = link.get("ifname"), link.get("flags"), link.get("addr_info")
        if not isinstance(name, str) or name in exclude or not isinstance(addresses, list):
            continue
        if isinstance(flags, list) and "LOOPBACK" in flags:
            continue
        for info in addresses:
            if not isinstance(info, dict) or info.get("scope") != "global":
                continue
            local, prefixlen = info.get("local"), info.get("prefixlen")
            if not isinstance(local, str) or type(prefixlen) is not int:
                continue
            try:
                address = ipaddress.ip_interface(f"{local}/{prefixlen}")
            except ValueError:
                continue
            if not address.is_link_local and not address.is_loopback:
                networks.append(LocalNetwork(name, address))
    return networks


def parse_gateways(output: bytes | str, version: int) -> list[Gateway]:
    """The default routes in ``ip -j -4|-6 route show default`` (main table)."""
    gateways = []
    for route in _json_list(output):
        if route.get("dst") != "default" or not isinstance(route.get("dev"), str):
            continue
        address = None
        if route.get("gateway") is not None:
            try:
                address = ipaddress.ip_address(str(route["gateway"]))
            except ValueError:
                continue
            if address.version != version:
                continue
        gateways.append(Gateway(route["dev"], address, version))
    return gateways


def _json_list(output: bytes | str) -> list[dict[str, Any]]:
    try:
        value = json.loads(output or "[]")
    except (ValueError, UnicodeDecodeError):
        return []
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


async def read_local_networks(runner: IProcessRunner, exclude: Collection[str] = ()) -> list[LocalNetwork]:
    result = await _run_ip(runner, ["ip", "-j", "addr", "show"], "list this host's addresses")
    return parse_local_networks(result.stdout, exclude)


async def read_gateways(runner: IProcessRunner) -> list[Gateway]:
    gateways = []
    for version in (4, 6):
        result = await _run_ip(runner, ["ip", "-j", f"-{version}", "route", "show", "default"], "list the default routes")
        gateways += parse_gateways(result.stdout, version)
    return gateways


# -- the plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    peer: str
    prefix: str
    reason: str  # a whole sentence


@dataclass(frozen=True)
class ExitPlan:
    """The default route through ``peer`` for ``versions``, with what stays outside."""

    peer: str
    versions: tuple[int, ...]
    bypass: tuple[str, ...]  # networks looked up in main: server, endpoints, gateway or LAN
    tunnel_lan: tuple[str, ...] = ()  # LAN networks forced into the tunnel (no LAN access)


@dataclass(frozen=True)
class RoutePlan:
    allowed_ips: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # peer -> networks beyond its mesh address
    routes: tuple[str, ...] = ()  # through the wire interface, main table
    skipped: tuple[Skipped, ...] = ()
    exit: ExitPlan | None = None
    exit_problem: str | None = None  # why the exit asked for is not in use


def plan_routes(
    wanted: Mapping[str, Iterable[str]],
    *,
    mesh_subnets: Iterable[str],
    local_networks: Iterable[LocalNetwork],
    underlay_addresses: Iterable[Underlay],
    exit_peer: str | None,
    exit_allow_lan: bool,
    gateways: Iterable[Gateway] = (),
    peer_names: Mapping[str, str] | None = None,
) -> RoutePlan:
    """Which of the peers' networks this node installs.

    ``underlay_addresses`` are what must never go through the tunnel: the
    server's addresses (and the relay's, if apart) and every peer's current
    endpoint (:meth:`Underlay.server`, :meth:`Underlay.endpoint`).
    ``local_networks`` and ``gateways`` are this host's
    (:func:`read_local_networks`, :func:`read_gateways`), without the wire
    interface. ``mesh_subnets`` are the mesh's IPv4 and IPv6 prefixes.

    ``wanted`` maps a peer to the networks it routes (its approved subnet
    routes, and ``EXIT_ROUTES`` when it offers an exit; see
    :func:`wanted_from_peers`). Prefixes are considered smallest address
    first, then by peer, so with two peers for one prefix the same one
    always wins. An exit route counts only for ``exit_peer``. The reasons
    call a peer by its name in ``peer_names`` (by its id without one).
    """
    names = peer_names or {}
    mesh = [ipaddress.ip_network(subnet) for subnet in mesh_subnets]
    local = list(local_networks)
    underlay = list(underlay_addresses)
    gateways = list(gateways)
    candidates = sorted(
        ((route_order(prefix), peer, prefix) for peer, prefixes in wanted.items() for prefix in set(prefixes)),
    )
    allowed: dict[str, list[str]] = {}
    routes: list[str] = []
    skipped: list[Skipped] = []
    owner: dict[str, str] = {}
    for _, peer, prefix in candidates:
        if is_exit_route(prefix):
            continue
        reason = _conflict(ipaddress.ip_network(prefix), mesh, local, underlay)
        if reason is None and prefix in owner:
            reason = f"is also routed by peer {names.get(owner[prefix], owner[prefix])}, which came first"
        if reason is not None:
            skipped.append(Skipped(peer, prefix, f"{prefix} from peer {names.get(peer, peer)} {reason}: not installed"))
            continue
        owner[prefix] = peer
        allowed.setdefault(peer, []).append(prefix)
        routes.append(prefix)

    exit_plan, problem = None, None
    if exit_peer is not None:
        offered = tuple(sorted({p for p in wanted.get(exit_peer, ()) if is_exit_route(p)}, key=route_order))
        if not offered:
            problem = f"peer {names.get(exit_peer, exit_peer)} offers no exit node: the default route stays as it is"
        else:
            allowed.setdefault(exit_peer, []).extend(offered)
            exit_plan = _exit_plan(exit_peer, offered, local, underlay, gateways, exit_allow_lan)
    return RoutePlan(
        allowed_ips={peer: tuple(prefixes) for peer, prefixes in sorted(allowed.items())},
        routes=tuple(routes),
        skipped=tuple(skipped),
        exit=exit_plan,
        exit_problem=problem,
    )


def _conflict(prefix: Network, mesh: list[Network], local: list[LocalNetwork], underlay: list[Underlay]) -> str | None:
    for subnet in mesh:
        if subnet.version == prefix.version and prefix.overlaps(subnet):
            return f"overlaps the mesh ({subnet})"
    for network in local:
        if network.network.version == prefix.version and prefix.overlaps(network.network):
            return f"overlaps this node's own LAN ({network})"
    for address in underlay:
        if address.address in prefix:
            return f"contains {address.what} {address.address} ({address.why})"
    return None


def _exit_plan(
    peer: str,
    offered: tuple[str, ...],
    local: list[LocalNetwork],
    underlay: list[Underlay],
    gateways: list[Gateway],
    allow_lan: bool,
) -> ExitPlan:
    versions = tuple(sorted({ipaddress.ip_network(p).version for p in offered}))
    bypass = {str(ipaddress.ip_network(a.address)) for a in underlay if a.address.version in versions}
    tunnel_lan: set[str] = set()
    uplinks = {g.interface for g in gateways}
    for network in local:
        if network.network.version not in versions:
            continue
        if allow_lan:
            bypass.add(str(network.network))
        elif network.interface in uplinks:
            tunnel_lan.add(str(network.network))
    if not allow_lan:
        bypass.update(str(ipaddress.ip_network(g.address)) for g in gateways if g.address is not None and g.version in versions)
    return ExitPlan(peer, versions, _sorted(bypass), _sorted(tunnel_lan))


def _sorted(prefixes: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(prefixes, key=route_order))


def wanted_from_peers(peers: Iterable[PeerView]) -> dict[str, tuple[str, ...]]:
    """``plan_routes``' ``wanted`` from PeerViews: each peer's routes, and the exit routes when it offers one."""
    wanted = {}
    for peer in peers:
        routes = tuple(peer.routes) + (EXIT_ROUTES if peer.exit_node else ())
        if routes:
            wanted[peer.node_id] = routes
    return wanted


# -- the kernel's side ------------------------------------------------------------------


# A route: (version, destination as ip shows it, table); a rule: (version,
# priority, destination or "", fwmark or "", table, suppress_prefixlength or -1).
_Route = tuple[int, str, str]
_Rule = tuple[int, int, str, str, str, int]


def desired_routes(plan: RoutePlan) -> set[_Route]:
    wanted: set[_Route] = {(ipaddress.ip_network(p).version, p, "main") for p in plan.routes}
    if plan.exit is not None:
        wanted |= {(version, "default", str(EXIT_TABLE)) for version in plan.exit.versions}
    return wanted


def desired_rules(plan: RoutePlan) -> set[_Rule]:
    if plan.exit is None:
        return set()
    rules: set[_Rule] = set()
    table = str(EXIT_TABLE)
    for version in plan.exit.versions:
        rules.add((version, RULE_BASE, "", hex(EXIT_FWMARK), "main", -1))
        rules |= {(version, RULE_BASE + 1, _shown_dst(p), "", "main", -1) for p in plan.exit.bypass if _version(p) == version}
        rules |= {(version, RULE_BASE + 2, _shown_dst(p), "", table, -1) for p in plan.exit.tunnel_lan if _version(p) == version}
        rules.add((version, RULE_BASE + 3, "", "", "main", 0))
        rules.add((version, RULE_BASE + 4, "", "", table, -1))
    return rules


def _version(prefix: str) -> int:
    return ipaddress.ip_network(prefix).version


def _shown_dst(prefix: str) -> str:
    """As ``ip -j rule`` shows a destination: a host without its /32."""
    network = ipaddress.ip_network(prefix)
    return str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)


def parse_our_routes(output: bytes | str, version: int, interface: str) -> set[_Route]:
    """Our routes through ``interface`` in ``ip -j -V route show table all proto 87``."""
    routes = set()
    for route in _json_list(output):
        dst, dev = route.get("dst"), route.get("dev")
        table = route.get("table", "main")
        if isinstance(dst, str) and dev == interface and isinstance(table, (str, int)):
            routes.add((version, dst, str(table)))
    return routes


def parse_our_rules(output: bytes | str, version: int) -> set[_Rule]:
    """Our rules (proto 87) in ``ip -j -V rule show``."""
    rules = set()
    for rule in _json_list(output):
        if str(rule.get("protocol")) != str(ROUTE_PROTO):
            continue
        try:
            priority = int(rule["priority"])
            dst = str(rule.get("dst", ""))
            if dst and "dstlen" in rule:
                dst = f"{dst}/{int(rule['dstlen'])}"
            suppress = int(rule.get("suppress_prefixlen", -1))
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        rules.add((version, priority, dst, str(rule.get("fwmark", "")), str(rule.get("table", "")), suppress))
    return rules


# One change as a line of ``ip -V -batch -`` (which takes no options per
# line: the family is the batch's): (version, the words after "ip -V").
_Change = tuple[int, list[str]]


def _route_change(verb: str, route: _Route, interface: str) -> _Change:
    version, dst, table = route
    return version, ["route", verb, dst, "dev", interface, "table", table, "proto", str(ROUTE_PROTO)]


def _rule_change(verb: str, rule: _Rule) -> _Change:
    version, priority, dst, fwmark, table, suppress = rule
    words = ["rule", verb, "priority", str(priority)]
    if dst:
        words += ["to", dst]
    if fwmark:
        words += ["fwmark", fwmark]
    words += ["lookup", table]
    if suppress >= 0:
        words += ["suppress_prefixlength", str(suppress)]
    return version, words + ["proto", str(ROUTE_PROTO)]


def _rule_order(rule: _Rule) -> tuple:
    return (rule[1], rule[0], rule[2:])


@dataclass(frozen=True)
class RoutesStatus:
    interface: str
    routes: tuple[str, ...]
    skipped: tuple[Skipped, ...]
    exit_peer: str | None
    exit_problem: str | None


class MeshRoutes:
    """The kernel's routes and rules for a :class:`RoutePlan`, on one wire interface.

    ``apply`` adds what is missing and removes what is no longer planned
    (listing the kernel's ``proto 87`` routes and rules each time, so a
    crashed run's leftovers go too); ``clear`` removes everything of ours.
    Calls are serialised. Order with WireGuard: give the peers their
    ``plan.allowed_ips`` first, then ``apply``; on the way down ``clear``
    first, then the AllowedIPs.
    """

    def __init__(self, runner: IProcessRunner, interface: str, *, timeout: float = IP_TIMEOUT) -> None:
        self.interface = check_interface(interface)
        self._runner = runner
        self._timeout = timeout
        self._lock = DeferredLock()
        self._plan: RoutePlan | None = None  # the plan in force, None when unknown

    async def apply(self, plan: RoutePlan) -> bool:
        """Make the kernel match ``plan``; False when it already did (nothing run)."""
        if plan == self._plan:
            return False
        routes, rules = desired_routes(plan), desired_rules(plan)
        async with self._lock:
            self._plan = None
            have_routes, have_rules = await self._current()
            # Routes first (the exit table before the rules that use it), rules
            # top down; away the catch-all first, so no instant without exceptions.
            changes = [_route_change("replace", route, self.interface) for route in sorted(routes - have_routes)]
            changes += [_rule_change("add", rule) for rule in sorted(rules - have_rules, key=_rule_order)]
            changes += [_rule_change("del", rule) for rule in sorted(have_rules - rules, key=_rule_order, reverse=True)]
            changes += [_route_change("del", route, self.interface) for route in sorted(have_routes - routes)]
            await self._batch(changes, force=False)
            self._plan = plan
        log.info(
            "routes on {interface}: {routes} through the mesh, {skipped} skipped, exit {exit}",
            interface=self.interface,
            routes=len(plan.routes),
            skipped=len(plan.skipped),
            exit=plan.exit.peer if plan.exit else "none",
        )
        return True

    async def clear(self) -> None:
        """Remove every route and rule of ours (``proto 87``), also a crashed run's.

        Routes are ours when they go through this interface; rules name no
        interface, so every ``proto 87`` rule goes (one wire interface per
        host uses an exit at a time)."""
        async with self._lock:
            self._plan = None
            have_routes, have_rules = await self._current()
            changes = [_rule_change("del", rule) for rule in sorted(have_rules, key=_rule_order, reverse=True)]
            changes += [_route_change("del", route, self.interface) for route in sorted(have_routes)]
            await self._batch(changes, force=True)
        log.info("routes on {interface}: cleared", interface=self.interface)

    def status(self) -> RoutesStatus:
        plan = self._plan or RoutePlan()
        return RoutesStatus(
            interface=self.interface,
            routes=plan.routes,
            skipped=plan.skipped,
            exit_peer=plan.exit.peer if plan.exit else None,
            exit_problem=plan.exit_problem,
        )

    async def _current(self) -> tuple[set[_Route], set[_Rule]]:
        routes: set[_Route] = set()
        rules: set[_Rule] = set()
        for version in (4, 6):
            try:
                listed = await self._ip(["ip", "-j", f"-{version}", "route", "show", "table", "all", "proto", str(ROUTE_PROTO)])
                routes |= parse_our_routes(listed.stdout, version, self.interface)
                listed = await self._ip(["ip", "-j", f"-{version}", "rule", "show"])
                rules |= parse_our_rules(listed.stdout, version)
            except RouteError as e:
                if version == 4:
                    raise
                # A kernel without IPv6 (ipv6.disable=1) has none of ours either.
                log.debug("no IPv6 routes to list on {interface}: {error}", interface=self.interface, error=str(e))
        return routes, rules

    async def _batch(self, changes: list[_Change], *, force: bool) -> None:
        """One ``ip`` process per family however many changes (an exit has a
        rule per peer endpoint). Without ``force`` ip stops at the first
        failure, so a later rule never stands without the earlier ones; with
        it (clearing) one failure does not keep the rest in place."""
        for version in (4, 6):
            lines = [" ".join(words) for v, words in changes if v == version]
            if not lines:
                continue
            argv = ["ip", f"-{version}", *(["-force"] if force else []), "-batch", "-"]
            stdin = "".join(f"{line}\n" for line in lines).encode()
            result = await _run_ip(self._runner, argv, f"change the routes of {self.interface}", self._timeout, stdin=stdin, check=False)
            if result.rc != 0:
                failed = _failed_line(result, lines)
                command = f"`ip -{version} {failed}`" if failed else f"`{shown_argv(argv)}`"
                raise RouteError(f"cannot change the routes of {self.interface}: {command} failed: {_stderr(result)}")

    async def _ip(self, argv: list[str]) -> ProcessResult:
        return await _run_ip(self._runner, argv, f"list the routes of {self.interface}", self._timeout)


def _failed_line(result: ProcessResult, lines: list[str]) -> str | None:
    """The batch line ip names in "Command failed -:N" (the first, without -force)."""
    match = re.search(r"Command failed -:(\d+)", result.stderr.decode("utf-8", "replace"))
    if match and 1 <= int(match.group(1)) <= len(lines):
        return lines[int(match.group(1)) - 1]
    return None


async def _run_ip(
    runner: IProcessRunner,
    argv: Sequence[str],
    what: str,
    timeout: float = IP_TIMEOUT,
    stdin: bytes | None = None,
    check: bool = True,
) -> ProcessResult:
    try:
        result = await runner.run(list(argv), stdin=stdin, timeout=timeout)
    except CommandNotFound:
        raise RouteError(f"cannot {what}: the 'ip' program is missing (package iproute2)") from None
    except CommandError as e:
        raise RouteError(f"cannot {what}: {e}") from None
    if check and result.rc != 0:
        raise RouteError(f"cannot {what}: `{shown_argv(argv)}` exited with code {result.rc}: {_stderr(result)}")
    return result
