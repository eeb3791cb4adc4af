"""A pair's path: the rule both of its nodes apply, the server's word where
the rule is not enough, and a node's report that a direct path failed.

Both nodes of a pair use the same path by construction, never by a
coincidence of timers:

- :func:`pair_rule` is a pure, symmetric function of the two nodes' facts as
  the server holds them (the views in the netmap): the same public address
  means their LAN addresses; both with an IPv6 underlay address means a
  direct attempt over IPv6 (no NAT in the way, whatever their IPv4 NATs
  are); a hard NAT on one side with a NAT on the other means the relay;
  anything else means a direct attempt.
- A direct attempt over IPv6 that fails falls back to IPv4 (the word says
  ``family`` 4): direct if the IPv4 rule allows it, else the relay.
- Only what the facts cannot tell (a direct attempt that failed) is decided
  by someone, and that is the server, once for the pair: a node reports
  (``POST /path``, :class:`PathReport`), the server answers with the pair's
  new :class:`PairPath` and sends the same word to both nodes in their
  netmaps. A relayed pair is tried direct again by the server, for both
  nodes at once, after :func:`retry_delay`; either node that cannot prove
  the attempt reports again.
- When either node's facts change, or it comes back online, the server
  forgets the pair's word: both go back to the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from wire.protocol.enums import NatType, PathMode
from wire.protocol.errors import ProtocolError
from wire.protocol.fields import (
    parse_node_id,
    parse_number,
    parse_object,
    parse_str,
    parse_wg_public_key,
)

# A first direct attempt: WireGuard sends a handshake at once and again
# every 5 s; three chances.
DIRECT_TIMEOUT = 15.0
# A retry of a relayed pair: its WireGuard session is already up (over the
# relay), so the first probe over the direct path answers in one round trip;
# a retry that fails costs no more than this.
RETRY_TIMEOUT = 5.0
# A node's report comes from its own clock: the server accepts "no proof"
# this much sooner than the timeout by its own.
CLOCK_SLACK = 2.0
FIRST_RETRY = 60.0
LAST_RETRY = 1800.0
MAX_REASON = 200

NATTED = (NatType.EASY, NatType.HARD, NatType.UNKNOWN)
DIRECT_MODES = (PathMode.DIRECT, PathMode.LAN)


class PathFailure(StrEnum):
    """What a node reports of a pair's direct path."""

    NO_PROOF = "no-proof"  # an attempt that nothing from the peer ever proved
    STOPPED = "stopped"  # a proven path over which the peer went silent


class PairFacts(Protocol):
    """What the rule looks at: a peer view, or the server's record."""

    @property
    def node_id(self) -> str: ...
    @property
    def node_name(self) -> str: ...
    @property
    def public_ip(self) -> str: ...
    @property
    def lan_ip(self) -> str: ...
    @property
    def nat_type(self) -> NatType: ...
    @property
    def public_ip6(self) -> str: ...


def pair_rule(a: PairFacts, b: PairFacts) -> tuple[PathMode, str]:
    """The pair's path from the facts alone, and why; the same for (a, b) and (b, a)."""
    if a.lan_ip and b.lan_ip and a.public_ip and a.public_ip == b.public_ip:
        return PathMode.LAN, f"same public address {a.public_ip}: LAN addresses"
    if over_ipv6(a, b):
        return PathMode.DIRECT, "both have IPv6"
    return ipv4_rule(a, b)


def over_ipv6(a: PairFacts, b: PairFacts) -> bool:
    """Whether a direct attempt of the pair goes over IPv6 first: both have an underlay address."""
    return bool(a.public_ip6 and b.public_ip6 and a.public_ip6 != b.public_ip6)


def ipv4_rule(a: PairFacts, b: PairFacts) -> tuple[PathMode, str]:
    """The pair's path over IPv4 alone (what is left once IPv6 failed)."""
    hard = sorted(n.node_name or n.node_id for n in (a, b) if n.nat_type == NatType.HARD)
    if hard and a.nat_type in NATTED and b.nat_type in NATTED:
        return PathMode.RELAY, f"hard NAT on {' and '.join(hard)}"
    return PathMode.DIRECT, "direct"


def retry_delay(tries: int) -> float:
    """How long a pair that failed direct ``tries`` times in a row waits to try again: 1, 2, 4 ... 30 minutes."""
    return min(FIRST_RETRY * 2 ** max(0, tries - 1), LAST_RETRY)


