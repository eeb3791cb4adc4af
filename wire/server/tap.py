"""``twistd wire-server``: options and the service they build."""

from __future__ import annotations

import fcntl
import os

from twisted.application.internet import StreamServerEndpointService, UDPServer
from twisted.application.service import MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from wire.addressing import AddressPool, parse_subnet
from wire.protocol import ProtocolError
from wire.server.api import build_site
from wire.server.coordinator import Coordinator, MaintenanceService
from wire.server.registry import DEFAULT_EXPIRE_AFTER, DEFAULT_OFFLINE_AFTER, Registry
from wire.server.seed_import import SeedStateError, import_seed_state
from wire.server.store import StoreError, open_store
from wire.stun import StunServerProtocol

log = Logger()

DEFAULT_PORT = 8787
DEFAULT_DATA_DIR = "/var/lib/wire"
DEFAULT_SUBNET = "10.99.0.0/16"


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
    ]

    def postOptions(self) -> None:
        port_text = self["port"] or os.environ.get("WIRE_PORT") or str(DEFAULT_PORT)
        self["port"] = _number("port", port_text, int, 1, 65533)
        self["data-dir"] = self["data-dir"] or os.environ.get("WIRE_DATA_DIR") or DEFAULT_DATA_DIR
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


def _number(option: str, text: str, kind, low: float, high: float):
    try:
        value = kind(text)
    except ValueError:
        raise usage.UsageError(f"--{option}: {text!r} is not {'an integer' if kind is int else 'a number'}")
    if not low <= value <= high:
        raise usage.UsageError(f"--{option}: {value} is outside {low}..{high}")
    return value


class CoordinationServer(MultiService):
    """The server's services, plus the data-dir lock they run under."""

    def __init__(self, coordinator: Coordinator, lock_file):
        super().__init__()
        self.coordinator = coordinator
        self._lock_file = lock_file

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
    except BaseException:
        lock_file.close()
        raise
    return Coordinator(reactor, store, registry, relay_port=config["port"] + 1), lock_file


def makeService(config: Options, reactor=None) -> CoordinationServer:
    if reactor is None:
        from twisted.internet import reactor
    try:
        coordinator, lock_file = build_coordinator(config, reactor)
    except (StoreError, SeedStateError) as e:
        raise SystemExit(f"wire-server: {e}")

    server = CoordinationServer(coordinator, lock_file)
    port, interface = config["port"], config["interface"]
    endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    http = StreamServerEndpointService(endpoint_type(reactor, port, interface=interface), build_site(coordinator))
    http.setServiceParent(server)
    observe = lambda outcome: coordinator.metrics.stun_datagrams.labels(outcome).inc()  # noqa: E731
    # The seed's STUN port also carries the relay; port+2 is STUN only.
    relay = coordinator.relay.handle
    for udp_port, relay_handler in ((port + 1, relay), (port + 2, None)):
        protocol = StunServerProtocol(observe=observe, relay=relay_handler)
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
    log.warn("wire-server: authentication is not implemented yet: any client that reaches this port can register")
    return server
