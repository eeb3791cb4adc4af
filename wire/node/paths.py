"""Each peer's path on this node: the pair's mode, and the evidence this node reports.

The mode is never this node's own choice, so the two nodes of a pair
cannot disagree (see :mod:`wire.protocol.paths`): it is the server's word
on the pair if it has one, else :func:`~wire.protocol.paths.pair_rule` on
the two nodes' facts as the netmap carries them. What this node adds is
evidence, watched on WireGuard's counters at every check:

- a direct (or LAN) attempt is *proven* once anything arrives from the peer
  after it began (its received-bytes counter grows, or a new handshake);
  until then it is probed (a packet to the peer's echo port through the
  tunnel, which makes the peer answer), and if nothing proves it within
  the attempt's timeout, the node reports ``no-proof``;
- a proven path on which this node sent and heard nothing back is probed;
  still silent after DEAD_AFTER, it is reported ``stopped``.

A report goes to the server, which decides for the pair and tells both
nodes (or, from a server that has no word to give, this node decides for
itself: :meth:`PathPlanner.decide_locally`). Until the word comes the mode
stays: the node never switches alone.

Pure: facts, WireGuard's counters and the time in, decisions out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from wire.protocol import NatType, PairPath, PathFailure, PathMode, PeerView, pair_rule
from wire.protocol.paths import (
    DIRECT_MODES,
    after_failure,
    attempt_timeout,
    ipv4_rule,
    over_ipv6,
    retry_delay,
    retry_reason,
)

# Before this long after an attempt began, what arrives may still be from
# the old path (a relayed packet in flight): it proves nothing.
SETTLE = 0.5
# Sent, and nothing back for this long: probe.
PROBE_AFTER = 1.5
# Sent, probed, and nothing back for this long: the path stopped working.
DEAD_AFTER = 6.0
# The same for a peer that never answered a probe (an older wire): only
# WireGuard's own answers count, and it answers data within 10 s.
DEAD_AFTER_WITHOUT_ECHO = 15.0
# A working peer not yet known to answer probes gets one this often.
ECHO_LEARNING_GAP = 10.0
# A report the server refused or never got is made again after this long.
REPORT_AGAIN = 5.0
# WireGuard handshakes again every 2 minutes on a live tunnel (keepalives
# count): a handshake older than this means the tunnel is not up.
HANDSHAKE_STALE = 180.0
# A WireGuard keepalive: sending only these is not traffic that needs an answer.
KEEPALIVE_BYTES = 32


class Phase(StrEnum):
    """Where a direct or LAN attempt stands on this node."""

    TRYING = "trying"  # configured; nothing from the peer since
    WORKING = "working"  # the peer was heard on it
    SILENT = "silent"  # proven, but what we sent lately got no answer: probing
    FAILED = "failed"  # reported; the pair's word has not come yet
    RELAYED = "relayed"  # the pair goes through the relay


@dataclass(frozen=True)
class Me:
    """This node's facts as far as it knows them itself (before the netmap has its own view)."""

    node_name: str
    public_ip: str
    nat_type: NatType
    lan_ip: str = ""
    node_id: str = ""
    public_ip6: str = ""


@dataclass(frozen=True)
class Seen:
    """What WireGuard shows of one peer at one check."""

    endpoint: str | None
    latest_handshake: float  # unix seconds; 0: never
    rx_bytes: int
    tx_bytes: int
    # The endpoint is the relay's (a shim, or the server's kernel port for
    # us): WireGuard roamed there after a packet that came through it.
    via_relay: bool = False


@dataclass
class PeerPath:
    """One peer's path on this node, moved forward by :meth:`PathPlanner.plan`."""

    mode: PathMode  # DIRECT, LAN or RELAY
    reason: str  # why, without the mode: "hard NAT on web2"
    endpoint: str | None  # where a direct or LAN attempt sends (None for the relay)
    since: float  # when this mode and endpoint began
    timeout: float  # how long an attempt has to prove itself
    word: PairPath | None = None  # the server's word it follows, if any
    phase: Phase = Phase.TRYING
    proven_at: float | None = None
    heard_at: float | None = None  # the peer was last heard then
    # Counters at the previous check, and the first check that may prove.
    last_rx: int = -1
    last_tx: int = -1
    baseline_rx: int | None = None
    unanswered_since: float | None = None  # we sent, and have heard nothing since
    report: PathFailure | None = None  # what this node has reported of the attempt
    report_at: float | None = None  # when it may report (again)
    waiting: bool = False  # not configured, or the peer offline: no attempt runs
    probed_at: float | None = None
    # This node's own facts when the attempt began: when our NAT moves, every
    # path is tried (and probed, which punches the new mapping) again.
    mine: tuple = ()

    @property
    def proven(self) -> bool:
        return self.proven_at is not None

    @property
    def summary(self) -> str:
        """Mode and reason in one line: "relay: hard NAT on web2"."""
        return f"{self.mode}: {self.reason}"


