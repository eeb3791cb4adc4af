"""Routes beyond the mesh on this node: the subnet routes and the exit node
it uses (wire.node.routes), and the networks it routes for others
(wire.node.router), kept in step with its settings and the netmap.

The reconciler asks :meth:`NodeRouting.allowed_ips` for each peer's extra
AllowedIPs before it applies WireGuard, and calls :meth:`apply` after, so
the kernel never routes a network to the interface before WireGuard knows
which peer carries it. A peer is given only the networks the server made it
primary for (``PeerView.routes``), and the exit routes only when it is the
exit this node chose and it offers one: no peer can route traffic it was
not given. Nothing here stops the mesh: a failure is logged, shown, and
tried again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

from twisted.logger import Logger

from wire.node.config import NodeConfig
from wire.node.netmap import Peer
from wire.node.servers import server_hosts
from wire.node.router import InvalidRouterConfig, RouterError, SubnetRouter
from wire.node.routes import (
    MeshRoutes,
    RouteError,
    RoutePlan,
    Underlay,
    plan_routes,
    read_gateways,
    read_local_networks,
    wanted_from_peers,
)
from wire.node.settings import advertised_routes
from wire.protocol.errors import ProtocolError
from wire.protocol.routefilter import ForwardRule, check_destinations
from wire.protocol.routes import is_exit_route
from wire.runner import IProcessRunner
from wire.textsafe import escaped

# The host's networks and gateways are read again at most this often (and on every settings change).
HOST_FACTS_TTL = 30.0
# What is in the kernel before the first plan: perhaps an earlier run's routes.
_UNKNOWN = RoutePlan(routes=("unknown",))


class NodeRouting:
    log = Logger()

    def __init__(self, clock, runner: IProcessRunner, interface: str, state_dir: str, config: Callable[[], NodeConfig]):
        self._clock = clock
        self._runner = runner
        self.interface = interface
        self._config = config
        self.routes = MeshRoutes(runner, interface)
        self.router = SubnetRouter(runner, interface, state_dir)
        self.plan = RoutePlan()
        self._planned_from: tuple[Mapping[str, Peer], tuple] | None = None
        self._applied: RoutePlan | None = None
        self._host_facts: tuple[float, list, list] | None = None
        self._advertised: tuple | None = None
        self.problem: str | None = None
        self.router_problem: str | None = None
        self.exit_name: str | None = None  # the exit node in use
        # What the access policy lets this router forward (resolved; None: no
        # policy, forward all; (): nothing), and why it is closed, if it is.
        self._forwarding: tuple[ForwardRule, ...] | None = None
        self.forwarding_problem: str | None = None
        # Until the first netmap with peers says, nothing new is forwarded from
        # the mesh (a restart must not open what a policy closed; replies pass).
        self._forwarding_known = False
        self._forwarding_given_problem: str | None = None  # as the reconciler said it
        self._server_addresses: tuple[str, ...] = ()  # every replica's, resolved with the host's facts

    async def start(self) -> None:
        """At start. A restarted daemon keeps what it still wants (no flap
        for the tunnels that outlived it): routes left by an earlier run are
        reconciled with the first plan, forwarding is applied again or, when
        this node no longer routes for others, put back as it was."""
        self._applied = _UNKNOWN
        if advertised_routes(self._config()):
            await self.advertise()
            return
        try:
            await self.router.recover()
        except (RouterError, InvalidRouterConfig) as e:
            self.router_problem = f"what a previous run left could not be undone: {e}"

    # -- using others' routes ------------------------------------------------

    def _mesh_subnets(self) -> list[str]:
        """The mesh's own prefixes, IPv4 and IPv6: no route may overlap either."""
        config = self._config()
        return [subnet for subnet in (config.vpn_subnet, config.vpn_subnet6) if subnet]

    async def allowed_ips(
        self, peers: Mapping[str, Peer], my_public_ip: str = "", my_public_ip6: str = ""
    ) -> Mapping[str, tuple[str, ...]]:
        """Each peer's networks beyond its mesh address, planned anew when the
        netmap or settings changed. A host whose routes cannot be read gets
        none (closed), and says why: the mesh itself goes on."""
        try:
            return await self._allowed_ips(peers, my_public_ip, my_public_ip6)
        except RouteError as e:
            self.plan = RoutePlan()
            self._planned_from = None
            self.problem = f"routes beyond the mesh are not used: {e}"
            self.log.error("{problem}", problem=escaped(self.problem))
            return {}

    async def _allowed_ips(self, peers: Mapping[str, Peer], my_public_ip: str, my_public_ip6: str = "") -> Mapping[str, tuple[str, ...]]:
        config = self._config()
        if not config.accept_routes and not config.exit_node and self._applied is None:
            # The common case: no routes used, none in place; nothing to look at (every reconcile comes here).
            self.plan = RoutePlan()
            return {}
        mesh_subnets = self._mesh_subnets()
        inputs = (config.accept_routes, config.exit_node, config.exit_node_id, config.exit_node_allow_lan_access,
                  tuple(mesh_subnets), my_public_ip, my_public_ip6)
        # The netmap's peer dict is new on every change: the same dict and settings mean the same plan.
        if (self._planned_from is not None and self._planned_from[0] is peers and self._planned_from[1] == inputs
                and not self._host_facts_stale()):
            return self.plan.allowed_ips
        wanted = self._wanted(peers, config)
        if not wanted and not config.exit_node and self._applied is None:
            self.plan, self._planned_from = RoutePlan(), (peers, inputs)
            return {}
        local, gateways = await self._read_host_facts()
        exit_peer = _exit_peer(peers, config)
        plan = plan_routes(
            wanted,
            mesh_subnets=mesh_subnets,
            local_networks=local,
            underlay_addresses=self._underlay(peers, config, my_public_ip, my_public_ip6),
            exit_peer=exit_peer,
            exit_allow_lan=config.exit_node_allow_lan_access,
            gateways=gateways,
            peer_names={node_id: peer.node_name for node_id, peer in peers.items()},
        )
        if exit_peer is not None and not self._server_addresses:
            # The path to the server must stay outside the tunnel: no exit until its address is known.
            plan = RoutePlan(
                {peer: kept for peer, prefixes in plan.allowed_ips.items()
                 if (kept := tuple(p for p in prefixes if not is_exit_route(p)))},
                plan.routes, plan.skipped, None,
                "the server's address is not known yet (its name did not resolve): no exit node until it is",
            )
        elif config.exit_node and exit_peer is None:
            plan = RoutePlan(plan.allowed_ips, plan.routes, plan.skipped, None,
                             f"no peer named {config.exit_node} in this node's netmap: the default route stays as it is")
        for skipped in plan.skipped:
            if self.plan is None or skipped not in self.plan.skipped:
                self.log.warn("{reason}", reason=escaped(skipped.reason))
        self.plan, self._planned_from = plan, (peers, inputs)
        self.exit_name = peers[plan.exit.peer].node_name if plan.exit else None
        return plan.allowed_ips

    def _wanted(self, peers: Mapping[str, Peer], config: NodeConfig) -> dict[str, tuple[str, ...]]:
        wanted = wanted_from_peers(peers.values())
        chosen = {_exit_peer(peers, config)} - {None}
        result = {}
        for node_id, prefixes in wanted.items():
            kept = tuple(p for p in prefixes if (is_exit_route(p) and node_id in chosen) or (not is_exit_route(p) and config.accept_routes))
            if kept:
                result[node_id] = kept
        return result

    def _underlay(self, peers: Mapping[str, Peer], config: NodeConfig, my_public_ip: str, my_public_ip6: str = "") -> list[Underlay]:
        """What must never go through the tunnel: the server, and every address
        a peer's WireGuard may use (its LAN address only when it shares this
        node's public address: only then is the LAN path tried; its IPv6 one
        only when this node has IPv6 too: only then is that path tried, and
        an IPv6 subnet route holding it stays usable by nodes without IPv6)."""
        found = []
        for address in self._server_addresses:
            found.append(Underlay.server(address))
        for peer in peers.values():
            same_lan = bool(my_public_ip) and peer.public_ip == my_public_ip
            for address in (peer.public_ip, peer.public_ip6 if my_public_ip6 else "", peer.lan_ip if same_lan else ""):
                if address and _is_address(address):
                    found.append(Underlay.endpoint(peer.node_name, address))
        return found

    def _host_facts_stale(self) -> bool:
        return self._host_facts is None or self._clock.seconds() - self._host_facts[0] > HOST_FACTS_TTL

    async def _read_host_facts(self) -> tuple[list, list]:
        if self._host_facts_stale():
            local = await read_local_networks(self._runner, exclude=(self.interface,))
            gateways = await read_gateways(self._runner)
            self._server_addresses = await self._resolve_servers()
            self._host_facts = (self._clock.seconds(), local, gateways)
        assert self._host_facts is not None
        return self._host_facts[1], self._host_facts[2]

    async def _resolve_servers(self) -> tuple[str, ...]:
        """The addresses of the server and its replicas (a node may move to
        any of them while an exit is in use): those known so far."""
        found = []
        for host in server_hosts(self._config()):
            address = await self._resolve(host)
            if address and address not in found:
                found.append(address)
        return tuple(found)

    async def _resolve(self, host: str) -> str:
        """A server's address (its URL may name a host): "" while unknown."""
        if _is_address(host):
            return host
        resolve = getattr(self._clock, "resolve", None)
        if resolve is None or not host:
            return ""
        try:
            return str(await resolve(host, timeout=(2,)))
        except Exception as e:
            self.log.warn("the server's name {host} did not resolve ({error}); routes are planned without it", host=host, error=e)
            return ""

    async def apply(self) -> None:
        """The kernel's routes as planned (after WireGuard holds the AllowedIPs)."""
        plan = self.plan
        if plan == self._applied:
            return
        try:
            if await self.routes.apply(plan):
                self.log.info(
                    "routes through {interface}: {routes}{exit}",
                    interface=self.interface,
                    routes=", ".join(plan.routes) or "none",
                    exit=f"; the default route through {plan.exit.peer}" if plan.exit else "",
                )
            self._applied = plan if plan.routes or plan.exit else None
            self.problem = plan.exit_problem
        except RouteError as e:
            self.problem = f"routes could not be put in place: {e}"
            self.log.error("{problem}", problem=escaped(self.problem))

    # -- routing for others --------------------------------------------------

    def settings_changed(self) -> None:
        """Plan again at the next reconcile, with the host's facts read afresh."""
        self._planned_from = None
        self._host_facts = None

    def offers_exit(self) -> bool:
        """Whether this node's settings offer it as an exit node."""
        return any(is_exit_route(route) for route in advertised_routes(self._config()))

    async def set_forwarding(self, rules: tuple[ForwardRule, ...] | None, problem: str | None = None) -> None:
        """The policy's forwarding rules, resolved (None: no policy); with a
        ``problem`` (unreadable), nothing is forwarded from the mesh."""
        forwarding = () if problem else rules
        if self._forwarding_known and forwarding is self._forwarding and problem == self._forwarding_given_problem:
            return  # the same as at the last reconcile (every second): nothing to check or apply again
        self._forwarding, self._forwarding_given_problem = forwarding, problem
        self.forwarding_problem = problem
        self._forwarding_known = True
        if advertised_routes(self._config()) or self._advertised is not None:
            await self.advertise()

    def _checked_forwarding(self, offered: tuple[str, ...]) -> tuple[ForwardRule, ...] | None:
        """The forwarding rules, if every destination is inside what this node
        offers; else none at all (closed) and the reason in ``forwarding_problem``."""
        if not self._forwarding_known:
            return ()
        rules = self._forwarding
        if rules is None or not offered:
            return rules
        try:
            check_destinations(rules, offered)
        except ProtocolError as e:
            problem = f"the access policy's forwarding rules were refused, nothing is forwarded from the mesh: {e}"
            if problem != self.forwarding_problem:
                self.log.error("{problem}", problem=escaped(problem))
            self.forwarding_problem = problem
            return ()
        return rules

    async def advertise(self) -> None:
        """Forwarding and masquerade for the networks this node offers (none: undone)."""
        config = self._config()
        offered = advertised_routes(config)
        mesh_subnets = self._mesh_subnets()
        forwarding = self._checked_forwarding(tuple(offered))
        wanted = (offered, config.snat_subnet_routes, tuple(mesh_subnets), forwarding)
        if wanted == self._advertised:
            return
        try:
            if offered:
                await self.router.apply(
                    list(offered), snat=config.snat_subnet_routes, mesh_subnets=mesh_subnets, forwarding=forwarding
                )
                self.log.info("routing for the mesh: {routes}", routes=", ".join(offered))
            else:
                await self.router.clear()
            self._advertised = wanted
            self.router_problem = None
        except (RouterError, InvalidRouterConfig) as e:
            problem = f"this node cannot route for the mesh: {e}"
            if problem != self.router_problem:  # tried again at each reconcile: told once
                self.log.error("{problem}", problem=escaped(problem))
            self.router_problem = problem

    async def clear(self) -> None:
        """``wire down``: every route, rule, table and sysctl of ours undone."""
        for what, undo in (("routes", self.routes.clear), ("forwarding", self.router.clear)):
            try:
                await undo()
            except (RouteError, RouterError) as e:
                self.log.warn("could not undo the {what}: {error}", what=what, error=e)
        self._applied = None
        self._advertised = None
        self.plan = RoutePlan()
        # Up again later: nothing forwarded from the mesh until a netmap says what may be.
        self._forwarding, self._forwarding_known = None, False

    def exit_in_use(self) -> str | None:
        """The node id of the exit the default route goes through (None: none)."""
        return self.plan.exit.peer if self.plan.exit and self._applied is not None else None

    def status(self) -> dict:
        plan = self.plan
        config = self._config()
        return {
            "accept_routes": config.accept_routes,
            "routes": list(plan.routes),
            "skipped": [s.reason for s in plan.skipped],
            "exit_node": self.exit_name if plan.exit else None,
            "exit_node_wanted": config.exit_node or None,
            "advertised": list(advertised_routes(config)),
            "problem": self.problem,
            "router_problem": self.router_problem,
            "forwarding": None if self._forwarding is None else len(self._forwarding),
            "forwarding_problem": self.forwarding_problem,
        }


def _exit_peer(peers: Mapping[str, Peer], config: NodeConfig) -> str | None:
    """The exit this node chose: by the node id ``wire set`` pinned (a rename,
    or another node taking the name, moves nothing), else by name (a setting
    saved while the daemon was stopped)."""
    if config.exit_node_id:
        return config.exit_node_id if config.exit_node_id in peers else None
    if config.exit_node:
        return next((node_id for node_id, peer in peers.items() if peer.node_name == config.exit_node), None)
    return None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
