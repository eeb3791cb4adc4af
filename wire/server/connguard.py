"""ConnectionGuard: what the API port accepts when file descriptors run short.

Every node holds a long-poll open, so the server lives near its open-files
limit by design. Without a guard, one address opening thousands of idle
connections takes the last descriptors, accept() fails for everyone with
EMFILE, and Twisted logs every refusal. The guard wraps the site's factory:

- at most ``per_address`` connections from one address (a NAT of many nodes
  needs a few per node: the default leaves room for hundreds behind one);
- at most ``limit`` connections in all, set below the open-files limit so a
  reserve is always left (for the database, the admin socket, STUN and the
  next accept): at the limit, the connection idle the longest is closed to
  make room for the new one, so a flood of idle sockets cannot lock
  anybody out for long;
- what it refuses or closes is logged once per LOG_INTERVAL, with counts.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from wire.server.ratelimit import address_key

LOG_INTERVAL = 60.0
# Descriptors kept back from the open-files limit for everything but API clients.
FD_RESERVE = 256
DEFAULT_PER_ADDRESS = 2048


class _GuardedProtocol(ProtocolWrapper):
    def dataReceived(self, data: bytes) -> None:
        self.factory.active(self)
        super().dataReceived(data)


class ConnectionGuard(WrappingFactory):
    protocol = _GuardedProtocol
    log = Logger()

    def __init__(
        self,
        wrapped: Any,
        clock: IReactorTime,
        *,
        limit: int,
        per_address: int = DEFAULT_PER_ADDRESS,
        uncapped: Callable[[str], bool] = lambda host: False,
    ):
        super().__init__(wrapped)
        # Addresses the per-address cap leaves alone (trusted proxies: every client comes from them).
        self.uncapped = uncapped
        self.clock = clock
        self.limit = max(1, limit)
        self.per_address = max(1, per_address)
        self._by_address: dict[str, int] = {}
        self._idle_order: OrderedDict[ProtocolWrapper, None] = OrderedDict()  # least recently active first
        self._refused = 0
        self._evicted = 0
        self._logged_at = float("-inf")

    def buildProtocol(self, addr: Any):
        peer = getattr(addr, "host", "")
        host = address_key(peer)
        if self._by_address.get(host, 0) >= self.per_address and not self.uncapped(peer):
            self._refused += 1
            self._tell()
            return None
        if len(self._idle_order) >= self.limit:
            oldest = next(iter(self._idle_order))
            self._evicted += 1
            self._tell()
            self._forget(oldest)
            if oldest.transport is not None:
                oldest.transport.abortConnection()  # type: ignore[attr-defined]
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            protocol._guard_host = host  # type: ignore[attr-defined]
            self._by_address[host] = self._by_address.get(host, 0) + 1
            self._idle_order[protocol] = None
        return protocol

    def active(self, protocol: ProtocolWrapper) -> None:
        if protocol in self._idle_order:
            self._idle_order.move_to_end(protocol)

    def unregisterProtocol(self, protocol: Any) -> None:
        self._forget(protocol)
        super().unregisterProtocol(protocol)

    def _forget(self, protocol: Any) -> None:
        if protocol not in self._idle_order:
            return  # already forgotten (closed after an eviction)
        del self._idle_order[protocol]
        host = getattr(protocol, "_guard_host", None)
        if host is None:
            return
        left = self._by_address.get(host, 0) - 1
        if left > 0:
            self._by_address[host] = left
        else:
            self._by_address.pop(host, None)

    @property
    def open_count(self) -> int:
        return len(self._idle_order)

    def _tell(self) -> None:
        now = self.clock.seconds()
        if now - self._logged_at < LOG_INTERVAL:
            return
        self._logged_at = now
        self.log.warn(
            "API connections at their limit: {refused} refused (over {per_address} from one address), "
            "{evicted} idle ones closed to make room (limit {limit}); counts since the last such line",
            refused=self._refused,
            per_address=self.per_address,
            evicted=self._evicted,
            limit=self.limit,
        )
        self._refused = self._evicted = 0


def connection_limit(fd_limit: int) -> int:
    """API connections allowed under an open-files limit: the limit less the reserve."""
    return max(16, fd_limit - FD_RESERVE)
