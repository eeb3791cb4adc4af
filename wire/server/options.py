"""``twistd wire-server``'s options: the command line, the environment and
a ``--config`` file, each value checked once."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

from twisted.logger import Logger
from twisted.python import usage

from wire.addressing import parse_subnet, parse_subnet6
from wire.datadir import DEFAULT_DATA_DIR, admin_socket_path
from wire.protocol import ProtocolError
from wire.protocol.dns import DEFAULT_DOMAIN, parse_mesh_domain
from wire.server.configfile import ConfigFileError, read_config_file
from wire.server.relay import DEFAULT_BURST_BYTES, DEFAULT_RATE_BYTES
from wire.server.relayports import parse_port_range
from wire.server.registry import DEFAULT_EXPIRE_AFTER, DEFAULT_OFFLINE_AFTER
from wire.urls import check_one_scheme, is_loopback_host, parse_server_urls

log = Logger()

log = Logger()


DEFAULT_PORT = 8787
MIB = 1024 * 1024
# Ports of their own for relay session sides (the kernel path,
# wire.server.relayports): from port+3, two per relayed pair.
DIRECT_PORTS_FROM, DIRECT_PORTS_COUNT = 3, 200
DEFAULT_SUBNET = "10.99.0.0/16"

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
#   the port. The relay, on the same port, limits each session itself;
# - path: a node reports a failed direct path at most once per attempt per
#   peer (15 s, then minutes apart); a burst of 200 lets a site whose
#   outage failed many pairs at once report them all.
DEFAULT_RATE_LIMITS = {"register": (5.0, 50.0), "enroll": (1.0, 10.0), "stun": (20.0, 40.0), "path": (5.0, 200.0)}

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
        ["database", None, None, "the registry in PostgreSQL, a libpq URL postgresql://USER@HOST:PORT/DB (password: PGPASSFILE or --database-password-file) [SQLite in the data dir]"],
        ["database-password-file", None, None, "a file holding --database's password (read once at start)"],
        ["replica-name", None, None, "this replica's name among those on one --database, in /metrics, /health and the logs [HOSTNAME:PORT]"],
        ["subnet", None, None, f"VPN subnet, CIDR or the seed's prefix form (10.99) [$WIRE_VPN_SUBNET or {DEFAULT_SUBNET}]"],
        ["subnet6", None, None, "IPv6 mesh prefix, a ULA /48../64 in fd00::/8 [$WIRE_VPN_SUBNET6, or the one this server drew at its first start]"],
        ["offline-after", None, None, f"seconds without heartbeat before a node shows offline [{DEFAULT_OFFLINE_AFTER:.0f}]"],
        ["expire-after", None, None, f"seconds offline before a node leaves the netmap [{DEFAULT_EXPIRE_AFTER:.0f}]"],
        ["import-seed-state", None, None, "import the nodes of a seed server's state.json before serving"],
        ["import-sqlite", None, None, "copy the SQLite registry of this data dir into --database before serving (once; nodes need no re-join)"],
        ["dns-domain", None, None, f"the mesh's DNS domain: every node answers NAME.DOMAIN; empty: no mesh DNS [{DEFAULT_DOMAIN}]"],
        ["policy", None, None, "an access policy file (HuJSON, Tailscale's ACL shape): put in force at start, again on SIGHUP"],
        ["tls-cert", None, None, "PEM certificate to serve HTTPS with [a self-signed one, made once in the data dir]"],
        ["tls-key", None, None, "PEM private key of --tls-cert"],
        ["rate-limit-register", None, None, "POST /register calls per client address, as RATE/BURST [%g/%g]" % DEFAULT_RATE_LIMITS["register"]],
        ["rate-limit-enroll", None, None, "POST /enroll calls per client address, as RATE/BURST [%g/%g]" % DEFAULT_RATE_LIMITS["enroll"]],
        ["rate-limit-path", None, None, "POST /path reports per client address, as RATE/BURST [%g/%g]" % DEFAULT_RATE_LIMITS["path"]],
        [
            "rate-limit-relay", None, None,
            "each relay session side's traffic, in the kernel or in Python, as MiB/s/burst MiB [%g/%g]"
            % (DEFAULT_RATE_BYTES / MIB, DEFAULT_BURST_BYTES / MIB),
        ],
        ["rate-limit-stun", None, None, "STUN and seed JSON datagrams per source address, as RATE/BURST [%g/%g]" % DEFAULT_RATE_LIMITS["stun"]],
        [
            "relay-direct-ports", None, None,
            f"UDP ports LOW-HIGH the relay gives session sides of their own, so the kernel forwards WireGuard's packets; off: none [port+{DIRECT_PORTS_FROM} to port+{DIRECT_PORTS_FROM + DIRECT_PORTS_COUNT - 1}]",
        ],
    ]
    optFlags = [
        ["open", None, "the seed's behaviour: no join keys or credentials, plain HTTP (trusted networks only)"],
        ["plain-http", None, "serve plain HTTP (behind a TLS-terminating proxy); authentication stays on"],
        ["no-rate-limits", None, "no rate limits per client address (benchmarks only)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["trusted-proxy"] = []
        self["public-url"] = None
        self["public-urls"] = []
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

    def parseArgs(self, *args: str) -> None:
        # usage.Options says "Wrong number of arguments." without naming one.
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}: wire-server takes options only (e.g. --port 8787)")

    def opt_trusted_proxy(self, address: str) -> None:
        """a proxy (address or network) whose X-Forwarded-For header names the client; repeatable [none]"""
        self["trusted-proxy"].append(_network("--trusted-proxy", address))

    def opt_public_url(self, url: str) -> None:
        """the URL nodes use to reach this server, put in join tokens; repeatable: the first is this replica's, the others those of its replicas (same database and certificate), which nodes fail over to [https://HOSTNAME:PORT]"""
        self["public-urls"].append(url)

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
            elif key == "public-url":
                if not self["public-urls"]:
                    self["public-urls"] = [value] if isinstance(value, str) else list(value)
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
        self._database_options()
        self["replica-name"] = _replica_name(self.label("replica-name"), self["replica-name"], self["port"])
        subnet_text, subnet_label = self._or_environment("subnet", "WIRE_VPN_SUBNET", DEFAULT_SUBNET)
        try:
            self["subnet"] = parse_subnet(subnet_text)
        except ProtocolError as e:
            raise usage.UsageError(f"{subnet_label}: {e.problem}")
        # None: the prefix kept in the registry (wire.server.meshprefix).
        subnet6_text, subnet6_label = self._or_environment("subnet6", "WIRE_VPN_SUBNET6", "")
        try:
            self["subnet6"] = parse_subnet6(subnet6_text) if subnet6_text else None
        except ProtocolError as e:
            raise usage.UsageError(f"{subnet6_label}: {e.problem}")
        self["offline-after"] = _number(
            self.label("offline-after"), self["offline-after"] or str(DEFAULT_OFFLINE_AFTER), float, 5, 7 * 86400
        )
        self["expire-after"] = _number(
            self.label("expire-after"), self["expire-after"] or str(DEFAULT_EXPIRE_AFTER), float, 60, 365 * 86400
        )
        if self["expire-after"] <= self["offline-after"]:
            raise usage.UsageError(f"{self.label('expire-after')} must be longer than {self.label('offline-after')}")
        self["dns-domain"] = _dns_domain(self.label("dns-domain"), self["dns-domain"])
        if self["import-sqlite"]:
            if not self["database"]:
                raise usage.UsageError(f"{self.label('import-sqlite')} needs --database (the PostgreSQL database to import into)")
            if not os.path.isdir(self["import-sqlite"]):
                raise usage.UsageError(f"{self.label('import-sqlite')}: {self['import-sqlite']} is not a directory")
            self["import-sqlite"] = os.path.abspath(self["import-sqlite"])
        seed = self["import-seed-state"]
        if seed is not None and not os.path.isfile(seed):
            raise usage.UsageError(f"{self.label('import-seed-state')}: {seed} is not a file")
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        for option in ("tls-cert", "tls-key"):
            if self[option] and not os.path.isfile(self[option]):
                raise usage.UsageError(f"{self.label(option)}: {self[option]} is not a file")
        self["tls"] = not (self["plain-http"] or (self["open"] and not self["tls-cert"]))
        relay = self["rate-limit-relay"]
        self["rate-limit-relay"] = (
            tuple(v * MIB for v in _rate_limit(self.label("rate-limit-relay"), relay)) if relay else (DEFAULT_RATE_BYTES, DEFAULT_BURST_BYTES)
        )
        self["relay-direct-ports"] = _direct_ports(self.label("relay-direct-ports"), self["relay-direct-ports"], self["port"])
        for name, default in DEFAULT_RATE_LIMITS.items():
            option = f"rate-limit-{name}"
            self[option] = _rate_limit(self.label(option), self[option]) if self[option] else default
        # How the default public URL was found ("" when given), for the log.
        self.public_url_from = ""
        # The replicas' URLs, after this one's in every join token (wire.node.servers).
        self["replica-urls"] = ()
        if self["public-urls"]:
            try:
                urls = parse_server_urls(self["public-urls"], "public-url")
                check_one_scheme(urls, "public-url")
            except ProtocolError as e:
                raise usage.UsageError(f"{self.label('public-url')}: {e.problem}")
            if len(urls) > 1 and not self["database"]:
                # Replicas share one database; separate SQLite files are separate meshes.
                raise usage.UsageError(
                    f"{self.label('public-url')} names replicas ({', '.join(urls[1:])}), which need --database "
                    "(one PostgreSQL database that every replica uses)"
                )
            self["public-url"], self["replica-urls"] = urls[0], urls[1:]
        else:
            if self["interface"] not in ("", "0.0.0.0", "::"):
                host, self.public_url_from = self["interface"], "--interface"
            else:
                host, self.public_url_from = machine_name(self.machine_names()), "this machine's name"
            host = f"[{host}]" if ":" in host else host
            self["public-url"] = f"{'https' if self['tls'] else 'http'}://{host}:{self['port']}"

    def _database_options(self) -> None:
        """--database checked (never shown with its password), and the
        password file read: ``database-password`` (None: libpq finds it)."""
        self["database-password"] = None
        url = self["database"]
        if not url:
            if self["database-password-file"]:
                raise usage.UsageError(f"{self.label('database-password-file')} needs --database")
            self["database"] = None
            return
        from wire.server.pgstore import check_database_url, redact, url_has_password

        try:
            check_database_url(url)
        except ValueError as e:
            raise usage.UsageError(f"{self.label('database')}: {e}")
        if url_has_password(url):
            log.warn(
                "wire-server: the password is in the URL of --database ({url}), which other users of this machine "
                "may see in its process list: use --database-password-file or PGPASSFILE",
                url=redact(url),
            )
        path = self["database-password-file"]
        if path:
            try:
                with open(path) as f:
                    password = f.read().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"{self.label('database-password-file')}: cannot read {path}: {e.__class__.__name__}: {getattr(e, 'strerror', '') or e}")
            if not password:
                raise usage.UsageError(f"{self.label('database-password-file')}: {path} is empty")
            self["database-password"] = password

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
_CONFIG_KINDS = {
    "port": "integer", "offline-after": "number", "expire-after": "number", "trusted-proxy": "list", "public-url": "text-or-list",
}
_CONFIG_PATHS = ("data-dir", "import-seed-state", "import-sqlite", "tls-cert", "tls-key", "database-password-file")


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


