"""The relay's kernel fast path: nftables forwards a verified session's frames.

Python checks every relayed frame (MAC, replay window, rate) at 12-26 us a
frame. Once both sides of a session have shown, with authenticated frames
over UDP, where they are, and both nodes' shims take frames sealed by the
other side (their grants carry the peer's token and key), the kernel can
forward the frames unchanged: the receiving shim checks the MAC and the
replay window itself, under the peer side's key.

This module owns one nftables table, ``ip wire_relay_<port>``, rebuilt whole
(one atomic ``nft -f -`` transaction) whenever the set of such sessions
changes. Per session side A (verified at A:PA, the other side B at B:PB):

- prerouting (nat): ``udp dport PORT ip saddr A udp sport PA @th,96,64 TOKEN_A
  dnat to B:PB`` - the first frame of a flow, carrying A's token at its
  place (UDP header 64 bits, MAGIC 32, then the token), opens a conntrack
  flow; conntrack's reply direction carries B's frames back to A;
- postrouting (nat): the same flow ``masquerade to :PORT``, so B sees it
  come from the relay port as before;
- forward (filter): a named counter (read every POLL_INTERVAL to keep the
  session's ``last_used`` fresh, so the idle expiry still works) and
  ``limit rate over RATE bytes/second burst BURST bytes drop``: the side's
  rate budget.

A side whose node binds from WireGuard's own port (wire.server.relayports)
has a port ``P_A`` of its own; once both sides of a session are bound
(WireGuard at A:PA seen on P_A, B:PB on P_B), WireGuard's packets
themselves are forwarded, with no shim on either node in their way:

- prerouting: ``udp dport P_A ip saddr A udp sport PA dnat to B:PB`` (the
  port names the side: no token to match, WireGuard's packets carry none);
- postrouting: ``masquerade to :P_B``, so B's WireGuard sees A's packets
  come from B's own port, where it sends back (conntrack's reply direction);
- forward: the counter and rate limit, as above.

The relay tells each such side, on its shim channel, that the kernel
forwards it (``RelayTable.set_kernel``): only then does its node point
WireGuard at ``server:P_A``. Such a session's shims' frames stay in Python
(only keepalives by then), so every keepalive answer says it again.

Conntrack entries the socket's own traffic made (A:PA to the relay port,
delivered locally) would keep a flow out of the NAT rules, so they are
deleted (``conntrack -D``) when a session goes on the fast path, and again
when it leaves it (a side moved, the session ended), so nothing stale
carries frames. The server stopping deletes the table.

Where the kernel cannot do it (not root, no nft or conntrack, forwarding
off, nft refusing the table), the Python path carries everything, chosen
here once at start; an nft failure later turns the fast path off for the
rest of the run. ``state`` says which, for ``/metrics``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wire.runner import CommandError, IProcessRunner
from wire.server.relay import DEFAULT_BURST_BYTES, DEFAULT_RATE_BYTES, RelaySession, RelayTable

ON, OFF, UNAVAILABLE = "on", "off", "unavailable"
STATES = (ON, OFF, UNAVAILABLE)
POLL_INTERVAL = 10.0
# WireGuard's packets reaching a side's port the kernel should forward
# rebuild the table (and forget the flows) at most this often.
REBUILD_EVERY = 5.0
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
# `conntrack -D` exits 1 when nothing matched: nothing to delete is success.
_CONNTRACK_NONE_DELETED = 1

log = Logger()


@dataclass(frozen=True)
class FastSide:
    """One direction the kernel forwards: datagrams from ``source`` to
    ``port`` go to ``destination``, as if from ``out_port``. ``sealed``:
    relay frames (only those carrying ``token``); else WireGuard's own
    packets, on the side's own port."""

    session_id: str
    token: bytes
    source: tuple[str, int]
    destination: tuple[str, int]
    port: int
    out_port: int
    sealed: bool = True

    @property
    def counter(self) -> str:
        return ("t" if self.sealed else "d") + self.token.hex()


