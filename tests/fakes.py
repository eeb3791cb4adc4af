"""In-memory stand-ins for the node's seams (WireGuard, NAT probing)."""

from __future__ import annotations

from twisted.internet.task import Clock
from zope.interface import implementer

from wire.keys import public_key_for
from wire.node.wireguard import InterfaceStatus, IWireGuard, PeerConfig, PeerStatus
from wire.stun import MappedAddress, NatReport


@implementer(IWireGuard)
class FakeWireGuard:
    """Records what the daemon asks of WireGuard; peers handshake at once."""

    def __init__(self, name: str = "wire0", clock=None):
        self.name = name
        self.backend = ""
        self.clock = clock
        self.ups: list[tuple] = []
        self.applies: list[dict[str, PeerConfig]] = []
        self.peers: dict[str, PeerConfig] = {}
        self.is_down = False
        self.on_lost = None
        self._private_key = ""
        self.listen_port = 0
        self.device = name
        self.detached = False

    async def up(self, private_key: str, listen_port: int, address: str, prefixlen: int) -> None:
        self.backend = "fake"
        self._private_key = private_key
        self.listen_port = listen_port
        self.ups.append((listen_port, address, prefixlen))
        self.is_down = False

    async def apply(self, desired) -> int:
        changed = sum(1 for k, v in desired.items() if self.peers.get(k) != v) + sum(1 for k in self.peers if k not in desired)
        self.peers = dict(desired)
        if changed:
            self.applies.append(dict(desired))
        return changed

    async def status(self) -> InterfaceStatus:
        now = self.clock.seconds() if self.clock else 0.0
        return InterfaceStatus(
            name=self.name,
            public_key=public_key_for(self._private_key) if self._private_key else "",
            listen_port=self.listen_port,
            peers=tuple(
                PeerStatus(
                    public_key=p.public_key,
                    endpoint=p.endpoint,
                    allowed_ips=p.allowed_ips,
                    latest_handshake=now,
                    rx_bytes=100,
                    tx_bytes=200,
                    persistent_keepalive=p.persistent_keepalive,
                )
                for p in self.peers.values()
            ),
            backend=self.backend,
        )

    def is_alive(self) -> bool:
        return bool(self.backend) and not self.is_down

    async def check(self) -> bool:
        return self.is_alive()

    def detach(self) -> None:
        self.detached = True

    async def down(self) -> None:
        self.is_down = True
        self.peers = {}


def fixed_nat(ip: str = "198.51.100.7", port: int = 40000, nat_type: str = "easy"):
    async def probe() -> NatReport:
        mapped = MappedAddress(ip, port)
        return NatReport(nat_type=nat_type, mapped_a=mapped, mapped_b=mapped, latency_ms=1.0, local_port=51820)

    return probe


class TurnClock(Clock):
    """A fake clock that can run one reactor turn: the calls due now, not the
    ones those calls add (as the real reactor leaves them for its next turn;
    ``Clock.advance`` runs them too)."""

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            if call in self.calls:  # not cancelled by an earlier one
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)
