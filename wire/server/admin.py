"""The admin's operations: join keys, node removal and renaming, the access
policy, the mesh's DNS settings, routes beyond the mesh, the audit log,
admin API keys.

They know nothing of HTTP: wire.server.adminops lists them with their
parameters, and from that table are built the UNIX socket in the server's
data dir (wire.server.adminsocket; mode 0600, so only root, or the server's
own user, can use it; ``wire admin`` talks to it) and the remote API under
``/api/v1`` (wire.server.adminapi, for admin API keys).

Removing a node takes it out of the netmap (every peer drops it within a
second, through the long-poll), ends its relay sessions, and its credential
stops working at once.
"""

from __future__ import annotations

from typing import Callable

from twisted.web import server

from wire.jointoken import JoinToken
from wire.protocol import ProtocolError, parse_node_name
from wire.protocol.routes import parse_route
from wire.server.apikeys import DEFAULT_EXPIRY as DEFAULT_API_KEY_EXPIRY
from wire.server.auth import Authority, utc
from wire.server.coordinator import Coordinator
from wire.server.dashboard import DashboardSessions, login_url
from wire.server.meshview import mesh_view
from wire.server.model import NodeRecord
from wire.server.registry import RegistryConflict
from wire.server.routebook import overlapping
from wire.server.store import StoreError, Writes

MAX_EXPIRY = 365 * 86400.0
# An ephemeral node offline for less than this may just be rebooting.
MIN_EPHEMERAL_AFTER = 60.0


class RouteRefused(ValueError):
    """An approval or rejection that cannot be made; ``str()`` says why."""


def join_command(token: str) -> str:
    return f"sudo wire up --join {token}"


