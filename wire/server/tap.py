"""``twistd wire-server``: options and the service they build."""

from __future__ import annotations

import fcntl
import gc
import ipaddress
import os
import resource
import socket

from twisted.application.internet import StreamServerEndpointService, UDPServer
from twisted.application.service import MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from wire.addressing import AddressPool, parse_subnet
from wire.fsutil import write_atomically
from wire.node.config import parse_server_url
from wire.protocol import ProtocolError
from wire.server.admin import Admin, admin_socket_path, build_admin_site
from wire.server.api import ClientRules, build_site
from wire.server.auth import Authority
from wire.server.coordinator import Coordinator, MaintenanceService
from wire.server.ratelimit import RateLimiter, address_key
from wire.server.registry import DEFAULT_EXPIRE_AFTER, DEFAULT_OFFLINE_AFTER, Registry
from wire.server.seed_import import SeedStateError, import_seed_state
from wire.server.store import StoreError, open_store
from wire.stun import StunServerProtocol
from wire.tls import ensure_self_signed, is_self_signed, read_fingerprint
from wire.tlsserver import TLSConfigError, TLSServerEndpoint, server_context

log = Logger()

DEFAULT_PORT = 8787
DEFAULT_DATA_DIR = "/var/lib/wire"
DEFAULT_SUBNET = "10.99.0.0/16"
FIRST_JOIN_FILE = "first-join.txt"
# Connections the kernel may hold for us before we accept them. Twisted's
# default, 50, overflows whenever many nodes connect at once (a server
# restart, a busy second): the kernel then drops the handshake and the node
# waits a whole SYN-retransmit second (then 3, 7...). The kernel caps it at
# net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 1024
MAX_UNIX_PATH = 107

# Rate limits per client address, as (tokens per second, burst). Nodes
# behind one NAT share an address, so the limits are set for a whole site:
# - register: a node heartbeats every 30 s, so 5/s carries 150 nodes behind
#   one address; a burst of 50 lets a whole office come back at once after a
#   server restart (the rest get a 429 saying when to retry), while one
#   address cannot keep the registry and its disk busy;
# - enroll: a person joins machines one at a time, a script a batch of ten;
#   each enrollment writes to disk and the audit log;
# - STUN: a node's NAT probe is 2 ports x 3 tries; 20/s carries a few such
#   probes a second from one NAT, and keeps any one source to a sliver of
#   the port. The relay, on the same port, limits each session itself.
DEFAULT_RATE_LIMITS = {"register": (5.0, 50.0), "enroll": (1.0, 10.0), "stun": (20.0, 40.0)}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs the wire coordination server: the HTTP API on --port, STUN on UDP "
        "port+1 (the seed's convention) and a second STUN port on port+2 for "
        "NAT-type detection."
    )
    optParameters = [
        ["port", "p", None, f"HTTP port; UDP STUN uses port+1 and port+2 [$WIRE_PORT or {DEFAULT_PORT}]"],
        ["interface", "i", "", "address to listen on [all addresses]"],
        ["data-dir", "d", None, f"where the registry lives [$WIRE_DATA_DIR or {DEFAULT_DATA_DIR}]"],
        ["subnet", None, None, f"VPN subnet, CIDR or the seed's prefix form (10.99) [$WIRE_VPN_SUBNET or {DEFAULT_SUBNET}]"],
        ["offline-after", None, None, f"seconds without heartbeat before a node shows offline [{DEFAULT_OFFLINE_AFTER:.0f}]"],
        ["expire-after", None, None, f"seconds offline before a node leaves the netmap [{DEFAULT_EXPIRE_AFTER:.0f}]"],
        ["import-seed-state", None, None, "import the nodes of a seed server's state.json before serving"],
        ["tls-cert", None, None, "PEM certificate to serve HTTPS with [a self-signed one, made once in the data dir]"],
        ["tls-key", None, None, "PEM private key of --tls-cert"],
        ["public-url", None, None, "the URL nodes use to reach this server, put in join tokens [https://HOSTNAME:PORT]"],
        ["rate-limit-register", None, None, "POST /register calls per client address, as RATE/BURST [%g/%g]" % DEFAULT_RATE_LIMITS["register"]],
        ["rate-limit-enroll", None, None, "POST /enroll calls per client address, as RATE/BURST [%g/%g]" % DEFAULT_RATE_LIMITS["enroll"]],
        ["rate-limit-stun", None, None, "STUN and seed JSON datagrams per source address, as RATE/BURST [%g/%g]" % DEFAULT_RATE_LIMITS["stun"]],
    ]
    optFlags = [
        ["open", None, "the seed's behaviour: no join keys or credentials, plain HTTP (trusted networks only)"],
        ["plain-http", None, "serve plain HTTP (behind a TLS-terminating proxy); authentication stays on"],
        ["no-rate-limits", None, "no rate limits per client address (benchmarks only)"],
    ]

    def __init__(self):
        super().__init__()
        self["trusted-proxy"] = []

    def opt_trusted_proxy(self, address: str) -> None:
        """a proxy (address or network) whose X-Forwarded-For header names the client; repeatable [none]"""
        try:
            self["trusted-proxy"].append(ipaddress.ip_network(address, strict=True))
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy: {address!r} is not an IP address or network ({e})")

    def postOptions(self) -> None:
        port_text = self["port"] or os.environ.get("WIRE_PORT") or str(DEFAULT_PORT)
        self["port"] = _number("port", port_text, int, 1, 65533)
        self["data-dir"] = os.path.abspath(self["data-dir"] or os.environ.get("WIRE_DATA_DIR") or DEFAULT_DATA_DIR)
        admin_socket = os.path.join(self["data-dir"], "admin.sock.lock")
        if not self["open"] and len(admin_socket.encode()) > MAX_UNIX_PATH:
            raise usage.UsageError(f"--data-dir: {self['data-dir']} is too long to hold the admin socket (UNIX socket paths are limited to {MAX_UNIX_PATH} bytes)")
        subnet_text = self["subnet"] or os.environ.get("WIRE_VPN_SUBNET") or DEFAULT_SUBNET
        try:
            self["subnet"] = parse_subnet(subnet_text)
        except ProtocolError as e:
            raise usage.UsageError(f"--subnet: {e.problem}")
        self["offline-after"] = _number(
            "offline-after", self["offline-after"] or str(DEFAULT_OFFLINE_AFTER), float, 5, 7 * 86400
        )
        self["expire-after"] = _number(
            "expire-after", self["expire-after"] or str(DEFAULT_EXPIRE_AFTER), float, 60, 365 * 86400
        )
        if self["expire-after"] <= self["offline-after"]:
            raise usage.UsageError("--expire-after must be longer than --offline-after")
        seed = self["import-seed-state"]
        if seed is not None and not os.path.isfile(seed):
            raise usage.UsageError(f"--import-seed-state: {seed} is not a file")
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        for option in ("tls-cert", "tls-key"):
            if self[option] and not os.path.isfile(self[option]):
                raise usage.UsageError(f"--{option}: {self[option]} is not a file")
        self["tls"] = not (self["plain-http"] or (self["open"] and not self["tls-cert"]))
        for name, default in DEFAULT_RATE_LIMITS.items():
            option = f"rate-limit-{name}"
            self[option] = _rate_limit(option, self[option]) if self[option] else default
        if self["public-url"]:
            try:
                self["public-url"] = parse_server_url(self["public-url"])
            except ProtocolError as e:
                raise usage.UsageError(f"--public-url: {e.problem}")
        else:
            host = self["interface"] if self["interface"] not in ("", "0.0.0.0", "::") else socket.getfqdn()
            host = f"[{host}]" if ":" in host else host
            self["public-url"] = f"{'https' if self['tls'] else 'http'}://{host}:{self['port']}"


