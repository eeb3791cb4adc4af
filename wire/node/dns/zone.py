"""The mesh's own names, answered in memory: one immutable zone per netmap.

A :class:`MeshZone` is built from the mesh domain, the peers (node name to
VPN addresses, the node itself among them) and the admin's records, and is
replaced whole on every netmap change; building one only fills a few dicts
(O(peers)), and the DNS records of a name are made the first time someone
asks for it. It speaks for the mesh domain and for the reverse zones of the
mesh's VPN networks, and nothing else (:meth:`MeshZone.covers`).

TTL: a rename must be visible within 2 s to a querier that asks again, and
the netmap itself takes up to about a second to arrive. Both positive answers
and negative ones (the SOA's minimum, RFC 2308) therefore live DEFAULT_TTL =
1 s in any cache; the queries come from the node's own machine, so answering
them often costs nothing that matters.

Two peers with one name (a seed server does not prevent it) are both
answered for it, and each address's PTR gives the name.

The admin's records win over node names: node names are chosen by the
nodes themselves, so a node that names itself ``db`` must not take over the
admin's ``db`` record. Such a node is not answered for by name (nor its
addresses' PTR); :attr:`MeshZone.shadowed` counts them, for the daemon to log.
"""

from __future__ import annotations

import ipaddress
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, Union

from twisted.names import dns

from wire.protocol.dns import DnsRecord, dns_name_of

# Node name to VPN addresses; as pairs, two peers may share a name (both are answered).
Peers = Union[Mapping[str, Sequence[str]], Iterable[tuple[str, Sequence[str]]]]
DEFAULT_TTL = 1
# A CNAME chain inside the zone is followed this far, then answered as it stands.
MAX_CNAME_HOPS = 8
_SOA_REFRESH, _SOA_RETRY, _SOA_EXPIRE = 3600, 600, 86400
_ADMIN_TYPES = {"A": dns.A, "AAAA": dns.AAAA, "CNAME": dns.CNAME, "TXT": dns.TXT}


@dataclass
class ZoneAnswer:
    """What the zone says to one question. ``outside`` is the target of a CNAME
    chain that leaves the zone (the resolver may chase it), else None."""

    rcode: int
    answers: list[dns.RRHeader] = field(default_factory=list)
    authority: list[dns.RRHeader] = field(default_factory=list)
    outside: bytes | None = None


