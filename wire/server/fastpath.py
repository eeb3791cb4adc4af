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
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
# `conntrack -D` exits 1 when nothing matched: nothing to delete is success.
_CONNTRACK_NONE_DELETED = 1

log = Logger()


@dataclass(frozen=True)
class FastSide:
    """One direction the kernel forwards: frames from ``source`` carrying
    ``token`` go to ``destination``."""

    session_id: str
    token: bytes
    source: tuple[str, int]
    destination: tuple[str, int]

    @property
    def counter(self) -> str:
        return "t" + self.token.hex()


def fast_sides(sessions: list[RelaySession]) -> frozenset[FastSide]:
    """What the kernel should forward for these (candidate) sessions."""
    found = set()
    for session in sessions:
        for side in session.sides.values():
            other = side.other
            assert side.address is not None and other is not None and other.address is not None
            found.add(FastSide(session.session_id, side.token, side.address, other.address))
    return frozenset(found)


def table_name(port: int) -> str:
    return f"wire_relay_{port}"


def ruleset(port: int, sides: frozenset[FastSide], rate: float, burst: float) -> str:
    """The whole table, for ``nft -f -``: replaced in one transaction (the
    first two lines make sure there is one to delete)."""
    table = table_name(port)
    ordered = sorted(sides, key=lambda s: s.counter)
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]
    for side in ordered:
        lines.append(f"\tcounter {side.counter} {{ }}")
    lines += ["\tchain prerouting {", "\t\ttype nat hook prerouting priority dstnat; policy accept;"]
    for side in ordered:
        (a, pa), (b, pb) = side.source, side.destination
        lines.append(f"\t\tudp dport {port} ip saddr {a} udp sport {pa} @th,96,64 0x{side.token.hex()} dnat to {b}:{pb}")
    lines += ["\t}", "\tchain forward {", "\t\ttype filter hook forward priority filter; policy accept;"]
    for side in ordered:
        lines.append(
            f"\t\t{_flow(side)} counter name \"{side.counter}\""
            f" limit rate over {int(rate)} bytes/second burst {int(burst)} bytes drop"
        )
    lines += ["\t}", "\tchain postrouting {", "\t\ttype nat hook postrouting priority srcnat; policy accept;"]
    for side in ordered:
        lines.append(f"\t\t{_flow(side)} masquerade to :{port}")
    lines += ["\t}", "}", ""]
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
    """Delete the flows a side's address opened to the relay port (local or NATed)."""
    return ["conntrack", "-D", "-p", "udp", "-s", source[0], "--sport", str(source[1]), "--dport", str(port)]


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
        await self._forget_port_flows()
        return ""

    async def _forget_port_flows(self) -> None:
        try:
            result = await self._runner.run(["conntrack", "-D", "-p", "udp", "--dport", str(self._port)])
            if result.rc not in (0, _CONNTRACK_NONE_DELETED):
                result.check()
        except CommandError as e:
            log.warn("relay fast path: old flows to port {port} not deleted: {error}", port=self._port, error=e)

    def stopService(self):
        super().stopService()
        self._table.on_change = None
        self._table.offer_peer_keys = False
        if self._poll.running:
            self._poll.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        if self.state != ON:
            return None
        self.state, self.reason = OFF, "the server stopped"
        return Deferred.fromCoroutine(self._remove_all())

    async def _remove_all(self) -> None:
        gone, self.installed = self.installed, frozenset()
        try:
            (await self._runner.run(["nft", "delete", "table", "ip", table_name(self._port)])).check()
        except CommandError as e:
            log.warn("relay fast path: the table could not be deleted: {error}", error=e)
        await self._forget_flows(gone)

    def _give_up(self, state: str, why: str) -> None:
        self.state, self.reason = state, why
        self._table.on_change = None
        self._table.offer_peer_keys = False
        if self._poll.running:
            self._poll.stop()
        log.warn("relay fast path {state}, the relay forwards in Python: {why}", state=state, why=why)

    # -- keeping the table in step ---------------------------------------------

    def changed(self) -> None:
        """The relay table changed: bring the kernel in step soon (once per turn)."""
        if self.state != ON or (self._soon is not None and self._soon.active()):
            return
        self._soon = self._clock.callLater(0, self._reconcile_now)

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
        wanted = fast_sides(self._table.fastpath_candidates())
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
        log.debug("relay fast path: {count} session sides in the kernel", count=len(wanted))

    async def _forget_flows(self, sides) -> None:
        sources = {s.source for s in sides} | {s.destination for s in sides}
        for source in sorted(sources):
            try:
                result = await self._runner.run(conntrack_delete(source, self._port))
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