def _dns_domain(label: str, text: str | None) -> str | None:
    """The mesh domain; None for an empty value: no mesh DNS (nodes are told
    to drop theirs), the admin's settings kept for when it has one again."""
    if text is None:
        return DEFAULT_DOMAIN
    if not text:
        return None
    try:
        return parse_mesh_domain(text, "domain")
    except ProtocolError as e:
        raise usage.UsageError(f"{label}: {e.problem}")


def _direct_ports(label: str, text: str | None, port: int) -> tuple[int, int] | None:
    """The relay's side ports, clear of the server's own three."""
    if text is None:
        low = port + DIRECT_PORTS_FROM
        return (low, min(low + DIRECT_PORTS_COUNT - 1, 65535)) if low <= 65535 else None
    try:
        found = parse_port_range(text)
    except ValueError as e:
        raise usage.UsageError(f"{label}: {e}")
    if found is not None and found[0] <= port + 2 and port <= found[1]:
        raise usage.UsageError(f"{label}: {text} overlaps the server's ports {port}-{port + 2}")
    return found


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


def _replica_name(label: str, name: str | None, port: int) -> str:
    if name is None:
        return f"{socket.gethostname()}:{port}"
    if not name or len(name) > 64 or not name.isprintable() or any(c.isspace() for c in name):
        raise usage.UsageError(f"{label}: {name!r} is not a name (1 to 64 printable characters, no spaces)")
    return name
