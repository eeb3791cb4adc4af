"""``twistd wire-node``: options and the service they build."""

from __future__ import annotations

import os

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.python import usage

from wire.keys import KeyFileError, load_or_create_keys
from wire.node.config import ConfigError, default_config_dir, load_config, stun_ports
from wire.node.control import build_control_site, control_socket_path
from wire.node.daemon import NodeDaemon
from wire.node.enroll import coordination_client
from wire.node.lan import LanAddress
from wire.node.relay import RelayShim
from wire.node.wireguard import make_wireguard
from wire.runner import ProcessRunner
from wire.stun import detect_nat


class Options(usage.Options):
    synopsis = "[--config-dir DIR]"
    longdesc = "Runs the wire node daemon for the node configured in DIR (written by 'wire up')."
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
        config = load_config(config_dir)
        if config is None:
            raise ConfigError(f"no node configured in {config_dir}; join first: sudo wire up --join TOKEN (or, for an open server, --server URL)")
        keys = load_or_create_keys(config_dir)
    except (ConfigError, KeyFileError) as e:
        raise SystemExit(f"wire-node: {e}")

    host, stun_a, stun_b = stun_ports(config.server_url)

    lan_ip = LanAddress(reactor, config.server_url)

    async def probe_nat():
        # Our own address lets the probe tell "no NAT at all" from an easy NAT;
        # looking it up here also has it ready for the first registration.
        local_ips = [ip for ip in (await lan_ip.refresh(),) if ip]
        return await detect_nat(
            reactor, host, stun_a, stun_b, local_port=config.listen_port, timeout=0.5, attempts=3, local_ips=local_ips
        )

    runner = ProcessRunner(reactor)
    wireguard = make_wireguard(runner, config.interface, reactor)
    daemon = NodeDaemon(
        clock=reactor,
        config_dir=config_dir,
        config=config,
        keys=keys,
        wireguard=wireguard,
        client=coordination_client(reactor, config, config_dir),
        probe_nat=probe_nat,
        lan_ip=lan_ip,
        relay=RelayShim(reactor, host, stun_a, config.listen_port),
    )
    wireguard.on_lost = lambda reason: Deferred.fromCoroutine(daemon.restore_interface(reason))
    top = MultiService()
    daemon.setServiceParent(top)
    control = UNIXServerEndpoint(reactor, control_socket_path(config_dir), mode=0o600, wantPID=True)
    StreamServerEndpointService(control, build_control_site(daemon, reactor, reactor.stop)).setServiceParent(top)
    return top