class Admin:
    def __init__(self, coordinator: Coordinator, public_url: str, fingerprint: str, replica_urls: tuple[str, ...] = ()):
        if coordinator.authority is None:
            raise ValueError("an open server has no join keys or credentials to administer")
        self.coordinator = coordinator
        # The dashboard's login links and sessions (wire.server.dashboard), this replica's.
        self.dashboard = DashboardSessions(coordinator.clock)
        self.authority: Authority = coordinator.authority
        self.public_url = public_url
        # The other replicas' URLs (--public-url given again): in every token.
        self.replica_urls = replica_urls
        self.fingerprint = fingerprint

    async def create_key(
        self,
        reusable: bool = False,
        expires_in: float | None = None,
        note: str = "",
        url: str | None = None,
        tags: tuple[str, ...] = (),
        ephemeral_after: float = 0.0,
    ) -> dict:
        key, secret = await self.authority.create_key(
            reusable=reusable, expires_in=expires_in, note=note, tags=tags, ephemeral_after=ephemeral_after
        )
        token = self.token(secret, url)
        return {
            "key": key.as_dict(self.coordinator.now()),
            "token": token,
            "join_command": join_command(token),
        }

    def token(self, secret: str, url: str | None = None) -> str:
        """The join token for a key's secret: this server's URL (or ``url``),
        its replicas' URLs, the certificate fingerprint, and the secret."""
        first = url or self.public_url
        others = tuple(u for u in (self.public_url, *self.replica_urls) if u != first) if self.replica_urls else ()
        return JoinToken(first, self.fingerprint, secret, others).encode()

    def keys(self) -> dict:
        # With the server's clock, so the CLI can say "expires in 3h" without trusting its own.
        now = self.coordinator.now()
        return {"keys": [key.as_dict(now) for key in self.authority.keys()], "timestamp": now}

    async def revoke_key(self, key_id: str) -> dict:
        return (await self.authority.revoke_key(key_id)).as_dict(self.coordinator.now())

    def find_node(self, ref: str) -> NodeRecord:
        registry = self.coordinator.registry
        record = registry.get(ref) or registry.by_vpn_ip(ref)
        if record is None:
            try:
                record = registry.by_name(parse_node_name(ref))
            except ProtocolError:
                record = None
        if record is None:
            raise LookupError(f"no node {ref!r} (give a name, node id or VPN address; see: wire admin nodes list)")
        return record

    async def remove_node(self, ref: str) -> dict:
        record = self.find_node(ref)
        ended = await self.coordinator.remove_node(record)
        await self.coordinator.store.commit()
        return {"removed": record.node_name, "node_id": record.node_id, "vpn_ip": record.vpn_ip, "relay_sessions_ended": ended}

    async def _store_or_undo(self, record: NodeRecord, event: str, detail: str, undo: Callable[[], None]) -> None:
        """The admin's change to ``record``, durable with its audit entry; if
        the store refuses it, ``undo`` takes it out of force (unless it changed
        again, or went, meanwhile) before the error goes on."""
        writes = Writes()
        writes.put_record(record)
        self.authority.audit(writes, event, detail)
        try:
            await self.coordinator.store.transaction(writes)
        except StoreError:
            undo()
            raise

    async def rename_node(self, ref: str, new_name: str) -> dict:
        record = self.find_node(ref)
        old_name = record.node_name
        registry = self.coordinator.registry
        registry.rename(record.node_id, parse_node_name(new_name, "new_name"))
        renamed = record.node_name

        def undo() -> None:
            if registry.get(record.node_id) is record and record.node_name == renamed:
                try:
                    registry.rename(record.node_id, old_name)
                except RegistryConflict:
                    pass  # another node took the old name meanwhile: the refused one stays (and is written)

        await self._store_or_undo(record, "node.rename", f"node {record.node_id}: {old_name} -> {record.node_name}", undo)
        return {"node_id": record.node_id, "old_name": old_name, "node_name": record.node_name}

    async def tag_node(self, ref: str, tags: tuple[str, ...]) -> dict:
        """Replace a node's tags (validated; empty: none). Only the admin can."""
        record = self.find_node(ref)
        registry = self.coordinator.registry
        old, old_approved = record.tags, record.approved_routes
        registry.set_tags(record.node_id, tags)
        # Its new tags may have the policy approve its routes (autoApprovers).
        self.coordinator.approve_automatically([record.node_id])
        approved = record.approved_routes

        def undo() -> None:
            if registry.get(record.node_id) is record and record.tags == tags and record.approved_routes == approved:
                registry.set_tags(record.node_id, old)
                registry.set_approved_routes(record.node_id, old_approved)

        detail = f"node {record.node_name} ({record.node_id}): [{' '.join(old)}] -> [{' '.join(tags)}]"
        await self._store_or_undo(record, "node.tag", detail, undo)
        return {"node_id": record.node_id, "node_name": record.node_name, "old_tags": list(old), "tags": list(tags)}

    # -- routes beyond the mesh (wire.protocol.routes) --------------------------

    def routes(self) -> dict:
        """Every node that advertises or has approved routes: what it
        advertises, what is approved, what it is primary for, whether it is
        an exit node, and which approvals the policy makes."""
        registry = self.coordinator.registry
        nodes = []
        for record in sorted(registry.records(), key=lambda r: r.node_name):
            if record.advertised_routes or record.approved_routes:
                nodes.append(self._routes_of(record))
        return {"nodes": nodes}

    def _routes_of(self, record: NodeRecord) -> dict:
        registry = self.coordinator.registry
        return {
            "node_name": record.node_name,
            "node_id": record.node_id,
            "vpn_ip": record.vpn_ip,
            "vpn_ip6": record.vpn_ip6,
            "online": registry.is_online(record.node_id),
            "advertised": list(record.advertised_routes),
            "approved": list(record.approved_routes),
            "primary": list(registry.routes.primary_routes(record.node_id)),
            "exit_node": record.offers_exit,
            "auto_approved": list(self.coordinator.auto_approved_routes(record)),
        }

    async def approve_route(self, ref: str, route_text: str) -> dict:
        """``route`` approved for the node (it is served once advertised), durably and audited."""
        record, route = self.find_node(ref), parse_route(route_text, "route")
        for network in self.coordinator.registry.mesh_networks():
            if overlapping((route,), network):
                raise ProtocolError("route", f"{route} overlaps the mesh's own subnet {network}: it cannot be routed through a node")
        changed = route not in record.approved_routes
        if changed:
            await self._set_approved(record, record.approved_routes + (route,), "route.approve", route)
        return {"route": route, "changed": changed, **self._routes_of(record)}

    async def reject_route(self, ref: str, route_text: str) -> dict:
        """``route`` no longer approved for the node (nor served), durably and audited."""
        record, route = self.find_node(ref), parse_route(route_text, "route")
        if route not in record.approved_routes:
            raise LookupError(f"{route} is not approved for {record.node_name} (see: wire admin routes list)")
        if route in self.coordinator.auto_approved_routes(record):
            raise RouteRefused(
                f"{route} of {record.node_name} is approved by the access policy's autoApprovers; "
                "change the policy first, or it would be approved again at once"
            )
        await self._set_approved(record, tuple(r for r in record.approved_routes if r != route), "route.reject", route)
        return {"route": route, "changed": True, **self._routes_of(record)}

    async def _set_approved(self, record: NodeRecord, routes: tuple[str, ...], event: str, route: str) -> None:
        registry, before = self.coordinator.registry, record.approved_routes
        registry.set_approved_routes(record.node_id, routes)
        writes = Writes()
        writes.put_record(record)
        self.authority.audit(writes, event, f"node {record.node_name} ({record.node_id}): {route}")
        try:
            await self.coordinator.store.transaction(writes)
        except StoreError:
            registry.set_approved_routes(record.node_id, before)  # not stored: not in force
            raise

    # -- the access policy (wire.server.policybook) ----------------------------

    def policy(self) -> dict:
        """The version in force (``policy_set`` says whether there is a policy)."""
        return self.coordinator.policy.current.as_dict()

    async def set_policy(self, text: str, source: str = "admin") -> dict:
        """Validate, run its tests, and put it in force; PolicyError says why not."""
        version = await self.coordinator.policy.set(text, source, self.coordinator.audit)
        return version.as_dict(with_text=False)

    def check_policy(self, text: str) -> dict:
        """What ``set_policy`` would say, changing nothing."""
        policy = self.coordinator.policy.check(text)
        return {"valid": True, "rules": len(policy.rules), "tests": len(policy.tests)}

    async def clear_policy(self) -> dict:
        return (await self.coordinator.policy.clear(self.coordinator.audit)).as_dict(with_text=False)

    async def policy_history(self) -> dict:
        return {"versions": [v.as_dict(with_text=False) for v in await self.coordinator.policy.history()], "current": self.coordinator.policy.current.version}

    async def rollback_policy(self, version: int) -> dict:
        return (await self.coordinator.policy.rollback(version, self.coordinator.audit)).as_dict(with_text=False)

    def explain_policy(self, src: str, dst: str, port: int | None, proto: str) -> dict:
        decision = self.coordinator.policy.index.explain(src, dst, port, proto)
        return {
            "src": src,
            "dst": dst,
            "port": port,
            "proto": proto,
            "allowed": decision.allowed,
            "rule": decision.rule_index,
            "rule_text": decision.rule_text,
            "reason": decision.reason,
            "policy_set": self.coordinator.policy.active,
        }

    # -- mesh DNS (wire.server.dnsbook) ------------------------------------------

    def dns(self) -> dict:
        """The domain, records, forwarded zones, nameservers and version."""
        return self.coordinator.dns.shown()

    async def add_dns_record(self, name: str, kind: str, value: str) -> dict:
        record = await self.coordinator.dns.add_record(name, kind, value, self.coordinator.audit)
        return {"added": record.to_json(), **self._dns_version()}

    async def remove_dns_records(self, name: str, kind: str | None = None, value: str | None = None) -> dict:
        gone = await self.coordinator.dns.remove_records(name, kind, value, self.coordinator.audit)
        return {"removed": [record.to_json() for record in gone], **self._dns_version()}

    async def forward_dns(self, domain: str, resolvers: list[str]) -> dict:
        zone = await self.coordinator.dns.set_forward(domain, resolvers, self.coordinator.audit)
        return {"forwarded": zone.to_json(), **self._dns_version()}

    async def unforward_dns(self, domain: str) -> dict:
        zone = await self.coordinator.dns.remove_forward(domain, self.coordinator.audit)
        return {"unforwarded": zone.to_json(), **self._dns_version()}

    async def set_dns_nameservers(self, resolvers: list[str]) -> dict:
        nameservers = await self.coordinator.dns.set_nameservers(resolvers, self.coordinator.audit)
        return {"nameservers": list(nameservers), **self._dns_version()}

    def _dns_version(self) -> dict:
        book = self.coordinator.dns
        return {"domain": book.domain, "version": book.version}

    async def audit(self, limit: int = 100) -> list[dict]:
        return await self.authority.audit_log(limit)

    # -- one node, and the mesh at a glance --------------------------------------

    def show_node(self, ref: str) -> dict:
        """One node as ``nodes list`` shows it, with its routes."""
        record = self.find_node(ref)
        return {"node": self.coordinator.registry.view(record, self.coordinator.now()), "routes": self._routes_of(record)}

    def summary(self) -> dict:
        """The mesh at a glance: the server's health, nodes, keys, policy, DNS, routes awaiting approval."""
        now = self.coordinator.now()
        policy = self.coordinator.policy.current
        waiting = sum(
            1 for record in self.coordinator.registry.records() for route in record.advertised_routes if route not in record.approved_routes
        )
        health = self.coordinator.health()
        return {
            **health,
            "offline": health["total"] - health["online"],
            "join_keys_usable": sum(1 for key in self.authority.keys() if key.unusable_because(now) is None),
            "policy_version": policy.version,
            "policy_set": policy.text is not None,
            "dns_version": self.coordinator.dns.version,
            "routes_awaiting_approval": waiting,
            "timestamp": now,
        }

    # -- the dashboard (wire.server.dashboard) -----------------------------------

    async def dashboard_link(self) -> dict:
        """A one-time login link to this replica's dashboard (audited)."""
        token, expires = self.dashboard.make_link()
        await self.note("dashboard.link", f"a login link, valid until {utc(expires)}")
        return {"url": login_url(self.public_url, token), "expires": expires}

    async def mesh(self, since: int | None, wait: float) -> dict:
        """Every node and every reported path (wire.server.meshview), once the mesh moved past ``since``."""
        return await mesh_view(self.coordinator, since, wait)

    async def note(self, event: str, detail: str) -> None:
        """An audit entry of its own (something that changed no record)."""
        writes = Writes()
        self.coordinator.audit(writes, event, detail)
        await self.coordinator.store.transaction(writes)

    # -- admin API keys (wire.server.apikeys) ------------------------------------

    async def create_api_key(self, name: str = "", expires_in: float = DEFAULT_API_KEY_EXPIRY, read_only: bool = False) -> dict:
        key, token = await self.authority.api_keys.create(name, expires_in, read_only)
        return {"api_key": key.as_dict(self.coordinator.now()), "token": token}

    async def api_keys(self) -> dict:
        await self.authority.api_keys.refresh()
        now = self.coordinator.now()
        return {"api_keys": [key.as_dict(now) for key in self.authority.api_keys.keys()], "timestamp": now}

    async def revoke_api_key(self, key_id: str) -> dict:
        return {"api_key": (await self.authority.api_keys.revoke(key_id)).as_dict(self.coordinator.now())}


def build_admin_site(admin: Admin) -> server.Site:
    """The admin socket's site (wire.server.adminsocket: built from the operations' table)."""
    from wire.server.adminsocket import socket_site  # here: the table builds on this module

    return socket_site(admin)
