"""The node registry: who is in the mesh, where they are, who is online.

All state lives in memory, indexed for O(1) work per heartbeat, and is
written through an :class:`~wire.server.store.IStore`. Online and offline
nodes are kept in two insertion-ordered maps sorted by ``last_seen``
(a heartbeat moves its node to the end), so finding nodes that went silent
or expired only looks at those, never at the whole mesh.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Container, Iterable

from twisted.logger import Logger

from wire.addressing import AddressPool, Ipv6Pool
from wire.protocol import Cursor, ProtocolError, RegisterOutcome, Registration, netmap_answer_json
from wire.server.model import NodeRecord, in_route_order
from wire.server.netmap import ChangeLog
from wire.server.routebook import RouteBook, overlapping
from wire.server.store import IStore

DEFAULT_OFFLINE_AFTER = 90.0
DEFAULT_EXPIRE_AFTER = 24 * 3600.0
# What a peer's path to a node depends on (wire.protocol.paths): when one
# changes, whatever was concluded about reaching the node is stale.
PATH_FACTS = ("public_ip", "port", "nat_port", "lan_ip", "nat_type", "public_ip6")


def _inside(address: str, network: ipaddress.IPv6Network) -> bool:
    """Whether a stored address ("" for none; anything, from a hand-edited row) lies in ``network``."""
    try:
        return ipaddress.IPv6Address(address) in network
    except ValueError:
        return False


class RegistryConflict(Exception):
    """The request would take something (a key, an address) that belongs to another node."""


@dataclass(frozen=True)
class Registered:
    record: NodeRecord
    outcome: RegisterOutcome


class Registry:
    log = Logger()

    def __init__(
        self,
        store: IStore,
        pool: AddressPool,
        *,
        offline_after: float = DEFAULT_OFFLINE_AFTER,
        expire_after: float = DEFAULT_EXPIRE_AFTER,
        changes: ChangeLog | None = None,
        unique_names: bool = False,
        pool6: Ipv6Pool | None = None,
    ):
        self._store = store
        self.pool = pool
        # The IPv6 mesh prefix's pool; None: nodes get no IPv6 address.
        self.pool6 = pool6
        self.offline_after = offline_after
        self.expire_after = expire_after
        self.changes = changes or ChangeLog()
        self._nodes: dict[str, NodeRecord] = {}
        self._node_by_key: dict[str, str] = {}
        self._node_by_ip: dict[str, str] = {}
        self._node_by_ip6: dict[str, str] = {}
        self._node_by_name: dict[str, str] = {}
        # The seed let names repeat; with authentication they identify nodes.
        self.unique_names = unique_names
        self._online: OrderedDict[str, None] = OrderedDict()
        self._offline: OrderedDict[str, None] = OrderedDict()
        self._listeners: list[Callable[[str], None]] = []
        self._reset_listeners: list[Callable[[str], None]] = []
        # When a node's path facts last changed or it came online, this run
        # (nodes loaded and unchanged since: 0, long ago).
        self._fresh_at: dict[str, float] = {}
        # Nodes enrolled with an ephemeral key: how long each may stay offline.
        self._ephemeral: dict[str, float] = {}
        # Who is primary for each served subnet route (kept in step by _changed).
        self.routes = RouteBook()
        # The routes among a record's advertised ones the access policy
        # approves (autoApprovers); the coordinator sets it.
        self.auto_approve: Callable[[NodeRecord], tuple[str, ...]] = lambda record: ()
        # Replicas on one database (wire.server.cluster): a change made here
        # goes to the database's stream, and is recorded (the change log, the
        # listeners) when the stream reaches its serial, as others' are.
        self.shared = self.changes.shared
        self._applying: int | None = None  # the stream's serial being recorded
        # Local changes per node, so the stream can tell a row it read is stale.
        self._local_changes: dict[str, int] = {}

    # -- loading -----------------------------------------------------------

    def load(self, records: Iterable[NodeRecord], now: float, sweep: bool = True) -> None:
        """Adopt stored records. Nodes heard from recently stay online, so a
        server restart does not flap every node offline and back. A replica
        (``sweep`` False) leaves sweeping to the cluster's leader."""
        silent_before = now - self.offline_after
        records = sorted(records, key=lambda r: r.last_seen)
        for record in records:
            self._index(record)
            if record.last_seen > silent_before:
                self._online[record.node_id] = None
            else:
                self._offline[record.node_id] = None
        self._address_v6(records)
        # Online routers first: they are the primaries, offline ones standbys.
        for node_id in list(self._online) + list(self._offline):
            record = self._nodes[node_id]
            self.routes.update(node_id, record.subnet_routes, node_id in self._online)
        if sweep:
            self.sweep(now)

    def _address_v6(self, records: list[NodeRecord]) -> None:
        """Give an IPv6 address to each loaded node without one in the prefix
        in force: every node, the first time a server has a prefix (a
        schema-7 registry) or when --subnet6 changed it. Oldest nodes first,
        so a collision costs the newer node its first candidate, as it would
        have at registration."""
        if self.pool6 is None:
            return
        network = self.pool6.network
        homeless = [r for r in records if not _inside(r.vpn_ip6, network)]
        renumbered = sum(1 for r in homeless if r.vpn_ip6)
        for record in sorted(homeless, key=lambda r: (r.registered, r.node_id)):
            if self._node_by_ip6.get(record.vpn_ip6) == record.node_id:
                del self._node_by_ip6[record.vpn_ip6]
            record.vpn_ip6 = self.pool6.allocate(record.node_id, self._node_by_ip6)
            self._node_by_ip6[record.vpn_ip6] = record.node_id
            self._store.put(record)
        if homeless:
            # One line, not one per node: a first start after the upgrade readdresses them all.
            self.log.info(
                "{count} nodes got an IPv6 address in {network} ({renumbered} of them had one outside it)",
                count=len(homeless),
                network=network,
                renumbered=renumbered,
            )

    def _index(self, record: NodeRecord) -> None:
        self._nodes[record.node_id] = record
        self._node_by_key[record.wg_public_key] = record.node_id
        self._node_by_ip[record.vpn_ip] = record.node_id
        if record.vpn_ip6:
            self._node_by_ip6[record.vpn_ip6] = record.node_id
        self._node_by_name[record.node_name] = record.node_id

    def _unindex(self, record: NodeRecord) -> None:
        del self._nodes[record.node_id]
        if self._node_by_key.get(record.wg_public_key) == record.node_id:
            del self._node_by_key[record.wg_public_key]
        if self._node_by_ip.get(record.vpn_ip) == record.node_id:
            del self._node_by_ip[record.vpn_ip]
        if self._node_by_ip6.get(record.vpn_ip6) == record.node_id:
            del self._node_by_ip6[record.vpn_ip6]
        if self._node_by_name.get(record.node_name) == record.node_id:
            del self._node_by_name[record.node_name]

    # -- queries -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def online_count(self) -> int:
        return len(self._online)

    def get(self, node_id: str) -> NodeRecord | None:
        return self._nodes.get(node_id)

    def get_by_key(self, wg_public_key: str) -> NodeRecord | None:
        node_id = self._node_by_key.get(wg_public_key)
        return self._nodes[node_id] if node_id else None

    def by_name(self, node_name: str) -> NodeRecord | None:
        node_id = self._node_by_name.get(node_name)
        return self._nodes[node_id] if node_id else None

    def check_name(self, node_id: str, node_name: str) -> None:
        holder = self._node_by_name.get(node_name)
        if self.unique_names and holder is not None and holder != node_id:
            raise RegistryConflict(
                f"node_name {node_name!r} is taken by another node; choose another name, "
                f"or remove the old node first (wire admin nodes remove {node_name})"
            )

    def addresses_in_use(self) -> Container[str]:
        return self._node_by_ip.keys()

    def by_vpn_ip(self, vpn_ip: str) -> NodeRecord | None:
        """The node with this mesh address, IPv4 or IPv6 (any spelling of it)."""
        node_id = self._node_by_ip.get(vpn_ip)
        if node_id is None and ":" in vpn_ip:
            try:
                node_id = self._node_by_ip6.get(str(ipaddress.IPv6Address(vpn_ip)))
            except ValueError:
                pass
        return self._nodes[node_id] if node_id else None

    def is_online(self, node_id: str) -> bool:
        return node_id in self._online

    def records(self) -> list[NodeRecord]:
        return list(self._nodes.values())

    def online_records(self) -> list[NodeRecord]:
        return [self._nodes[node_id] for node_id in self._online]

    def changed_at(self, node_id: str) -> float:
        """When the node's path facts last changed or it came back online
        (0 if not since this server started): a direct attempt with it
        cannot have failed before then."""
        return self._fresh_at.get(node_id, 0.0)

    def view(self, record: NodeRecord, now: float) -> dict:
        """A node as its peers see it; of its routes, only what it serves:
        ``routes`` (those it is primary for) and ``exit_node``, each left
        out when empty (a seed client, or a node without routes, reads the same)."""
        view = record.peer_view(self.is_online(record.node_id), now)
        if record.vpn_ip6:
            view["vpn_ip6"] = record.vpn_ip6
        if record.public_ip6:
            view["public_ip6"] = record.public_ip6
        if record.approved_routes:
            primary = self.routes.primary_routes(record.node_id)
            if primary:
                view["routes"] = list(primary)
            if record.offers_exit:
                view["exit_node"] = True
        return view

    def netmap_since(self, cursor: Cursor, now: float) -> dict:
        """What a node holding ``cursor`` must learn: a delta, or a full snapshot."""
        changed = self.changes.changed_since(cursor)
        if changed is None:
            upserts = [self.view(r, now) for r in self._nodes.values()]
            removals: list[str] = []
        else:
            upserts = [self.view(self._nodes[i], now) for i in sorted(changed) if i in self._nodes]
            removals = sorted(i for i in changed if i not in self._nodes)
        return netmap_answer_json(str(self.changes.cursor), changed is None, upserts, removals)

    # -- changes -----------------------------------------------------------

    def on_change(self, listener: Callable[[str], None]) -> None:
        """``listener(node_id)`` hears every netmap change, with the node it is of."""
        self._listeners.append(listener)

    def _changed(self, node_id: str) -> None:
        self._tell(node_id)
        # A node that came, went, or serves other routes may hand a prefix
        # to another router (or take one): that node's view changed too.
        record = self._nodes.get(node_id)
        served = record.subnet_routes if record is not None else ()
        for other in sorted(self.routes.update(node_id, served, node_id in self._online) - {node_id}):
            self._tell(other)

    def _tell(self, node_id: str) -> None:
        if self.shared and self._applying is None:
            # Recorded when the stream brings it back with its cluster serial.
            self._local_changes[node_id] = self._local_changes.get(node_id, 0) + 1
            self._store.note_change(self._state_of(node_id), node_id)
            return
        self.changes.record(node_id, self._applying)
        for listener in self._listeners:
            listener(node_id)

    def _state_of(self, node_id: str) -> str:
        """A change's kind in the stream: what the node is now."""
        if node_id in self._online:
            return "online"
        return "offline" if node_id in self._nodes else "gone"

    # -- the cluster's stream (wire.server.cluster) --------------------------

    def local_changes(self, node_id: str) -> int:
        """How many changes of this node were made here (the stream compares)."""
        return self._local_changes.get(node_id, 0)

    def record_local(self, serial: int, node_id: str) -> None:
        """The stream reached a change made here: memory has it already."""
        self._applying = serial
        try:
            self._tell(node_id)
        finally:
            self._applying = None

    def apply(self, serial: int, kind: str, node_id: str, record: NodeRecord | None, now: float) -> None:
        """Another replica's change at ``serial``, with the node's row as the
        database has it now (None: gone): adopted in memory, never written
        back. A node with a write of ours still pending keeps ours: it
        commits later, so it is what the database (and every replica) ends with."""
        self._applying = serial
        try:
            existing = self._nodes.get(node_id)
            if self._store.is_pending(node_id):
                self._tell(node_id)
            elif record is None or kind == "gone":
                if existing is None:
                    self.changes.reach(serial)  # never known here: the serial moves all the same
                    return
                self._unindex(existing)
                self._online.pop(node_id, None)
                self._offline.pop(node_id, None)
                self._ephemeral.pop(node_id, None)
                self._changed(node_id)
                self._reset(node_id, None)
            else:
                online = kind == "online"
                fresh = (
                    existing is None
                    or (online and node_id not in self._online)
                    or any(getattr(existing, name) != getattr(record, name) for name in PATH_FACTS)
                )
                if existing is not None:
                    self._unindex(existing)
                self._index(record)
                self._online.pop(node_id, None)
                self._offline.pop(node_id, None)
                (self._online if online else self._offline)[node_id] = None
                self._changed(node_id)
                if fresh:
                    self._reset(node_id, now)
        finally:
            self._applying = None

    def refresh_seen(self, seen: Iterable[tuple[str, float]]) -> None:
        """Heartbeats other replicas heard (their batched ``last_seen``): the
        sweep leader takes nodes offline by them. Online nodes are kept in
        ``last_seen`` order again (the sweep stops at the first one not silent)."""
        for node_id, last_seen in seen:
            record = self._nodes.get(node_id)
            if record is not None and last_seen > record.last_seen:
                record.last_seen = last_seen
        order = sorted(self._online, key=lambda node_id: self._nodes[node_id].last_seen)
        self._online = OrderedDict.fromkeys(order)

    def on_reset(self, listener: Callable[[str], None]) -> None:
        """``listener(node_id)`` hears when a node's path facts change, it
        comes back online, or it is removed: a fresh start for its paths."""
        self._reset_listeners.append(listener)

    def _reset(self, node_id: str, now: float | None) -> None:
        if now is None:
            self._fresh_at.pop(node_id, None)
        else:
            self._fresh_at[node_id] = now
        for listener in self._reset_listeners:
            listener(node_id)

    def register(
        self, registration: Registration, public_ip: str, now: float, tags: tuple[str, ...] = (),
        taken_elsewhere: Container[str] = (),
    ) -> Registered:
        """Record a registration or heartbeat. The caller commits the store before answering.

        ``tags`` are a new node's (its join key's); a known node keeps its own:
        no registration can change them. ``taken_elsewhere``: addresses a new
        node must not get although this replica has not heard of their
        holders yet (the database refused them: another replica gave them
        out a moment ago)."""
        node_id = registration.node_id
        existing = self._nodes.get(node_id)
        self.check_routes(registration.advertise_routes)
        self.check_underlay6(registration.public_ip6)
        holder = self._node_by_key.get(registration.wg_public_key)
        if holder is not None and holder != node_id:
            raise RegistryConflict(
                f"wg_public_key is already registered to another node ({self._nodes[holder].node_name})"
            )
        self.check_name(node_id, registration.node_name)
        if existing is None:
            vpn_ip = self.pool.allocate(node_id, _Taken(self._node_by_ip, taken_elsewhere), registration.requested_vpn_ip)
            # The server decides the IPv6 one: no node asks for its own.
            vpn_ip6 = (
                self.pool6.allocate(node_id, _Taken(self._node_by_ip6, taken_elsewhere)) if self.pool6 is not None else ""
            )
            registered = now
        else:
            vpn_ip, vpn_ip6 = existing.vpn_ip, existing.vpn_ip6
            registered = existing.registered
            tags = existing.tags
        # Approvals outlive registrations (and a route's absence from one).
        approved = existing.approved_routes if existing is not None else ()
        record = NodeRecord.from_registration(registration, vpn_ip, public_ip, registered, now, tags, approved, vpn_ip6)
        record.approved_routes = in_route_order(approved + self.auto_approve(record))
        if existing is not None and existing.describes_same_node(record):
            self._alive(existing, now)
            return Registered(existing, RegisterOutcome.HEARTBEAT)

        fresh = (
            existing is None
            or node_id not in self._online
            or any(getattr(existing, name) != getattr(record, name) for name in PATH_FACTS)
        )
        self._offline.pop(node_id, None)
        self._online[node_id] = None
        self._online.move_to_end(node_id)
        if existing is not None:
            self._unindex(existing)
        self._index(record)
        self._store.put(record)
        self._changed(node_id)
        if fresh:
            self._reset(node_id, now)
        outcome = RegisterOutcome.NEW if existing is None else RegisterOutcome.CHANGED
        self.log.info(
            "node {name} ({vpn_ip}) {outcome} at {public_ip}:{nat_port}",
            name=record.node_name,
            vpn_ip=vpn_ip,
            outcome="registered" if existing is None else "updated",
            public_ip=public_ip,
            nat_port=record.nat_port,
        )
        return Registered(record, outcome)

    def revert(
        self, node_id: str, previous: NodeRecord | None, was_online: bool, refused: NodeRecord | None = None,
        quietly: bool = False,
    ) -> None:
        """Undo a registration the store could not save (the client got a
        503): the node is as it was, in memory, in the netmap (a change is
        recorded, so long-polls that heard the refused record hear the old
        one) and in the store's queue (the refused record is never written).

        ``refused``: the record that was refused; a node holding another one
        since (a newer registration, waiting for its own commit) keeps it.
        ``quietly``: no warning (the caller tries again, and says so)."""
        current = self._nodes.get(node_id)
        if current is previous:
            return
        if refused is not None and current is not refused:
            return
        if current is not None:
            self._unindex(current)
        self._store.discard(node_id)
        self._online.pop(node_id, None)
        self._offline.pop(node_id, None)
        if previous is not None:
            self._index(previous)
            if was_online:
                self._online[node_id] = None
            else:
                self._offline[node_id] = None
        self._changed(node_id)
        if not quietly:
            self.log.warn("node {node_id}: registration not saved, undone", node_id=node_id)

    def seen(self, node_id: str, now: float) -> bool:
        """The node showed it is alive without registering (its authenticated
        long-poll arrived): a heartbeat that changes nothing. False for an
        unknown node."""
        record = self._nodes.get(node_id)
        if record is None:
            return False
        self._alive(record, now)
        return True

    def _alive(self, record: NodeRecord, now: float) -> None:
        """A heartbeat: O(1), the time written in the store's next batch; a
        node that was offline comes back online (a netmap change)."""
        node_id = record.node_id
        came_online = node_id not in self._online
        record.last_seen = now
        self._store.touch(node_id, now)
        self._offline.pop(node_id, None)
        self._online[node_id] = None
        self._online.move_to_end(node_id)
        if came_online:
            self.log.info("node {name} ({vpn_ip}) is back online", name=record.node_name, vpn_ip=record.vpn_ip)
            self._changed(node_id)
            self._reset(node_id, now)

    def add_imported(self, record: NodeRecord) -> None:
        """Adopt a record from another registry (a seed state file) as it is,
        with an IPv6 address (the seed had none)."""
        if self.pool6 is not None and not record.vpn_ip6:
            record.vpn_ip6 = self.pool6.allocate(record.node_id, self._node_by_ip6)
        self._index(record)
        self._offline[record.node_id] = None
        self._store.put(record)
        self._changed(record.node_id)

    def mark_offline(self, node_id: str) -> bool:
        """The node said it is leaving: show it offline now, not after a timeout."""
        if node_id not in self._online:
            return False
        del self._online[node_id]
        self._offline[node_id] = None
        self._changed(node_id)
        return True

    def rename(self, node_id: str, new_name: str) -> NodeRecord:
        record = self._nodes[node_id]
        self.check_name(node_id, new_name)
        self._unindex(record)
        record.node_name = new_name
        self._index(record)
        self._store.put(record)
        self._changed(node_id)
        return record

    def set_tags(self, node_id: str, tags: tuple[str, ...]) -> NodeRecord:
        """The admin's word on a node's tags (validated, sorted): a netmap change."""
        record = self._nodes[node_id]
        if record.tags != tags:
            record.tags = tags
            self._store.put(record)
            self._changed(node_id)
        return record

    def check_routes(self, routes: tuple[str, ...]) -> None:
        """ProtocolError for a route over the mesh's own subnet (it would take
        the mesh's addresses away from the mesh)."""
        for network in self.mesh_networks():
            clash = overlapping(routes, network)
            if clash:
                raise ProtocolError(
                    "advertise_routes",
                    f"{', '.join(clash)} overlaps the mesh's own subnet {network}; advertise the networks beside it",
                )

    def check_underlay6(self, address: str | None) -> None:
        """ProtocolError for an IPv6 underlay address inside the mesh: peers
        would send the node's tunnel into its own tunnel."""
        if address and any(ipaddress.ip_address(address) in network for network in self.mesh_networks()):
            raise ProtocolError("public_ip6", f"{address} is inside the mesh's own prefix; give the host's underlay address")

    def mesh_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The mesh's own subnet, and its IPv6 prefix when it has one."""
        return (self.pool.network,) if self.pool6 is None else (self.pool.network, self.pool6.network)

    def set_approved_routes(self, node_id: str, routes: tuple[str, ...]) -> NodeRecord:
        """The routes approved for a node (the admin's word, or autoApprovers'): a netmap change."""
        record = self._nodes[node_id]
        routes = in_route_order(routes)
        if record.approved_routes != routes:
            record.approved_routes = routes
            self._store.put(record)
            self._changed(node_id)
        return record

    def approve_automatically(self, node_id: str) -> tuple[str, ...]:
        """Approve what the policy now approves of a node's advertised routes;
        returns the routes newly approved (a netmap change if any)."""
        record = self._nodes[node_id]
        new = tuple(r for r in self.auto_approve(record) if r not in record.approved_routes)
        if new:
            self.set_approved_routes(node_id, record.approved_routes + new)
        return new

    def make_ephemeral(self, node_id: str, offline_for: float) -> None:
        """The node goes once offline for ``offline_for`` seconds (see :meth:`sweep`)."""
        self._ephemeral[node_id] = offline_for

    def is_ephemeral(self, node_id: str) -> bool:
        return node_id in self._ephemeral

    def remove(self, node_id: str) -> NodeRecord | None:
        record = self._nodes.get(node_id)
        if record is None:
            return None
        self._unindex(record)
        self._online.pop(node_id, None)
        self._offline.pop(node_id, None)
        self._ephemeral.pop(node_id, None)
        self._store.delete(node_id)
        self._changed(node_id)
        self._reset(node_id, None)
        return record

    def restore(self, record: NodeRecord, was_online: bool, ephemeral_after: float | None) -> None:
        """A removal the store refused, undone: the node is back as it was
        (its row was never deleted). Not if the node came back meanwhile."""
        if record.node_id in self._nodes:
            return
        self._index(record)
        # Back in its place by last_seen: the sweeps read these maps from the front.
        if was_online:
            self._online = self._by_last_seen([*self._online, record.node_id])
        else:
            self._offline = self._by_last_seen([*self._offline, record.node_id])
        if ephemeral_after is not None:
            self._ephemeral[record.node_id] = ephemeral_after
        self._changed(record.node_id)
        self._reset(record.node_id, None)
        self.log.warn("node {name}: removal not saved, undone", name=record.node_name)

    def _by_last_seen(self, node_ids: list[str]) -> OrderedDict[str, None]:
        return OrderedDict.fromkeys(sorted(node_ids, key=lambda node_id: self._nodes[node_id].last_seen))

    def ephemeral_after(self, node_id: str) -> float | None:
        return self._ephemeral.get(node_id)

    def gone_ephemeral(self, now: float) -> list[NodeRecord]:
        """Ephemeral nodes offline for longer than they may be (the caller removes them,
        with their credentials)."""
        gone = []
        for node_id, offline_for in self._ephemeral.items():
            record = self._nodes.get(node_id)
            if record is not None and node_id not in self._online and record.last_seen <= now - offline_for:
                gone.append(record)
        return gone

    def sweep(self, now: float) -> None:
        """Take silent nodes offline and drop nodes offline for too long."""
        silent_before = now - self.offline_after
        while self._online:
            node_id = next(iter(self._online))
            record = self._nodes[node_id]
            if record.last_seen > silent_before:
                break
            del self._online[node_id]
            self._offline[node_id] = None
            self.log.info("node {name} ({vpn_ip}) went offline", name=record.node_name, vpn_ip=record.vpn_ip)
            self._changed(node_id)
        expired_before = now - self.expire_after
        while self._offline:
            node_id = next(iter(self._offline))
            record = self._nodes[node_id]
            if record.last_seen > expired_before:
                break
            self.log.info(
                "node {name} ({vpn_ip}) expired after {hours:.0f} h offline",
                name=record.node_name,
                vpn_ip=record.vpn_ip,
                hours=self.expire_after / 3600,
            )
            self.remove(node_id)


class _Taken:
    """Addresses in use: this replica's, and those the database said another holds."""

    def __init__(self, known: Container[str], elsewhere: Container[str]):
        self._known = known
        self._elsewhere = elsewhere

    def __contains__(self, address: object) -> bool:
        return address in self._known or address in self._elsewhere
