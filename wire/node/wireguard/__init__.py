"""The node's WireGuard interface: create or adopt it, keep its peers in step.

One IWireGuard drives one interface through an IProcessRunner (argument lists,
never a shell; the private key only ever on stdin):

- LinuxWireGuard: kernel WireGuard when ``ip link add NAME type wireguard``
  works, else ``wireguard-go -f NAME`` started and supervised by the daemon;
- MacWireGuard: ``wireguard-go -f utun`` with the real utunN name learned from
  ``WG_TUN_NAME_FILE``, addressed with ifconfig and routed with route.

An interface that already exists and answers ``wg`` is adopted, never
deleted: a daemon restart must not drop every tunnel.  Peers are applied as a
diff against the last known state, in one ``wg set`` spawn.

Supervision: a wireguard-go we started is our child, and its exit is noticed
at once.  An interface we did not start (kernel, or a wireguard-go adopted
from a daemon that was killed) is checked every ``check_interval`` seconds
with ``wg show NAME listen-port``: one short spawn through the same runner,
so it works inside a network namespace and against the scripted fake (an
in-process probe of the UAPI socket would do neither, and would say nothing
about a kernel interface).  Either way ``on_lost(reason)`` tells the daemon,
which calls up() and apply() again to restore the tunnel.

Where each part lives:

- ``model``: PeerConfig, PeerStatus, InterfaceStatus, the errors, and the
  validation of every value before it reaches an argv;
- ``dump``: the parser of ``wg show NAME dump``;
- ``diff``: the ``wg set`` arguments that make the peers match;
- ``interface``: IWireGuard, the seam the daemon drives (and fakes provide);
- ``base``: what both backends share (adoption, peers, status, supervision);
- ``linux``, ``macos``: the two backends;
- ``factory``: make_wireguard, the backend for this platform.

The public names are re-exported here.
"""

from wire.node.wireguard.diff import diff_peers, peer_arguments
from wire.node.wireguard.dump import parse_dump
from wire.node.wireguard.factory import make_wireguard
from wire.node.wireguard.interface import IWireGuard
from wire.node.wireguard.linux import LinuxWireGuard
from wire.node.wireguard.macos import WIREGUARD_RUN_DIR, MacWireGuard
from wire.node.wireguard.model import (
    INSTALL_ADVICE,
    MTU,
    InterfaceStatus,
    InvalidWireGuardConfig,
    PeerConfig,
    PeerStatus,
    WireGuardError,
    WireGuardUnavailable,
    parse_allowed_ips,
    parse_endpoint,
    parse_network,
)

__all__ = [
    "INSTALL_ADVICE",
    "MTU",
    "WIREGUARD_RUN_DIR",
    "IWireGuard",
    "InterfaceStatus",
    "InvalidWireGuardConfig",
    "LinuxWireGuard",
    "MacWireGuard",
    "PeerConfig",
    "PeerStatus",
    "WireGuardError",
    "WireGuardUnavailable",
    "diff_peers",
    "make_wireguard",
    "parse_allowed_ips",
    "parse_dump",
    "parse_endpoint",
    "parse_network",
    "peer_arguments",
]