def after_failure(failure: PathFailure, tries: int) -> tuple[int, str]:
    """What a failed direct attempt makes of a pair whose word had ``tries``
    failed tries (0: a first attempt): its failed tries now, and the reason
    it shows while relayed. The server and a node deciding alone both use it."""
    if failure is PathFailure.STOPPED:
        return 1, "the direct path stopped working"
    if tries > 0:
        return tries + 1, f"direct retry {tries} failed"
    return 1, f"no direct handshake within {DIRECT_TIMEOUT:.0f}s"


def retry_reason(tries: int) -> str:
    """The reason a relayed pair shows when it is tried direct again."""
    return f"trying direct again (retry {tries})"


def attempt_timeout(word: PairPath | None) -> float:
    """How long a direct attempt has to prove itself."""
    if word is not None and word.mode in DIRECT_MODES and word.tries > 0:
        return RETRY_TIMEOUT
    return DIRECT_TIMEOUT


@dataclass(frozen=True)
class PairPath:
    """The server's word on one pair, as one of its nodes is told it.

    ``mode`` None means the server has no word (any more): the rule
    decides. RELAY comes with ``retry_at``, when the server tries direct
    again; DIRECT (or LAN) with ``tries`` > 0 is such a retry.
    """

    peer: str  # the other node of the pair
    mode: PathMode | None
    reason: str = ""
    since: float = 0.0
    tries: int = 0  # direct attempts that failed in a row
    retry_at: float | None = None
    # 4: a direct word over IPv4 only (IPv6 failed); 0: as the rule says.
    family: int = 0

    def to_json(self) -> dict[str, Any]:
        body = {
            "peer": self.peer,
            "mode": None if self.mode is None else str(self.mode),
            "reason": self.reason,
            "since": self.since,
            "tries": self.tries,
            "retry_at": self.retry_at,
        }
        if self.family:
            body["family"] = self.family
        return body

    @classmethod
    def from_json(cls, value: Any) -> PairPath:
        body = parse_object(value, "path")
        mode = body.get("mode")
        if mode is not None:
            try:
                mode = PathMode(mode)
            except ValueError:
                raise ProtocolError("mode", f"{mode!r} is not relay, direct, lan or null") from None
            if mode not in (PathMode.RELAY, *DIRECT_MODES):
                raise ProtocolError("mode", f"{mode} is not a path the server decides")
        tries = body.get("tries", 0)
        if isinstance(tries, bool) or not isinstance(tries, int) or not 0 <= tries <= 1000:
            raise ProtocolError("tries", f"{tries!r} is not a count from 0 to 1000")
        retry_at = body.get("retry_at")
        family = body.get("family", 0)
        if family not in (0, 4) or isinstance(family, bool):
            raise ProtocolError("family", f"{family!r} is not 0 or 4")
        return cls(
            peer=parse_node_id(body.get("peer"), "peer"),
            mode=mode,
            reason=parse_str(body.get("reason", ""), "reason", limit=MAX_REASON),
            since=parse_number(body.get("since", 0), "since"),
            tries=tries,
            retry_at=None if retry_at is None else parse_number(retry_at, "retry_at"),
            family=family,
        )


@dataclass(frozen=True)
class PathReport:
    """``POST /path``: the caller's direct path to ``peer_node_id`` failed."""

    node_id: str
    wg_public_key: str
    peer_node_id: str
    failure: PathFailure

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "wg_public_key": self.wg_public_key,
            "peer_node_id": self.peer_node_id,
            "failure": str(self.failure),
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> PathReport:
        failure = body.get("failure")
        try:
            parsed = PathFailure(failure if isinstance(failure, str) else "")
        except ValueError:
            raise ProtocolError("failure", f"{failure!r} is not no-proof or stopped") from None
        return cls(
            node_id=parse_node_id(body.get("node_id")),
            wg_public_key=parse_wg_public_key(body.get("wg_public_key")),
            peer_node_id=parse_node_id(body.get("peer_node_id"), "peer_node_id"),
            failure=parsed,
        )


@dataclass(frozen=True)
class PathReportAnswer:
    """The server's answer to a report: whether it changed the pair's path, and the path now."""

    accepted: bool
    path: PairPath

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "accepted": self.accepted, "path": self.path.to_json()}

    @classmethod
    def from_json(cls, value: Any) -> PathReportAnswer:
        body = parse_object(value, "answer")
        accepted = body.get("accepted")
        if not isinstance(accepted, bool):
            raise ProtocolError("accepted", "must be true or false")
        return cls(accepted=accepted, path=PairPath.from_json(body.get("path")))
