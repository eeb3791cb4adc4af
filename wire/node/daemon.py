"""The node daemon: the only owner of this node's life and of ``config.json``.

Its life, as explicit phases (:class:`Phase`), each announced as an event
that ``wire up`` waits on through the control socket:

    starting → probing (STUN from the WireGuard port, before WireGuard
    binds it) → enrolling (a join token: with the real NAT facts, so a
    join is one netmap upsert on every peer) or registering → registered
    (the server has us and the interface is up); refused (the server said
    no: a taken name, a bad key, a join token needed) or removed (the
    admin removed the node, or revoked its credential); stopping.

The interface comes up as soon as the address is known (at once with a
saved one, so tunnels work while the server is away). Then a long-poll
loop hands each netmap change to the reconciler (:mod:`wire.node.reconciler`,
the only writer of WireGuard's peers, one ``wg`` spawn a change), a path
check asks it again every few seconds, and a heartbeat loop keeps the
registration fresh. An unreachable server never removes a peer: the loops
retry with a short capped backoff (:mod:`wire.node.backoff`).

A server with authentication counts each long-poll as the node's heartbeat;
then the heartbeat loop sends ``POST /register`` only when it has to
(:mod:`wire.node.heartbeat` decides).

The server is trusted only as far as it must be (:mod:`wire.node.trust`):
the mesh subnet is fixed at enrollment, an assignment outside it changes
nothing (with no address yet, registering is retried), every peer is
checked before the netmap holds it, and a loop body that fails is logged
while its loop goes on.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from wire.client import (
    LONGPOLL_WAIT,
    BadAnswer,
    CoordinationClient,
    NetmapAnswers,
    ServerError,
    ServerUnreachable,
)
from wire.debuglog import logger as debug_aware_logger
from wire.jointoken import JoinToken
from wire.node.backoff import Backoff
from wire.node.config import ConfigError, NodeConfig, save_config, stun_ports
from wire.node.config import validate as validate_config
from wire.node.enroll import EnrollError, forget_credential, forget_join_request, save_credential
from wire.node.failurelog import BadAnswers, FailureLog
from wire.node.firewall import Firewall
from wire.node.names import MeshNames
from wire.node.routing import NodeRouting
from wire.node.servers import FAIL_OVER_STATUSES, next_server, server_hosts, servers_of
from wire.node.settings import advertised_routes, settings_of, with_settings
from wire.node.events import EventLog
from wire.node.heartbeat import HEARTBEAT_INTERVAL, HeartbeatState
from wire.node.lan import LanAddress, numeric
from wire.node.messages import NEEDS_TOKEN, RENAME_IS_ADMINS, removed_message
from wire.node.netmap import NodeNetmap
from wire.node.paths import Me
from wire.node.probe import PathProbe
from wire.node.reconciler import Reconciler, mesh_addresses
from wire.node.peerview import peer_entries
from wire.node.relay import RelayShim
from wire.node.report import PathReporter, peer_reports
from wire.node.state import NodeState, Phase, ServerContact
from wire.node.trust import (
    SEED_SUBNET,
    Mesh,
    PeerScreen,
    Untrusted,
    assignment,
    assignment6,
    mesh_subnet,
    mesh_subnet6,
    own_address,
)
from wire.node.wireguard import IWireGuard
from wire.protocol import (
    Heartbeat,
    NatType,
    NetmapAnswer,
    ProtocolError,
    RegisterAnswer,
    Registration,
    parse_node_name,
)
from wire import __version__
from wire.protocol.report import NodeReport
from wire.stun import NatReport

# How often each peer's path is checked against WireGuard's counters (one
# `wg show` each): a dead direct path is found within about 7 s.
PATH_CHECK_INTERVAL = 1.0
# How often the NAT is probed again while WireGuard holds the port: a
# rebinding is noticed, registered and acted on by every peer within a few
# seconds. Two small datagrams each time (at 10,000 nodes, 4,000 a second
# at the server's STUN ports).
NAT_RECHECK_INTERVAL = 5.0
# A silent direct path probes the NAT at once, at most this often.
NAT_RECHECK_SOONEST = 5.0
# A refusal (a taken name, a bad key) is asked again this rarely: only
# someone acting on the server can change the answer.
REFUSED_RETRY = 60.0


def nat_facts(report: NatReport) -> tuple:
    """What of a probe peers act on: a hard NAT's port is new for every
    destination, so only its address and type count."""
    port = None if report.nat_type is NatType.HARD else report.mapped.port
    return (report.nat_type, report.mapped.ip, port)


class AssignmentRefused(Exception):
    """The server took us but assigned nothing this node accepts (wire.node.trust)."""


class SettingsRefused(Exception):
    """``wire set`` that this daemon cannot carry out now; says why."""


class RenameRefused(Exception):
    """``wire up --name`` that this daemon cannot carry out; says why."""


# Pairs that fell back from IPv6 to IPv4, with none working over IPv6, before
# this node stops offering its IPv6 address (wire.node.daemon._give_up_broken_ipv6).
IPV6_GIVE_UP_AFTER = 3


class NodeDaemon(Service):
    log = debug_aware_logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        config_dir: str,
        config: NodeConfig,
        keys: tuple[str, str],
        wireguard: IWireGuard,
        client: CoordinationClient,
        probe_nat: Callable[[], Awaitable[NatReport]],
        recheck_nat: Callable[[], Awaitable[NatReport]] | None = None,
        lan_ip: Callable[[], str] | None = None,
        public_ip6: Callable[[], str] | None = None,
        relay: RelayShim | None = None,
        start_probe: Callable[[str, str], PathProbe] | None = None,
        join_token: JoinToken | None = None,
        join_pending: bool = False,
        firewall: Firewall | None = None,
        names: MeshNames | None = None,
        routing_for: Callable[[Callable[[], NodeConfig]], NodeRouting] | None = None,
    ):
        self.clock = clock
        # The mesh's DNS on this node (wire.node.names); None: not served here.
        self.names = names
        self.config_dir = config_dir
        # Until the server has taken us (join_pending), this config is only
        # what was asked for: config.json is written once it is true.
        self.config = config
        self._join_token = join_token
        self._join_pending = join_pending or join_token is not None
        self._private_key, self.public_key = keys
        self.wireguard = wireguard
        self.client = client
        self._probe_nat = probe_nat
        # The same probe while WireGuard holds the port (None: not here).
        self._recheck_nat = recheck_nat
        self._nat_checked_at = float("-inf")
        self._poll: Deferred | None = None  # the netmap stream's next answer, awaited
        self._answers: NetmapAnswers | None = None  # the netmap stream open now
        self._poll_restarting = False
        # Never waits: the server's name is resolved in the background.
        self._lan_ip = lan_ip or LanAddress(clock, config.server_url)
        # This host's IPv6 underlay address, asked of the kernel at each use ("": none).
        self._detect_ipv6 = public_ip6 or (lambda: "")
        # The IPv6 address this node stopped offering, as IPv6 reached no peer from it.
        self._ipv6_given_up: str | None = None
        # -- the node's state, all of it -------------------------------------
        self.state = NodeState()
        self.events = EventLog(clock)
        # Loop failures, told once per cause (and shown by the control API).
        self.failures = FailureLog(self.log, clock)
        self.bad_answers = BadAnswers()
        self.contact = ServerContact()
        self.nat: NatReport | None = None
        self.config = self._trusted_saved(config)
        # Every peer is checked against the mesh before it is held.
        self.netmap = NodeNetmap(config.node_id, PeerScreen(self._mesh))
        # Whether the long-poll carries the heartbeat, and what decides it.
        self.heartbeat = HeartbeatState()
        # -- machinery --------------------------------------------------------
        self._started: Deferred | None = None
        # LoopingCall waits on a Deferred, not on a coroutine: wrap the bodies.
        # A raising body would stop its loop for good: each is guarded.
        self._heartbeat_loop = LoopingCall(lambda: self._track(self._guarded(self._heartbeat_once, "heartbeat")))
        self._heartbeat_loop.clock = clock
        self._sync = LoopingCall(lambda: self._track(self._guarded(self._sync_once, "netmap sync", back_off=True)))
        self._sync.clock = clock
        self._paths_loop = LoopingCall(lambda: self._track(self._guarded(self._paths_once, "path check")))
        self._paths_loop.clock = clock
        self._nat_loop = LoopingCall(lambda: self._track(self._guarded(self._recheck_nat_once, "NAT check")))
        self._nat_loop.clock = clock
        # How this node reaches its peers, told to the server for the admin's view of the mesh.
        self.reporter = PathReporter(clock, self._path_report, lambda report: self._track(self.client.report(report)))
        self._inflight: set[Deferred] = set()
        # The only writer of WireGuard's peers (the interface itself is ours).
        self.reconciler = Reconciler(
            clock=clock,
            wireguard=wireguard,
            netmap=self.netmap,
            client=client,
            node_id=config.node_id,
            public_key=self.public_key,
            me=self.me,
            track=self._track,
            interface_up=lambda: self.interface_ready,
            stopping=lambda: self._stopping,
            relay=relay,
            probe=lambda: self._probe,
            on_silence=self._nat_may_have_moved,
            firewall=firewall,
            # Routes beyond the mesh follow this daemon's settings as they change.
            routing=routing_for(lambda: self.config) if routing_for is not None else None,
        )
        self._start_probe = start_probe
        self._probe: PathProbe | None = None
        self._probe_address = ""
        # The IPv4 address and prefix the interface was given (kept when the server moves it).
        self._interface_addresses: tuple[str, int] | None = None
        self._sync_backoff = Backoff()
        self._servers_tried = 0  # replicas moved to since the last answer (wire.node.servers)
        # Called with the config `wire set --proxy` asks for: its proxy is used
        # from then on (wire.node.tap rebuilds the client), or ConfigError says why not.
        self.on_proxy_changed: Callable[[NodeConfig], None] | None = None
        self._registered_waiters: list[Deferred] = []

    # -- state ----------------------------------------------------------------

    @property
    def interface_ready(self) -> bool:
        return self.state.interface_up

    @property
    def _stopping(self) -> bool:
        return self.state.phase is Phase.STOPPING

    @property
    def _out_of_the_mesh(self) -> bool:
        return self.state.phase in (Phase.STOPPING, Phase.REMOVED)

    def me(self) -> Me:
        """This node's facts as it knows them (the planner prefers the server's view, once the netmap has it)."""
        nat_type = self.nat.nat_type if self.nat else NatType(self.config.nat_type or NatType.UNKNOWN)
        return Me(
            self.config.node_name, self.contact.public_ip, nat_type, self._lan_ip() or "", self.config.node_id,
            public_ip6=self._public_ip6(),
        )

    def _mesh(self) -> Mesh:
        """What peers are checked against: the mesh fixed at enrollment (or the seed's) and our own facts."""
        config = self.config
        subnet6 = mesh_subnet6(config.vpn_subnet6) if config.vpn_subnet6 else None
        return Mesh(
            mesh_subnet(config.vpn_subnet or SEED_SUBNET), config.vpn_ip, self.public_key, config.max_peers,
            subnet6=subnet6, own_ip6=config.vpn_ip6,
        )

    def _avoid(self) -> tuple[str, ...]:
        """Addresses the mesh must never hold: our LAN address, the servers'."""
        servers = (numeric(host) or "" for host in server_hosts(self.config))
        return (self._lan_ip() or "", *servers)

    def _trusted_saved(self, config: NodeConfig) -> NodeConfig:
        """The config as given, unless its address fails the trust checks
        (it was never validated, or saved by an older node): then the server
        assigns one afresh and no bad address reaches the interface."""
        try:
            subnet = mesh_subnet(config.vpn_subnet or SEED_SUBNET)
            if config.vpn_ip:
                own_address(config.vpn_ip, subnet)
        except Untrusted as e:
            self.log.error("the saved assignment is refused ({error}); asking the server for a new one", error=e)
            return replace(config, vpn_ip="", vpn_subnet="", vpn_ip6="", vpn_subnet6="")
        try:
            if config.vpn_subnet6:
                subnet6 = mesh_subnet6(config.vpn_subnet6)
                if config.vpn_ip6:
                    own_address(config.vpn_ip6, subnet6, "vpn_ip6")
            elif config.vpn_ip6:
                raise Untrusted("vpn_ip6", "an IPv6 mesh address without the mesh's IPv6 subnet")
        except Untrusted as e:
            self.log.error("the saved IPv6 assignment is refused ({error}); asking the server for a new one", error=e)
            return replace(config, vpn_ip6="", vpn_subnet6="")
        return config

    def _enter(self, phase: Phase, message: str, reason: str = "") -> None:
        """Move to ``phase`` and announce it (once: a phase repeated is no news)."""
        if self.state.phase is phase and self.state.reason == reason:
            return
        self.state.phase = phase
        self.state.reason = reason
        self.events.emit(phase.value, message)

    def _settle(self) -> None:
        """Registered, once the server has us and the interface is up."""
        if self.contact.registered and self.state.interface_up and not self._out_of_the_mesh:
            self._enter(
                Phase.REGISTERED, f"registered as {self.config.node_name} with {self.config.vpn_ip} at {self.config.server_url}"
            )
            waiters, self._registered_waiters = self._registered_waiters, []
            for d in waiters:
                d.callback(None)

    def when_registered(self) -> Deferred:
        d: Deferred = Deferred()
        if self.state.phase is Phase.REGISTERED:
            d.callback(None)
        else:
            self._registered_waiters.append(d)
        return d

    # -- life -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._started = Deferred.fromCoroutine(self._start())
        self._started.addErrback(self._start_failed)

    def _start_failed(self, failure) -> None:
        if not failure.check(CancelledError):
            self.log.failure("node daemon failed to start", failure)
            self.events.emit("error", f"the daemon failed to start: {failure.getErrorMessage()}")

    async def _start(self) -> None:
        self._enter(Phase.PROBING, f"probing NAT from UDP port {self.config.listen_port}")
        self.nat = await self._probe_nat_safely()
        if self.config.vpn_ip:
            # Known address: bring tunnels up before the server is even asked.
            await self._bring_up_interface()
        if not await self._join() or self._out_of_the_mesh:
            return
        if not self.state.interface_up:
            await self._bring_up_interface()
        if self._out_of_the_mesh:
            return
        if self.reconciler.routing is not None:
            await self.reconciler.routing.start()
        if self.names is not None:
            # Before any netmap: undo what a crashed run left in the OS resolver.
            try:
                await self.names.prepare()
            except Exception as e:
                self.log.warn("mesh DNS: the OS resolver could not be prepared: {error}", error=e)
        self._heartbeat_loop.start(HEARTBEAT_INTERVAL, now=False).addErrback(self._loop_died, "heartbeat")
        self._sync.start(0, now=True).addErrback(self._loop_died, "netmap sync")
        self._paths_loop.start(PATH_CHECK_INTERVAL, now=False).addErrback(self._loop_died, "path check")
        if self._recheck_nat is not None:
            self._nat_loop.start(NAT_RECHECK_INTERVAL, now=False).addErrback(self._loop_died, "NAT check")
        self.reporter.start()
        # Last: whoever waits for "registered" may stop us at once.
        self._settle()

    async def _join(self) -> bool:
        """Register (or, with a join token and no usable credential, enroll)
        until the server takes us; False when it never will or we stop."""
        token = self._join_token
        if token is not None and not self.client.credential:
            return await self._enroll_until_done(token)
        self._enter(Phase.REGISTERING, f"registering with {self.config.server_url}")
        if await self._register_until_done(credential_may_fail=token is not None):
            if token is not None:
                self.events.emit("enrolled", "already enrolled with this server: the join token was not needed")
            return True
        if token is not None and not self._out_of_the_mesh:
            # Our credential is unknown there (the node was removed): the token joins us again.
            forget_credential(self.config_dir)
            self.client.use_credential(None)
            return await self._enroll_until_done(token)
        return False

    def _track(self, coroutine) -> Deferred:
        """Run a loop body so that stopping can cancel it (an open long-poll)."""
        d = Deferred.fromCoroutine(coroutine)
        self._inflight.add(d)
        d.addBoth(self._untrack, d)
        return d

    async def _guarded(self, body: Callable[[], Awaitable[None]], what: str, back_off: bool = False) -> None:
        """Run one loop body; a failure is logged and the loop goes on."""
        try:
            await body()
        except CancelledError:
            raise
        except Exception:
            if self._out_of_the_mesh:
                return
            self.failures.failed(what)
            if back_off:
                await self._sleep_backoff()
        else:
            self.failures.worked(what)

    def _untrack(self, result, d: Deferred):
        self._inflight.discard(d)
        if self._out_of_the_mesh and isinstance(result, Failure) and result.check(CancelledError):
            return None
        return result

    def _loop_died(self, failure, what: str) -> None:
        if not self._out_of_the_mesh:
            self.log.failure("{what} loop stopped", failure, what=what)

    def _stop_loops(self) -> None:
        self._enter(Phase.STOPPING, "stopping")
        self._halt()

    def _halt(self) -> None:
        if self._started is not None and not self._started.called:
            self._started.cancel()
        for loop in (self._heartbeat_loop, self._sync, self._paths_loop, self._nat_loop):
            if loop.running:
                loop.stop()
        self.reporter.stop()
        for d in list(self._inflight):
            d.cancel()
        self._stop_probe()

    def stopService(self):
        self._stop_loops()
        # The interface stays: a restarted daemon adopts it, tunnels unbroken.
        self.wireguard.detach()
        super().stopService()
        return Deferred.fromCoroutine(self._stopped())

    async def _stopped(self) -> None:
        await self.reconciler.stop()
        # No daemon, no resolver on the VPN address: the machine's resolver as it was.
        await self._names_off()

    async def _names_off(self) -> None:
        if self.names is not None:
            try:
                await self.names.stop()
            except Exception as e:
                self.log.warn("mesh DNS did not stop cleanly: {error}", error=e)

    async def _probe_nat_safely(self) -> NatReport | None:
        try:
            report = await self._probe_nat()
        except Exception as e:  # any failure only means "NAT unknown"
            self.log.warn("STUN probe failed ({error}); NAT type unknown", error=e)
            self.events.emit("nat", f"STUN probe failed ({e}); NAT type unknown", nat_type="unknown")
            return None
        self.log.info(
            "STUN: mapped {ip}:{port}, NAT {nat_type}",
            ip=report.mapped.ip,
            port=report.mapped.port,
            nat_type=report.nat_type,
        )
        self.events.emit(
            "nat", f"NAT {report.nat_type}, mapped {report.mapped.ip}:{report.mapped.port}", nat_type=report.nat_type
        )
        return report

    async def _bring_up_interface(self, address: str | None = None, prefixlen: int | None = None) -> None:
        """Up with our addresses; ``address``/``prefixlen``: the IPv4 one the interface
        keeps (a moved IPv4 address waits for a restart, a new IPv6 one does not)."""
        config = self.config
        if address is None or prefixlen is None:
            address = config.vpn_ip
            prefixlen = int(config.vpn_subnet.split("/")[1]) if "/" in config.vpn_subnet else 16
        # The IPv6 mesh address beside it, when the mesh has one ("": IPv4 only).
        prefixlen6 = int(config.vpn_subnet6.split("/")[1]) if config.vpn_ip6 and "/" in config.vpn_subnet6 else 0
        address6 = config.vpn_ip6 if prefixlen6 else ""
        await self.wireguard.up(
            self._private_key, config.listen_port, address, prefixlen, address6=address6, prefixlen6=prefixlen6
        )
        self._interface_addresses = (address, prefixlen)
        self.state.interface_up = True
        shown = f"{address} and {address6}" if address6 else address
        self.log.info(
            "interface {name} up ({backend}) with {address}",
            name=self.wireguard.name,
            backend=self.wireguard.backend,
            address=shown,
        )
        self.events.emit(
            "interface", f"interface {self.wireguard.name} up ({self.wireguard.backend}) with {shown}"
        )
        self._listen_for_probes()

    async def _readdress6(self) -> None:
        """The server gave an IPv6 address (or another, or none) while the interface is up: at once."""
        if self.interface_ready and self._interface_addresses is not None:
            await self._bring_up_interface(*self._interface_addresses)

    def _listen_for_probes(self) -> None:
        """The path probe on our VPN address (again, if the address changed)."""
        if self._start_probe is None:
            return
        if self._probe is not None and self._probe_address == self.config.vpn_ip:
            return
        self._stop_probe()
        try:
            self._probe = self._start_probe(self.config.vpn_ip, self.config.vpn_subnet or f"{self.config.vpn_ip}/32")
        except Exception as e:
            self.log.warn("path probe not started ({error}): paths are proven by WireGuard's own traffic only", error=e)
            return
        self._probe_address = self.config.vpn_ip

    def _stop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and probe.transport is not None:
            probe.transport.stopListening()

    async def restore_interface(self, reason: str) -> None:
        """WireGuard went away under us (wireguard-go died): rebuild it as it was."""
        if self._stopping:
            return
        self.log.warn("interface {name} was lost ({reason}); restoring it", name=self.wireguard.name, reason=reason)
        await self._bring_up_interface()
        await self.reconciler.reconcile()

    # -- enrollment and registration ------------------------------------------

    def registration_body(self) -> Registration:
        nat_port, nat_type = self.config.listen_port, NatType.UNKNOWN
        if self.nat is not None:
            nat_port, nat_type = self.nat.mapped.port, self.nat.nat_type
        elif self.config.nat_port:
            # No probe this time (the interface already held the port): the last one's.
            nat_port, nat_type = self.config.nat_port, NatType(self.config.nat_type or NatType.UNKNOWN)
        return Registration(
            node_id=self.config.node_id,
            node_name=self.config.node_name,
            wg_public_key=self.public_key,
            port=self.config.listen_port,
            nat_port=nat_port,
            lan_ip=self._lan_ip() or None,
            requested_vpn_ip=self.config.vpn_ip or None,
            nat_type=nat_type,
            advertise_routes=advertised_routes(self.config),
            public_ip6=self._public_ip6() or None,
        )

    async def _enroll_until_done(self, token: JoinToken) -> bool:
        """Enroll with the join token, with the NAT facts just probed."""
        self._enter(Phase.ENROLLING, f"enrolling with {token.server_url} as {self.config.node_name}")
        backoff = Backoff()
        while not self._out_of_the_mesh:
            body = self.registration_body()
            try:
                answer = await self.client.enroll(body, token.secret)
                save_credential(self.config_dir, answer.credential or "")
            except ServerError as e:
                if e.status == 429 or e.status >= 500:  # busy, or cannot write: it will pass
                    self.log.warn("enrollment failed: {error}", error=e)
                    delay = max(backoff.next(), e.retry_after or 0.0)
                elif e.status == 401:
                    reason = f"the server refused the join token: {e.message}; get a new one with 'wire admin keys create' on the server"
                    self._refused(reason, e.status)
                    delay = REFUSED_RETRY
                else:
                    self._refused(f"the server refused to enroll this node: {e.message}", e.status)
                    delay = REFUSED_RETRY
            except ServerUnreachable as e:
                if e.tls_refused:
                    self._refused(str(e), 495)
                    delay = REFUSED_RETRY
                else:
                    self.log.warn("enrollment failed: {error}", error=e)
                    self._unreachable(str(e))
                    delay = backoff.next()
            except EnrollError as e:
                self._refused(str(e), 0)
                delay = REFUSED_RETRY
            else:
                self.client.use_credential(answer.credential)
                self._join_token = None  # it may be one-time: used up
                self.events.emit("enrolled", f"enrolled with {token.server_url}")
                try:
                    self._registered(body, answer)
                except AssignmentRefused as e:
                    # Enrolled (the credential is ours): register until it assigns a sane address.
                    self.log.warn("enrollment: {error}; registering until it assigns one", error=e)
                    self._enter(Phase.REGISTERING, f"registering with {self.config.server_url}")
                    return await self._register_until_done()
                return True
            await deferLater(self.clock, delay, lambda: None)
        return False

    async def register(self) -> RegisterAnswer:
        body = self.registration_body()
        self.heartbeat.must_register()
        asked = self.config.server_url
        try:
            answer = await self.client.register(body)
        except ServerError as e:
            self._note_bad_answer("registration", e)
            if e.status != 429:  # asked to slow down: the server is there
                self._lost_contact(str(e), e.status, asked)
            raise
        except ServerUnreachable as e:
            # 495 (as nginx names it): a certificate we refuse; retrying will not help.
            self._lost_contact(str(e), 495 if e.tls_refused else 0, asked)
            raise
        self._registered(body, answer)
        return answer

    def _registered(self, body: Registration, answer: RegisterAnswer) -> None:
        """The server took ``body``: remember it and what the server assigned.

        An assignment that fails the trust checks changes nothing; with no
        address of our own yet it is :class:`AssignmentRefused` (retried)."""
        assigned = self._checked_assignment(answer)
        if assigned is None and not self.config.vpn_ip:
            raise AssignmentRefused("the server assigned no address this node accepts")
        self._made_contact()
        longpoll_heartbeat = answer.heartbeat is Heartbeat.LONGPOLL
        if longpoll_heartbeat != self.heartbeat.longpoll:
            self.log.info(
                "heartbeat: {how}",
                how="the long-poll (the server counts it); POST /register only on change"
                if longpoll_heartbeat
                else f"POST /register every {HEARTBEAT_INTERVAL:.0f}s",
            )
        self.heartbeat.registered(body, self.clock.seconds(), longpoll=longpoll_heartbeat)
        self.contact.registered = True
        self.contact.public_ip = answer.your_ip
        if assigned is not None:
            self._adopt_assignment(assigned)
        if self._join_pending:
            # What was asked is done: config.json now holds it.
            save_config(self.config_dir, self.config)
            forget_join_request(self.config_dir)
            self._join_pending = False
        if self.state.phase is Phase.REFUSED:
            self._enter(Phase.REGISTERING, "the server takes this node again")
        if self._started is not None and self._started.called:
            self._settle()  # while starting, _start settles once all is up

    def _checked_assignment(self, answer: RegisterAnswer) -> NodeConfig | None:
        """The config with what the server assigned, or None (logged, naming
        the field) when it fails the checks: the mesh subnet is fixed at
        enrollment, our address must lie inside it (wire.node.trust)."""
        # A saved address without a subnet (a seed node's config) was the seed's subnet's.
        fixed = self.config.vpn_subnet or (SEED_SUBNET if self.config.vpn_ip else "")
        try:
            subnet, vpn_ip = assignment(fixed, answer.vpn_subnet, answer.vpn_ip, self._avoid())
            subnet6, vpn_ip6 = self._checked_assignment6(answer)
            updated = replace(
                self.config,
                # With authentication the server owns the name (the admin may rename).
                node_name=answer.node_name or self.config.node_name,
                vpn_ip=vpn_ip,
                vpn_subnet=subnet,
                vpn_ip6=vpn_ip6,
                vpn_subnet6=subnet6,
                nat_port=self.nat.mapped.port if self.nat else self.config.nat_port,
                nat_type=self.nat.nat_type if self.nat else self.config.nat_type,
            )
            # What the server said is checked like any config before it is saved.
            return validate_config(asdict(updated))
        except ProtocolError as e:
            self._refused_assignment(e)
            return None

    def _checked_assignment6(self, answer: RegisterAnswer) -> tuple[str, str]:
        """The IPv6 part of an assignment (vpn_subnet6, vpn_ip6), checked; one
        refused keeps what this node had, and never stops the IPv4 part."""
        try:
            return assignment6(self.config.vpn_subnet6, answer.vpn_subnet6, answer.vpn_ip6, self._avoid())
        except ProtocolError as e:
            self._refused_assignment(e)
            return self.config.vpn_subnet6, self.config.vpn_ip6

    def _refused_assignment(self, e: ProtocolError) -> None:
        self.log.warn("refusing the server's assignment ({field}): {error}", field=e.field, error=e)
        self.bad_answers.note(f"assignment: {e}", self.clock.seconds())
        self.events.emit("untrusted", f"refused the server's assignment: {e}")

    def _adopt_assignment(self, updated: NodeConfig) -> None:
        """Keep what the server assigned, so the next start needs no server."""
        if updated.vpn_ip != self.config.vpn_ip and self.interface_ready:
            self.log.warn(
                "server assigned {new} instead of {old}; the interface keeps {old} until restart",
                new=updated.vpn_ip,
                old=self.config.vpn_ip,
            )
        readdress6 = updated.vpn_ip6 != self.config.vpn_ip6 and self.interface_ready
        self._adopt(updated)
        if readdress6:
            self.log.info("IPv6 mesh address now {address}", address=updated.vpn_ip6 or "none")
            self._track(self._guarded(self._readdress6, "setting the IPv6 mesh address"))

    def _adopt(self, updated: NodeConfig) -> None:
        if updated.node_name != self.config.node_name:
            self.log.info("this node is now {new} (was {old})", new=updated.node_name, old=self.config.node_name)
            self.events.emit("renamed", f"this node is now {updated.node_name} (was {self.config.node_name})")
        if updated != self.config:
            if not self._join_pending:
                save_config(self.config_dir, updated)
            self.config = updated

    def _adopt_own_view(self, answer: NetmapAnswer) -> None:
        """The netmap's record of this node: a rename by the admin shows here."""
        for view in (*answer.upserts, *([answer.me] if answer.me else [])):
            if view.node_id == self.config.node_id:
                try:
                    name = parse_node_name(view.node_name)
                except ProtocolError:
                    return
                self._adopt(replace(self.config, node_name=name))

    async def rename(self, node_name: str) -> str:
        """``wire up --name NEW`` on a running node: register under the new name."""
        old = self.config.node_name
        if node_name == old:
            return old
        if self.client.credential:
            raise RenameRefused(RENAME_IS_ADMINS.format(old=old, new=node_name))
        self.config = replace(self.config, node_name=node_name)
        try:
            await self.register()
        except (ServerError, ServerUnreachable) as e:
            self.config = replace(self.config, node_name=old)
            raise RenameRefused(f"the server did not take the name {node_name}: {e}")
        save_config(self.config_dir, self.config)
        self.events.emit("renamed", f"this node is now {node_name} (was {old})")
        return self.config.node_name

    async def change_settings(self, changes: dict) -> dict:
        """``wire set``: checked settings (wire.node.settings) in force now and kept."""
        if self._join_pending:
            raise SettingsRefused("this node has not joined yet: give the settings to wire up, or wait until it has joined")
        before = self.config
        if "exit_node" in changes:
            changes = {**changes, "exit_node_id": self._exit_node_id(changes["exit_node"])}
        wanted = with_settings(before, changes)
        if "proxy" in changes and self.on_proxy_changed is not None:
            # In use from now on, or refused before anything is saved.
            try:
                self.on_proxy_changed(wanted)
            except ConfigError as e:
                raise SettingsRefused(str(e))
        self.config = wanted
        save_config(self.config_dir, self.config)
        told = ", ".join(f"{name}={value}" for name, value in sorted(changes.items()))
        self.log.info("settings changed: {told}", told=told)
        self.events.emit("settings", f"settings changed: {told}")
        if "proxy" in changes:
            # The long-poll under way went through the old proxy: ask again.
            self._restart_poll()
        if self.names is not None and self.config.accept_dns != before.accept_dns:
            await self.names.set_accept_dns(self.config.accept_dns)
            await self._follow_names()
        if advertised_routes(self.config) != advertised_routes(before):
            # The server learns what this node offers from its registration.
            try:
                await self.register()
            except (ServerError, ServerUnreachable) as e:
                self.log.warn("the server was not told the new routes yet ({error}); the next heartbeat tells it", error=e)
                self.heartbeat.must_register()
        routing = self.reconciler.routing
        if routing is not None:
            routing.settings_changed()
            await routing.advertise()
        await self.reconciler.reconcile()
        if "exit_node" in changes:
            await self._follow_names()  # the exit's resolver answers beyond the mesh, or no longer
        return settings_of(self.config)

    def _exit_node_id(self, name: str) -> str:
        """The node id of the peer named ``name`` (pinned: a later rename moves nothing)."""
        if not name:
            return ""
        for node_id, peer in self.netmap.peers.items():
            if peer.node_name == name:
                return node_id
        raise SettingsRefused(f"no peer named {name} in this node's netmap (see: wire status)")

    async def _register_until_done(self, credential_may_fail: bool = False) -> bool:
        """Register until the server takes us: True; False when we stop or
        are removed (or, with ``credential_may_fail``, our credential is unknown)."""
        backoff = Backoff()
        while not self._out_of_the_mesh:
            try:
                await self.register()
                return True
            except ServerError as e:
                if e.status == 401 and credential_may_fail and self.client.credential:
                    return False
                if e.status in (400, 401, 403, 409):
                    self._refusal(e)
                    delay = REFUSED_RETRY
                else:
                    self.log.warn("registration failed: {error}", error=e)
                    delay = max(backoff.next(), e.retry_after or 0.0)
            except ServerUnreachable as e:
                if e.tls_refused:
                    self._refused(str(e) if self.config.server_fingerprint else f"{NEEDS_TOKEN} ({e})", 495)
                    delay = REFUSED_RETRY
                else:
                    self.log.warn("registration failed: {error}", error=e)
                    self._unreachable(str(e))
                    delay = backoff.next()
            except AssignmentRefused as e:
                self.log.warn("registration failed: {error}; asking again", error=e)
                delay = backoff.next()
            if not self._out_of_the_mesh:
                await deferLater(self.clock, delay, lambda: None)
        return False

    def _note_bad_answer(self, what: str, e: ServerError) -> None:
        """A 200 whose body the protocol refuses is a bad answer, counted for diagnose and status."""
        if isinstance(e, BadAnswer):
            self.bad_answers.note(f"{what}: {e.error}", self.clock.seconds())

    def _refusal(self, e: ServerError) -> None:
        """The server said no to a registration or a long-poll: why, and what now."""
        if e.status != 401:
            self._refused(f"the server refused this node: {e.message}", e.status)
        elif self.client.credential:
            self._removed()
        else:
            self._refused(NEEDS_TOKEN, 401)

    def _refused(self, reason: str, status: int) -> None:
        self.log.error("{reason}", reason=reason)
        self.contact.last_error = reason
        self.contact.last_status = status
        self._enter(Phase.REFUSED, reason, reason)

    def _removed(self) -> None:
        """Our credential stopped working: out of the mesh until joined again.
        Asking again would not help; the interface stays until ``wire down``."""
        reason = removed_message()
        self.log.error("{reason}", reason=reason)
        self.contact.last_error = reason
        self.contact.last_status = 401
        self._enter(Phase.REMOVED, reason, reason)
        # Next turn: this may run inside a loop body that stopping cancels.
        self.clock.callLater(0, self._halt)

    def _unreachable(self, error: str) -> None:
        """Once per outage, for ``wire up`` to show: the daemon keeps trying."""
        latest = self.events.since(self.events.last - 1)
        if latest and latest[0]["kind"] == "unreachable":
            return
        self.events.emit("unreachable", f"{error}; retrying")

    # -- the loops: the netmap long-poll, the heartbeat, the path check -------

    async def _sync_once(self) -> None:
        """One netmap stream (a long-poll's wait, every change of it on one
        response), its answers taken as they come."""
        sent_at = self.clock.seconds()
        asked = self.config.server_url
        self.heartbeat.poll_sent(sent_at)
        answers = self._answers = self.client.netmap_stream(
            self.netmap.cursor, LONGPOLL_WAIT, self.netmap.filter_digest, self.netmap.dns_digest,
            holds_route_filter=self.netmap.route_filter_digest,
        )
        try:
            while True:
                poll = self._poll = answers.next()
                try:
                    answer = await poll
                except CancelledError:
                    if not self._poll_restarting:
                        raise
                    self._poll_restarting = False
                    return  # the loop polls again at once, on a new connection
                except ServerError as e:
                    self._note_bad_answer("netmap", e)
                    self._lost_contact(str(e), e.status, asked)  # a 401 here: status views say why
                    if e.status == 401:
                        self._refusal(e)  # removed, or never let in: no tight retries
                    if e.status == 400:
                        # Our cursor makes no sense to this server: start over.
                        self.netmap.cursor = "0"
                    await self._sleep_backoff()
                    return
                except ServerUnreachable as e:
                    self._lost_contact(str(e), 0, asked)
                    await self._sleep_backoff()
                    return
                if answer is None:
                    return  # the wait ended: the loop asks again, with what we hold now
                if not await self._take_answer(answer, sent_at):
                    return
        finally:
            answers.cancel()
            self._answers = None
            self.heartbeat.poll_closed()

    async def _take_answer(self, answer: NetmapAnswer, sent_at: float) -> bool:
        """Apply one answer of the netmap stream; False: stop reading it (backing off)."""
        self.heartbeat.poll_answered(sent_at)
        was_unreachable = not self.contact.reachable
        self._made_contact()
        self._sync_backoff.reset()
        if answer.register:
            # The server sees us from a new address: only a registration
            # records our new endpoint. The next heartbeat sends one.
            self.heartbeat.must_register()
        self.log.debug(
            "long-poll answered: {upserts} upsert(s), {removals} removal(s){full}",
            upserts=len(answer.upserts),
            removals=len(answer.removals),
            full=" (a full snapshot)" if answer.full else "",
        )
        previous_epoch = self.netmap.epoch
        for problem in self.netmap.apply(answer):
            self.log.warn("netmap: {problem}", problem=problem)
            self.bad_answers.note(f"netmap: {problem}", self.clock.seconds())
        self._adopt_own_view(answer)
        # A cluster's answer lists the live relays: a session at a dead one is asked for anew at once.
        await self.reconciler.relays_live(answer.relays)
        if previous_epoch and self.netmap.epoch != previous_epoch:
            # A new server run: the next heartbeat registers, and learns
            # whether that server counts our long-polls.
            self.heartbeat.must_register()
            await self.reconciler.relay_sessions_lost()
        try:
            await self.reconciler.reconcile()
        except CancelledError:
            raise
        except Exception:
            # Told once per cause; tried again shortly.
            self.failures.failed(f"applying the netmap to {self.wireguard.name}")
            await self._sleep_backoff()
            return False
        self.failures.worked(f"applying the netmap to {self.wireguard.name}")
        await self._follow_names()
        if was_unreachable and answer.full and not self._stopping:
            # A new server run (or a long absence): make sure it knows us now.
            await self._register_until_done()
        return True

    async def _follow_names(self) -> None:
        """The mesh DNS follows the netmap (its failures never stop the mesh)."""
        if self.names is None or self._stopping:
            return
        config = self.config
        try:
            await self.names.follow(
                self.netmap.dns,
                config.vpn_ip,
                config.vpn_subnet or f"{config.vpn_ip}/32",
                config.node_name,
                ((peer.node_name, mesh_addresses(peer)) for peer in self.netmap.peers.values()),
                vpn_ip6=config.vpn_ip6,
                subnet6=config.vpn_subnet6 if config.vpn_ip6 else "",
                exit_resolver=self._exit_resolver(),
            )
        except CancelledError:
            raise
        except Exception:
            self.failures.failed("mesh DNS")
        else:
            self.failures.worked("mesh DNS")

    def _exit_resolver(self) -> str:
        """The mesh DNS of the exit node in use ("" for none): names beyond
        the mesh are asked there, through the tunnel, so the local network
        sees no DNS (its resolver may not even be reachable through the exit)."""
        routing = self.reconciler.routing
        exit_id = routing.exit_in_use() if routing is not None else None
        peer = self.netmap.peers.get(exit_id) if exit_id else None
        return peer.vpn_ip if peer is not None else ""

    async def _heartbeat_once(self) -> None:
        try:
            if not self.heartbeat_carried_by_longpoll():
                await self._register_until_done()
        except CancelledError:
            pass  # the daemon stopping: no failure
        except Exception:
            # A raising body would stop the heartbeat for good.
            self.log.failure("heartbeat failed")

    def heartbeat_carried_by_longpoll(self) -> bool:
        """Whether this heartbeat may go without ``POST /register``."""
        return self.heartbeat.carried_by_longpoll(self.clock.seconds(), self.contact.reachable, self.registration_body)

    def _public_ip6(self) -> str:
        """The IPv6 underlay address this node offers ("": none)."""
        address = self._detect_ipv6()
        return "" if address and address == self._ipv6_given_up else address

    def _give_up_broken_ipv6(self) -> None:
        """IPv6 that reaches no peer (a firewall that drops it, a broken
        route): pairs fell back to IPv4 one by one, each after a failed
        attempt. Once IPV6_GIVE_UP_AFTER of them did and none works over IPv6,
        this node stops offering it (every pair then starts on IPv4, and the
        server keeps no word for them) until its IPv6 address changes or it
        restarts: trying again would stall every pair on the broken path."""
        address = self._detect_ipv6()
        if not address or address == self._ipv6_given_up:
            return
        fell_back = sum(1 for word in self.netmap.words.values() if word.family == 4)
        if fell_back < IPV6_GIVE_UP_AFTER:
            return
        if any(p.proven and p.endpoint and p.endpoint.startswith("[") for p in self.reconciler.paths.paths.values()):
            return  # IPv6 works with some peer: the failures are theirs
        self._ipv6_given_up = address
        self.log.warn(
            "IPv6 reached none of {count} peers from {address} (each fell back to IPv4): not offering it "
            "until this host's IPv6 address changes or the daemon restarts",
            count=fell_back,
            address=address,
        )
        self.events.emit("ipv6", f"IPv6 {address} given up: it reached no peer")
        self.heartbeat.must_register()

    async def _paths_once(self) -> None:
        # A failure (WireGuard refusing a change, say) is told once per cause by _guarded.
        await self.reconciler.reconcile()
        self._give_up_broken_ipv6()
        if self.names is not None:
            # An exit may come into use at any reconcile (its server address
            # resolved, its routes applied): names beyond the mesh follow it.
            self.names.set_exit_resolver(self._exit_resolver())

    def _nat_may_have_moved(self) -> None:
        """A proven direct path went silent: probe the NAT now rather than at
        the next check (a rebinding costs seconds, not the check interval)."""
        now = self.clock.seconds()
        if self._recheck_nat is None or now - self._nat_checked_at < NAT_RECHECK_SOONEST:
            return
        self._nat_checked_at = now
        self._track(self._guarded(self._recheck_nat_once, "NAT check"))

    async def _recheck_nat_once(self) -> None:
        """Probe STUN again from WireGuard's port: a NAT that moved our
        mapping (a rebinding, a new public address, another NAT type) is
        told to the server at once, so every pair with us starts again."""
        if self._recheck_nat is None or self._out_of_the_mesh:
            return
        self._nat_checked_at = self.clock.seconds()
        try:
            report = await self._recheck_nat()
        except CancelledError:
            raise
        except Exception as e:
            self.log.debug("NAT check failed: {error}", error=e)
            return
        if report.nat_type is NatType.UNKNOWN or (self.nat is not None and nat_facts(self.nat) == nat_facts(report)):
            return  # only one port answered (nothing learned), or nothing moved
        before = f"NAT {self.nat.nat_type}, mapped {self.nat.mapped.ip}:{self.nat.mapped.port}" if self.nat else "NAT unknown"
        after = f"NAT {report.nat_type}, mapped {report.mapped.ip}:{report.mapped.port}"
        self.log.info("the NAT moved: {before} -> {after}; registering again", before=before, after=after)
        self.events.emit("nat", f"the NAT moved: {before} -> {after}", nat_type=report.nat_type)
        self.nat = report
        await self._register_until_done()
        self._restart_poll()

    def _restart_poll(self) -> None:
        """Our NAT moved: the long-poll's connection went through the old
        mapping and may be dead without knowing it (the NAT forgot it, the
        server's answers go nowhere). Ask again on a new one."""
        answers = self._answers
        if answers is not None and not answers.ended:
            # Its next answer (awaited now, or once the one in hand is
            # applied) is the cancellation, which the loop takes as "again".
            self._poll_restarting = True
            answers.cancel()

    async def _sleep_backoff(self) -> None:
        if not self._stopping:
            await deferLater(self.clock, self._sync_backoff.next(), lambda: None)

    # -- contact with the server ----------------------------------------------

    def _path_report(self) -> NodeReport | None:
        """What the server is told of our paths (wire.node.report); None before we are in the mesh."""
        if not self.interface_ready or not self.contact.registered or self._out_of_the_mesh:
            return None
        entries = peer_entries(self, self.reconciler.wireguard_view, self.clock.seconds())
        return NodeReport(self.config.node_id, self.public_key, peer_reports(entries), __version__)

    async def _moved_to(self, url: str) -> None:
        """Register with the new replica at once (a long-poll there may wait
        its whole time before it answers: the registration says sooner that
        this replica serves us), and take relayed peers through its relay
        (its sessions, its port)."""
        try:
            await self.register()
        except (ServerError, ServerUnreachable, AssignmentRefused):
            pass  # said by _lost_contact (which moves on again if it must); the loops retry
        host, relay_port, _ = stun_ports(url)
        await self.reconciler.relay_moved(host, relay_port)
        await self.reconciler.reconcile()
        self.reporter.moved()

    def _made_contact(self) -> None:
        self._servers_tried = 0
        if not self.contact.reachable:
            self.log.info("coordination server {url} reachable", url=self.config.server_url)
        self.contact.reachable = True
        self.contact.last_error = ""
        self.contact.last_status = 0
        self.contact.last_contact = self.clock.seconds()

    def _lost_contact(self, error: str, status: int = 0, asked: str | None = None) -> None:
        """A request to ``asked`` (the server in use then) failed."""
        if asked is not None and asked != self.config.server_url:
            # An answer from a replica the node already left (a long-poll the
            # keepalive ended late): it says nothing about the one in use.
            return
        if self.contact.reachable:
            self.log.warn("coordination server unreachable: {error}; peers stay configured", error=error)
        self.contact.reachable = False
        self.contact.last_error = error
        self.contact.last_status = status
        if status in (0, 495) or status in FAIL_OVER_STATUSES:
            self._fail_over(error)

    def _fail_over(self, error: str) -> None:
        """The server in use does not serve us: use the mesh's next replica
        (wire.node.servers). The credential, address and tunnels stay; the
        first round through the replicas retries at once, later rounds wait
        as the backoff says."""
        following = next_server(self.config)
        if following is None:
            return
        previous = self.config.server_url
        self.log.warn("coordination server {old} does not serve us ({error}): moving to {new}", old=previous, error=error, new=following)
        self.events.emit("server", f"moved from {previous} to {following}: {error}")
        self._adopt(replace(self.config, server_url=following))
        self.client.server_url = following
        if isinstance(self._lan_ip, LanAddress):
            self._lan_ip.move_to(following)  # its route is the one towards the new replica
        # A long-poll still waiting on the old one (silent, not yet ended) asks the new one now.
        self._restart_poll()
        self._track(self._guarded(lambda: self._moved_to(following), "moving to another replica"))
        self._servers_tried += 1
        if self._servers_tried < len(servers_of(self.config)):
            self._sync_backoff.reset()

    # -- leaving --------------------------------------------------------------

    async def leave(self) -> bool:
        """``wire down``: tell the server, then remove the interface.
        Returns whether the server heard it."""
        self._stop_loops()
        told = True
        try:
            await self.client.leave(self.config.node_id, self.public_key)
        except (ServerUnreachable, ServerError) as e:
            self.log.warn("could not tell the server we are leaving: {error}", error=e)
            told = False
        await self.reconciler.stop()
        await self._names_off()
        if self.reconciler.routing is not None:
            await self.reconciler.routing.clear()
        await self.wireguard.down()
        await self.reconciler.firewall_off()
        self.state.interface_up = False
        return told
