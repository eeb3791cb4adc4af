"""``twistd wire-node``: options and the service they build."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from wire.keys import KeyFileError, load_or_create_keys
from wire.jointoken import JoinToken, JoinTokenError
from wire.node.servers import server_hosts
from wire.node.config import ConfigError, NodeConfig, default_config_dir, load_config, stun_ports
from wire.node.control import build_control_site, control_socket_path
from wire.node.daemon import NodeDaemon
from wire.node.enroll import (
    coordination_client,
    node_http,
    join_request_path,
    load_credential,
    load_join_request,
    requested_config,
)
from wire.node.lan import LanAddress, underlay_ipv6
from wire.node.proxy import node_proxy
from wire.node.relaystream import RelayStreamClient, stream_endpoint
from wire.proxy import client_endpoint
from wire.node.probe import start_probe
from wire.node.firewall import Firewall, InvalidFirewallConfig
from wire.node.names import MeshNames
from wire.node.routing import NodeRouting
from wire.node.osdns import OsDnsPaths
from wire.node.relay import RelayShim
from wire.node.wireguard import make_wireguard
from wire.runner import ProcessRunner
from wire.stun import detect_nat
from wire.stun.rawport import RawUdpSender, raw_udp_supported

log = Logger()


class Options(usage.Options):
    synopsis = "[--config-dir DIR]"
    longdesc = "Runs the wire node daemon for the node in DIR: its config.json, or the join request 'wire up' left there."
    optParameters = [
        ["config-dir", "c", None, "node configuration directory [$WIRE_CONFIG_DIR, /etc/wire as root, else ~/.wire]"],
    ]

    def postOptions(self) -> None:
        self["config-dir"] = os.path.abspath(self["config-dir"] or default_config_dir())


def makeService(options: Options, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    config_dir = options["config-dir"]
    try:
        start = node_start(config_dir)
        keys = load_or_create_keys(config_dir)
        # A proxy that cannot be used (wire.node.proxy) is named, not a traceback.
        client = coordination_client(reactor, start.config, config_dir, credential=start.credential)
        proxy = node_proxy(start.config, None, config_dir)  # checked by coordination_client just now
    except (ConfigError, KeyFileError) as e:
        raise SystemExit(f"wire-node: {e}")
    config = start.config

    host, stun_a, _ = stun_ports(config.server_url)

    lan_ip = LanAddress(reactor, config.server_url)

    async def probe_nat(raw: bool = False):
        # Our own address lets the probe tell "no NAT at all" from an easy NAT;
        # looking it up here also has it ready for the first registration.
        local_ips = [ip for ip in (await lan_ip.refresh(),) if ip]
        # The replica in use now (the node may have moved: wire.node.servers).
        stun_host, stun_first, stun_second = stun_ports(daemon.config.server_url)
        return await detect_nat(
            reactor, stun_host, stun_first, stun_second, local_port=config.listen_port, timeout=0.5, attempts=3,
            local_ips=local_ips, raw=raw,
        )

    async def recheck_nat():
        # WireGuard holds the port now: the same probe through a raw socket.
        return await probe_nat(raw=True)

    runner = ProcessRunner(reactor)
    wireguard = make_wireguard(runner, config.interface, reactor)
    firewall = node_firewall(runner, config.interface)
    # Root sends the relay's bind frames from WireGuard's port (the kernel path).
    # A grant may name any of the mesh's replicas as its relay, and no other host.
    shim = RelayShim(reactor, host, stun_a, config.listen_port, raw=RawUdpSender(), relay_hosts=server_hosts(config))
    names = MeshNames(reactor, runner, config.interface, OsDnsPaths(state_dir=config_dir), accept_dns=config.accept_dns)
    daemon = NodeDaemon(
        clock=reactor,
        config_dir=config_dir,
        config=config,
        keys=keys,
        wireguard=wireguard,
        client=client,
        probe_nat=probe_nat,
        recheck_nat=recheck_nat if raw_udp_supported() else None,
        lan_ip=lan_ip,
        public_ip6=underlay_ipv6,
        relay=shim,
        start_probe=lambda vpn_ip, subnet: start_probe(reactor, reactor, vpn_ip, subnet),
        join_token=start.token,
        join_pending=start.pending,
        firewall=firewall,
        names=names,
        # Routes beyond the mesh use ip(8) and nftables: Linux only.
        routing_for=(lambda current: NodeRouting(reactor, runner, config.interface, config_dir, current))
        if sys.platform.startswith("linux") else None,
    )
    wireguard.on_lost = lambda reason: Deferred.fromCoroutine(daemon.restore_interface(reason))

    def proxy_changed(wanted: NodeConfig) -> None:
        """`wire set --proxy` on the running daemon: new connections to the
        server (API calls, the relay stream) go through the new proxy; one
        that cannot be used is a ConfigError, and the old one stays."""
        nonlocal proxy
        http = node_http(reactor, wanted, config_dir)
        proxy = node_proxy(wanted, None, config_dir)
        daemon.client.use_http(http)

    daemon.on_proxy_changed = proxy_changed
    # Where UDP to the server is blocked, relayed frames go over TLS on its API port.
    shim.stream = RelayStreamClient(
        reactor,
        lambda: stream_endpoint(
            reactor,
            daemon.config.server_url,
            daemon.config.server_fingerprint,
            via=lambda host, port: client_endpoint(reactor, proxy, host, port),
        ),
        host,
        config.node_id,
        lambda: daemon.client.credential,
        shim.from_stream,
        shim.stream_up,
    )
    top = MultiService()
    daemon.setServiceParent(top)
    control = UNIXServerEndpoint(reactor, control_socket_path(config_dir), mode=0o600, wantPID=True)
    StreamServerEndpointService(control, build_control_site(daemon, reactor, reactor.stop)).setServiceParent(top)
    return top


def node_firewall(runner: ProcessRunner, interface: str) -> Firewall | None:
    """The packet filter for an access policy: nftables, on Linux. None
    elsewhere (or for a name nft cannot take): with a policy, the node then
    holds no peers rather than run open (wire.node.reconciler)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return Firewall(runner, interface)
    except InvalidFirewallConfig as e:
        log.warn("no packet filter for {interface}: {error}", interface=interface, error=e)
        return None


@dataclass(frozen=True)
class NodeStart:
    """What the daemon starts with: its config (saved, or asked for by a
    pending join request), a join token to enroll with, and the credential."""

    config: NodeConfig
    token: JoinToken | None
    credential: str | None
    pending: bool


def node_start(config_dir: str) -> NodeStart:
    """Read the config dir. A pending join request wins over a config.json
    that cannot be read (``wire up --join`` is the way out of one)."""
    request = load_join_request(config_dir)
    try:
        saved = load_config(config_dir)
    except ConfigError:
        if request is None:
            raise
        saved = None
    if request is None:
        if saved is None:
            raise ConfigError(
                f"no node configured in {config_dir}; join first: sudo wire up --join TOKEN (or, for an open server, --server URL)"
            )
        return NodeStart(saved, None, load_credential(config_dir), pending=False)
    try:
        token = request.join_token()
    except JoinTokenError as e:
        raise ConfigError(f"{join_request_path(config_dir)}: {e}")
    config = requested_config(config_dir, saved, request)
    same_server = saved is None or (saved.server_url, saved.server_fingerprint) == (config.server_url, config.server_fingerprint)
    # A credential is never sent to another server than the one that issued it.
    credential = load_credential(config_dir) if same_server else None
    return NodeStart(config, token, credential, pending=True)
