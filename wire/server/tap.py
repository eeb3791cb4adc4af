"""``twistd wire-server``: the service its options build (options.py), with
ports that fail in one line (listening.py) and the first join command
(firstjoin.py)."""

from __future__ import annotations

import fcntl
import gc
import os
import resource
import secrets
from contextlib import contextmanager
from typing import Callable

from twisted.application.service import MultiService
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wire.addressing import AddressPool, Ipv6Pool
from wire.datadir import admin_socket_path
from wire.server.admin import Admin
from wire.server.adminapi import AUTH_FAILURE_BURST, AUTH_FAILURE_RATE, admin_api
from wire.server.adminsocket import socket_site
from wire.server.api import ClientRules, build_site, is_trusted
from wire.server.dashboard import dashboard
from wire.server.auth import Authority
from wire.server.cluster import Cluster
from wire.server.replicacall import ReplicaCaller, cluster_secret, replica_http
from wire.server.replicas import replica_for
from wire.server.coordinator import Coordinator, MaintenanceService
from wire.server.meshprefix import MeshPrefix, mesh_prefix6
from wire.server.netmap import ChangeLog
from wire.server.ratelimit import RateLimiter, address_key
from wire.server.registry import Registry
from wire.server.seed_import import SeedStateError, import_seed_state
from wire.server.connguard import ConnectionGuard, connection_limit
from wire.policy import PolicyError
from wire.server.policyfile import PolicyFile, PolicyFileError
from wire.server.dbthread import result_now
from wire.server.store import IStore, SQLStore, StoreError, open_store, secure_data_dir
from wire.stun import StunServerProtocol
from wire.server.migrate import SqliteImportError, import_sqlite
from wire.server.sharedtls import SharedIdentityError, shared_self_signed
from wire.tls import ensure_self_signed, is_self_signed, read_fingerprint
from wire.tlsserver import TLSConfigError, TLSServerEndpoint, server_context
from wire.urls import is_loopback_url

log = Logger()
from wire.server.firstjoin import first_join_notes, loopback_warning, write_first_join
from wire.server.relaystream import UpgradeSnifferFactory
from wire.server.fastpath import RelayFastPath
from wire.server.relayports import DirectPorts
from wire.runner import ProcessRunner
from wire.stallwatch import StallWatch
from wire.server.listening import AlsoOnIPv6, AlsoOnIPv6UDP, Listening, ListeningUDP, StartFailure, TCP6OnlyServerEndpoint
from wire.server.options import (
    Options,
)

log = Logger()


# Connections the kernel may hold for us before we accept them. Twisted's
# default, 50, overflows whenever many nodes connect at once (a server
# restart, a busy second): the kernel then drops the handshake and the node
# waits a whole SYN-retransmit second (then 3, 7...). The kernel caps it at
# net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 1024


def _rate_limiter(config: Options, name: str, reactor) -> RateLimiter | None:
    if config["no-rate-limits"]:
        return None
    rate, burst = config[f"rate-limit-{name}"]
    return RateLimiter(rate, burst, reactor)


class CoordinationServer(MultiService):
    """The server's services, plus the data-dir lock they run under.

    ``foreground``: a start failure exits the process with its one line
    (twistd -n, tests). A daemonized twistd instead needs the exception,
    which it hands to the parent still waiting on the terminal ("An error
    has occurred: ..."); the line goes to the log too.
    """

    def __init__(self, coordinator: Coordinator, lock_file, foreground: bool = True):
        super().__init__()
        self.coordinator = coordinator
        self._lock_file = lock_file
        self.foreground = foreground
        # Run once every port is had: what a server that cannot start must
        # neither say (that it serves) nor do (make a first join key).
        self.when_listening: list[Callable[[], None]] = []

    def privilegedStartService(self):
        with self._failing_in_one_line():
            super().privilegedStartService()

    def startService(self):
        # Here, not in makeService: only a running server tunes the process.
        tune_gc()
        with self._failing_in_one_line():
            super().startService()
        for call in self.when_listening:
            call()

    @contextmanager
    def _failing_in_one_line(self):
        try:
            yield
        except StartFailure as e:
            log.critical("{problem}", problem=str(e))
            if self.foreground:
                raise SystemExit(1) from None
            raise

    def stopService(self):
        d = super().stopService()
        d.addBoth(self._release)
        return d

    def _release(self, result):
        self._lock_file.close()
        return result


