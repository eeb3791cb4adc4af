"""The node's configuration: where it lives, what it holds, how it is saved.

``config.json`` keeps the seed's field names (server_url, node_name, node_id,
vpn_ip, listen_port, nat_port) so a seed user's file reads unchanged. It is
written atomically with mode 0600. A file that cannot be read or parsed is a
clear error naming the file, never silently replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from wire.addressing import parse_subnet
from wire.fsutil import write_atomically
from wire.node.ifname import parse_interface_name
from wire.node.trust import DEFAULT_MAX_PEERS, SEED_SUBNET, mesh_subnet, mesh_subnet6, own_address, parse_max_peers
from wire.protocol import ProtocolError, parse_ip_address, parse_nat_type, parse_node_id, parse_node_name, parse_port
from wire.node.settings import SETTINGS, parse_settings, with_settings
from wire.urls import check_one_scheme, parse_server_url, parse_server_urls  # noqa: F401  (node modules import it from here)

CONFIG_FILE = "config.json"
SYSTEM_CONFIG_DIR = "/etc/wire"
USER_CONFIG_DIR = "~/.wire"
DEFAULT_LISTEN_PORT = 51820
DEFAULT_INTERFACE = "wire0"
DEFAULT_SERVER_PORT = 8787


class ConfigError(Exception):
    """The configuration is missing, unreadable or invalid; says which file and why."""


@dataclass
class NodeConfig:
    # The server this node uses now: one of server_urls (wire.node.servers).
    server_url: str
    node_name: str
    node_id: str
    listen_port: int = DEFAULT_LISTEN_PORT
    interface: str = DEFAULT_INTERFACE
    vpn_ip: str = ""
    vpn_subnet: str = ""
    # The IPv6 mesh address and the mesh's IPv6 subnet ("": the server gives the mesh no IPv6).
    vpn_ip6: str = ""
    vpn_subnet6: str = ""
    nat_port: int = 0
    nat_type: str = ""
    # SHA-256 of the server's self-signed certificate (from the join token);
    # "" means a CA-signed certificate checked by hostname, or plain HTTP.
    server_fingerprint: str = ""
    # At most this many peers are held; the rest of a netmap is skipped.
    max_peers: int = DEFAULT_MAX_PEERS
    # Settings `wire set` changes on a running node (wire.node.settings):
    # point the machine's resolver at the mesh DNS (--accept-dns=false: leave it alone),
    accept_dns: bool = True
    # install the subnet routes peers offer (off by default: a route can shadow a local network),
    accept_routes: bool = False
    # offer these networks (a subnet router), and to be an exit node,
    advertise_routes: tuple[str, ...] = ()
    advertise_exit_node: bool = False
    # masquerade traffic from the mesh into the routed networks,
    snat_subnet_routes: bool = True
    # send this machine's internet traffic through that peer ("": none).
    exit_node: str = ""
    # The exit's node id, pinned when a running daemon was told its name.
    exit_node_id: str = ""
    exit_node_allow_lan_access: bool = False
    # The HTTP proxy for the server's API, http://host:port ("": HTTPS_PROXY and
    # the rest from the environment, if any); its credentials: wire.node.proxy.
    proxy: str = ""
    # Every replica of the mesh's server, in the order they are tried
    # (from the join token); () for a server without replicas.
    server_urls: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode() + b"\n"


def default_config_dir() -> str:
    """``$WIRE_CONFIG_DIR``, else /etc/wire for root, else ~/.wire."""
    explicit = os.environ.get("WIRE_CONFIG_DIR")
    if explicit:
        return os.path.abspath(explicit)
    if os.geteuid() == 0:
        return SYSTEM_CONFIG_DIR
    return os.path.expanduser(USER_CONFIG_DIR)


def config_path(config_dir: str) -> str:
    return os.path.join(config_dir, CONFIG_FILE)


def stun_ports(server_url: str) -> tuple[str, int, int]:
    """The server's host and STUN ports: its HTTP port + 1 (also the relay)
    and + 2, the seed's convention."""
    parts = urlsplit(server_url)
    port = parts.port or DEFAULT_SERVER_PORT
    return parts.hostname or "", port + 1, port + 2


