"""The reconciler: the only code that changes WireGuard's peers.

Each run brings WireGuard in line with the netmap and each peer's chosen
path (:class:`~wire.node.paths.PathPlanner`, facts and time in, decision
out), in one ``apply``. A relayed peer's endpoint is its relay shim
session's loopback port; its grant is fetched in the background, a few at
a time, outside the lock, so a server that is away stalls no reconcile.
Runs never overlap: one lock, and any number of "reconcile again soon"
(a grant came) folded into one queued run.

What it needs is given, not reached for: the clock, WireGuard, the netmap,
the relay shim, the client that asks for grants, this node's facts
(``me``), ``track`` (so stopping cancels what it started), and whether the
interface is up and the node is stopping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv6Network
from typing import Any, Callable, Coroutine

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime

from wire.client import BadAnswer, CoordinationClient, ServerError, ServerUnreachable
from wire.debuglog import logger as debug_aware_logger
from wire.node.firewall import Firewall, FirewallError, InvalidFirewallConfig
from wire.node.netmap import PERSISTENT_KEEPALIVE, NodeNetmap, Peer
from wire.node.paths import Me, PathPlanner, PeerPath, Phase, Plan, Seen, endpoint_for, is_shim_endpoint
from wire.node.probe import PathProbe
from wire.node.relay import RelayHostRefused, RelayShim
from wire.node.routing import NodeRouting
from wire.node.trust import IPNetwork, Mesh
from wire.node.wireguard import IWireGuard, PeerConfig, PeerStatus
from wire.protocol import PathFailure, PathMode
from wire.protocol.filter import FilterRule, resolve_peers
from wire.protocol.routefilter import ForwardRule, exit_dns_rules, resolve_forward_peers

# Relay grants asked for at once: many relayed peers while the server is
# slow must not open a request each.
RELAY_GRANTS_AT_ONCE = 4


def mesh_addresses(peer: Peer) -> tuple[str, ...]:
    """A peer's addresses in the mesh: its IPv4 one, and its IPv6 one when it has one."""
    return (peer.vpn_ip, peer.vpn_ip6) if peer.vpn_ip6 else (peer.vpn_ip,)


@dataclass
class RuntimeState:
    """What reconciling remembers from one run to the next."""

    reconcile_wanted: bool = False  # a reconcile is queued behind the lock
    relay_wanted: set[str] = field(default_factory=set)  # peers the latest reconcile relays
    # The live relays (host, port) the server last listed (None: none listed yet).
    relays_live: set[tuple[str, int]] | None = None
    grant_slots: DeferredSemaphore = field(default_factory=lambda: DeferredSemaphore(RELAY_GRANTS_AT_ONCE))
    grants_pending: dict[str, Deferred] = field(default_factory=dict)  # by peer node id
    grant_failing: set[str] = field(default_factory=set)  # told once, retried quietly
    last_applied: dict[str, PeerConfig] = field(default_factory=dict)  # by public key
    configs: dict[str, tuple[tuple, PeerConfig]] = field(default_factory=dict)  # by public key: (inputs, config)
    # For the log: each peer's last told path, and names of peers now gone.
    path_seen: dict[str, tuple] = field(default_factory=dict)
    names_by_key: dict[str, str] = field(default_factory=dict)
    names_by_id: dict[str, str] = field(default_factory=dict)
    # Public keys whose AllowedIPs fell outside the mesh (logged once each).
    refused: set[str] = field(default_factory=set)


