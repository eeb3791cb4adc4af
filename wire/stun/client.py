"""The node's STUN probe: its public endpoint, and the kind of NAT it is behind.

A node probes from its WireGuard port before WireGuard binds it:
:func:`probe_mapped_address` for its public endpoint, :func:`detect_nat` to
tell an easy NAT from a hard (symmetric) one using two server ports; and,
on Linux, again from time to time while WireGuard holds the port
(``detect_nat(raw=True)``), so a NAT that moved its mapping is noticed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from wire.protocol import NatType
from wire.stun.rawport import RawUDPPort
from wire.stun.codec import (
    BINDING,
    ERROR,
    SUCCESS,
    MappedAddress,
    StunError,
    StunMessage,
    encode_binding_request,
    parse_error_code,
    parse_mapped_address,
    parse_message,
)


class StunTimeout(TimeoutError):
    """A STUN server did not answer in time."""


@dataclass(frozen=True)
class _Answer:
    mapped: MappedAddress
    rtt_seconds: float


@dataclass(frozen=True)
class _Transaction:
    server: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
    sent_at: float
    answer: Deferred[_Answer]


class _BindingClient(DatagramProtocol):
    """Runs Binding transactions from one UDP socket, several at once."""

    noisy = False  # no "Starting/Stopping protocol" lines per probe: the daemon logs the result

    def __init__(self, clock: Any):
        self._clock = clock
        self._transactions: dict[bytes, _Transaction] = {}

    async def binding(self, server_ip: str, server_port: int, *, timeout: float, attempts: int) -> _Answer:
        """Send up to ``attempts`` requests ``timeout`` seconds apart; the
        first valid answer to any of them wins. Each attempt has its own
        transaction id, so the round-trip time is measured from the send it
        answers."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        server = (ipaddress.ip_address(server_ip), server_port)
        answer: Deferred[_Answer] = Deferred()
        sent: list[bytes] = []

        def send() -> None:
            request, transaction_id = encode_binding_request()
            self._transactions[transaction_id] = _Transaction(server, self._clock.seconds(), answer)
            sent.append(transaction_id)
            try:
                # The socket listens until binding() has returned and these
                # sends are cancelled.
                assert self.transport is not None
                self.transport.write(request, (server_ip, server_port))
            except Exception as e:
                if not answer.called:
                    answer.errback(StunError(f"cannot send to {server_ip}:{server_port}: {e}"))

        def give_up() -> None:
            if not answer.called:
                answer.errback(
                    StunTimeout(
                        f"no STUN answer from {server_ip}:{server_port}"
                        f" to {attempts} requests in {attempts * timeout:g}s"
                    )
                )

        calls = [self._clock.callLater(i * timeout, send) for i in range(1, attempts)]
        calls.append(self._clock.callLater(attempts * timeout, give_up))
        send()
        try:
            return await answer
        finally:
            for call in calls:
                if call.active():
                    call.cancel()
            for transaction_id in sent:
                del self._transactions[transaction_id]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            message = parse_message(datagram)
        except StunError:
            return  # not STUN, or damaged: the retransmissions cover it
        transaction = self._transactions.get(message.transaction_id)
        if transaction is None or transaction.answer.called:
            return
        if (ipaddress.ip_address(addr[0]), addr[1]) != transaction.server or message.method != BINDING:
            return
        if message.message_class == SUCCESS:
            self._succeed(transaction, message)
        elif message.message_class == ERROR:
            self._fail(transaction, message)

    def _succeed(self, transaction: _Transaction, message: StunMessage) -> None:
        try:
            mapped = parse_mapped_address(message)
        except StunError as e:
            transaction.answer.errback(e)
            return
        transaction.answer.callback(_Answer(mapped, self._clock.seconds() - transaction.sent_at))

    def _fail(self, transaction: _Transaction, message: StunMessage) -> None:
        try:
            code, reason = parse_error_code(message)
        except StunError as e:
            transaction.answer.errback(e)
            return
        transaction.answer.errback(StunError(f"the STUN server answered {code} {reason}"))


async def _server_ip(reactor: Any, server_host: str) -> str:
    try:
        return str(ipaddress.ip_address(server_host))
    except ValueError:
        return await reactor.resolve(server_host)  # IPv4 only, by design of reactor.resolve


def _listen(reactor: Any, local_port: int, interface: str, server_ip: str, client: _BindingClient) -> Any:
    if not interface and ipaddress.ip_address(server_ip).version == 6:
        interface = "::"
    return reactor.listenUDP(local_port, client, interface=interface)