def fast_sides(sessions: list[RelaySession], port: int) -> frozenset[FastSide]:
    """What the kernel should forward for these (candidate) sessions' shims,
    on the relay ``port``."""
    found = set()
    for session in sessions:
        for side in session.sides.values():
            other = side.other
            assert side.address is not None and other is not None and other.address is not None
            found.add(FastSide(session.session_id, side.token, side.address, other.address, port, port))
    return frozenset(found)


def direct_sides(sessions: list[RelaySession]) -> frozenset[FastSide]:
    """What the kernel should forward for these sessions' WireGuards, each
    side's packets from its own port to the other side's."""
    found = set()
    for session in sessions:
        for side in session.sides.values():
            other = side.other
            assert other is not None and side.wg_address is not None and other.wg_address is not None
            assert side.direct_port is not None and other.direct_port is not None
            found.add(
                FastSide(session.session_id, side.token, side.wg_address, other.wg_address, side.direct_port, other.direct_port, sealed=False)
            )
    return frozenset(found)


def table_name(port: int) -> str:
    return f"wire_relay_{port}"


def ruleset(port: int, sides: frozenset[FastSide], rate: float, burst: float) -> str:
    """The whole table (named for the relay ``port``), for ``nft -f -``:
    replaced in one transaction (the first two lines make sure there is one
    to delete)."""
    table = table_name(port)
    ordered = sorted(sides, key=lambda s: s.counter)
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]
    for side in ordered:
        lines.append(f"\tcounter {side.counter} {{ }}")
    lines += ["\tchain prerouting {", "\t\ttype nat hook prerouting priority dstnat; policy accept;"]
    for side in ordered:
        (a, pa), (b, pb) = side.source, side.destination
        token = f" @th,96,64 0x{side.token.hex()}" if side.sealed else ""
        lines.append(f"\t\tudp dport {side.port} ip saddr {a} udp sport {pa}{token} dnat to {b}:{pb}")
    lines += ["\t}", "\tchain forward {", "\t\ttype filter hook forward priority filter; policy accept;"]
    for side in ordered:
        lines.append(
            f"\t\t{_flow(side)} counter name \"{side.counter}\""
            f" limit rate over {int(rate)} bytes/second burst {int(burst)} bytes drop"
        )
    lines += ["\t}", "\tchain postrouting {", "\t\ttype nat hook postrouting priority srcnat; policy accept;"]
    for side in ordered:
        lines.append(f"\t\t{_flow(side)} masquerade to :{side.out_port}")
    # What the relay socket sends (answers, frames Python forwards) opens no
    # flow of its own: one it opened towards a side (say, in the moment
    # between a side's flows being deleted and its next frame) would take
    # that side's frames as its replies, past the NAT rules, into Python.
    lines += ["\t}", "\tchain output {", "\t\ttype filter hook output priority raw; policy accept;"]
    lines += [f"\t\tudp sport {port} notrack", "\t}", "}", ""]
    return "\n".join(lines)


def _flow(side: FastSide) -> str:
    """A forwarded frame of this side between NAT's two halves: the
    sender's own source, the receiver as destination."""
    (a, pa), (b, pb) = side.source, side.destination
    return f"ip saddr {a} udp sport {pa} ip daddr {b} udp dport {pb}"


def counters_of(nft_json: bytes) -> dict[str, int]:
    """Bytes by counter name from ``nft -j list counters table ...``."""
    found: dict[str, int] = {}
    for item in json.loads(nft_json).get("nftables", []):
        counter = item.get("counter") if isinstance(item, dict) else None
        if isinstance(counter, dict) and isinstance(counter.get("name"), str):
            found[counter["name"]] = int(counter.get("bytes", 0))
    return found


def conntrack_delete(source: tuple[str, int], port: int) -> list[str]:
    """Delete the flows a side's address opened to its port (local or NATed)."""
    return ["conntrack", "-D", "-p", "udp", "-s", source[0], "--sport", str(source[1]), "--dport", str(port)]


def flow_ends(sides) -> set[tuple[tuple[str, int], int]]:
    """Each address of these sides, with the port it sends to."""
    return {(s.source, s.port) for s in sides} | {(s.destination, s.out_port) for s in sides}


def _is_root() -> bool:
    return os.geteuid() == 0


def _forwarding_on() -> bool:
    try:
        with open(IP_FORWARD) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


