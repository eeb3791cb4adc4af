"""Joining a mesh: the join request ``wire up`` leaves for the daemon, and
the node's credential.

``wire up`` writes what it was asked (a join token, or an open server's
URL, and the name, port and interface) to ``join.json``; the daemon reads
it at start, probes STUN, enrolls (or registers) with its real NAT facts,
writes ``config.json`` and deletes the request. The CLI never enrolls and
never writes ``config.json``.

The join token and the credential are secrets: files of their own (0600,
written atomically), never on a command line, never in a log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from treq.client import HTTPClient

from wire.client import CoordinationClient, make_http_client
from wire.fsutil import write_atomically
from wire.jointoken import JoinToken, JoinTokenError, decode_join_token
from wire.node.config import (
    ConfigError,
    NodeConfig,
    default_node_name,
    generate_node_id,
    parse_server_url,
)
from wire.node.ifname import parse_interface_name
from wire.node.proxy import node_proxy
from wire.protocol import ProtocolError, parse_node_name, parse_port
from wire.node.servers import servers_of
from wire.node.settings import parse_settings, with_settings
from wire.protocol.fields import parse_object
from wire.proxy import ProxyConfigError

CREDENTIAL_FILE = "credential"
JOIN_FILE = "join.json"


class EnrollError(Exception):
    pass


@dataclass(frozen=True)
class JoinRequest:
    """What ``wire up`` asked for; empty fields keep the saved config's value."""

    server_url: str
    token: str = ""  # the whole join token (a secret); "" for an open server
    node_name: str = ""
    listen_port: int = 0
    interface: str = ""
    # Settings given with it (wire.node.settings, checked); those not given stay as saved.
    settings: dict[str, Any] = field(default_factory=dict)

    def join_token(self) -> JoinToken | None:
        return decode_join_token(self.token) if self.token else None


def join_request_path(config_dir: str) -> str:
    return os.path.join(config_dir, JOIN_FILE)


def save_join_request(config_dir: str, request: JoinRequest) -> None:
    os.makedirs(config_dir, mode=0o700, exist_ok=True)
    data = json.dumps(asdict(request), indent=2).encode() + b"\n"
    write_atomically(join_request_path(config_dir), data, mode=0o600)


def load_join_request(config_dir: str) -> JoinRequest | None:
    """The pending join request, or None; a damaged one is a ConfigError."""
    path = join_request_path(config_dir)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}")
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); run 'wire up --join TOKEN' again")
    try:
        return _validate_request(data)
    except (ProtocolError, JoinTokenError, TypeError) as e:
        raise ConfigError(f"{path}: {e}; run 'wire up --join TOKEN' again")


def _validate_request(data: Any) -> JoinRequest:
    if not isinstance(data, dict):
        raise TypeError("must hold a JSON object")
    request = JoinRequest(
        server_url=parse_server_url(data.get("server_url")),
        token=str(data.get("token") or ""),
        node_name=parse_node_name(data["node_name"]) if data.get("node_name") else "",
        listen_port=parse_port(data["listen_port"], "listen_port") if data.get("listen_port") else 0,
        interface=parse_interface_name(data["interface"]) if data.get("interface") else "",
        settings=parse_settings(parse_object(data.get("settings") or {}, "settings")),
    )
    token = request.join_token()
    if token is not None and token.server_url != request.server_url:
        raise TypeError("the token's server is not the request's")
    return request


def forget_join_request(config_dir: str) -> None:
    _unlink(join_request_path(config_dir))


def requested_config(config_dir: str, saved: NodeConfig | None, request: JoinRequest) -> NodeConfig:
    """The config the daemon starts with: the saved one (or a new node's)
    with what the request changes. Another server means a new assignment."""
    token = request.join_token()
    config = saved or NodeConfig(server_url=request.server_url, node_name=default_node_name(), node_id=generate_node_id(config_dir))
    if token is not None:
        fingerprint = token.fingerprint
    else:  # an open server's URL: the same server keeps what it pinned
        fingerprint = config.server_fingerprint if config.server_url == request.server_url else ""
    if request.server_url not in servers_of(config) or config.server_fingerprint != fingerprint:
        # A new server assigns its own address and learns our NAT afresh.
        config = replace(
            config,
            server_url=request.server_url,
            server_fingerprint=fingerprint,
            vpn_ip="",
            vpn_subnet="",
            nat_port=0,
            nat_type="",
        )
    if token is not None:
        # The token names the mesh's replicas now (one of which may be in use).
        urls = token.server_urls
        current = config.server_url if config.server_url in urls else request.server_url
        config = replace(config, server_url=current, server_urls=urls if len(urls) > 1 else ())
    changes: dict[str, Any] = {}
    if request.node_name:
        changes["node_name"] = request.node_name
    if request.listen_port:
        changes["listen_port"] = request.listen_port
    if request.interface:
        changes["interface"] = request.interface
    return with_settings(replace(config, **changes), request.settings)


# -- the credential ------------------------------------------------------------------


def credential_path(config_dir: str) -> str:
    return os.path.join(config_dir, CREDENTIAL_FILE)


def load_credential(config_dir: str) -> str | None:
    try:
        with open(credential_path(config_dir)) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def save_credential(config_dir: str, credential: str) -> None:
    if not credential or len(credential) > 200 or not credential.isprintable():
        raise EnrollError("the server's answer has no usable credential")
    write_atomically(credential_path(config_dir), credential.encode() + b"\n", mode=0o600)


def forget_credential(config_dir: str) -> None:
    _unlink(credential_path(config_dir))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def coordination_client(
    reactor, config: NodeConfig, config_dir: str, persistent: bool = True, credential: str | None = "",
    environ: Mapping[str, str] | None = None,
) -> CoordinationClient:
    """The client a node uses: pinned TLS and its credential, as configured
    (``credential=None``: none, as for a server it has not enrolled with),
    through its proxy (wire.node.proxy; ``environ``: os.environ unless given).
    A proxy that cannot be used is a ConfigError."""
    http = node_http(reactor, config, config_dir, persistent, environ)
    return CoordinationClient(http, config.server_url, load_credential(config_dir) if credential == "" else credential)


def node_http(
    reactor, config: NodeConfig, config_dir: str, persistent: bool = True, environ: Mapping[str, str] | None = None,
) -> HTTPClient:
    """The node's HTTP client to its server: pinned TLS, through its proxy.
    A proxy that cannot be used is a ConfigError."""
    try:
        proxy = node_proxy(config, environ, config_dir)
    except ProxyConfigError as e:
        raise ConfigError(str(e))
    return make_http_client(reactor, persistent=persistent, tls_fingerprint=config.server_fingerprint, proxy=proxy)
