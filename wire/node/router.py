"""The node as a subnet router or exit node: forwarding, and one nftables table.

A node that advertises routes (``--advertise-routes 192.168.1.0/24``,
``--advertise-exit-node``) carries the mesh's packets on to those networks.
That takes two things of the kernel, both undone on ``clear``:

- forwarding: ``net.ipv4.ip_forward`` (and ``net.ipv6.conf.all.forwarding``
  when a prefix is IPv6) set to 1. The values found are saved first, to a
  0600 file in the state directory, so that ``clear`` and, after a crash,
  the next start's ``recover`` put back exactly what was there;
- the table ``inet wire_<interface>_route`` (replaced whole in one ``nft -f
  -`` transaction, as :mod:`wire.node.firewall` does its own): a forward
  chain that accepts what comes in from the wire interface to the advertised
  prefixes and drops the rest of what comes in from it (a subnet router is no
  exit; what the host itself publishes by DNAT, a container's port, still
  passes), replies both ways; and a postrouting chain that masquerades the
  mesh's traffic to the prefixes (``snat``, the default; without it the LAN
  sees mesh addresses and needs a route back), and, for an exit
  (``0.0.0.0/0``, ``::/0``), everything from the mesh that leaves by another
  interface, whatever ``snat`` says.

Under an access policy the server sends the router its forwarding rules
(wire.protocol.routefilter): then the forward chain accepts from the wire
interface only what they allow (replies first, as before: stateful), from
the peers they name (resolved to their mesh addresses) to the networks they
name, over their protocols and ports; an empty set forwards nothing from the
mesh (how an unreadable or refused one fails: closed). Masquerade is the same
either way. ``forwarding=None`` (no policy) forwards everything to the routed
prefixes, as it always did.

Other traffic is left to the host: the forward chain's policy is accept.
But nftables forwards a packet only when every base chain on the hook
accepts it, so a host whose forward policy is drop in another table (a
firewall, Docker's iptables-nft rules) must accept the routed traffic there
as well; ``status`` names such chains. (iptables-legacy rules are not seen
by nft at all.)
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from wire.fsutil import write_atomically
from wire.node.firewall import _merge_ports, _stderr, check_interface, check_table, install_hint, removal
from wire.protocol.filter import PROTOCOLS
from wire.protocol.routefilter import ForwardRule
from wire.runner import CommandError, CommandNotFound, IProcessRunner, ProcessResult, shown_argv

log = Logger()

FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}
COMMAND_TIMEOUT = 30.0

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class RouterError(Exception):
    """nft or sysctl could not be run, or refused; the message quotes it."""


class InvalidRouterConfig(ValueError):
    """A prefix or subnet that cannot go into the router's ruleset."""


def route_table_for(interface: str) -> str:
    """The router's own table for its wire interface (apart from the filter's)."""
    return check_table(f"wire_{check_interface(interface)}_route")


def parse_prefixes(values: Iterable[object], field: str) -> list[Network]:
    """Networks, canonical, without duplicates or host bits; sorted."""
    networks = set()
    for value in values:
        try:
            networks.add(ipaddress.ip_network(value if isinstance(value, str) else str(value), strict=True))
        except ValueError:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise InvalidRouterConfig(f"{field}: {shown} is not a network like 192.168.1.0/24") from None
    return sorted(networks, key=lambda n: (n.version, int(n.network_address), n.prefixlen))