def _number(option: str, text: str, kind, low: float, high: float):
    try:
        value = kind(text)
    except ValueError:
        raise usage.UsageError(f"--{option}: {text!r} is not {'an integer' if kind is int else 'a number'}")
    if not low <= value <= high:
        raise usage.UsageError(f"--{option}: {value} is outside {low}..{high}")
    return value


def _rate_limit(option: str, text: str) -> tuple[float, float]:
    rate_text, slash, burst_text = text.partition("/")
    if not slash:
        raise usage.UsageError(f"--{option}: {text!r} is not RATE/BURST (for example 5/50)")
    rate = _number(option, rate_text, float, 0.001, 1e6)
    burst = _number(option, burst_text, float, 1, 1e6)
    return rate, burst


def _rate_limiter(config: Options, name: str, reactor) -> RateLimiter | None:
    if config["no-rate-limits"]:
        return None
    rate, burst = config[f"rate-limit-{name}"]
    return RateLimiter(rate, burst, reactor)


class CoordinationServer(MultiService):
    """The server's services, plus the data-dir lock they run under."""

    def __init__(self, coordinator: Coordinator, lock_file):
        super().__init__()
        self.coordinator = coordinator
        self._lock_file = lock_file

    def startService(self):
        # Here, not in makeService: only a running server tunes the process.
        tune_gc()
        super().startService()

    def stopService(self):
        d = super().stopService()
        d.addBoth(self._release)
        return d

    def _release(self, result):
        self._lock_file.close()
        return result


