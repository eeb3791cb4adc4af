"""The relay's per-side ports: where a node's WireGuard sends on the kernel path.

With the kernel fast path on, a session side whose node can bind from
WireGuard's own port (it asked with ``direct``) gets a UDP port of its own
from a configured range. The server listens on it, so the port is ours and
its bind frames reach the relay (wire.server.relay.RelayTable.bind); once
both sides of a session are bound, the kernel forwards WireGuard's packets
from one side's port to the other (wire.server.fastpath). A port is freed
when its side ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from wire.relayproto import MAX_FRAME

log = Logger()


def parse_port_range(text: str) -> tuple[int, int] | None:
    """``LO-HI`` as two ports; ``off`` or empty as None. Raises ValueError."""
    text = text.strip()
    if text in ("", "off"):
        return None
    low, sep, high = text.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"{text!r} is not a port range LOW-HIGH (or off)")
    first, last = int(low), int(high)
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"{text!r}: ports run 1-65535, the first no higher than the last")
    return first, last


class _SidePort(DatagramProtocol):
    maxPacketSize = MAX_FRAME + 1  # a bind frame is small; anything larger is not one
    noisy = False

    def __init__(self, pool: DirectPorts, number: int):
        self._pool = pool
        self.number = number

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self._pool.received(data, addr, self.number)


class DirectPorts:
    """Allocates ports from ``low``..``high``, listening on each while it is held.

    ``receive(data, source, port)`` gets every datagram on a held port; it
    must not raise (it is wrapped anyway: one bad datagram stops nothing)."""

    def __init__(self, reactor: Any, low: int, high: int, interface: str = "", receive: Callable[[bytes, Any, int], Any] | None = None):
        self._reactor = reactor
        self.low, self.high = low, high
        self._interface = interface
        self.receive = receive
        self._held: dict[int, Any] = {}  # port -> the reactor's listening port

    def __len__(self) -> int:
        return len(self._held)

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def allocate(self) -> int | None:
        """A free port, listening; None when every port is held or busy."""
        for number in range(self.low, self.high + 1):
            if number in self._held:
                continue
            try:
                self._held[number] = self._reactor.listenUDP(number, _SidePort(self, number), interface=self._interface)
            except CannotListenError:
                continue  # another program has it: try the next
            return number
        log.warn("relay: every direct port of {low}-{high} is in use; new sessions stay on the shim path", low=self.low, high=self.high)
        return None

    def free(self, number: int | None) -> None:
        listening = self._held.pop(number, None) if number is not None else None
        if listening is not None:
            listening.stopListening()

    def free_all(self) -> None:
        for number in list(self._held):
            self.free(number)

    def received(self, data: bytes, addr: Any, number: int) -> None:
        if self.receive is None:
            return
        try:
            self.receive(data, addr, number)
        except Exception:
            log.failure("relay: a datagram on direct port {port} failed", port=number)