def _lock_data_dir(data_dir: str):
    """One server per registry: a second one would fork the netmap."""
    secure_data_dir(data_dir)
    lock_file = open(os.path.join(data_dir, "server.lock"), "a")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StoreError(f"another wire-server is already using {data_dir}")
    return lock_file


def _import_sqlite(config: Options, store: SQLStore, reactor) -> None:
    """--import-sqlite: the old registry into the database, before loading it
    (wire.server.migrate); the old data dir locked meanwhile, unless it is ours."""
    source = config["import-sqlite"]
    source_lock = None if source == config["data-dir"] else _lock_data_dir(source)
    try:
        log.info("wire-server: {report}", report=import_sqlite(source, store, reactor))
    except SqliteImportError as e:
        raise StoreError(str(e))
    finally:
        if source_lock is not None:
            source_lock.close()


def build_coordinator(config: Options, reactor) -> tuple[Coordinator, object]:
    lock_file = _lock_data_dir(config["data-dir"])
    store: SQLStore | None = None
    try:
        # Loading blocks here, before the reactor serves.
        store = open_store(config["data-dir"], reactor, config["database"], config["database-password"])
        if config["import-sqlite"]:
            _import_sqlite(config, store, reactor)
        prefix6 = mesh_prefix6(store, config["subnet6"])
        _log_prefix6(prefix6)
        shared = config["database"] is not None
        registry = Registry(
            store,
            AddressPool(config["subnet"]),
            offline_after=config["offline-after"],
            expire_after=config["expire-after"],
            pool6=Ipv6Pool(prefix6.network),
            changes=shared_change_log(store, config["replica-name"]) if shared else None,
        )
        # Replicas leave sweeping (and expiry) to the cluster's leader.
        registry.load(store.load(), reactor.seconds(), sweep=not shared)
        # The IPv6 addresses load gave (a schema-7 registry, a new prefix), durably now.
        store.write_pending()
        if config["import-seed-state"]:
            report = import_seed_state(config["import-seed-state"], registry, reactor.seconds())
            store.write_pending()
            log.info(
                "seed import: {imported} imported, {present} already present, {readdressed} readdressed, "
                "{skipped} skipped",
                imported=len(report.imported),
                present=len(report.already_present),
                readdressed=len(report.readdressed),
                skipped=len(report.skipped),
            )
            for line in report.readdressed + report.skipped:
                log.warn("seed import: {line}", line=line)
        authority = None if config["open"] else Authority(store, reactor)
        registry.unique_names = authority is not None
        # Stored settings that do not fit the options (the DNS domain) stop it here.
        coordinator = Coordinator(
            reactor, store, registry, relay_port=config["port"] + 1, authority=authority, dns_domain=config["dns-domain"]
        )
    except BaseException:
        if store is not None:
            store.close()
        lock_file.close()
        raise
    return coordinator, lock_file


def shared_change_log(store: SQLStore, replica_name: str) -> ChangeLog:
    """A replica's change log on the cluster's serials (wire.server.cluster),
    from the serial the database is at before the nodes are loaded (a change
    committed in between is applied again: harmless), under the mesh's epoch."""
    # Unique per run: a replica tells its own changes in the stream by it.
    store.streaming = True
    store.origin = f"{replica_name}#{secrets.token_hex(4)}"
    serial = store.cluster_serial()
    epoch = store.draw_meta("epoch", secrets.token_hex(6))
    return ChangeLog(epoch=epoch, serial=serial, shared=True)