def router_ruleset(
    table: str, interface: str, prefixes: Sequence[str], *, snat: bool, mesh_subnets: Sequence[str],
    forwarding: Sequence[ForwardRule] | None = None,
) -> str:
    """The ``nft -f -`` script that replaces ``inet TABLE`` with the router's rules, atomically.

    Built only from the validated names and ``ipaddress`` objects; the same
    inputs give the same text. ``forwarding`` (resolved: no ``peers``) replaces
    "accept everything to the prefixes" with what its rules accept; each of
    their destinations must lie inside ``prefixes``.
    """
    table = check_table(table)
    interface = check_interface(interface)
    routed = parse_prefixes(prefixes, "prefixes")
    mesh = parse_prefixes(mesh_subnets, "mesh_subnets")
    forward = ["ct state established,related accept"]
    nat = []
    for version, family in ((4, "ip"), (6, "ip6")):
        chosen = [n for n in routed if n.version == version]
        sources = [n for n in mesh if n.version == version]
        if not chosen:
            continue
        nfproto = "ipv4" if version == 4 else "ipv6"
        if any(n.prefixlen == 0 for n in chosen):  # an exit: the whole family, out by the uplink
            if forwarding is None:
                forward.append(f'iifname "{interface}" meta nfproto {nfproto} accept')
            if sources:
                nat.append(f'{family} saddr {_set(sources)} oifname != "{interface}" masquerade')
            continue
        if forwarding is None:
            forward.append(f'iifname "{interface}" {family} daddr {_set(chosen)} accept')
        if snat and sources:
            nat.append(f'{family} saddr {_set(sources)} {family} daddr {_set(chosen)} oifname != "{interface}" masquerade')
    if forwarding is not None:
        forward += _forwarding_lines(interface, routed, forwarding)
    # Ports the host publishes by DNAT (a container's) stay reachable from the mesh, as without the router.
    forward.append(f'iifname "{interface}" ct status dnat accept')
    forward.append(f'iifname "{interface}" drop')
    text = (
        f"add table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        + "".join(f"\t\t{line}\n" for line in forward)
        + "\t}\n"
    )
    if nat:
        text += (
            "\tchain postrouting {\n"
            "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            + "".join(f"\t\t{line}\n" for line in nat)
            + "\t}\n"
        )
    return text + "}\n"


def _forwarding_lines(interface: str, routed: Sequence[Network], rules: Sequence[ForwardRule]) -> list[str]:
    """One accept per rule and address family that has both sources and destinations."""
    lines = []
    for index, rule in enumerate(rules):
        if rule.peers:
            raise InvalidRouterConfig(f"forwarding[{index}]: its peers must be resolved to addresses first")
        if rule.proto is not None and rule.proto not in PROTOCOLS:
            raise InvalidRouterConfig(f"forwarding[{index}]: proto must be one of {', '.join(PROTOCOLS)}")
        sources = parse_prefixes([ipaddress.ip_network(s, strict=False) for s in rule.sources], f"forwarding[{index}].sources")
        destinations = parse_prefixes(rule.destinations, f"forwarding[{index}].destinations")
        for destination in destinations:
            if not any(destination.version == r.version and destination.subnet_of(r) for r in routed):  # type: ignore[arg-type]
                raise InvalidRouterConfig(f"forwarding[{index}]: {destination} is outside the routed prefixes")
        ports = _merge_ports(rule.ports)
        dports = "{ " + ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ports) + " }"
        for version, family in ((4, "ip"), (6, "ip6")):
            saddr = _narrowest([n for n in sources if n.version == version])
            daddr = _narrowest([n for n in destinations if n.version == version])
            if not saddr or not daddr:
                continue
            if rule.proto == "icmp":
                l4 = "meta l4proto icmp" if version == 4 else "meta l4proto ipv6-icmp"
            elif rule.proto is None:
                l4 = f"meta l4proto {{ tcp, udp }} th dport {dports}" if ports else ""
            else:
                l4 = f"{rule.proto} dport {dports}" if ports else f"meta l4proto {rule.proto}"
            parts = [
                f'iifname "{interface}"',
                f"meta nfproto ipv{version}" if saddr[0].prefixlen == 0 else f"{family} saddr {_set(saddr)}",
                "" if daddr[0].prefixlen == 0 else f"{family} daddr {_set(daddr)}",
                l4,
                "accept",
            ]
            lines.append(" ".join(p for p in parts if p))
    return lines


def _narrowest(networks: Sequence[Network]) -> list[Network]:
    """Sorted networks without those inside another (nft refuses overlapping set elements)."""
    kept: list[Network] = []
    for network in sorted(networks, key=lambda n: (n.prefixlen, int(n.network_address))):
        if not any(network.subnet_of(k) for k in kept):  # type: ignore[arg-type]
            kept.append(network)
    return sorted(kept, key=lambda n: int(n.network_address))