def _lock_data_dir(data_dir: str):
    """One server per registry: a second one would fork the netmap."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    lock_file = open(os.path.join(data_dir, "server.lock"), "a")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StoreError(f"another wire-server is already using {data_dir}")
    return lock_file


def build_coordinator(config: Options, reactor) -> tuple[Coordinator, object]:
    lock_file = _lock_data_dir(config["data-dir"])
    try:
        store = open_store(config["data-dir"], reactor)
        registry = Registry(
            store,
            AddressPool(config["subnet"]),
            offline_after=config["offline-after"],
            expire_after=config["expire-after"],
        )
        registry.load(store.load(), reactor.seconds())
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
    except BaseException:
        lock_file.close()
        raise
    return Coordinator(reactor, store, registry, relay_port=config["port"] + 1, authority=authority), lock_file


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
    except (StoreError, SeedStateError) as e:
        raise SystemExit(f"wire-server: {e}")

    server = CoordinationServer(coordinator, lock_file)
    port, interface, data_dir = config["port"], config["interface"], config["data-dir"]
    try:
        endpoint, fingerprint = _api_endpoint(config, reactor)
    except TLSConfigError as e:
        raise SystemExit(f"wire-server: {e}")
    rules = ClientRules(
        trusted_proxies=tuple(config["trusted-proxy"]),
        register_limit=_rate_limiter(config, "register", reactor),
        enroll_limit=_rate_limiter(config, "enroll", reactor),
    )
    _listening(endpoint, build_site(coordinator, rules, reactor)).setServiceParent(server)
    if coordinator.authority is not None:
        admin = Admin(coordinator, config["public-url"], fingerprint)
        admin_endpoint = UNIXServerEndpoint(reactor, admin_socket_path(data_dir), mode=0o600, wantPID=True)
        _listening(admin_endpoint, build_admin_site(admin)).setServiceParent(server)
        _first_join_command(admin, data_dir)
    observe = lambda outcome: coordinator.metrics.stun_datagrams.labels(outcome).inc()  # noqa: E731
    # The seed's STUN port also carries the relay; port+2 is STUN only.
    relay = coordinator.relay.handle
    # One limiter for both STUN ports: a source gets its share once.
    stun_limiter = _rate_limiter(config, "stun", reactor)
    admit = None if stun_limiter is None else lambda host: stun_limiter.allow(address_key(host))  # noqa: E731
    for udp_port, relay_handler in ((port + 1, relay), (port + 2, None)):
        protocol = StunServerProtocol(reactor, observe=observe, relay=relay_handler, admit=admit)
        UDPServer(udp_port, protocol, interface=interface, reactor=reactor).setServiceParent(server)
    MaintenanceService(coordinator).setServiceParent(server)
    log.info(
        "wire-server: HTTP on {interface}:{port}, STUN on UDP {port1} and {port2}, registry in {data_dir}, "
        "VPN subnet {subnet}, {nodes} nodes",
        interface=interface or "*",
        port=port,
        port1=port + 1,
        port2=port + 2,
        data_dir=config["data-dir"],
        subnet=config["subnet"],
        nodes=len(coordinator.registry),
    )
    if config["no-rate-limits"]:
        log.warn("wire-server: --no-rate-limits: any one address may flood registration, enrollment and STUN")
    if coordinator.authority is None:
        log.warn("wire-server: --open: no authentication, anyone who reaches this port can join and read the mesh")
    else:
        log.info(
            "wire-server: {scheme} with node authentication; join tokens point at {url}"
            + (" (certificate fingerprint {fingerprint})" if fingerprint else ""),
            scheme="HTTPS" if config["tls"] else "plain HTTP",
            url=config["public-url"],
            fingerprint=fingerprint,
        )
    return server


def _listening(endpoint, factory) -> StreamServerEndpointService:
    service = StreamServerEndpointService(endpoint, factory)
    # A port that cannot be had stops the server at start instead of leaving
    # it running without its API.
    service._raiseSynchronously = True
    return service


def _api_endpoint(config: Options, reactor):
    """The HTTP(S) endpoint, and the certificate fingerprint for join tokens
    ("" when nodes should verify a CA-signed certificate by hostname)."""
    port, interface = config["port"], config["interface"]
    endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    tcp = endpoint_type(reactor, port, backlog=LISTEN_BACKLOG, interface=interface)
    if not config["tls"]:
        return tcp, ""
    if config["tls-cert"]:
        cert_path, key_path = config["tls-cert"], config["tls-key"]
        fingerprint = read_fingerprint(cert_path) if is_self_signed(cert_path) else ""
    else:
        cert_path, key_path = ensure_self_signed(config["data-dir"])
        fingerprint = read_fingerprint(cert_path)
    return TLSServerEndpoint(tcp, server_context(cert_path, key_path)), fingerprint


def _first_join_command(admin: Admin, data_dir: str) -> None:
    """On a server's first start, a one-time join key for the first node.

    The command holds a secret, so it goes to a root-only file, not the log.
    """
    if admin.authority.keys():
        return
    created = admin.create_key(reusable=False, expires_in=86400, note="made at first start")
    path = os.path.join(data_dir, FIRST_JOIN_FILE)
    write_atomically(path, (created["join_command"] + "\n").encode(), mode=0o600)
    log.info(
        "wire-server: first start; a one-time join command (valid 24 h) is in {path}; more with: wire admin keys create",
        path=path,
    )
