"""The path probe: a datagram through the tunnel to a peer's echo port, which the peer's daemon answers.

A direct path is proven, and a silent one found dead, only by something
arriving from the peer (WireGuard's received-bytes counter). An idle tunnel
hears its peer once per keepalive (25 s), and WireGuard answers data only
after 10 s: too slow to prove a retry in a few seconds or to find a dead
path within ten. A probe makes the peer answer at once. Each daemon
listens on its own VPN address, port PROBE_PORT (UDP), and answers a
request with the same bytes marked as an answer; only datagrams from inside
the mesh are answered (WireGuard has authenticated them: a peer can only
send from its own address), small ones, at most one per sender per
ANSWER_GAP seconds.

A peer whose answers come is "echoing": its silence counts sooner
(:data:`wire.node.paths.DEAD_AFTER`).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

from wire.debuglog import logger as debug_aware_logger

PROBE_PORT = 51819
REQUEST = b"wire-path-probe?"
ANSWER = b"wire-path-probe!"
MAX_PROBE = 64
ANSWER_GAP = 0.2
# Answer times kept per sender, at most (the mesh's size, bounded).
MAX_SENDERS = 65536


class PathProbe(DatagramProtocol):
    """Sends probes, answers the peers' probes, and remembers who answered."""

    log = debug_aware_logger()

    def __init__(self, clock: IReactorTime, subnet: str):
        self.clock = clock
        self.subnet = ipaddress.ip_network(subnet, strict=False)
        self.answering = False  # bound to PROBE_PORT, so peers' probes reach us
        self._answered: dict[str, float] = {}  # sender -> when we last answered it
        self.echoing: set[str] = set()  # VPN addresses whose answers came

    def send(self, vpn_ip: str) -> None:
        """Probe a peer (best effort: a probe that cannot leave is no news)."""
        if self.transport is None:
            return
        try:
            self.transport.write(REQUEST, (vpn_ip, PROBE_PORT))
        except OSError as e:
            self.log.debug("probe to {peer} not sent: {error}", peer=vpn_ip, error=e)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        host = addr[0]
        if len(datagram) > MAX_PROBE or not self._in_mesh(host):
            return
        if datagram.startswith(ANSWER):
            self.echoing.add(host)
        elif datagram.startswith(REQUEST) and self.transport is not None:
            now = self.clock.seconds()
            if now - self._answered.get(host, float("-inf")) < ANSWER_GAP:
                return
            if len(self._answered) >= MAX_SENDERS:
                self._answered.clear()
            self._answered[host] = now
            try:
                self.transport.write(ANSWER + datagram[len(REQUEST) :], addr)
            except OSError:
                pass

    def forget(self, present: set[str]) -> None:
        """Keep only what is known of addresses still in the mesh."""
        self.echoing &= present

    def _in_mesh(self, host: str) -> bool:
        try:
            return ipaddress.ip_address(host) in self.subnet
        except ValueError:
            return False


def start_probe(reactor: Any, clock: IReactorTime, vpn_ip: str, subnet: str) -> PathProbe:
    """Listen on ``vpn_ip``: on PROBE_PORT if it is free (answering peers),
    else on any port (probing only; the peers' probes go unanswered)."""
    probe = PathProbe(clock, subnet)
    try:
        reactor.listenUDP(PROBE_PORT, probe, interface=vpn_ip)
        probe.answering = True
    except Exception as e:
        PathProbe.log.warn(
            "path probe: UDP port {port} on {address} is taken ({error}); this node probes its peers but cannot answer theirs",
            port=PROBE_PORT,
            address=vpn_ip,
            error=e,
        )
        reactor.listenUDP(0, probe, interface=vpn_ip)
    return probe