def validate(data: dict[str, Any]) -> NodeConfig:
    known = {f.name for f in fields(NodeConfig)}
    values = {k: v for k, v in data.items() if k in known}
    config = NodeConfig(
        server_url=parse_server_url(values.get("server_url")),
        node_name=parse_node_name(values.get("node_name")),
        node_id=parse_node_id(values.get("node_id")),
        listen_port=parse_port(values.get("listen_port", DEFAULT_LISTEN_PORT), "listen_port"),
        interface=parse_interface_name(values.get("interface", DEFAULT_INTERFACE)),
    )
    if values.get("vpn_subnet"):
        subnet = values["vpn_subnet"]
        if not isinstance(subnet, str):
            raise ProtocolError("vpn_subnet", "must be a string like 10.99.0.0/16")
        if "/" not in subnet:
            subnet = str(parse_subnet(subnet))  # the seed's prefix form, 10.99
        # The mesh subnet fixed at enrollment: only a sane one (wire.node.trust).
        config.vpn_subnet = str(mesh_subnet(subnet))
    if values.get("vpn_ip"):
        vpn_ip = parse_ip_address(values["vpn_ip"], "vpn_ip")
        config.vpn_ip = own_address(vpn_ip, mesh_subnet(config.vpn_subnet or SEED_SUBNET))
    if values.get("vpn_subnet6"):
        # Fixed at enrollment like the IPv4 one (wire.node.trust).
        config.vpn_subnet6 = str(mesh_subnet6(values["vpn_subnet6"]))
    if values.get("vpn_ip6"):
        if not config.vpn_subnet6:
            raise ProtocolError("vpn_ip6", "an IPv6 mesh address needs vpn_subnet6, the mesh's IPv6 subnet")
        vpn_ip6 = parse_ip_address(values["vpn_ip6"], "vpn_ip6")
        config.vpn_ip6 = own_address(vpn_ip6, mesh_subnet6(config.vpn_subnet6), "vpn_ip6")
    # From JSON a list, from a config object (asdict) a tuple.
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k in SETTINGS}
    config = with_settings(config, parse_settings(given))
    if values.get("exit_node_id"):
        config.exit_node_id = parse_node_id(values["exit_node_id"], "exit_node_id")
    if "max_peers" in values:
        config.max_peers = parse_max_peers(values["max_peers"])
    if values.get("server_urls"):
        urls = parse_server_urls(values["server_urls"])
        check_one_scheme((config.server_url, *urls), "server_urls")
        # The one in use is always one of them.
        config.server_urls = urls if config.server_url in urls else (config.server_url, *urls)
    if values.get("nat_port"):
        config.nat_port = parse_port(values["nat_port"], "nat_port")
    if values.get("nat_type"):
        config.nat_type = parse_nat_type(values["nat_type"])
    if values.get("server_fingerprint"):
        fingerprint = values["server_fingerprint"]
        if not isinstance(fingerprint, str) or not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
            raise ProtocolError("server_fingerprint", "must be 64 hex digits (a SHA-256 fingerprint)")
        config.server_fingerprint = fingerprint
    return config


def load_config(config_dir: str) -> NodeConfig | None:
    """The saved config, or None if there is none yet."""
    path = config_path(config_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); fix it or remove it and run 'wire up' again")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    try:
        return validate(data)
    except ProtocolError as e:
        raise ConfigError(f"{path}: {e}")


def save_config(config_dir: str, config: NodeConfig) -> None:
    os.makedirs(config_dir, mode=0o700, exist_ok=True)
    write_atomically(config_path(config_dir), config.to_json(), mode=0o600)


def generate_node_id(config_dir: str) -> str:
    """The seed's identity, sha256(hostname-MAC); a non-default config dir
    is mixed in so several nodes can share one host (the lab)."""
    seed = f"{socket.gethostname()}-{uuid.getnode()}"
    if os.path.abspath(config_dir) not in (SYSTEM_CONFIG_DIR, os.path.expanduser(USER_CONFIG_DIR)):
        seed += f"-{os.path.abspath(config_dir)}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def default_node_name() -> str:
    label = socket.gethostname().split(".")[0].lower()
    try:
        return parse_node_name(label)
    except ProtocolError:
        return "node-" + hashlib.sha256(label.encode()).hexdigest()[:8]
