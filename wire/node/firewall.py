"""The node's packet filter: the server's FilterRules as the node's own nftables table.

The access policy tells each node what may reach it over the mesh
(:class:`wire.protocol.filter.FilterRule`). This module turns those rules
into one nftables table of the node's own (``inet wire_<interface>`` unless
told otherwise) and replaces that table whole, in one ``nft -f -``
transaction, whenever the rules change: no moment with half a filter, and
one process however many peers there are.

The table concerns only packets arriving on the wire interface: they jump
to a chain that accepts replies (``ct state established,related``), drops
invalid ones, accepts the path probes of the mesh's peers (UDP
:data:`~wire.node.probe.PROBE_PORT`, see ``probe_sources``), then what the
rules accept, and drops the rest. Every other interface is left to the
host's own firewall; a drop in another table still wins (nftables accepts
a packet only when every base chain on its hook does).

The text is built only from ``ipaddress`` objects, ints and the validated
names, sorted, so that the same rules always give the same text and
"unchanged" is a string comparison.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Union

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from wire.install import detect_platform, install_command, package_for
from wire.protocol.filter import PROTOCOLS, FilterRule, PortRange
from wire.node.probe import PROBE_PORT
from wire.runner import CommandError, CommandNotFound, IProcessRunner, ProcessResult

log = Logger()

NFT_TIMEOUT = 30.0
MAX_INTERFACE = 15  # IFNAMSIZ - 1
MAX_TABLE = 64
# Quoted in the ruleset (iifname "..."), so no wildcard, quote or space may pass.
_INTERFACE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_INTERFACE)
# Unquoted in the ruleset: an nft identifier, so it starts with a letter.
_TABLE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,%d}" % (MAX_TABLE - 1))
# Lines and characters of nft's stderr quoted in a FirewallError (nft quotes
# the offending line of the script, which can hold a thousand addresses).
_STDERR_LINES = 4
_STDERR_LINE_CHARS = 200

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Source = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address, Network]
# A source as the ruleset uses it: (version, first address, prefix length,
# its text in nft: the address alone for a host). Ints sort and compare fast.
_Net = tuple[int, int, int, str]
# Parsed sources remembered (a netmap's peers recur from one apply to the next).
_PARSED_CACHE = 32768


class FirewallError(Exception):
    """nft could not be run, or refused the ruleset; the message quotes it."""


class InvalidFirewallConfig(ValueError):
    """A name, source, protocol or port that cannot go into a ruleset."""


def check_interface(value: object) -> str:
    if not isinstance(value, str) or not _INTERFACE.fullmatch(value):
        raise InvalidFirewallConfig(
            f"interface: {_shown(value)} is not an interface name for the firewall (1-{MAX_INTERFACE} of A-Z a-z 0-9 _ -)"
        )
    return value


def check_table(value: object) -> str:
    if not isinstance(value, str) or not _TABLE.fullmatch(value):
        raise InvalidFirewallConfig(
            f"table: {_shown(value)} is not a table name (a letter, then up to {MAX_TABLE - 1} of A-Z a-z 0-9 _ -)"
        )
    return value


def table_for(interface: str) -> str:
    """The node's own table for its wire interface."""
    return check_table(f"wire_{check_interface(interface)}")


def ruleset(table: str, interface: str, rules: Sequence[FilterRule], probe_sources: Iterable[Source] = ()) -> str:
    """The ``nft -f -`` script that replaces table ``inet TABLE`` with this filter, atomically.

    ``rules`` say what may reach this node over ``interface``; rules with the
    same protocol and ports are merged into one, their sources collapsed.
    ``probe_sources`` are the mesh peers' addresses (or networks): each may
    send this node's daemon its path probes (UDP PROBE_PORT) whatever the
    rules say, since a path nobody may probe looks dead. Our own probes'
    answers need nothing: they are replies. The ``add`` before the
    ``delete`` makes the delete succeed when the table is not there yet.
    """
    table = check_table(table)
    interface = check_interface(interface)
    lines = [
        "ct state established,related accept",
        "ct state invalid drop",
    ]
    probe = _collapse(_network(source) for source in probe_sources)
    lines += _family_rules(probe, f"udp dport {PROBE_PORT}")
    for (proto, ports), sources in sorted(_merged(rules).items(), key=_group_order):
        lines += _rule_lines(proto, ports, sources)
    lines.append("drop")
    body = "".join(f"\t\t{line}\n" for line in lines)
    return (
        f"add table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        f'\t\tiifname "{interface}" jump from_mesh\n'
        "\t}\n"
        "\tchain from_mesh {\n"
        f"{body}"
        "\t}\n"
        "}\n"
    )


