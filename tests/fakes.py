"""In-memory stand-ins for the node's seams (WireGuard, NAT probing)."""

from __future__ import annotations

from twisted.internet.task import Clock
from zope.interface import implementer

from wire.keys import public_key_for
from wire.node.wireguard import InterfaceStatus, IWireGuard, PeerConfig, PeerStatus
from wire.stun import MappedAddress, NatReport


@implementer(IWireGuard)
class FakeWireGuard:
    """Records what the daemon asks of WireGuard.

    Peers handshake at once (each status shows a handshake just now), unless
    built with ``auto_handshake=False``: then a peer has handshaken only when
    the test says so, ``fake.handshake(public_key, at=clock.seconds())``.
    """

    def __init__(self, name: str = "wire0", clock=None, auto_handshake: bool = True):
        self.name = name
        self.auto_handshake = auto_handshake
        self.handshakes: dict[str, float] = {}  # public key -> latest handshake
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

    def handshake(self, public_key: str, at: float | None = None) -> None:
        """A handshake with this peer happened ``at`` (now, by default)."""
        if self.auto_handshake:
            raise AssertionError("handshakes are told only to FakeWireGuard(auto_handshake=False)")
        self.handshakes[public_key] = self.clock.seconds() if at is None else at

    def latest_handshake(self, public_key: str, now: float) -> float:
        return now if self.auto_handshake else self.handshakes.get(public_key, 0.0)

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
                    latest_handshake=self.latest_handshake(p.public_key, now),
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


class MemoryUDPPort:
    """A UDP port of :class:`UDPClock`: what is written to it is recorded."""

    def __init__(self, reactor: UDPClock, protocol, host: str, port: int):
        self.reactor = reactor
        self.protocol = protocol
        self.host = host
        self.port = port
        self.written: list[tuple[bytes, tuple]] = []
        self.listening = True

    def getHost(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", self.host, self.port)

    def write(self, data: bytes, addr) -> None:
        self.written.append((bytes(data), addr))

    def stopListening(self):
        from twisted.internet.defer import succeed

        self.listening = False
        self.protocol.doStop()
        return succeed(None)


class UDPClock(Clock):
    """A fake clock that also opens UDP ports in memory (enough for the relay shim)."""

    def __init__(self) -> None:
        super().__init__()
        self.udp_ports: list[MemoryUDPPort] = []
        self._next_port = 40000

    def listenUDP(self, port: int, protocol, interface: str = "", maxPacketSize: int = 8192) -> MemoryUDPPort:
        if port == 0:
            self._next_port += 1
            port = self._next_port
        udp = MemoryUDPPort(self, protocol, interface or "0.0.0.0", port)
        self.udp_ports.append(udp)
        protocol.makeConnection(udp)
        return udp

    def listening(self) -> list[MemoryUDPPort]:
        return [port for port in self.udp_ports if port.listening]
