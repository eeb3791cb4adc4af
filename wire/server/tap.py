"""``twistd wire-server``: options and the service they build."""

from __future__ import annotations

import errno
import fcntl
import gc
import ipaddress
import os
import resource
import socket
import sys
from contextlib import contextmanager
from typing import Callable

from twisted.application.internet import StreamServerEndpointService, UDPServer
from twisted.application.service import MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from wire.addressing import AddressPool, parse_subnet
from wire.datadir import DEFAULT_DATA_DIR, admin_socket_path
from wire.fsutil import write_atomically
from wire.protocol import ProtocolError
from wire.jointoken import JoinTokenError, decode_join_token
from wire.server.admin import Admin, build_admin_site, join_command
from wire.server.api import ClientRules, build_site
from wire.server.auth import AuthError, Authority
from wire.server.configfile import ConfigFileError, read_config_file
from wire.server.coordinator import Coordinator, MaintenanceService
from wire.server.ratelimit import RateLimiter, address_key
from wire.server.registry import DEFAULT_EXPIRE_AFTER, DEFAULT_OFFLINE_AFTER, Registry
from wire.server.seed_import import SeedStateError, import_seed_state
from wire.server.store import StoreError, open_store
from wire.stun import StunServerProtocol
from wire.tls import ensure_self_signed, is_self_signed, read_fingerprint
from wire.tlsserver import TLSConfigError, TLSServerEndpoint, server_context
from wire.urls import is_loopback_host, is_loopback_url, parse_server_url

log = Logger()