@dataclass
class Plan:
    """What one run decided: every peer's path, and what to do about them now."""

    paths: dict[str, PeerPath]
    probes: list[str] = field(default_factory=list)  # peer node ids to probe
    reports: list[tuple[str, PathFailure]] = field(default_factory=list)  # to send to the server


def endpoint_for(peer: PeerView, mode: PathMode, me: Me | PeerView | None = None, ipv4_only: bool = False) -> str | None:
    """Where WireGuard sends for ``peer`` on a direct or LAN path: over IPv6
    to its WireGuard port when both have IPv6 (no NAT maps it), else its
    public IPv4 endpoint."""
    if mode is PathMode.LAN and peer.lan_ip:
        return _join(peer.lan_ip, peer.port)
    if mode is PathMode.DIRECT and not ipv4_only and me is not None and over_ipv6(me, peer):
        return _join(peer.public_ip6, peer.port)
    if mode is PathMode.DIRECT and peer.public_ip:
        return _join(peer.public_ip, peer.nat_port)
    return None


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def is_shim_endpoint(endpoint: str | None) -> bool:
    """A loopback endpoint is the local relay shim, never a peer."""
    return bool(endpoint) and (endpoint.startswith("127.") or endpoint.startswith("[::1]"))  # type: ignore[union-attr]