def removal(table: str) -> str:
    """The script that deletes ``inet TABLE``, and succeeds when it is not there."""
    table = check_table(table)
    return f"add table inet {table}\ndelete table inet {table}\n"


def count_sources(rules: Sequence[FilterRule]) -> int:
    """The distinct source networks of some rules (for the log)."""
    return len({_network(source)[:3] for rule in rules for source in rule.sources})


# -- building the rules ---------------------------------------------------------

_Ports = tuple[tuple[int, int], ...]  # merged, sorted; () is every port


def _merged(rules: Sequence[FilterRule]) -> dict[tuple[str | None, _Ports], set[_Net]]:
    groups: dict[tuple[str | None, _Ports], set[_Net]] = {}
    for rule in rules:
        if rule.peers:
            raise InvalidFirewallConfig("peers: a rule's peers must be resolved to addresses first (wire.protocol.filter.resolve_peers)")
        if rule.proto is not None and rule.proto not in PROTOCOLS:
            raise InvalidFirewallConfig(f"proto: {_shown(rule.proto)} is not one of {', '.join(PROTOCOLS)}")
        ports = _merge_ports(rule.ports)
        if ports and rule.proto == "icmp":
            raise InvalidFirewallConfig("ports: icmp has no ports")
        groups.setdefault((rule.proto, ports), set()).update(_network(source) for source in rule.sources)
    return groups


def _group_order(item: tuple[tuple[str | None, _Ports], set[_Net]]) -> tuple:
    (proto, ports), _ = item
    return (proto or "", ports)


def _merge_ports(ranges: Iterable[PortRange]) -> _Ports:
    spans = []
    for port_range in ranges:
        first, last = port_range.first, port_range.last
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in (first, last)) or not 0 <= first <= last <= 65535:
            raise InvalidFirewallConfig(f"ports: {_shown(port_range)} is not a range within 0..65535")
        spans.append((first, last))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:  # overlapping or adjacent: nft refuses overlaps
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    if merged == [(0, 65535)]:
        return ()
    return tuple(merged)


def _rule_lines(proto: str | None, ports: _Ports, sources: set[_Net]) -> list[str]:
    dports = _set(f"{first}" if first == last else f"{first}-{last}" for first, last in ports)
    if proto == "icmp":
        return _family_rules(sources, "meta l4proto icmp", "meta l4proto ipv6-icmp")
    if proto is None:
        match = f"meta l4proto {{ tcp, udp }} th dport {dports}" if ports else ""
    else:
        match = f"{proto} dport {dports}" if ports else f"meta l4proto {proto}"
    return _family_rules(sources, match)


def _family_rules(sources: Iterable[_Net], match: str, match6: str | None = None) -> list[str]:
    """One accept per address family that has sources (none when none has)."""
    lines = []
    networks = _collapse(sources)
    for version, family, l4 in ((4, "ip", match), (6, "ip6", match if match6 is None else match6)):
        chosen = [n for n in networks if n[0] == version]
        if not chosen:
            continue
        if chosen[0][2] == 0:  # the whole family: collapsed, it is alone
            source = f"meta nfproto {'ipv4' if version == 4 else 'ipv6'}"
        else:
            source = f"{family} saddr " + _set(n[3] for n in chosen)
        lines.append(" ".join(part for part in (source, l4, "accept") if part))
    return lines


def _collapse(sources: Iterable[_Net]) -> list[_Net]:
    """Sorted, without duplicates or networks inside another: nft refuses
    overlapping intervals in a set. (Neighbours are not merged into a
    shorter prefix: ipaddress.collapse_addresses costs 10x more.)"""
    result: list[_Net] = []
    end = -1
    version = 0
    for net in sorted(set(sources)):
        net_version, first, prefixlen, _ = net
        if net_version != version:
            version, end = net_version, -1
        if first <= end:  # CIDR blocks nest or are apart: this one is inside the last kept
            continue
        result.append(net)
        end = first + (1 << ((32 if version == 4 else 128) - prefixlen)) - 1
    return result


def _network(source: Source) -> _Net:
    return _parse(source if isinstance(source, str) else str(source))


@functools.lru_cache(maxsize=_PARSED_CACHE)
def _parse(source: str) -> _Net:
    try:
        network = ipaddress.ip_network(source, strict=False)
    except (TypeError, ValueError):
        raise InvalidFirewallConfig(f"sources: {_shown(source)} is not an address or network") from None
    address = network.network_address
    text = str(address) if network.prefixlen == network.max_prefixlen else str(network)
    return (network.version, int(address), network.prefixlen, text)