DEFAULT_PORT = 8787
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
        ["config", "c", None, "a TOML file of these options, the long names as keys; the command line overrides it"],
        ["port", "p", None, f"HTTP port; UDP STUN uses port+1 and port+2 [$WIRE_PORT or {DEFAULT_PORT}]"],
        ["interface", "i", None, "address to listen on [all addresses]"],
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

    def __init__(self) -> None:
        super().__init__()
        self["trusted-proxy"] = []
        # The options the --config file set (not given on the command line).
        self.from_file: set[str] = set()

    def parseOptions(self, options=None):
        """As twistd's subcommand, a usage error is one line and exit 2
        (twistd itself would print its whole help and exit 1). Called
        directly, as tests do, it raises UsageError."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            print(f"wire-server: {e} (see: twistd wire-server --help)", file=sys.stderr)
            raise SystemExit(2)

    def opt_trusted_proxy(self, address: str) -> None:
        """a proxy (address or network) whose X-Forwarded-For header names the client; repeatable [none]"""
        self["trusted-proxy"].append(_network("--trusted-proxy", address))

    def label(self, option: str) -> str:
        """How a usage error names an option: as given, on the command line or in the file."""
        return f"{option} in {self['config']}" if option in self.from_file else f"--{option}"

    def _or_environment(self, option: str, variable: str, default: str) -> tuple[str, str]:
        """An option's text, else its environment variable's, else the default;
        and how an error names where it came from."""
        if self[option]:
            return self[option], self.label(option)
        if os.environ.get(variable):
            return os.environ[variable], f"${variable}"
        return default, f"--{option}"

    def read_config_file(self) -> None:
        """Take from the --config file what the command line did not give.
        (Command line first, then the file, then $WIRE_*, then defaults.)"""
        try:
            settings = read_config_file(self["config"], config_kinds())
        except ConfigFileError as e:
            raise usage.UsageError(f"--config: {e}")
        for key, value in settings.items():
            if key == "trusted-proxy":
                if not self[key]:
                    self[key] = [_network(f"{key} in {self['config']}", address) for address in value]
                    self.from_file.add(key)
            elif isinstance(value, bool):
                self[key] = self[key] or value
                self.from_file.add(key)
            elif self[key] is None:
                self[key] = str(value)
                self.from_file.add(key)

    def postOptions(self) -> None:
        if self["config"]:
            self.read_config_file()
        self["interface"] = self["interface"] or ""
        port_text, port_label = self._or_environment("port", "WIRE_PORT", str(DEFAULT_PORT))
        self["port"] = _number(port_label, port_text, int, 1, 65533)
        data_dir, data_dir_label = self._or_environment("data-dir", "WIRE_DATA_DIR", DEFAULT_DATA_DIR)
        self["data-dir"] = os.path.abspath(data_dir)
        admin_socket = admin_socket_path(self["data-dir"]) + ".lock"
        if not self["open"] and len(admin_socket.encode()) > MAX_UNIX_PATH:
            raise usage.UsageError(f"{data_dir_label}: {self['data-dir']} is too long to hold the admin socket (UNIX socket paths are limited to {MAX_UNIX_PATH} bytes)")
        subnet_text, subnet_label = self._or_environment("subnet", "WIRE_VPN_SUBNET", DEFAULT_SUBNET)
        try:
            self["subnet"] = parse_subnet(subnet_text)
        except ProtocolError as e:
            raise usage.UsageError(f"{subnet_label}: {e.problem}")
        self["offline-after"] = _number(
            self.label("offline-after"), self["offline-after"] or str(DEFAULT_OFFLINE_AFTER), float, 5, 7 * 86400
        )
        self["expire-after"] = _number(
            self.label("expire-after"), self["expire-after"] or str(DEFAULT_EXPIRE_AFTER), float, 60, 365 * 86400
        )
        if self["expire-after"] <= self["offline-after"]:
            raise usage.UsageError(f"{self.label('expire-after')} must be longer than {self.label('offline-after')}")
        seed = self["import-seed-state"]
        if seed is not None and not os.path.isfile(seed):
            raise usage.UsageError(f"{self.label('import-seed-state')}: {seed} is not a file")
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        for option in ("tls-cert", "tls-key"):
            if self[option] and not os.path.isfile(self[option]):
                raise usage.UsageError(f"{self.label(option)}: {self[option]} is not a file")
        self["tls"] = not (self["plain-http"] or (self["open"] and not self["tls-cert"]))
        for name, default in DEFAULT_RATE_LIMITS.items():
            option = f"rate-limit-{name}"
            self[option] = _rate_limit(self.label(option), self[option]) if self[option] else default
        # How the default public URL was found ("" when given), for the log.
        self.public_url_from = ""
        if self["public-url"]:
            try:
                self["public-url"] = parse_server_url(self["public-url"])
            except ProtocolError as e:
                raise usage.UsageError(f"{self.label('public-url')}: {e.problem}")
        else:
            if self["interface"] not in ("", "0.0.0.0", "::"):
                host, self.public_url_from = self["interface"], "--interface"
            else:
                host, self.public_url_from = machine_name(self.machine_names()), "this machine's name"
            host = f"[{host}]" if ":" in host else host
            self["public-url"] = f"{'https' if self['tls'] else 'http'}://{host}:{self['port']}"

    @staticmethod
    def machine_names() -> list[str]:
        """Candidates for the default public URL's host, best first (a test
        seam: tests give their own)."""
        return [socket.getfqdn(), socket.gethostname()]


def machine_name(candidates: list[str]) -> str:
    """The first name that is not a loopback one. getfqdn() says "localhost"
    where /etc/hosts maps the hostname to 127.0.0.1 alongside localhost (a
    common container and Debian setup); the plain hostname is then the
    better guess."""
    for name in candidates:
        if name and not is_loopback_host(name):
            return name
    return next((name for name in candidates if name), "localhost")


# The kind of each option's value in a --config file (see configfile.KINDS).
_CONFIG_KINDS = {"port": "integer", "offline-after": "number", "expire-after": "number", "trusted-proxy": "list"}
_CONFIG_PATHS = ("data-dir", "import-seed-state", "tls-cert", "tls-key")


def config_kinds() -> dict[str, str]:
    """Every option a --config file may set: all of them but --config."""
    kinds: dict[str, str] = {}
    for name, *_ in Options.optParameters:
        kinds[str(name)] = "path" if name in _CONFIG_PATHS else "text"
    for name, *_ in Options.optFlags:
        kinds[str(name)] = "flag"
    del kinds["config"]
    kinds.update(_CONFIG_KINDS)
    return kinds


def _number(label: str, text: str, kind, low: float, high: float):
    try:
        value = kind(text)
    except ValueError:
        raise usage.UsageError(f"{label}: {text!r} is not {'an integer' if kind is int else 'a number'}")
    if not low <= value <= high:
        raise usage.UsageError(f"{label}: {value} is outside {low}..{high}")
    return value


def _rate_limit(label: str, text: str) -> tuple[float, float]:
    rate_text, slash, burst_text = text.partition("/")
    if not slash:
        raise usage.UsageError(f"{label}: {text!r} is not RATE/BURST (for example 5/50)")
    rate = _number(label, rate_text, float, 0.001, 1e6)
    burst = _number(label, burst_text, float, 1, 1e6)
    return rate, burst


def _network(label: str, address: str):
    try:
        return ipaddress.ip_network(address, strict=True)
    except ValueError as e:
        raise usage.UsageError(f"{label}: {address!r} is not an IP address or network ({e})")


def _rate_limiter(config: Options, name: str, reactor) -> RateLimiter | None:
    if config["no-rate-limits"]:
        return None
    rate, burst = config[f"rate-limit-{name}"]
    return RateLimiter(rate, burst, reactor)


class StartFailure(Exception):
    """The server cannot start (a port it cannot have); ``str()`` is the one line that says why."""


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

    # twistd's own options are the parent of ours; without them (tests), the foreground.
    twistd = config.parent
    server = CoordinationServer(coordinator, lock_file, foreground=twistd is None or bool(twistd["nodaemon"]))
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
    where = f" of {interface}" if interface else ""
    _Listening(endpoint, build_site(coordinator, rules), f"TCP port {port}{where}").setServiceParent(server)
    if coordinator.authority is not None:
        admin = Admin(coordinator, config["public-url"], fingerprint)
        admin_path = admin_socket_path(data_dir)
        admin_endpoint = UNIXServerEndpoint(reactor, admin_path, mode=0o600, wantPID=True)
        _Listening(admin_endpoint, build_admin_site(admin), f"the admin socket {admin_path}").setServiceParent(server)
    observe = lambda outcome: coordinator.metrics.stun_datagrams.labels(outcome).inc()  # noqa: E731
    # The seed's STUN port also carries the relay; port+2 is STUN only.
    relay = coordinator.relay.handle
    # One limiter for both STUN ports: a source gets its share once.
    stun_limiter = _rate_limiter(config, "stun", reactor)
    admit = None if stun_limiter is None else lambda host: stun_limiter.allow(address_key(host))  # noqa: E731
    for udp_port, relay_handler, job in ((port + 1, relay, "STUN and relay"), (port + 2, None, "STUN")):
        protocol = StunServerProtocol(reactor, observe=observe, relay=relay_handler, admit=admit)
        what = f"UDP port {udp_port}{where} ({job}, --port + {udp_port - port})"
        _ListeningUDP(udp_port, protocol, interface, reactor, what).setServiceParent(server)
    MaintenanceService(coordinator).setServiceParent(server)
    server.when_listening.append(lambda: _announce(config, coordinator, fingerprint))
    if coordinator.authority is not None:
        server.when_listening.append(lambda: _first_join_command(admin, data_dir, _first_join_notes(config)))
    return server


def _announce(config: Options, coordinator: Coordinator, fingerprint: str) -> None:
    port, url = config["port"], config["public-url"]
    log.info(
        "wire-server: HTTP on {interface}:{port}, STUN on UDP {port1} and {port2}, registry in {data_dir}, "
        "VPN subnet {subnet}, {nodes} nodes; public URL {url}{source}",
        interface=config["interface"] or "*",
        port=port,
        port1=port + 1,
        port2=port + 2,
        data_dir=config["data-dir"],
        subnet=config["subnet"],
        nodes=len(coordinator.registry),
        url=url,
        source=f" (from {config.public_url_from}; set --public-url if nodes know it by another)" if config.public_url_from else "",
    )
    if config["no-rate-limits"]:
        log.warn("wire-server: --no-rate-limits: any one address may flood registration, enrollment and STUN")
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
        log.warn("wire-server: " + _loopback_warning(config))


def _loopback_warning(config: Options) -> str:
    scheme = "https" if config["tls"] else "http"
    return (
        f"the public URL {config['public-url']} is a loopback address: join tokens work only on this machine; "
        f"start wire-server with --public-url {scheme}://NAME:{config['port']} (a name or address other machines reach it by)"
    )


def cannot_listen(what: str, error: CannotListenError) -> str:
    """The one line a port that cannot be had is told in."""
    cause = error.socketError
    number = getattr(cause, "errno", None)
    if number == errno.EADDRINUSE:
        why = "address already in use (another wire-server? choose another --port)"
    elif number == errno.EACCES:
        why = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif number == errno.EADDRNOTAVAIL:
        why = f"this machine has no address {error.interface} (check --interface)"
    else:
        why = (getattr(cause, "strerror", None) or str(cause)).lower()
    return f"wire-server: cannot listen on {what}: {why}"


class _Listening(StreamServerEndpointService):
    """A port that cannot be had stops the server at start, in one line,
    instead of leaving it running without its API (or a traceback)."""

    # listen() fails at once: raise it from privilegedStartService.
    _raiseSynchronously = True

    def __init__(self, endpoint, factory, what: str):
        super().__init__(endpoint, factory)
        self.what = what

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartFailure(cannot_listen(self.what, e)) from None


class _ListeningUDP(UDPServer):
    def __init__(self, port: int, protocol, interface: str, reactor, what: str):
        super().__init__(port, protocol, interface=interface, reactor=reactor)
        self.what = what

    def _getPort(self):
        try:
            return super()._getPort()
        except CannotListenError as e:
            raise StartFailure(cannot_listen(self.what, e)) from None


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


def _first_join_notes(config: Options) -> list[str]:
    """What first-join.txt says above its command about the URL in it."""
    if is_loopback_url(config["public-url"]):
        return [f"warning: {_loopback_warning(config)}; this file is then rewritten."]
    if config.public_url_from:
        return [
            f"the server URL in this token, {config['public-url']}, comes from {config.public_url_from}; "
            "if nodes reach the server by another, restart it with --public-url URL and this file is rewritten."
        ]
    return []


def _first_join_text(command: str, notes: list[str]) -> str:
    return "".join(f"# {note}\n" for note in notes) + command + "\n"


def _first_join_command(admin: Admin, data_dir: str, notes: list[str]) -> None:
    """On a server's first start, a one-time join key for the first node;
    on later starts, the same key's command kept in step with the public
    URL (and certificate) while the key is unused.

    The command holds a secret, so it goes to a root-only file, not the log.
    """
    path = os.path.join(data_dir, FIRST_JOIN_FILE)
    if not admin.authority.keys():
        created = admin.create_key(reusable=False, expires_in=86400, note="made at first start")
        write_atomically(path, _first_join_text(created["join_command"], notes).encode(), mode=0o600)
        log.info(
            "wire-server: first start; a one-time join command (valid 24 h) is in {path}; more with: wire admin keys create",
            path=path,
        )
        return
    try:
        with open(path) as f:
            old_text = f.read()
        command = next(line for line in old_text.splitlines() if line.startswith(join_command("")))
        secret = decode_join_token(command[len(join_command("")):]).secret
        admin.authority.check_join_key(secret)
    except (OSError, UnicodeDecodeError, StopIteration, JoinTokenError, AuthError):
        # No file, or its key is used, expired or revoked: nothing to keep in step.
        return
    text = _first_join_text(join_command(admin.token(secret)), notes)
    if text != old_text:
        write_atomically(path, text.encode(), mode=0o600)
        log.info("wire-server: {path} rewritten: its join key, still unused, now points at {url}", path=path, url=admin.public_url)