class PathPlanner:
    """Every peer's :class:`PeerPath`, and the local words of a server that gives none."""

    def __init__(self) -> None:
        self.paths: dict[str, PeerPath] = {}
        # Decided here because the server had no word to give (a seed server).
        self.local_words: dict[str, PairPath] = {}

    def plan(
        self,
        me: Me | PeerView,
        peers: Mapping[str, PeerView],
        words: Mapping[str, PairPath],
        seen: Mapping[str, Seen],
        now: float,
        echoing: frozenset[str] | set[str] = frozenset(),
    ) -> Plan:
        """Move every peer's path forward.

        ``me`` is this node as the netmap shows it (its own facts as it
        knows them before that), ``words`` the server's word on each pair
        (by peer node id), ``seen`` WireGuard's view of each peer (by public
        key), ``echoing`` the peers that have answered a probe.
        """
        for node_id in list(self.paths):
            if node_id not in peers:
                del self.paths[node_id]
        for node_id in list(self.local_words):
            if node_id not in peers:
                del self.local_words[node_id]
        plan = Plan(self.paths)
        for node_id, peer in peers.items():
            word = words.get(node_id) or self._local_word(node_id, now)
            path = self._current(me, peer, word, now)
            self.paths[node_id] = path
            if path.mode is PathMode.RELAY:
                continue
            observed = seen.get(peer.wg_public_key)
            if observed is None or not peer.online:
                # Not configured yet (this run's apply does it: the attempt
                # starts now), or nobody there (it starts when the peer is
                # back). An old proof or failure tells nothing then.
                path.since, path.phase, path.proven_at, path.waiting = now, Phase.TRYING, None, not peer.online
                path.baseline_rx = path.unanswered_since = path.report = path.report_at = None
                continue
            if path.waiting:
                path.since, path.waiting = now, False
            self._watch(path, observed, now, node_id in echoing)
            if path.phase is not Phase.WORKING or self._learn_echo(path, node_id in echoing, now):
                plan.probes.append(node_id)
                path.probed_at = now
            if self._due_report(path, now):
                plan.reports.append((node_id, path.report))  # type: ignore[arg-type]
        return plan

    def reported(self, node_id: str, accepted: bool, now: float) -> None:
        """A report was answered (``accepted`` or not), or could not be sent (not accepted)."""
        path = self.paths.get(node_id)
        if path is not None and not accepted:
            path.report_at = now + REPORT_AGAIN

    def decide_locally(self, node_id: str, failure: PathFailure, now: float) -> None:
        """The server cannot decide (it knows no ``POST /path``): this node does, for its side only."""
        path = self.paths.get(node_id)
        tries, reason = after_failure(failure, path.word.tries if path is not None and path.word is not None else 0)
        self.local_words[node_id] = PairPath(node_id, PathMode.RELAY, reason, since=now, tries=tries, retry_at=now + retry_delay(tries))

    def _local_word(self, node_id: str, now: float) -> PairPath | None:
        word = self.local_words.get(node_id)
        if word is not None and word.mode is PathMode.RELAY and word.retry_at is not None and now >= word.retry_at:
            mode = PathMode.DIRECT
            word = self.local_words[node_id] = PairPath(
                node_id, mode, retry_reason(word.tries), since=now, tries=word.tries
            )
        return word

    def _current(self, me: Me | PeerView, peer: PeerView, word: PairPath | None, now: float) -> PeerPath:
        """The peer's path as it stands, or a new one if its mode or endpoint moved."""
        ipv4_only = word is not None and word.family == 4
        rule_mode, rule_reason = ipv4_rule(me, peer) if ipv4_only else pair_rule(me, peer)
        if word is not None and word.mode is not None and not (word.mode in DIRECT_MODES and rule_mode is PathMode.RELAY):
            mode, reason = word.mode, word.reason
            if mode in DIRECT_MODES:
                mode = rule_mode  # a retry goes where the rule says: LAN or public
        else:
            word = None
            mode, reason = rule_mode, rule_reason
        endpoint = endpoint_for(peer, mode, me, ipv4_only) if mode in DIRECT_MODES else None
        if mode in DIRECT_MODES and endpoint is None:
            mode, reason = PathMode.RELAY, "no address of the peer is known"
        if mode in DIRECT_MODES and word is None:
            why = "same public address as this node, " if mode is PathMode.LAN else ""
            if mode is PathMode.DIRECT and not ipv4_only and over_ipv6(me, peer):
                why = f"{rule_reason}, "  # "both have IPv6"
            reason = f"{why}via {endpoint}"
        elif mode in DIRECT_MODES:
            reason = f"{reason}, via {endpoint}"
        current = self.paths.get(peer.node_id)
        mine = _own_facts(me)
        if current is not None and (current.mode, current.endpoint, current.mine) == (mode, endpoint, mine):
            current.reason, current.word, current.timeout = reason, word, attempt_timeout(word)
            return current
        return PeerPath(
            mode=mode,
            reason=reason,
            endpoint=endpoint,
            since=now,
            timeout=attempt_timeout(word),
            word=word,
            phase=Phase.RELAYED if mode is PathMode.RELAY else Phase.TRYING,
            mine=mine,
        )

    def _watch(self, path: PeerPath, seen: Seen, now: float, echoing: bool) -> None:
        """Read one check's counters into a direct or LAN path."""
        if seen.rx_bytes < path.last_rx or seen.tx_bytes < path.last_tx:
            path.last_rx = path.last_tx = -1  # a new WireGuard: its counters start again
        if seen.via_relay:
            # What arrived came through the relay (late relayed packets, or a
            # server still forwarding a session this node ended), not over
            # this path: it proves nothing and silences nothing. The
            # reconciler points WireGuard back; an attempt's time runs on.
            path.last_rx, path.last_tx = seen.rx_bytes, seen.tx_bytes
            if path.baseline_rx is not None:
                path.baseline_rx = seen.rx_bytes
            if not path.proven and now - path.since >= path.timeout:
                self._fail(path, PathFailure.NO_PROOF, now)
            return
        heard = path.last_rx >= 0 and seen.rx_bytes > path.last_rx
        sent = path.last_tx >= 0 and seen.tx_bytes - path.last_tx > KEEPALIVE_BYTES
        if path.baseline_rx is None and now - path.since >= SETTLE:
            path.baseline_rx = seen.rx_bytes
        elif path.baseline_rx is not None and seen.rx_bytes < path.baseline_rx:
            path.baseline_rx = 0
        path.last_rx, path.last_tx = seen.rx_bytes, seen.tx_bytes
        proof = (path.baseline_rx is not None and seen.rx_bytes > path.baseline_rx) or (
            seen.latest_handshake > path.since + SETTLE
        )
        if not path.proven:
            if proof:
                path.proven_at = path.heard_at = now
                path.phase = Phase.WORKING
                path.report = path.report_at = None
            elif now - path.since >= path.timeout:
                self._fail(path, PathFailure.NO_PROOF, now)
            return
        if heard:
            path.heard_at = now
            path.unanswered_since = None
            path.phase = Phase.WORKING
            path.report = path.report_at = None
            return
        if sent and path.unanswered_since is None:
            path.unanswered_since = now
        if path.unanswered_since is None or path.phase is Phase.FAILED:
            return
        silent_for = now - path.unanswered_since
        if silent_for >= (DEAD_AFTER if echoing else DEAD_AFTER_WITHOUT_ECHO):
            self._fail(path, PathFailure.STOPPED, now)
        elif silent_for >= PROBE_AFTER:
            path.phase = Phase.SILENT

    def _fail(self, path: PeerPath, failure: PathFailure, now: float) -> None:
        if path.phase is not Phase.FAILED:
            path.phase = Phase.FAILED
            path.report, path.report_at = failure, now

    @staticmethod
    def _learn_echo(path: PeerPath, echoing: bool, now: float) -> bool:
        """Whether a working path gets a probe to learn the peer answers them
        (so its silence counts after DEAD_AFTER): now and then, until it has."""
        return not echoing and (path.probed_at is None or now - path.probed_at >= ECHO_LEARNING_GAP)

    @staticmethod
    def _due_report(path: PeerPath, now: float) -> bool:
        return path.phase is Phase.FAILED and path.report_at is not None and now >= path.report_at


def _own_facts(me: Me | PeerView) -> tuple:
    return (me.public_ip, getattr(me, "nat_port", None), me.nat_type, me.lan_ip, me.public_ip6)
