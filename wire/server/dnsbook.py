"""The mesh's DNS settings the admin keeps on the server: records, forwarded
zones (split DNS) and nameservers; and what a node's long-poll answer says
of them.

The domain is the server's ``--dns-domain`` (None: no mesh DNS); the rest
lives in the registry database (``dns_settings``, one row), versioned: each
change is a new version, written and audited in one transaction before it
is acknowledged. A change is made only if the whole configuration it leads
to is valid (:meth:`DnsConfig.from_json`, as a node checks it): a CNAME beside
another record, a zone overlapping the mesh domain or one record too many is
refused with the reason and changes nothing.

The configuration in force is encoded once per version (its JSON, digest
and the ``{"dns": ...}`` extra every node shares), so telling ten thousand
nodes costs one encoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from wire.protocol import ProtocolError
from wire.protocol.dns import NO_DNS, DnsConfig, DnsRecord, ForwardZone, RECORD_TYPES, dns_digest, parse_resolver
from wire.protocol.fields import parse_list, parse_object
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from wire.server.store import IStore, StoreError, Writes, upsert
from wire.web import SharedJson

# The settings in force changed: a change for the cluster's stream (wire.server.cluster).
DNS_CHANGE = "dns"
DNS_SETTINGS = "SELECT version, settings, set_at FROM dns_settings WHERE id = 1"

Audit = Callable[[Writes, str, str], None]


class DnsError(ValueError):
    """A change refused; ``str()`` says why, for the admin."""


@dataclass(frozen=True)
class DnsSettings:
    """What the admin set (everything but the domain), as stored."""

    records: tuple[DnsRecord, ...] = ()
    forward: tuple[ForwardZone, ...] = ()
    nameservers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "records": [r.to_json() for r in self.records],
            "forward": [z.to_json() for z in self.forward],
            "nameservers": list(self.nameservers),
        }


class DnsBook:
    log = Logger()
    def __init__(self, store: IStore, domain: str | None, now: Callable[[], float] = lambda: 0.0):
        self._store = store
        self.domain = domain
        self._now = now
        # One change at a time: each is made from the settings the last one left.
        self._changing = DeferredLock()
        self.version = 0
        self.set_at = 0.0
        self.settings = DnsSettings()
        # At startup: blocks, before the reactor serves.
        rows = store.read_now(DNS_SETTINGS)
        if rows:
            self.version, text, self.set_at = rows[0]
            self.settings = self._stored(text)
        # Called after every change, once the new version is in force.
        self.listeners: list[Callable[[], None]] = []
        self._encode()

    def _stored(self, text: str) -> DnsSettings:
        """The stored settings, valid with today's domain; else the server
        does not start (serving part of them would be a guess)."""
        try:
            body = parse_object(json.loads(text), "dns_settings")
            settings = DnsSettings(
                tuple(DnsRecord.from_json(item) for item in parse_list(body.get("records", []), "records")),
                tuple(ForwardZone.from_json(item) for item in parse_list(body.get("forward", []), "forward")),
                tuple(parse_resolver(item, "nameservers") for item in parse_list(body.get("nameservers", []), "nameservers")),
            )
            if self.domain is not None:
                settings = self._checked(settings)
        except (ValueError, DnsError) as e:  # json.JSONDecodeError and ProtocolError are ValueErrors
            raise StoreError(
                f"the stored DNS settings (version {self.version}) cannot be used with --dns-domain {self.domain}: {e}. "
                "Start with the domain they were made for and change them (wire admin dns ...), or choose another domain"
            ) from e
        return settings

    # -- reading --------------------------------------------------------------

    @property
    def config(self) -> DnsConfig | None:
        """What nodes are told; None: no mesh DNS."""
        return self._config

    @property
    def digest(self) -> str:
        return self._digest

    def extra_for(self, held: str | None) -> dict:
        """What a node's answer adds, given the digest it says it holds
        (None: it said nothing, a seed node): ``{"dns": ...}`` (shared by
        every node) when it holds another configuration, else nothing."""
        if held is None or held == self._digest:
            return {}
        return self._extra

    def shown(self) -> dict[str, Any]:
        """For the admin: everything, and the version."""
        return {
            "domain": self.domain,
            "enabled": self.domain is not None,
            **self.settings.to_json(),
            "version": self.version,
            "set_at": self.set_at,
            "digest": self._digest,
        }

    # -- changing -------------------------------------------------------------

    async def add_record(self, name: str, kind: str, value: str, audit: Audit) -> DnsRecord:
        async with self._changing:
            record = _record(name, kind, value)
            if record in self.settings.records:
                raise DnsError(f"{_record_text(record)} is already a record")
            settings = DnsSettings(self.settings.records + (record,), self.settings.forward, self.settings.nameservers)
            await self._put(settings, "dns.record.add", _record_text(record), audit)
            return record

    async def remove_records(self, name: str, kind: str | None, value: str | None, audit: Audit) -> list[DnsRecord]:
        """The records of ``name`` (of ``kind``, with ``value``) removed; LookupError if none is."""
        async with self._changing:
            if value is not None and kind is None:
                raise DnsError("give the record's type before its value (NAME TYPE VALUE)")
            if kind is not None and kind.upper() not in RECORD_TYPES:
                raise DnsError(f"type: {kind!r} is not one of {', '.join(RECORD_TYPES)}")
            # As stored: lower case, the value normalised (fd00::1, a CNAME without its dot).
            wanted = _record(name, kind, value) if value is not None and kind is not None else None
            name = name.lower()

            def matches(record: DnsRecord) -> bool:
                if wanted is not None:
                    return record == wanted
                return record.name == name and (kind is None or record.type == kind.upper())

            gone = [r for r in self.settings.records if matches(r)]
            if not gone:
                what = " ".join(part for part in (name, kind and kind.upper(), value) if part)
                raise LookupError(f"no record {what} (see: wire admin dns records list)")
            kept = tuple(r for r in self.settings.records if r not in gone)
            await self._put(
                DnsSettings(kept, self.settings.forward, self.settings.nameservers),
                "dns.record.remove",
                "; ".join(_record_text(r) for r in gone),
                audit,
            )
            return gone

    async def set_forward(self, domain: str, resolvers: list[str], audit: Audit) -> ForwardZone:
        """Queries under ``domain`` go to ``resolvers`` (a zone already forwarded gets these instead)."""
        async with self._changing:
            zone = _parsed(ForwardZone.from_json, {"domain": domain, "resolvers": resolvers})
            forward = tuple(z for z in self.settings.forward if z.domain != zone.domain)
            settings = DnsSettings(self.settings.records, forward + (zone,), self.settings.nameservers)
            await self._put(settings, "dns.forward.set", f"{zone.domain} -> {','.join(zone.resolvers)}", audit)
            return zone

    async def remove_forward(self, domain: str, audit: Audit) -> ForwardZone:
        async with self._changing:
            wanted = domain.lower().rstrip(".")
            zone = next((z for z in self.settings.forward if z.domain == wanted), None)
            if zone is None:
                raise LookupError(f"{domain} is not forwarded (see: wire admin dns show)")
            forward = tuple(z for z in self.settings.forward if z is not zone)
            await self._put(DnsSettings(self.settings.records, forward, self.settings.nameservers), "dns.forward.remove", zone.domain, audit)
            return zone

    async def set_nameservers(self, resolvers: list[str], audit: Audit) -> tuple[str, ...]:
        """The resolvers for every name outside the mesh and its zones; empty: each node's own."""
        async with self._changing:
            checked = _parsed(DnsConfig.from_json, {"nameservers": resolvers}).nameservers
            settings = DnsSettings(self.settings.records, self.settings.forward, checked)
            await self._put(settings, "dns.nameservers", ",".join(checked) or "cleared (each node's own)", audit)
            return checked

    def _checked(self, settings: DnsSettings) -> DnsSettings:
        """``settings`` as a node will see them, whole, or DnsError saying what is wrong."""
        config = _parsed(DnsConfig.from_json, {"domain": self.domain, **settings.to_json()})
        return DnsSettings(config.records, config.forward, config.nameservers)

    async def _put(self, settings: DnsSettings, event: str, detail: str, audit: Audit) -> None:
        if self.domain is None:
            raise DnsError("this server has no mesh DNS (its --dns-domain is empty): set one to keep DNS settings")
        settings = self._checked(settings)
        version, now = self.version + 1, self._now()
        writes = Writes()
        writes.execute(
            upsert("dns_settings", ("id", "version", "settings", "set_at"), ("id",)),
            (1, version, json.dumps(settings.to_json(), separators=(",", ":")), now),
        )
        audit(writes, event, f"{detail} (version {version})")
        writes.change(DNS_CHANGE, str(version))
        await self._store.transaction(writes)
        self._in_force(settings, version, now)

    def adopt(self, row: tuple) -> None:
        """The settings another replica put in force (wire.server.cluster), as stored (DNS_SETTINGS)."""
        version, text, set_at = row
        if version == self.version and set_at == self.set_at:
            return
        try:
            settings = self._stored(text)
        except StoreError as e:
            self.log.error("DNS settings version {version} cannot be read here: {error}", version=version, error=e)
            return
        self._in_force(settings, version, set_at)

    def _in_force(self, settings: DnsSettings, version: int, set_at: float) -> None:
        self.settings, self.version, self.set_at = settings, version, set_at
        self._encode()
        for listener in self.listeners:
            listener()

    def _encode(self) -> None:
        if self.domain is None:
            self._config = None
            self._digest = NO_DNS
            self._extra: dict = {"dns": None}
            return
        self._config = DnsConfig(self.domain, self.settings.records, self.settings.forward, self.settings.nameservers)
        as_json = self._config.to_json()
        self._digest = dns_digest(as_json)
        # One object for every node: its bytes are made once (wire.web.ViewerJson).
        self._extra = {"dns": SharedJson(as_json)}


def _parsed(parse: Callable[[Any], Any], value: Any) -> Any:
    try:
        return parse(value)
    except ProtocolError as e:
        raise DnsError(str(e)) from None


def _record(name: str, kind: str | None, value: str | None) -> DnsRecord:
    return _parsed(DnsRecord.from_json, {"name": name, "type": kind, "value": value})


def _record_text(record: DnsRecord) -> str:
    return f"{record.name} {record.type} {record.value!r}" if record.type == "TXT" else f"{record.name} {record.type} {record.value}"