class RelayFastPath(Service):
    """Keeps the kernel's table in step with the relay table's candidates."""

    def __init__(
        self,
        clock: IReactorTime,
        runner: IProcessRunner,
        table: RelayTable,
        port: int,
        rate: float = DEFAULT_RATE_BYTES,
        burst: float = DEFAULT_BURST_BYTES,
        is_root=_is_root,
        forwarding_on=_forwarding_on,
    ):
        self._clock = clock
        self._runner = runner
        self._table = table
        self._port = port
        self._rate, self._burst = rate, burst
        self._is_root, self._forwarding_on = is_root, forwarding_on
        self.state = UNAVAILABLE
        self.reason = "not started"
        self.installed: frozenset[FastSide] = frozenset()
        self._seen_bytes: dict[str, int] = {}
        self._pending: Deferred | None = None  # the reconcile under way
        self._again = False
        self._soon: IDelayedCall | None = None
        self._poll = LoopingCall(self._poll_guarded)
        self._poll.clock = clock
        self._rebuilt_at = float("-inf")
        self.ready: Deferred | None = None  # the start's checks, for tests

    # -- life ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.ready = Deferred.fromCoroutine(self.start())

    async def start(self) -> None:
        why = await self._unavailable_because()
        if why:
            self._give_up(UNAVAILABLE, why)
            return
        self.state, self.reason = ON, ""
        log.info("relay fast path on: the kernel forwards verified relay sessions (table ip {table})", table=table_name(self._port))
        self._table.on_change = self.changed
        self._table.offer_peer_keys = True
        self._table.offer_direct = self._table.direct_ports is not None
        self._table.on_kernel_missed = self.rebuild
        self._poll.start(POLL_INTERVAL, now=False)
        self.changed()

    async def _unavailable_because(self) -> str:
        if not self._is_root():
            return "not running as root"
        if not self._forwarding_on():
            return f"IPv4 forwarding is off ({IP_FORWARD} is not 1)"
        try:
            (await self._runner.run(["conntrack", "--version"])).check()
            (await self._runner.run(["nft", "-f", "-"], stdin=ruleset(self._port, frozenset(), 0, 0).encode())).check()
        except CommandError as e:
            return str(e)
        # A server killed before it could clean up left flows that still
        # forward its old sessions' frames: none of them is ours any more.
        await self._forget_port_flows(str(self._port))
        pool = self._table.direct_ports
        if pool is not None:
            await self._forget_port_flows(f"{pool.low}-{pool.high}")
        return ""

    async def _forget_port_flows(self, ports: str) -> None:
        try:
            result = await self._runner.run(["conntrack", "-D", "-p", "udp", "--dport", ports])
            if result.rc not in (0, _CONNTRACK_NONE_DELETED):
                result.check()
        except CommandError as e:
            log.warn("relay fast path: old flows to port {port} not deleted: {error}", port=ports, error=e)

    def stopService(self):
        super().stopService()
        self._leave_table()
        if self._poll.running:
            self._poll.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        if self.state != ON:
            return None
        self.state, self.reason = OFF, "the server stopped"
        return Deferred.fromCoroutine(self._remove_all())

    def _leave_table(self) -> None:
        """The relay table is on its own again: no grants for the fast path,
        no side ports (each side's node goes back to its shim)."""
        self._table.on_change = None
        self._table.on_kernel_missed = None
        self._table.offer_peer_keys = False
        self._table.offer_direct = False
        self._table.free_direct_ports()

    async def _remove_all(self) -> None:
        gone, self.installed = self.installed, frozenset()
        self._table.set_kernel(frozenset())
        try:
            (await self._runner.run(["nft", "delete", "table", "ip", table_name(self._port)])).check()
        except CommandError as e:
            log.warn("relay fast path: the table could not be deleted: {error}", error=e)
        await self._forget_flows(gone)

    def _give_up(self, state: str, why: str) -> None:
        self.state, self.reason = state, why
        self._leave_table()
        if self._poll.running:
            self._poll.stop()
        log.warn("relay fast path {state}, the relay forwards in Python: {why}", state=state, why=why)

    # -- keeping the table in step ---------------------------------------------

    def changed(self) -> None:
        """The relay table changed: bring the kernel in step soon (once per turn)."""
        if self.state != ON or (self._soon is not None and self._soon.active()):
            return
        self._soon = self._clock.callLater(0, self._reconcile_now)

    def rebuild(self) -> None:
        """WireGuard's packets reached a port the kernel should forward (the
        table was removed behind our back, or a flow went stale): install
        it all again and forget the flows, at most every REBUILD_EVERY."""
        now = self._clock.seconds()
        if self.state != ON or now - self._rebuilt_at < REBUILD_EVERY:
            return
        self._rebuilt_at = now
        log.warn("relay fast path: WireGuard packets reached the relay that the kernel should forward; rebuilding the table")
        self.installed = frozenset()
        self.changed()

    def _reconcile_now(self) -> None:
        self._soon = None
        if self._pending is not None:
            self._again = True  # one more round when this one ends
            return
        self._pending = Deferred.fromCoroutine(self.reconcile())
        self._pending.addErrback(lambda f: log.failure("relay fast path: reconcile failed", f))
        self._pending.addBoth(self._reconciled)

    def _reconciled(self, _) -> None:
        self._pending = None
        if self._again:
            self._again = False
            self.changed()

    async def reconcile(self) -> None:
        if self.state != ON:
            return
        direct = direct_sides(self._table.direct_candidates())
        # A session whose WireGuards the kernel forwards keeps its shims'
        # frames in Python: they are then only keepalives, and their answers
        # are how each node goes on hearing that its side is in the kernel.
        in_kernel = {s.session_id for s in direct}
        sealed = [s for s in self._table.fastpath_candidates() if s.session_id not in in_kernel]
        wanted = fast_sides(sealed, self._port) | direct
        if wanted == self.installed:
            return
        try:
            text = ruleset(self._port, wanted, self._rate, self._burst)
            (await self._runner.run(["nft", "-f", "-"], stdin=text.encode())).check()
        except CommandError as e:
            self._give_up(OFF, f"nft failed: {e}")
            await self._remove_all()
            return
        # New flows must meet the NAT rules, and old ones must stop carrying
        # frames: every address whose forwarding changed loses its flows.
        changed = self.installed ^ wanted
        self.installed = wanted
        self._seen_bytes = {}  # the table was made anew: its counters start at 0
        await self._forget_flows(changed)
        # Only now may the sides' WireGuards send to their ports.
        self._table.set_kernel(frozenset(s.token for s in wanted if not s.sealed))
        log.debug("relay fast path: {count} session sides in the kernel", count=len(wanted))

    async def _forget_flows(self, sides) -> None:
        for source, port in sorted(flow_ends(sides)):
            try:
                result = await self._runner.run(conntrack_delete(source, port))
                if result.rc not in (0, _CONNTRACK_NONE_DELETED):
                    result.check()
            except CommandError as e:
                log.warn("relay fast path: stale flows of {host}:{port} not deleted: {error}", host=source[0], port=source[1], error=e)

    # -- counters: the idle expiry -----------------------------------------------

    def _poll_guarded(self) -> Deferred:
        d = Deferred.fromCoroutine(self.poll())
        d.addErrback(lambda f: log.failure("relay fast path: reading counters failed", f))
        return d

    async def poll(self) -> None:
        """A side whose counter moved was used: its session is not idle."""
        if self.state != ON or not self.installed:
            return
        result = await self._runner.run(["nft", "-j", "list", "counters", "table", "ip", table_name(self._port)])
        counters = counters_of(result.check().stdout)
        now = self._clock.seconds()
        sessions = {s.session_id: s for s in self._table.sessions()}
        for side in self.installed:
            bytes_now = counters.get(side.counter)
            if bytes_now is None:
                continue
            if bytes_now != self._seen_bytes.get(side.counter, 0):
                session = sessions.get(side.session_id)
                if session is not None:
                    session.last_used = now
            self._seen_bytes[side.counter] = bytes_now

    @property
    def sessions_on(self) -> int:
        return len({s.session_id for s in self.installed})

    @property
    def direct_sessions_on(self) -> int:
        """Sessions whose WireGuard packets the kernel forwards (no shim in the way)."""
        return len({s.session_id for s in self.installed if not s.sealed})