def _set(elements: Iterable[str]) -> str:
    return "{ " + ", ".join(elements) + " }"


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


# -- applying it ------------------------------------------------------------------


def install_hint(platform: str | None = None) -> str:
    """How to get ``nft`` on this platform, as a sentence."""
    platform = platform or detect_platform()
    package = package_for("nft") or "nftables"
    if platform == "macos":
        return "nftables is Linux's packet filter; macOS has none"
    command = install_command(platform, package)
    if command is None:
        return f"install the {package} package"
    return f"install it with `{' '.join(command)}`"


class Firewall:
    """The node daemon's packet filter, in the nftables table it owns.

    ``apply`` replaces the table when the rules change (one ``nft -f -``,
    atomic), ``remove`` deletes it. Calls are serialised.
    """

    def __init__(
        self,
        runner: IProcessRunner,
        interface: str,
        *,
        table: str | None = None,
        timeout: float = NFT_TIMEOUT,
    ) -> None:
        self.interface = check_interface(interface)
        self.table = check_table(table) if table is not None else table_for(interface)
        self._runner = runner
        self._timeout = timeout
        self._lock = DeferredLock()
        self._applied: str | None = None  # the text in force, None when unknown
        self._given: tuple[tuple[FilterRule, ...], frozenset[Source]] | None = None  # what it was built from

    async def apply(self, rules: Sequence[FilterRule], probe_sources: Iterable[Source] = ()) -> bool:
        """Put these rules in force; False when they already were (no nft run).

        Raises InvalidFirewallConfig before running anything, and
        FirewallError when nft is missing or refuses; after a failure the
        next apply runs nft again, whatever it is given.
        """
        # The same inputs as last time skip building the text (~30 ms of
        # ipaddress work for 1,000 peers, on the reactor thread).
        probe_sources = frozenset(probe_sources)
        given = (tuple(rules), probe_sources)
        if self._applied is not None and given == self._given:
            return False
        text = ruleset(self.table, self.interface, rules, probe_sources)
        async with self._lock:
            if text == self._applied:
                self._given = given
                return False
            self._applied = None
            await self._nft(text, f"apply the filter of {self.interface}")
            self._applied, self._given = text, given
        log.info(
            "firewall {table}: {rules} rules from {sources} sources, probes from {probers} peers, in force on {interface}",
            table=self.table,
            rules=len(rules),
            sources=count_sources(rules),
            probers=len(probe_sources),
            interface=self.interface,
        )
        return True

    async def remove(self) -> None:
        """Delete the table; a table that is not there is fine."""
        async with self._lock:
            self._applied = None
            await self._nft(removal(self.table), f"remove table {self.table}")
        log.info("firewall {table}: removed", table=self.table)

    async def available(self, *, platform: str | None = None) -> str | None:
        """None when nft can manage the table here, else what is missing and how to get it.

        Checks (``nft --check``, nothing changes) that the node's table could be added.
        """
        try:
            result = await self._runner.run(["nft", "--check", "-f", "-"], stdin=removal(self.table).encode(), timeout=self._timeout)
        except CommandNotFound:
            return f"the 'nft' program is missing (package nftables): {install_hint(platform)}"
        except CommandError as e:
            return f"nft could not be run: {e}"
        if result.rc != 0:
            return f"nft cannot manage the firewall here (it needs root or CAP_NET_ADMIN, and nf_tables in the kernel): {_stderr(result)}"
        return None

    async def _nft(self, script: str, what: str) -> None:
        try:
            result = await self._runner.run(["nft", "-f", "-"], stdin=script.encode(), timeout=self._timeout)
        except CommandNotFound:
            raise FirewallError(f"cannot {what}: the 'nft' program is missing (package nftables): {install_hint()}") from None
        except CommandError as e:
            raise FirewallError(f"cannot {what}: {e}") from None
        if result.rc != 0:
            raise FirewallError(f"cannot {what}: nft exited with code {result.rc}: {_stderr(result)}")


def _stderr(result: ProcessResult) -> str:
    lines = [line.strip() for line in result.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    shown = [line if len(line) <= _STDERR_LINE_CHARS else line[:_STDERR_LINE_CHARS] + "…" for line in lines[:_STDERR_LINES]]
    if len(lines) > _STDERR_LINES:
        shown.append(f"({len(lines) - _STDERR_LINES} more lines)")
    text = " | ".join(shown) or "(nothing on stderr)"
    return "".join(c if c.isprintable() else "?" for c in text)