def _set(networks: Sequence[Network]) -> str:
    return "{ " + ", ".join(str(n) for n in networks) + " }"


def forward_conflicts(listing: bytes | str, own_table: str) -> list[str]:
    """Sentences for the forward chains in ``nft -j list chains`` that drop by default (not ours)."""
    try:
        items = json.loads(listing or "{}").get("nftables", [])
    except (ValueError, AttributeError, UnicodeDecodeError):
        return []
    found = []
    for item in items if isinstance(items, list) else ():
        chain = item.get("chain") if isinstance(item, dict) else None
        if not isinstance(chain, dict) or chain.get("hook") != "forward" or chain.get("policy") != "drop":
            continue
        if chain.get("table") == own_table and chain.get("family") == "inet":
            continue
        name = f"{chain.get('family')} {chain.get('table')} chain {chain.get('name')}"
        found.append(
            f"table {name}"[:160] + " drops forwarded packets by default (policy drop): the routed traffic must also "
            "be accepted there, since nftables forwards a packet only when every forward chain accepts it"
        )
    return found


def _shown_value(value: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in value[:40])


@dataclass(frozen=True)
class RouterStatus:
    interface: str
    table: str
    prefixes: tuple[str, ...]  # () when not routing
    snat: bool
    originals: dict[str, str]  # the sysctl values found before routing, put back on clear
    warnings: tuple[str, ...]


