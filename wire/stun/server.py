"""The coordination server's STUN port: what to answer, and the protocol.

The server answers on its UDP port (HTTP port + 1):

- an RFC 5389 Binding request with XOR-MAPPED-ADDRESS (plus MAPPED-ADDRESS
  over IPv4, for clients that only read that), and an RFC 3489 "classic"
  Binding request with MAPPED-ADDRESS, so any standard STUN client works;
- any other datagram with the seed project's JSON ``{"ip": ..., "port": ...}``,
  so seed clients keep working;
- relay frames, handed to the relay (they share the port).

The port is public, so every reply is bounded (see :func:`reply_limit`):
a minimal 20-byte Binding request gets a 44-byte answer (2.2x), a 1-byte
legacy probe at most 64 bytes of JSON, and nothing is ever sent to a third
party (RESPONSE-ADDRESS and CHANGE-REQUEST are refused with 420).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from wire.relayproto import DatagramBatcher, enlarge_socket_buffers, is_relay_frame
from wire.stun.codec import (
    BINDING,
    REQUEST,
    UNDERSTOOD_ATTRIBUTES,
    StunError,
    StunMessage,
    encode_binding_success,
    encode_error_response,
    is_stun,
    parse_message,
    public_address,
)

log = Logger()

# Outcome labels of handle_datagram, fixed so a metrics counter can show
# every label from the start.
OUTCOME_BINDING = "binding"
OUTCOME_UNKNOWN_ATTRIBUTE = "unknown_attribute"
OUTCOME_LEGACY_JSON = "legacy_json"
OUTCOME_MALFORMED = "malformed"
OUTCOME_IGNORED = "ignored"
OUTCOME_RATE_LIMITED = "rate_limited"
# What the relay answers for a frame it refuses (wire.server.relay.RelayTable.handle).
RELAY_REFUSALS = frozenset({"relay_malformed", "relay_unknown", "relay_forged", "relay_replay"})
JUNK_PENALTY = 1.0
MAX_PENALISED = 65536
OUTCOME_ERROR = "error"
OUTCOMES = (
    OUTCOME_BINDING,
    OUTCOME_UNKNOWN_ATTRIBUTE,
    OUTCOME_LEGACY_JSON,
    OUTCOME_MALFORMED,
    OUTCOME_IGNORED,
    OUTCOME_RATE_LIMITED,
    OUTCOME_ERROR,
)

# Anti-amplification: a reply is at most max(64, 3 x request) bytes. The
# 64-byte floor lets a 1-byte seed probe get its JSON (longest: a full IPv6
# address and port 65535, exactly 64 bytes); with the 28 bytes of IP and
# UDP headers that is 29 bytes in, 92 out. STUN replies stay far below:
# 44 bytes for any minimal 20-byte Binding request (2.2x).
SMALL_REPLY_BYTES = 64
AMPLIFICATION_FACTOR = 3

# Reflection loops: a spoofed datagram can point our reply at a service that
# answers anything (echo 7, chargen 19, another wire server...), which would
# answer us back. STUN replies are never answered, so only the legacy path
# needs guarding: it skips privileged source ports and our own JSON.
_LOWEST_LEGACY_PORT = 1024
_LEGACY_REPLY_PREFIX = b'{"ip"'


def reply_limit(request_bytes: int) -> int:
    """The most a reply to a datagram of ``request_bytes`` may carry."""
    return max(SMALL_REPLY_BYTES, AMPLIFICATION_FACTOR * request_bytes)


def unknown_required_attributes(message: StunMessage) -> list[int]:
    """Comprehension-required attributes (0x0000-0x7FFF) we do not understand, each once."""
    unknown: list[int] = []
    for attr_type, _ in message.attributes:
        if attr_type < 0x8000 and attr_type not in UNDERSTOOD_ATTRIBUTES and attr_type not in unknown:
            unknown.append(attr_type)
    return unknown


def handle_datagram(data: bytes, source_ip: str, source_port: int) -> tuple[str, bytes | None]:
    """Decide what to answer a datagram from ``source_ip``:``source_port``.

    Returns one of :data:`OUTCOMES` (except "rate_limited" and "error",
    which only the server protocol decides) and the reply, or None
    for no reply. Pure: no I/O, no clock, no logging.
    """
    if not data or source_port == 0:
        return OUTCOME_IGNORED, None
    if is_stun(data):
        outcome, reply = _answer_stun(data, source_ip, source_port)
    else:
        outcome, reply = _answer_legacy(data, source_ip, source_port)
    # The one place the amplification bound is enforced, whatever the
    # encoders above produce.
    if reply is not None and len(reply) > reply_limit(len(data)):
        return OUTCOME_IGNORED, None
    return outcome, reply


def _answer_stun(data: bytes, source_ip: str, source_port: int) -> tuple[str, bytes | None]:
    try:
        message = parse_message(data)
    except StunError:
        return OUTCOME_MALFORMED, None
    # Indications and responses never get an answer from a server, and
    # RFC 5389 section 7.3 says a message whose method is not supported "is
    # silently discarded" (no 400): that also keeps us from answering junk.
    if message.message_class != REQUEST or message.method != BINDING:
        return OUTCOME_IGNORED, None
    unknown = unknown_required_attributes(message)
    if unknown:
        # Section 7.3.1. This is also how RESPONSE-ADDRESS and CHANGE-REQUEST
        # (RFC 3489) are refused: we never send to a third party.
        return OUTCOME_UNKNOWN_ATTRIBUTE, encode_error_response(message, 420, "Unknown Attribute", unknown)
    return OUTCOME_BINDING, encode_binding_success(message, source_ip, source_port)


def _answer_legacy(data: bytes, source_ip: str, source_port: int) -> tuple[str, bytes | None]:
    """The seed's reply to any non-STUN datagram, unless it could start a loop."""
    if source_port < _LOWEST_LEGACY_PORT or data.startswith(_LEGACY_REPLY_PREFIX):
        return OUTCOME_IGNORED, None
    reply = json.dumps({"ip": str(public_address(source_ip)), "port": source_port})
    return OUTCOME_LEGACY_JSON, reply.encode("ascii")