class Reconciler:
    log = debug_aware_logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        wireguard: IWireGuard,
        netmap: NodeNetmap,
        client: CoordinationClient,
        node_id: str,
        public_key: str,
        me: Callable[[], Me],
        track: Callable[[Coroutine[Any, Any, None]], Deferred],
        interface_up: Callable[[], bool],
        stopping: Callable[[], bool],
        relay: RelayShim | None = None,
        probe: Callable[[], PathProbe | None] = lambda: None,
        on_silence: Callable[[], object] = lambda: None,
        firewall: Firewall | None = None,
        routing: NodeRouting | None = None,
    ):
        self.clock = clock
        self.wireguard = wireguard
        self.netmap = netmap
        self.client = client
        self._node_id = node_id
        self._public_key = public_key
        self._me = me
        self._track = track
        self._interface_up = interface_up
        self._stopping = stopping
        self.relay = relay
        if relay is not None:
            relay.on_peer_changed = self._refresh_grant
            # On to the server's kernel path, or back to the shim: a new endpoint.
            relay.on_path_changed = lambda _peer: self._reconcile_soon()
        self._probe = probe
        # A direct path went silent: our NAT may have moved (the daemon checks).
        self._on_silence = on_silence
        self.paths = PathPlanner()
        self._lock = DeferredLock()
        self._runtime = RuntimeState()
        self.wireguard_view: dict[str, PeerStatus] = {}
        # The node's packet filter (wire.node.firewall), for the access policy.
        self.firewall = firewall
        # Routes beyond the mesh (wire.node.routing); None: this node uses none.
        self.routing = routing
        # "unknown" until the first reconcile: a table a crashed daemon left
        # behind is removed once when there is no policy.
        self._filter_state = "unknown"
        # The filter resolved against the netmap's peers: (rules, peers dict, result).
        self._resolved: tuple[tuple[FilterRule, ...], dict[str, Peer], tuple[FilterRule, ...]] | None = None
        self._route_resolved: tuple[tuple[ForwardRule, ...], dict[str, Peer], tuple[ForwardRule, ...]] | None = None
        # (filter, forwarding rules, the filter with the exit's DNS opened): see _filter_with_exit_dns.
        self._exit_dns: tuple[tuple[FilterRule, ...], tuple[ForwardRule, ...] | None, tuple[FilterRule, ...]] | None = None
        # Why the policy's filter is not in force (the node then holds no peers).
        self.filter_problem: str | None = None

    @property
    def reconciling(self) -> bool:
        """A reconcile holds the lock now."""
        return bool(self._lock.locked)

    async def reconcile(self) -> None:
        """Bring WireGuard in line with the netmap and each peer's chosen path."""
        await self._lock.acquire()
        try:
            await self._reconcile_now()
        finally:
            self._lock.release()

    def _reconcile_soon(self) -> None:
        """Reconcile once more (a relay session is ready), however many ask
        before that reconcile starts."""
        if self._runtime.reconcile_wanted or self._stopping():
            return
        self._runtime.reconcile_wanted = True
        self._track(self._queued_reconcile())

    async def _queued_reconcile(self) -> None:
        await self._lock.acquire()
        self._runtime.reconcile_wanted = False  # asked from here on: one more
        try:
            await self._reconcile_now()
        except CancelledError:
            raise
        except Exception:
            self.log.failure("applying the netmap to {name} failed", name=self.wireguard.name)
        finally:
            self._lock.release()

    def echoing_peers(self) -> set[str]:
        """Peers (node ids) that answer our path probes: a direct path to
        one is found dead sooner (wire.node.paths DEAD_AFTER)."""
        probe = self._probe()
        return {n for n, p in self.netmap.peers.items() if probe is not None and p.vpn_ip in probe.echoing}

    async def _reconcile_now(self) -> None:
        # Waits only on WireGuard: relay grants come in the background
        # (_relay_endpoint), so a server that is away stalls no reconcile.
        if not self._interface_up() or self._stopping():
            return
        status = {p.public_key: p for p in (await self.wireguard.status()).peers}
        self.wireguard_view = status  # the latest, for the node's path reports (wire.node.report)
        via_relay = self._via_relay()
        seen = {
            key: Seen(p.endpoint, p.latest_handshake, p.rx_bytes, p.tx_bytes, via_relay=via_relay(p.endpoint))
            for key, p in status.items()
        }
        # What each peer has now: what we last set (WireGuard's own view
        # may have roamed), else what the interface held when we came.
        held: dict[str, PeerStatus | PeerConfig] = {**status, **self._runtime.last_applied}
        probe = self._probe()
        echoing = self.echoing_peers()
        # The rule reads this node's facts as its peers see them: the server's.
        me = self.netmap.me or self._me()
        plan = self.paths.plan(me, self.netmap.peers, self.netmap.words, seen, self.clock.seconds(), echoing)
        self._log_path_changes(plan.paths)
        desired: dict[str, PeerConfig] = {}
        configs: dict[str, tuple[tuple, PeerConfig]] = {}
        reassert: set[str] = set()
        # Filled as we go: a grant that comes at once checks it.
        relayed: set[str] = set()
        self._runtime.relay_wanted = relayed
        mesh = self.netmap.screen.mesh()
        subnet, subnet6 = mesh.subnet, mesh.subnet6
        # Networks beyond the mesh some peers carry (subnet routes, the exit): only as given.
        extra = (
            await self.routing.allowed_ips(self.netmap.peers, me.public_ip, getattr(me, "public_ip6", ""))
            if self.routing is not None
            else {}
        )
        for node_id, peer in self.netmap.peers.items():
            path = plan.paths[node_id]
            endpoint = path.endpoint
            keepalive = PERSISTENT_KEEPALIVE
            if path.mode is PathMode.RELAY and self.relay is None:
                endpoint = endpoint_for(peer, PathMode.DIRECT)  # no shim here: the best there is
            elif path.mode is PathMode.RELAY:
                relayed.add(node_id)
                relay_endpoint = self._relay_endpoint(peer)
                kept = held.get(peer.wg_public_key)
                if relay_endpoint is not None:
                    endpoint = relay_endpoint
                elif kept is not None and kept.endpoint:
                    # Its grant is on the way: it keeps the endpoint it has.
                    endpoint = kept.endpoint
                else:
                    # Relayed from the start and its grant on the way: no
                    # endpoint and no keepalive yet. A keepalive now would
                    # start a handshake towards an endpoint that cannot answer,
                    # and WireGuard tries again (over the relay) only 5 s
                    # later; turned on with the relay endpoint, it starts one
                    # there at once.
                    endpoint, keepalive = None, 0
            config = self._peer_config(peer, endpoint, keepalive, configs, subnet, extra.get(node_id, ()), subnet6)
            if config is None:
                continue
            desired[peer.wg_public_key] = config
            actual = status.get(peer.wg_public_key)
            if actual is not None and self._roamed_astray(path.mode, actual.endpoint, endpoint, via_relay):
                reassert.add(peer.wg_public_key)
                self.log.info(
                    "{peer}: WireGuard roamed to {actual}; back to {endpoint} ({mode})",
                    peer=peer.node_name or node_id,
                    actual=actual.endpoint,
                    endpoint=endpoint,
                    mode=path.mode,
                )
        self._runtime.configs = configs
        self._runtime.grant_failing &= relayed
        if self.relay is not None:
            # Back to direct, or gone from the mesh: its session ends.
            for node_id in set(self.relay.sessions()) - relayed:
                await self.relay.remove(node_id)
                self.log.info("{peer}: relay session closed", peer=self._peer_name(node_id))
        desired = await self._enforce_filter(desired)
        if self.routing is not None and desired:
            # What it may forward is in force before the peers that would send it are.
            await self._enforce_route_filter()
        self._log_peer_changes(held, desired)
        changed = await self.wireguard.apply(desired, reassert=reassert)
        self._runtime.last_applied = desired
        if self.routing is not None and not self.filter_problem:
            await self.routing.apply()
        if changed:
            self.log.info("applied {count} peer change(s); {total} peers", count=changed, total=len(desired))
        else:
            self.log.debug("peers unchanged; {total} peers", total=len(desired))
        self._act_on(plan, probe)

    async def _enforce_filter(self, desired: dict[str, PeerConfig]) -> dict[str, PeerConfig]:
        """The access policy's filter in force before the peers it concerns
        are: where it cannot be, this node holds no peers (closed, never open)."""
        rules = self._filter_with_exit_dns()
        problem = None
        if rules is None and self.netmap.filter_unreadable:
            problem = "the server sent an access policy filter this node cannot read (see wire status: server answers)"
        elif rules is None:
            if self.firewall is not None and self._filter_state != "none":
                try:
                    await self.firewall.remove()
                except FirewallError as e:
                    # No policy: a table we cannot remove was never ours to need.
                    self.log.debug("no policy, and the firewall table could not be removed: {error}", error=e)
                self._filter_state = "none"
        elif self.firewall is None:
            problem = "the mesh has an access policy, and this node has no packet filter to enforce it"
        else:
            # Each held peer may probe from its mesh addresses, IPv4 and IPv6.
            by_key = {p.wg_public_key: mesh_addresses(p) for p in self.netmap.peers.values()}
            probe_sources = [address for key in desired if key in by_key for address in by_key[key]]
            try:
                await self.firewall.apply(self.resolved_filter(rules), probe_sources)
                self._filter_state = "applied"
            except (FirewallError, InvalidFirewallConfig) as e:
                problem = f"the access policy's packet filter cannot be put in force: {e}"
        if problem != self.filter_problem:
            if problem:
                self.log.error("{problem}; holding no peers until it can", problem=problem)
            else:
                self.log.info("the access policy's packet filter is in force")
            self.filter_problem = problem
        return {} if problem else desired

    def _filter_with_exit_dns(self) -> tuple[FilterRule, ...] | None:
        """The policy's filter for this node, and, on an exit node, its mesh
        DNS open to those the policy lets use the exit (the same tuple while
        neither changes, so the resolved filter stays cached)."""
        rules, forwarding = self.netmap.filter, self.netmap.route_filter
        if rules is None:
            return None
        if self.routing is None or not self.routing.offers_exit():
            forwarding = None
        if self._exit_dns is None or self._exit_dns[0] is not rules or self._exit_dns[1] is not forwarding:
            self._exit_dns = (rules, forwarding, rules + exit_dns_rules(forwarding))
        return self._exit_dns[2]

    async def _enforce_route_filter(self) -> None:
        """The policy's forwarding rules, their peers resolved from the netmap, to the router."""
        assert self.routing is not None
        rules = self.netmap.route_filter
        if self.netmap.route_filter_unreadable:
            await self.routing.set_forwarding(
                None, "the server sent forwarding rules this node cannot read (see wire status: server answers)"
            )
            return
        if rules is None and self.netmap.filter is not None:
            # A policy is in force here, and no forwarding rules came with it:
            # nothing is forwarded (never everything).
            await self.routing.set_forwarding((), "an access policy is in force and the server sent no forwarding rules")
            return
        if rules is None:
            await self.routing.set_forwarding(None)
            return
        peers = self.netmap.peers
        if self._route_resolved is None or self._route_resolved[0] is not rules or self._route_resolved[1] is not peers:
            resolved = resolve_forward_peers(rules, ((p.node_name, p.tags, mesh_addresses(p)) for p in peers.values()))
            self._route_resolved = (rules, peers, resolved)
        await self.routing.set_forwarding(self._route_resolved[2])

    def resolved_filter(self, rules: tuple[FilterRule, ...]) -> tuple[FilterRule, ...]:
        """The filter with the peers it names as addresses, from the netmap held.
        The netmap's peer dict is replaced on every change, so the same dict and
        rules as last time mean the same answer (a run a second at 10,000 peers
        must not resolve them all again)."""
        peers = self.netmap.peers
        if self._resolved is None or self._resolved[0] is not rules or self._resolved[1] is not peers:
            resolved = resolve_peers(rules, ((p.node_name, p.tags, mesh_addresses(p)) for p in peers.values()))
            self._resolved = (rules, peers, resolved)
        return self._resolved[2]

    async def firewall_off(self) -> None:
        """``wire down``: the node's filter table goes with its interface."""
        if self.firewall is not None:
            try:
                await self.firewall.remove()
            except FirewallError as e:
                self.log.warn("could not remove the firewall table: {error}", error=e)
        self._filter_state = "none"

    def _peer_config(
        self, peer: Peer, endpoint: str | None, keepalive: int, configs: dict, subnet: IPNetwork | None,
        routed: tuple[str, ...] = (), subnet6: IPv6Network | None = None,
    ) -> PeerConfig | None:
        """The peer's PeerConfig, the one from the last run if nothing changed:
        checking one costs microseconds, and a run every second at 10,000
        peers must not spend its time checking what it checked before.

        None for an AllowedIPs entry outside the mesh subnet: the netmap
        never holds such a peer (wire.node.trust), and this makes sure. Its
        IPv6 mesh address outside the IPv6 subnet is left out (IPv4 kept).
        """
        host = "/128" if ":" in peer.vpn_ip else "/32"
        mine = (f"{peer.vpn_ip}{host}",) + ((f"{peer.vpn_ip6}/128",) if peer.vpn_ip6 else ())
        # Its mesh addresses first (checked below), then what it routes (wire.node.routing planned it).
        inputs = ((*mine, *routed), endpoint, keepalive, subnet, subnet6)
        cached = self._runtime.configs.get(peer.wg_public_key)
        if cached is not None and cached[0] == inputs:
            config = cached[1]
        else:
            mesh = Mesh(subnet, subnet6=subnet6)
            astray = [entry for entry in mine if not mesh.holds(entry)]
            if astray and peer.wg_public_key not in self._runtime.refused:
                self._runtime.refused.add(peer.wg_public_key)
                self.log.error(
                    "{peer}: AllowedIPs {address} is outside the mesh subnet {subnet}; not given to WireGuard",
                    peer=peer.node_name or peer.node_id,
                    address=", ".join(astray),
                    subnet=" and ".join(str(s) for s in (subnet, subnet6) if s is not None),
                )
            if mine[0] in astray:
                return None
            allowed = tuple(entry for entry in inputs[0] if entry not in astray)
            config = PeerConfig(public_key=peer.wg_public_key, allowed_ips=allowed, endpoint=endpoint, persistent_keepalive=keepalive)
        configs[peer.wg_public_key] = (inputs, config)
        return config

    @staticmethod
    def _roamed_astray(mode: PathMode, actual: str | None, desired: str | None, via_relay: Callable[[str | None], bool]) -> bool:
        """WireGuard follows the source of the latest packet it authenticated
        (roaming). On a direct path that is how a peer whose NAT mapping
        moved is followed, and it stays; but a relayed peer must keep its
        relay endpoint, and a direct one must not stay on the relay (a late
        relayed packet after the session closed, or the server's kernel
        still forwarding it: a retry of direct would then look proven)."""
        if not actual or not desired or actual == desired:
            return False
        return mode is PathMode.RELAY or via_relay(actual)

    def _via_relay(self) -> Callable[[str | None], bool]:
        """Whether WireGuard's endpoint for a peer is the relay's: a shim, or
        the server's kernel port for one of our sessions (live or lately
        ended); gathered once per reconcile, asked once per peer."""
        kernel = self.relay.kernel_endpoints() if self.relay is not None else set()
        return lambda endpoint: is_shim_endpoint(endpoint) or endpoint in kernel

    def _act_on(self, plan: Plan, probe: PathProbe | None) -> None:
        """Send the plan's probes (after the apply: over the new endpoints) and reports."""
        if any(path.phase in (Phase.SILENT, Phase.FAILED) and path.proven for path in plan.paths.values()):
            self._on_silence()
        if probe is not None:
            probe.forget({peer.vpn_ip for peer in self.netmap.peers.values()})
            for node_id in plan.probes:
                probe.send(self.netmap.peers[node_id].vpn_ip)
        for node_id, failure in plan.reports:
            self.paths.reported(node_id, accepted=False, now=self.clock.seconds())  # until answered
            self._track(self._report(node_id, failure))

    async def _report(self, node_id: str, failure: PathFailure) -> None:
        """Tell the server this pair's direct path failed; take its word on the pair."""
        name = self._peer_name(node_id)
        try:
            answer = await self.client.report_path(self._node_id, self._public_key, node_id, failure)
        except CancelledError:
            raise
        except ServerError as e:
            if e.status == 404 and e.message.startswith("no such path"):
                # A server without POST /path (the seed's): this side decides alone.
                self.paths.decide_locally(node_id, failure, self.clock.seconds())
                self.log.info("{peer}: {failure}; the server gives no word on paths, so this node relays", peer=name, failure=failure)
                self._reconcile_soon()
                return
            self.log.warn("{peer}: reporting {failure} failed: {error}", peer=name, failure=failure, error=e)
            return
        except ServerUnreachable as e:
            self.log.debug("{peer}: reporting {failure} failed: {error}", peer=name, failure=failure, error=e)
            return
        except Exception:
            self.log.failure("{peer}: reporting {what} failed", peer=name, what=failure)
            return
        self.paths.reported(node_id, answer.accepted, self.clock.seconds())
        self.netmap.take_reported(answer.path)
        self.log.info(
            "{peer}: reported {failure}; the pair's path: {mode}{reason}",
            peer=name,
            failure=failure,
            mode=answer.path.mode or "by the rule",
            reason=f" ({answer.path.reason})" if answer.path.reason else "",
        )
        self._reconcile_soon()

    # -- relay sessions --------------------------------------------------------

    async def relay_sessions_lost(self) -> None:
        """A new server run has forgotten every relay session: ask again."""
        if self.relay is not None:
            await self.relay.reset()

    async def relay_moved(self, server_host: str, relay_port: int) -> None:
        """The node moved to another replica: its relay sessions are asked
        for there, and frames go to its relay port."""
        if self.relay is not None:
            await self.relay.move_to(server_host, relay_port)

    async def relays_live(self, relays) -> None:
        """The live replicas' relays, as the server's answer lists them (None:
        it lists none, one server alone). When they change, a session whose
        relay left the list is dropped (the next reconcile asks for a new
        one, at once), and every other is asked for again keeping our side
        (its pair may be homed at another replica now): a pair whose relay
        died is relayed again within seconds, not after ALIVE_WITHIN."""
        if relays is None or self.relay is None:
            return
        live = set()
        for relay in relays:
            if relay.host in self.relay.relay_hosts:
                live.add((relay.host, relay.port))
            else:
                self.log.warn("the server lists a relay at {host}, which is none of this node's servers: ignored", host=relay.host)
        if live == self._runtime.relays_live:
            return
        before, self._runtime.relays_live = self._runtime.relays_live, live
        if before is None:
            return  # the first list: the sessions held were granted against it
        for peer_node_id, session in self.relay.sessions().items():
            if (session.relay_host, session.relay[1]) not in live:
                await self.relay.remove(peer_node_id)
                self.log.info(
                    "{peer}: its relay {host} is gone; asking for a session at a live one",
                    peer=self._peer_name(peer_node_id), host=session.relay_replica or session.relay_host,
                )
            else:
                self._refresh_grant(peer_node_id)
        self._reconcile_soon()

    async def stop(self) -> None:
        """End every relay session: the node stops or leaves."""
        if self.relay is not None:
            await self.relay.stop()

    def _relay_endpoint(self, peer: Peer) -> str | None:
        """The endpoint of the peer's live relay session (its loopback
        socket, or the server's port for our side on the kernel path), or None
        while its grant is fetched (asked for here, in the background: at
        most RELAY_GRANTS_AT_ONCE at a time, one per peer)."""
        assert self.relay is not None
        session = self.relay.sessions().get(peer.node_id)
        if session is not None and not self.relay.is_dead(peer.node_id):
            return session.wg_endpoint
        if peer.node_id not in self._runtime.grants_pending:
            fetching = self._track(self._fetch_grant(peer))
            if not fetching.called:
                self._runtime.grants_pending[peer.node_id] = fetching
                return None
            # Answered at once (a grant in memory): use it now.
            session = self.relay.sessions().get(peer.node_id)
            if session is not None and not self.relay.is_dead(peer.node_id):
                return session.wg_endpoint
        return None

    async def _fetch_grant(self, peer: Peer) -> None:
        name = peer.node_name or peer.node_id
        try:
            await self._runtime.grant_slots.acquire()
            try:
                grant = await self.client.relay(
                    self._node_id, self._public_key, peer.node_id, fastpath=getattr(self.relay, "fastpath", False),
                    direct=getattr(self.relay, "direct", False),
                )
            finally:
                self._runtime.grant_slots.release()
            if peer.node_id not in self._runtime.relay_wanted or self._stopping() or self.relay is None:
                return  # went direct (or left) meanwhile
            endpoint = await self.relay.add(grant)
        except CancelledError:
            raise
        except BadAnswer as e:  # before ServerError, which it is
            self._grant_failed(peer.node_id, "bad relay grant for {peer}: {error}", peer=name, error=e.error)
            return
        except RelayHostRefused as e:
            self._grant_failed(peer.node_id, "relay grant for {peer} refused: {error}", peer=name, error=e)
            return
        except (ServerUnreachable, ServerError) as e:
            self._grant_failed(peer.node_id, "no relay session for {peer} yet: {error}", peer=name, error=e)
            return
        except Exception:
            self.log.failure("starting the relay session for {peer} failed", peer=name)
            return
        finally:
            self._runtime.grants_pending.pop(peer.node_id, None)
        self._runtime.grant_failing.discard(peer.node_id)
        self.log.info("{peer}: relayed through the server, WireGuard endpoint {endpoint}", peer=name, endpoint=endpoint)
        self._reconcile_soon()

    def _refresh_grant(self, peer_node_id: str) -> None:
        """The server says the peer's side of our relay session changed (it
        restarted), or the live relays changed: ask for it, keeping our side,
        so the session can go on the server's kernel fast path again (or
        learn that its pair is homed elsewhere now). The Python path carries it meanwhile."""
        if self.relay is None or peer_node_id in self._runtime.grants_pending:
            return
        session = self.relay.sessions().get(peer_node_id)
        if session is None:
            return
        self._track(self._refresh(peer_node_id, session.token))

    async def _refresh(self, peer_node_id: str, held: bytes) -> None:
        try:
            grant = await self.client.relay(
                self._node_id, self._public_key, peer_node_id, fastpath=getattr(self.relay, "fastpath", False), held=held,
                direct=getattr(self.relay, "direct", False),
            )
            if self.relay is not None and not self._stopping():
                await self.relay.add(grant)
                self._reconcile_soon()  # our side was gone after all: a new endpoint
        except CancelledError:
            raise
        except Exception as e:
            self.log.debug("the peer's relay side for {peer} not refreshed: {error}", peer=self._peer_name(peer_node_id), error=e)

    def _grant_failed(self, node_id: str, message: str, **fields) -> None:
        # Said once; the retries (one at each reconcile) are routine.
        log = self.log.debug if node_id in self._runtime.grant_failing else self.log.warn
        log(message, **fields)
        self._runtime.grant_failing.add(node_id)

    # -- the log ---------------------------------------------------------------

    def _peer_name(self, node_id: str) -> str:
        """A peer's name for the log (a gone peer's from the last reconcile)."""
        peer = self.netmap.peers.get(node_id)
        return (peer.node_name if peer is not None else self._runtime.names_by_id.get(node_id)) or node_id

    def _log_path_changes(self, paths: dict[str, PeerPath]) -> None:
        """A peer's new path (with why), and a path proven or failed."""
        for node_id, path in paths.items():
            seen = (path.mode, path.reason, path.phase)
            before = self._runtime.path_seen.get(node_id)
            if seen == before:
                continue
            self._runtime.path_seen[node_id] = seen
            name = self._peer_name(node_id)
            if before is None or before[:2] != seen[:2]:
                self.log.info("{peer}: {summary}", peer=name, summary=path.summary)
            elif path.phase is Phase.WORKING and before[2] is not Phase.SILENT:
                self.log.info("{peer}: the {mode} path works", peer=name, mode=path.mode)
            elif path.phase is Phase.FAILED:
                self.log.info("{peer}: the {mode} path failed ({failure})", peer=name, mode=path.mode, failure=path.report)
        for node_id in set(self._runtime.path_seen) - set(paths):
            del self._runtime.path_seen[node_id]

    def _log_peer_changes(self, held: dict[str, PeerStatus | PeerConfig], desired: dict[str, PeerConfig]) -> None:
        """Each added, moved or removed peer, by name (keys mean nothing to a reader)."""
        names = {peer.wg_public_key: (peer.node_name or peer.node_id) for peer in self.netmap.peers.values()}
        for key, config in desired.items():
            before = held.get(key)
            if before is None:
                self.log.info(
                    "{peer}: added ({address}, endpoint {endpoint})",
                    peer=names[key],
                    address=", ".join(config.allowed_ips),
                    endpoint=config.endpoint or "none yet",
                )
            elif before.endpoint != config.endpoint and config.endpoint is not None:
                self.log.info(
                    "{peer}: endpoint {old} -> {new}", peer=names[key], old=before.endpoint, new=config.endpoint
                )
        for key in set(held) - set(desired):
            self.log.info("{peer}: removed", peer=self._runtime.names_by_key.get(key, "a peer no longer in the netmap"))
        self._runtime.names_by_key = names
        self._runtime.names_by_id = {p.node_id: p.node_name for p in self.netmap.peers.values() if p.node_name}