def reverse_zones(networks: Iterable[str]) -> tuple[str, ...]:
    """The reverse zones (``99.10.in-addr.arpa``) that cover ``networks`` exactly:
    a /20 is sixteen /24 zones, never the /16 around it (other people's names);
    at most 256 per network (a /0), 8 for IPv6 (a nibble)."""
    zones: list[str] = []
    for text in networks:
        network = ipaddress.ip_network(text, strict=False)
        step = 8 if network.version == 4 else 4
        boundary = max(step, -(-network.prefixlen // step) * step)
        for subnet in network.subnets(new_prefix=boundary) if boundary > network.prefixlen else [network]:
            # reverse_pointer names the whole address; keep the labels of the prefix.
            labels = subnet.network_address.reverse_pointer.split(".")
            keep = boundary // step
            zones.append(".".join(labels[len(labels) - 2 - keep :]))
    return tuple(dict.fromkeys(zones))


def _address_of_reverse(name: bytes) -> bytes | None:
    """The packed address a full reverse name stands for, or None."""
    labels = name.split(b".")
    if name.endswith(b".in-addr.arpa") and len(labels) == 6:
        octets = labels[3::-1]
        # Canonical decimal only: "01" is not the name of an address.
        if all(o.isdigit() and str(int(o)).encode() == o and int(o) < 256 for o in octets):
            return bytes(int(o) for o in octets)
    elif name.endswith(b".ip6.arpa") and len(labels) == 34:
        nibbles = labels[31::-1]
        if all(len(n) == 1 and n in b"0123456789abcdef" for n in nibbles):
            return bytes.fromhex(b"".join(nibbles).decode())
    return None


class MeshZone:
    """The names of one netmap. Immutable; build a new one to change it."""

    def __init__(
        self,
        domain: str,
        peers: Peers,
        records: Sequence[DnsRecord] = (),
        *,
        reverse_networks: Sequence[str] = (),
        own_name: str | None = None,
        ttl: int = DEFAULT_TTL,
        serial: int = 1,
    ):
        self.domain = domain
        self.ttl = ttl
        self._apex = domain.encode()
        self._under_apex = b"." + self._apex
        self._reverse = frozenset(zone.encode() for zone in reverse_zones(reverse_networks))
        self._reverse_lengths = sorted({zone.count(b".") + 1 for zone in self._reverse})
        # name -> (IPv4 addresses, IPv6 addresses), packed; packed address -> name (PTR).
        # inet_pton, not ipaddress: twenty times faster, and this runs per address per netmap.
        self._hosts: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
        self._ptr: dict[bytes, bytes] = {}
        pairs = peers.items() if isinstance(peers, Mapping) else peers
        admin_names = {f"{record.name}.{domain}".encode() for record in records}
        self.shadowed = 0
        # Sorted, so that which name an address's PTR gives never depends on netmap order.
        for node_name, addresses in sorted(pairs, key=lambda pair: pair[0]):
            fqdn = dns_name_of(node_name, domain)
            if fqdn is None:
                continue
            name = fqdn.encode()
            if name in admin_names:
                self.shadowed += 1
                continue
            v4, v6 = self._hosts.setdefault(name, ([], []))
            for text in addresses:
                try:
                    family = v6 if ":" in text else v4
                    packed = inet_pton(AF_INET6 if family is v6 else AF_INET, text)
                except (OSError, ValueError, TypeError):
                    continue
                if packed not in family:
                    family.append(packed)
                self._ptr.setdefault(packed, name)
        self._admin: dict[bytes, list[DnsRecord]] = {}
        self._existing: set[bytes] = set(self._hosts)
        for record in records:
            name = f"{record.name}.{domain}".encode()
            self._admin.setdefault(name, []).append(record)
            # Its parents exist too (empty non-terminals: NODATA, not NXDOMAIN; RFC 8020).
            while name != self._apex:
                self._existing.add(name)
                name = name.split(b".", 1)[1]
        master = dns_name_of(own_name, domain) if own_name else None
        self._master = master or domain
        self._built: dict[bytes, dict[int, list[dns.RRHeader]]] = {}
        self._soa: dict[bytes, dns.RRHeader] = {}
        self._serial = serial

    # Which names are ours.

    def covers(self, name: bytes) -> bool:
        """The zone is the authority for ``name`` (lower-case, no trailing dot)."""
        return self._apex_of(name) is not None

    def _apex_of(self, name: bytes) -> bytes | None:
        if name == self._apex or name.endswith(self._under_apex):
            return self._apex
        if name.endswith(b".arpa") and self._reverse:
            labels = name.split(b".")
            for length in self._reverse_lengths:
                if length <= len(labels):
                    suffix = b".".join(labels[len(labels) - length :])
                    if suffix in self._reverse:
                        return suffix
        return None

    # Answers.

    def answer(self, name: bytes, qtype: int) -> ZoneAnswer:
        """The answer to ``name`` (any case) and ``qtype``, for a name the zone covers;
        REFUSED for one it does not (the resolver sends those elsewhere)."""
        name = name.lower().rstrip(b".")
        apex = self._apex_of(name)
        if apex is None:
            return ZoneAnswer(dns.EREFUSED)
        result = ZoneAnswer(dns.OK)
        for _ in range(MAX_CNAME_HOPS + 1):
            records = self._records_at(name, apex)
            if records is None:
                # RFC 6604: a chain ending at a missing name is NXDOMAIN, its CNAMEs shown.
                result.rcode = dns.ENAME
                result.authority = [self._soa_of(apex)]
                return result
            wanted = records.get(qtype) or (
                [r for rrs in records.values() for r in rrs] if qtype == dns.ALL_RECORDS else []
            )
            if wanted:
                result.answers.extend(wanted)
                return result
            cname = records.get(dns.CNAME)
            if not cname:
                if not result.answers:
                    result.authority = [self._soa_of(apex)]
                return result
            result.answers.extend(cname)
            payload = cname[0].payload
            assert isinstance(payload, dns.Record_CNAME)
            target = payload.name.name
            if self._apex_of(target) != apex:
                result.outside = target
                return result
            name = target
        return result

    def _records_at(self, name: bytes, apex: bytes) -> dict[int, list[dns.RRHeader]] | None:
        """The records at ``name`` by type ({} for a name that exists without
        records), or None when no such name exists."""
        built = self._built.get(name)
        if built is not None:
            return built
        if name == apex:
            built = {dns.SOA: [self._soa_of(apex)], dns.NS: [self._rr(apex, dns.NS, dns.Record_NS(self._master, self.ttl))]}
        elif apex == self._apex:
            built = self._mesh_records(name)
        else:
            built = self._reverse_records(name)
        if built is not None:
            self._built[name] = built
        return built

    def _mesh_records(self, name: bytes) -> dict[int, list[dns.RRHeader]] | None:
        host = self._hosts.get(name)
        if host is not None:
            v4, v6 = host
            built = {}
            if v4:
                built[dns.A] = [self._rr(name, dns.A, dns.Record_A(inet_ntop(AF_INET, a), self.ttl)) for a in v4]
            if v6:
                built[dns.AAAA] = [self._rr(name, dns.AAAA, dns.Record_AAAA(inet_ntop(AF_INET6, a), self.ttl)) for a in v6]
            return built
        admin = self._admin.get(name)
        if admin is None:
            return {} if name in self._existing else None
        by_type: dict[int, list[dns.RRHeader]] = {}
        for record in admin:
            kind = _ADMIN_TYPES[record.type]
            by_type.setdefault(kind, []).append(self._rr(name, kind, _payload(record, self.ttl)))
        return by_type

    def _reverse_records(self, name: bytes) -> dict[int, list[dns.RRHeader]] | None:
        address = _address_of_reverse(name)
        if address is None:
            # A partial reverse name (a /24 inside the zone, say) may lead to
            # addresses: say it exists (NODATA), never a false NXDOMAIN.
            return None if name.count(b".") + 1 in (6, 34) else {}
        host = self._ptr.get(address)
        if host is None:
            return None
        return {dns.PTR: [self._rr(name, dns.PTR, dns.Record_PTR(host, self.ttl))]}

    def _rr(self, name: bytes, kind: int, payload: dns.IEncodableRecord) -> dns.RRHeader:
        return dns.RRHeader(name, kind, dns.IN, self.ttl, payload, auth=True)

    def _soa_of(self, apex: bytes) -> dns.RRHeader:
        soa = self._soa.get(apex)
        if soa is None:
            payload = dns.Record_SOA(
                mname=self._master,
                rname=f"hostmaster.{self.domain}",
                serial=self._serial,
                refresh=_SOA_REFRESH,
                retry=_SOA_RETRY,
                expire=_SOA_EXPIRE,
                minimum=self.ttl,
                ttl=self.ttl,
            )
            soa = self._soa[apex] = self._rr(apex, dns.SOA, payload)
        return soa


def _payload(record: DnsRecord, ttl: int) -> dns.IEncodableRecord:
    if record.type == "A":
        return dns.Record_A(record.value, ttl)
    if record.type == "AAAA":
        return dns.Record_AAAA(record.value, ttl)
    if record.type == "CNAME":
        return dns.Record_CNAME(record.value, ttl)
    return dns.Record_TXT(*record.txt_strings(), ttl=ttl)