class StunServerProtocol(DatagramProtocol):
    """The server's STUN port: answers each datagram by :func:`handle_datagram`,
    and hands relay frames to ``relay`` (see wire.server.relay).

    ``reactor`` (an IReactorTime) paces the relay's batched sends.

    ``observe(outcome)`` is called once per datagram (for metrics). Nothing
    here raises into the reactor, and nothing is logged per datagram except
    failures, and those sparsely.

    ``admit(source_host)``, when given, is asked before any other datagram
    is answered; False drops it unanswered ("rate_limited"), so one source
    cannot use the port's whole capacity. Relay frames that verify are not
    asked (the relay limits each session itself); a relay frame the relay
    refuses (malformed, unknown token, forged, replayed) spends from its
    source's budget like any datagram, and a source out of budget has its
    relay frames dropped unread for JUNK_PENALTY seconds: a flood of
    relay-magic junk from one address cannot crowd out anyone's STUN.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        observe: Callable[[str], None] | None = None,
        relay: Callable[[bytes, Any], tuple[str, bytes | None, Any]] | None = None,
        admit: Callable[[str], bool] | None = None,
        streams: Any = None,
    ):
        self._reactor = reactor
        # The relay's TCP streams (wire.server.relaystream.RelayStreams): a
        # relayed frame goes to a UDP address or to a stream, through it.
        self._streams = streams
        self._observe = observe
        self._relay = relay
        self._admit = admit
        self._failures = 0
        self._junk_until: dict[str, float] = {}  # source -> when its relay frames are read again
        self._send_relayed: Callable[[bytes, Any], None] | None = None

    def startProtocol(self) -> None:
        # Both ports, relay or not: Binding requests from thousands of nodes
        # arrive in bursts, and while the reactor drains one socket (up to
        # 256 KiB of datagrams per read) the other's default ~200 KiB buffer
        # (a few hundred small datagrams) overflows.
        enlarge_socket_buffers(self.transport)
        self._send_relayed = DatagramBatcher(self._reactor, self.transport).send
        if self._streams is not None:
            self._streams.udp_send = self._send_relayed
            self._send_relayed = self._streams.send

    def send_relayed(self, data: bytes, destination: Any) -> None:
        """A relay datagram of the server's own (not an answer), sent as relayed ones are."""
        if self._send_relayed is not None:
            self._send_relayed(data, destination)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            if self._relay is not None and is_relay_frame(datagram):
                # Relay frames share this port; they are checked before the
                # seed's catch-all JSON answer could see them.
                if self._penalised(addr[0]):
                    outcome = OUTCOME_RATE_LIMITED
                    data = None
                else:
                    outcome, data, destination = self._relay(datagram, addr)
                    if outcome in RELAY_REFUSALS:
                        self._charge_junk(addr[0])
                if data is not None:
                    assert self._send_relayed is not None  # set by startProtocol
                    self._send_relayed(data, destination)
            elif self._admit is not None and not self._admit(addr[0]):
                outcome = OUTCOME_RATE_LIMITED
            else:
                outcome, reply = handle_datagram(datagram, addr[0], addr[1])
                if reply is not None:
                    # addr as received: an IPv6 socket needs its scope id back.
                    assert self.transport is not None  # it received one
                    self.transport.write(reply, addr)
        except Exception:
            outcome = OUTCOME_ERROR
            self._log_failure("STUN datagram from {host}:{port} could not be handled", addr)
        if self._observe is not None:
            try:
                self._observe(outcome)
            except Exception:
                self._log_failure("STUN outcome observer failed on a datagram from {host}:{port}", addr)

    def _penalised(self, host: str) -> bool:
        until = self._junk_until.get(host)
        if until is None:
            return False
        if self._reactor.seconds() < until:
            return True
        del self._junk_until[host]
        return False

    def _charge_junk(self, host: str) -> None:
        if self._admit is None or self._admit(host):
            return
        if len(self._junk_until) >= MAX_PENALISED:
            self._junk_until.clear()
        self._junk_until[host] = self._reactor.seconds() + JUNK_PENALTY

    def _log_failure(self, message: str, addr: Any) -> None:
        # A datagram that breaks us can be replayed at line rate; logging the
        # 1st, 2nd, 4th, 8th... failure keeps the evidence without the flood.
        self._failures += 1
        if self._failures & (self._failures - 1) == 0:
            log.failure(message + " (failure {count})", host=addr[0], port=addr[1], count=self._failures)