async def probe_mapped_address(
    reactor: Any,
    server_host: str,
    server_port: int,
    *,
    local_port: int = 0,
    interface: str = "",
    timeout: float = 1.0,
    attempts: int = 3,
) -> MappedAddress:
    """Our address and port as the STUN server at ``server_host``:``server_port`` sees them.

    ``reactor`` provides IReactorUDP and IReactorTime (and ``resolve`` for a
    host name). Binds UDP ``local_port`` (the WireGuard port, before
    WireGuard takes it) and always releases it before returning. Raises
    :class:`StunTimeout` when no answer comes within ``attempts * timeout``
    seconds, :class:`StunError` on an error response, and
    ``CannotListenError`` when the port is taken.
    """
    server_ip = await _server_ip(reactor, server_host)
    client = _BindingClient(reactor)
    port = _listen(reactor, local_port, interface, server_ip, client)
    try:
        answer = await client.binding(server_ip, server_port, timeout=timeout, attempts=attempts)
    finally:
        await maybeDeferred(port.stopListening)
    return answer.mapped


@dataclass(frozen=True)
class NatReport:
    """What two STUN server ports saw of one local socket.

    ``nat_type`` (wire.protocol.NatType): "none" (mapped to one
    of our own addresses, same port), "easy" (both ports saw the same
    mapping), "hard" (a new mapping per destination: symmetric NAT, needs
    the relay), "unknown" (only one port answered).
    """

    nat_type: NatType
    mapped_a: MappedAddress | None
    mapped_b: MappedAddress | None
    latency_ms: float
    local_port: int

    @property
    def mapped(self) -> MappedAddress:
        """The endpoint to publish: what port A saw, else port B."""
        mapped = self.mapped_a or self.mapped_b
        assert mapped is not None  # detect_nat raises when neither answered
        return mapped


async def detect_nat(
    reactor: Any,
    server_host: str,
    port_a: int,
    port_b: int,
    *,
    local_port: int = 0,
    interface: str = "",
    timeout: float = 1.0,
    attempts: int = 3,
    local_ips: Collection[str] = (),
    raw: bool = False,
) -> NatReport:
    """Probe two server ports at once from one local socket and classify the NAT.

    ``raw``: speak as ``local_port`` through a raw socket
    (:class:`~wire.stun.rawport.RawUDPPort`), for a port WireGuard holds.

    "none" needs ``local_ips``, the node's own interface addresses: a
    socket bound to the wildcard address cannot tell which one it sent
    from. Without them an unNATed node is reported "easy", which is as good
    for hole punching. ``latency_ms`` is the fastest round trip seen.
    Raises like :func:`probe_mapped_address` when neither port answers.
    """
    server_ip = await _server_ip(reactor, server_host)
    client = _BindingClient(reactor)
    if raw:
        port: Any = RawUDPPort(reactor, local_port, client, server_ip, (port_a, port_b))
    else:
        port = _listen(reactor, local_port, interface, server_ip, client)
    try:
        bound_port = port.getHost().port
        results = await DeferredList(
            [
                Deferred.fromCoroutine(client.binding(server_ip, p, timeout=timeout, attempts=attempts))
                for p in (port_a, port_b)
            ],
            consumeErrors=True,
        )
    finally:
        await maybeDeferred(port.stopListening)
    answers = [result if ok else None for ok, result in results]
    if answers == [None, None]:
        # DeferredList's types give every result the success type; one that
        # is not ok is the Failure.
        cast(Failure, results[0][1]).raiseException()
    return _nat_report(answers[0], answers[1], bound_port, local_ips)


def _nat_report(
    a: _Answer | None, b: _Answer | None, local_port: int, local_ips: Collection[str]
) -> NatReport:
    mapped_a = a.mapped if a is not None else None
    mapped_b = b.mapped if b is not None else None
    latency_ms = min(answer.rtt_seconds for answer in (a, b) if answer is not None) * 1000
    if mapped_a is None or mapped_b is None:
        nat_type = NatType.UNKNOWN
    elif mapped_a != mapped_b:
        nat_type = NatType.HARD
    elif mapped_a.port == local_port and _is_own(mapped_a.ip, local_ips):
        nat_type = NatType.NONE
    else:
        nat_type = NatType.EASY
    return NatReport(nat_type, mapped_a, mapped_b, latency_ms, local_port)


def _is_own(ip: str, local_ips: Collection[str]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address == ipaddress.ip_address(own) for own in local_ips)
