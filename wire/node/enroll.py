"""Joining a mesh with a join token: enrollment and the node's credential.

The credential is the node's proof of identity towards the server. It is
kept in its own file (0600, written atomically), never on a command line,
never in a log.
"""

from __future__ import annotations

import os

from wire.client import CoordinationClient, make_http_client
from wire.fsutil import write_atomically
from wire.jointoken import JoinToken
from wire.keys import load_or_create_keys
from wire.node.config import NodeConfig, generate_node_id, load_config, save_config
from wire.node.lan import detect_lan_ip
from wire.protocol import Registration

CREDENTIAL_FILE = "credential"


class EnrollError(Exception):
    pass


def credential_path(config_dir: str) -> str:
    return os.path.join(config_dir, CREDENTIAL_FILE)


def load_credential(config_dir: str) -> str | None:
    try:
        with open(credential_path(config_dir)) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def forget_credential(config_dir: str) -> None:
    try:
        os.unlink(credential_path(config_dir))
    except FileNotFoundError:
        pass


def coordination_client(reactor, config: NodeConfig, config_dir: str, persistent: bool = True) -> CoordinationClient:
    """The client a node uses: pinned TLS and its credential, as configured."""
    http = make_http_client(reactor, persistent=persistent, tls_fingerprint=config.server_fingerprint)
    return CoordinationClient(http, config.server_url, load_credential(config_dir))


async def enroll(
    reactor, config_dir: str, token: JoinToken, node_name: str, listen_port: int, interface: str
) -> NodeConfig:
    """Enroll this node with the join token's server; saves config and credential."""
    os.makedirs(config_dir, mode=0o700, exist_ok=True)
    _, public_key = load_or_create_keys(config_dir)
    saved = load_config(config_dir)
    node_id = saved.node_id if saved else generate_node_id(config_dir)
    registration = Registration(
        node_id=node_id,
        node_name=node_name,
        wg_public_key=public_key,
        port=listen_port,
        nat_port=listen_port,
        lan_ip=await detect_lan_ip(reactor, token.server_url) or None,
    )
    http = make_http_client(reactor, persistent=False, tls_fingerprint=token.fingerprint)
    answer = await CoordinationClient(http, token.server_url).enroll(registration, token.secret)
    credential = answer.credential
    if not credential:
        raise EnrollError("the server's answer has no usable credential")
    write_atomically(credential_path(config_dir), credential.encode() + b"\n", mode=0o600)
    config = NodeConfig(
        server_url=token.server_url,
        server_fingerprint=token.fingerprint,
        node_name=answer.node_name or node_name,
        node_id=node_id,
        listen_port=listen_port,
        interface=interface,
        vpn_ip=answer.vpn_ip,
        vpn_subnet=answer.vpn_subnet,
    )
    save_config(config_dir, config)
    return config