def _log_prefix6(prefix: MeshPrefix) -> None:
    if prefix.drawn:
        log.info("wire-server: the mesh's IPv6 prefix is {prefix}, drawn now and kept in the registry", prefix=prefix.network)
    elif prefix.replaced is not None:
        log.warn(
            "wire-server: the mesh's IPv6 prefix changes from {old} to {new} (--subnet6): every node gets a new IPv6 address",
            old=prefix.replaced,
            new=prefix.network,
        )


# Python's cyclic GC scans everything it holds (the oldest generation)
# whenever ten young collections have promoted a quarter as many survivors
# as it already holds. A server with thousands of connections holds about a
# million long-lived objects (some 50 per TLS connection), and its request
# bursts meet that quota every few seconds: each full scan then stops the
# reactor for about a second at 10,000 nodes. Young collections stay as they
# are (a few ms); the full scan waits for a thousand of them instead of ten.
# Reference counting still frees nearly everything the moment it dies.
GC_THRESHOLDS = (700, 10, 1_000)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def raise_fd_limit() -> int:
    """Let the server use every file descriptor it is allowed.

    Each node holds a connection (its long-poll; two where it also
    heartbeats, on an open server), so the usual soft limit of 1024
    (systemd's default) stops the server at about 500 to 1,000 nodes, with
    accept() failing for the rest; the hard limit (524288 under systemd) is
    there to be used.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warn("wire-server: cannot raise the open-files limit from {soft} to {hard}: {error}", soft=soft, hard=hard, error=e)
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def makeService(config: Options, reactor=None) -> CoordinationServer:
    if reactor is None:
        from twisted.internet import reactor
    fd_limit = raise_fd_limit()
    if fd_limit < 20_000:
        log.warn(
            "wire-server: {limit} open files allowed: enough for about {nodes} nodes (two connections each)",
            limit=fd_limit,
            nodes=max(0, (fd_limit - 100) // 2),
        )
    try:
        coordinator, lock_file = build_coordinator(config, reactor)
    except (StoreError, SeedStateError, PolicyError) as e:
        raise SystemExit(f"wire-server: {e}")
    policy_file = PolicyFile(config["policy"], coordinator) if config["policy"] else None
    if policy_file is not None:
        try:
            result_now(Deferred.fromCoroutine(policy_file.load()))
        except (PolicyFileError, StoreError) as e:
            coordinator.store.close()
            lock_file.close()  # type: ignore[attr-defined]
            raise SystemExit(f"wire-server: --policy: {e}")

    # twistd's own options are the parent of ours; without them (tests), the foreground.
    twistd = config.parent
    server = CoordinationServer(coordinator, lock_file, foreground=twistd is None or bool(twistd["nodaemon"]))
    port, interface, data_dir = config["port"], config["interface"], config["data-dir"]
    try:
        endpoint, endpoint6, fingerprint = _api_endpoint(config, reactor, coordinator.store)
    except (TLSConfigError, SharedIdentityError, StoreError) as e:
        raise SystemExit(f"wire-server: {e}")
    rules = ClientRules(
        trusted_proxies=tuple(config["trusted-proxy"]),
        register_limit=_rate_limiter(config, "register", reactor),
        enroll_limit=_rate_limiter(config, "enroll", reactor),
        path_limit=_rate_limiter(config, "path", reactor),
    )
    cluster = _cluster(config, coordinator, reactor, fingerprint)
    where = f" of {interface}" if interface else ""
    site = build_site(coordinator, rules)
    admin = None
    if coordinator.authority is not None:
        admin = Admin(coordinator, config["public-url"], fingerprint, config["replica-urls"])
        # The remote admin API, for admin API keys and the dashboard's sessions
        # (wire.server.adminapi), and the dashboard itself (wire.server.dashboard).
        failures = None if config["no-rate-limits"] else RateLimiter(AUTH_FAILURE_RATE, AUTH_FAILURE_BURST, reactor)
        site.resource.putChild(b"api", admin_api(admin, rules, failures, others=[admin.dashboard]))
        site.resource.putChild(b"ui", dashboard(admin.dashboard, admin.note))
    # The relay stream shares the API's port (an HTTP Upgrade), so a server on 443 serves both.
    api = UpgradeSnifferFactory(site, coordinator.relay_streams, coordinator.authenticate_stream, reactor)
    guarded = ConnectionGuard(
        api,
        reactor,
        limit=connection_limit(fd_limit),
        uncapped=lambda host: is_trusted(host, rules.trusted_proxies),
    )
    Listening(endpoint, guarded, f"TCP port {port}{where}").setServiceParent(server)
    if endpoint6 is not None:
        AlsoOnIPv6(endpoint6, guarded, f"TCP port {port}").setServiceParent(server)
    if admin is not None:
        admin_path = admin_socket_path(data_dir)
        admin_endpoint = UNIXServerEndpoint(reactor, admin_path, mode=0o600, wantPID=True)
        Listening(admin_endpoint, socket_site(admin), f"the admin socket {admin_path}").setServiceParent(server)
    observe = coordinator.metrics.count_datagram
    # The seed's STUN port also carries the relay; port+2 is STUN only.
    relay = coordinator.relay.handle
    # One limiter for both STUN ports: a source gets its share once.
    stun_limiter = _rate_limiter(config, "stun", reactor)
    admit = None if stun_limiter is None else lambda host: stun_limiter.allow(address_key(host))  # noqa: E731
    for udp_port, relay_handler, job in ((port + 1, relay, "STUN and relay"), (port + 2, None, "STUN")):
        streams = coordinator.relay_streams if relay_handler is not None else None
        protocol = StunServerProtocol(reactor, observe=observe, relay=relay_handler, admit=admit, streams=streams)
        if relay_handler is not None:
            coordinator.relay.send = protocol.send_relayed
        what = f"UDP port {udp_port}{where} ({job}, --port + {udp_port - port})"
        ListeningUDP(udp_port, protocol, interface, reactor, what).setServiceParent(server)
        if not interface:
            # STUN only: a relay session's two sides are told the IPv4 port.
            stun6 = StunServerProtocol(reactor, observe=observe, admit=admit)
            AlsoOnIPv6UDP(udp_port, stun6, reactor, f"UDP port {udp_port} (STUN)").setServiceParent(server)
    MaintenanceService(coordinator).setServiceParent(server)
    StallWatch(
        reactor, on_lateness=coordinator.metrics.reactor_lateness.set, on_stall=lambda _: coordinator.metrics.reactor_stalls.inc()
    ).setServiceParent(server)
    coordinator.metrics.set_replica(config["replica-name"])
    if cluster is not None:
        # After the maintenance service: started once the store serves, stopped before it closes.
        cluster.setServiceParent(server)
    # Verified relay sessions forwarded by the kernel where it can (root, nft).
    if config["relay-direct-ports"] is not None:
        low, high = config["relay-direct-ports"]
        coordinator.relay.direct_ports = DirectPorts(
            reactor, low, high, interface, lambda data, source, side_port: observe(coordinator.relay.bind(data, source, side_port))
        )
    coordinator.relay.rate, coordinator.relay.burst = config["rate-limit-relay"]
    fastpath = RelayFastPath(reactor, ProcessRunner(reactor), coordinator.relay, port + 1, *config["rate-limit-relay"])
    coordinator.fastpath = fastpath
    fastpath.setServiceParent(server)
    if policy_file is not None:
        server.when_listening.append(lambda: policy_file.reload_on_sighup(reactor))
    server.when_listening.append(lambda: _announce(config, coordinator, fingerprint))
    if admin is not None:
        first_admin = admin
        server.when_listening.append(lambda: _first_join(first_admin, data_dir, first_join_notes(config)))
    return server


def _cluster(config: Options, coordinator: Coordinator, reactor, fingerprint: str) -> Cluster | None:
    """On --database, this replica's part of the cluster; relay grants then
    come from a pair's home replica, asked over the API's pinned TLS."""
    if config["database"] is None:
        return None
    store = coordinator.store
    assert isinstance(store, SQLStore)
    name = config["replica-name"]
    cluster = Cluster(coordinator, store, reactor, name, replica_for(name, config["public-url"], config["port"]))
    coordinator.cluster = cluster
    try:
        secret = cluster_secret(store)
    except StoreError as e:
        raise SystemExit(f"wire-server: {e}")
    caller = ReplicaCaller(reactor, secret, name, replica_http(reactor, fingerprint))
    coordinator.use_replicas(cluster.replicas, caller)
    return cluster


def _first_join(admin: Admin, data_dir: str, notes: list[str]) -> None:
    d = Deferred.fromCoroutine(write_first_join(admin, data_dir, notes))
    d.addErrback(lambda failure: log.failure("wire-server: the first join key was not made", failure))


def _announce(config: Options, coordinator: Coordinator, fingerprint: str) -> None:
    port, url = config["port"], config["public-url"]
    log.info(
        "wire-server: HTTP on {interface}:{port}, STUN on UDP {port1} and {port2}, registry in {registry}, "
        "VPN subnet {subnet} and {subnet6}, {nodes} nodes; public URL {url}{source}",
        interface=config["interface"] or "*",
        port=port,
        port1=port + 1,
        port2=port + 2,
        registry=coordinator.store.where,
        subnet=config["subnet"],
        subnet6=coordinator.registry.pool6.network if coordinator.registry.pool6 is not None else "no IPv6",
        nodes=len(coordinator.registry),
        url=url,
        source=f" (from {config.public_url_from}; set --public-url if nodes know it by another)" if config.public_url_from else "",
    )
    if config["no-rate-limits"]:
        log.warn("wire-server: --no-rate-limits: any one address may flood registration, enrollment, path reports and STUN")
    if coordinator.authority is None:
        log.warn("wire-server: --open: no authentication, anyone who reaches this port can join and read the mesh")
        return
    log.info(
        "wire-server: {scheme} with node authentication; join tokens point at {url}"
        + (" (certificate fingerprint {fingerprint})" if fingerprint else ""),
        scheme="HTTPS" if config["tls"] else "plain HTTP",
        url=url,
        fingerprint=fingerprint,
    )
    if is_loopback_url(url):
        log.warn("wire-server: " + loopback_warning(config))


def _api_endpoint(config: Options, reactor, store: IStore | None = None):
    """The HTTP(S) endpoint, the same on IPv6 when the server listens on
    every address (None otherwise), and the certificate fingerprint for
    join tokens ("" when nodes should verify a CA-signed certificate by hostname).
    On PostgreSQL the self-signed pair is the one every replica shares."""
    port, interface = config["port"], config["interface"]
    endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    tcp = endpoint_type(reactor, port, backlog=LISTEN_BACKLOG, interface=interface)
    tcp6 = None if interface else TCP6OnlyServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG)
    if not config["tls"]:
        return tcp, tcp6, ""
    if config["tls-cert"]:
        cert_path, key_path = config["tls-cert"], config["tls-key"]
        fingerprint = read_fingerprint(cert_path) if is_self_signed(cert_path) else ""
    elif config["database"] and store is not None:
        cert_path, key_path = shared_self_signed(store, config["data-dir"])
        fingerprint = read_fingerprint(cert_path)
    else:
        cert_path, key_path = ensure_self_signed(config["data-dir"])
        fingerprint = read_fingerprint(cert_path)
    context = server_context(cert_path, key_path)
    return TLSServerEndpoint(tcp, context), tcp6 and TLSServerEndpoint(tcp6, context), fingerprint