class SubnetRouter:
    """Forwarding and the router's nftables table for one wire interface.

    Calls are serialised. At start, ``recover()`` first (undoes what a
    crashed run left); then ``apply`` whenever the advertised routes
    change; ``clear`` on ``wire down``.
    """

    def __init__(self, runner: IProcessRunner, interface: str, state_dir: str, *, timeout: float = COMMAND_TIMEOUT) -> None:
        self.interface = check_interface(interface)
        self.table = route_table_for(interface)
        self.saved_path = os.path.join(state_dir, f"forwarding-{self.interface}.json")
        self._runner = runner
        self._timeout = timeout
        self._lock = DeferredLock()
        self._applied: tuple[str, str] | None = None  # (ruleset, versions) in force; None when unknown
        self._prefixes: tuple[str, ...] = ()
        self._snat = True
        self._warnings: tuple[str, ...] = ()

    async def apply(
        self, prefixes: Sequence[str], *, snat: bool = True, mesh_subnets: Sequence[str],
        forwarding: Sequence[ForwardRule] | None = None,
    ) -> bool:
        """Route ``prefixes`` (an exit: ``0.0.0.0/0`` and ``::/0``); False when already so.

        Raises InvalidRouterConfig before running anything, RouterError when
        sysctl or nft fail. No prefixes is :meth:`clear`.
        """
        routed = parse_prefixes(prefixes, "prefixes")
        if not routed:
            await self.clear()
            return True
        text = router_ruleset(
            self.table, self.interface, [str(n) for n in routed], snat=snat, mesh_subnets=mesh_subnets, forwarding=forwarding
        )
        versions = sorted({n.version for n in routed})
        applied = (text, ",".join(map(str, versions)))
        async with self._lock:
            if applied == self._applied:
                return False
            self._applied = None
            await self._enable_forwarding(versions)
            await self._nft(text, f"install the router's table {self.table}")
            warnings = await self._conflicts()
            if 6 in versions:
                warnings.append(
                    "IPv6 forwarding is on: Linux then ignores router advertisements on links whose accept_ra is 1; "
                    "set net.ipv6.conf.<uplink>.accept_ra=2 if this host's IPv6 default route comes from SLAAC"
                )
            self._applied = applied
            self._prefixes, self._snat, self._warnings = tuple(str(n) for n in routed), snat, tuple(warnings)
        for warning in warnings:
            log.warn("router {table}: {problem}", table=self.table, problem=warning)
        log.info(
            "router {table}: forwarding to {prefixes} (snat {snat})", table=self.table, prefixes=", ".join(self._prefixes), snat=snat
        )
        return True

    async def clear(self) -> None:
        """Remove the table, then put the forwarding sysctls back as they were."""
        async with self._lock:
            self._applied = None
            self._prefixes, self._warnings = (), ()
            await self._nft(removal(self.table), f"remove the router's table {self.table}")
            saved = self._saved()
            for key, value in sorted(saved.items()):
                await self._sysctl_write(key, value)
            if saved:
                os.unlink(self.saved_path)
        log.info("router {table}: removed, forwarding as it was", table=self.table)

    async def recover(self) -> bool:
        """Undo what a crashed run left (its table, its forwarding); True when forwarding was put back."""
        had = bool(self._saved())
        await self.clear()
        return had

    def status(self) -> RouterStatus:
        return RouterStatus(self.interface, self.table, self._prefixes, self._snat, self._saved(), self._warnings)

    # -- forwarding ------------------------------------------------------------------

    async def _enable_forwarding(self, versions: Sequence[int]) -> None:
        saved = self._saved()
        current = {FORWARDING[v]: await self._sysctl_read(FORWARDING[v]) for v in versions}
        fresh = {key: value for key, value in current.items() if key not in saved}
        if fresh:  # saved before anything changes: a crash after this point is recoverable
            saved.update(fresh)
            write_atomically(self.saved_path, json.dumps(saved, sort_keys=True).encode() + b"\n")
        for key, value in sorted(current.items()):
            if value != "1":
                await self._sysctl_write(key, "1")
        # A family no longer routed gets its value back.
        dropped = {key: value for key, value in saved.items() if key not in current}
        for key, value in sorted(dropped.items()):
            await self._sysctl_write(key, value)
        if dropped:
            kept = {key: value for key, value in saved.items() if key in current}
            write_atomically(self.saved_path, json.dumps(kept, sort_keys=True).encode() + b"\n")

    def _saved(self) -> dict[str, str]:
        try:
            with open(self.saved_path, "rb") as f:
                value = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise RouterError(f"cannot read the saved forwarding settings in {self.saved_path}: {e}") from None
        known = set(FORWARDING.values())
        if not isinstance(value, dict) or not all(k in known and isinstance(v, str) and v.isdigit() for k, v in value.items()):
            raise RouterError(f"{self.saved_path} does not hold saved forwarding settings; remove it and check the sysctls by hand")
        return value

    async def _sysctl_read(self, key: str) -> str:
        result = await self._run(["sysctl", "-n", key], None, f"read {key}", "sysctl", "procps")
        value = result.stdout.decode("utf-8", "replace").strip()
        if not value.isdigit():
            raise RouterError(f"cannot read {key}: sysctl said {_shown_value(value)!r}, not a number")
        return value

    async def _sysctl_write(self, key: str, value: str) -> None:
        assert key in FORWARDING.values() and value.isdigit()
        await self._run(["sysctl", "-q", "-w", f"{key}={value}"], None, f"set {key} to {value}", "sysctl", "procps")

    # -- nft ---------------------------------------------------------------------------

    async def _nft(self, script: str, what: str) -> None:
        await self._run(["nft", "-f", "-"], script.encode(), what, "nft", "nftables")

    async def _conflicts(self) -> list[str]:
        try:
            result = await self._runner.run(["nft", "-j", "list", "chains"], timeout=self._timeout)
        except CommandError:
            return []
        return forward_conflicts(result.stdout, self.table) if result.rc == 0 else []

    async def _run(self, argv: list[str], stdin: bytes | None, what: str, program: str, package: str) -> ProcessResult:
        try:
            result = await self._runner.run(argv, stdin=stdin, timeout=self._timeout)
        except CommandNotFound:
            hint = f": {install_hint()}" if program == "nft" else ""
            raise RouterError(f"cannot {what}: the '{program}' program is missing (package {package}){hint}") from None
        except CommandError as e:
            raise RouterError(f"cannot {what}: {e}") from None
        if result.rc != 0:
            raise RouterError(f"cannot {what}: `{shown_argv(argv)}` exited with code {result.rc}: {_stderr(result)}")
        return result
