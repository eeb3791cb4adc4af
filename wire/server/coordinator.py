"""The coordination server's state and operations, independent of transport.

One object ties the registry, its store, the long-poll hub, the pair
paths, the punch counter and the metrics together; the HTTP resources in ``api.py`` only
translate requests into calls on it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wire import __version__
from wire.protocol import (
    Cursor,
    PathMode,
    PathReport,
    PathReportAnswer,
    ProtocolError,
    PunchAnswer,
    PunchRequest,
    RegisterAnswer,
    RegisterOutcome,
    Registration,
    RelayGrant,
    RelayRequest,
    asking_to_register,
    pair_rule,
    parse_cursor,
)
from wire.protocol.dns import DEFAULT_DOMAIN
from wire.protocol.enums import Heartbeat
from wire.protocol.filter import NO_FILTER, filter_digest, filter_json
from wire.protocol.routefilter import ANSWER_KEY as ROUTE_FILTER, route_filter_json
from wire.server.auth import AuthError, Authority, Forbidden, hash_secret
from wire.server.cluster import SingleServer
from wire.server.dnsbook import DnsBook
from wire.server.metrics import ServerMetrics
from wire.server.model import NodeRecord
from wire.server.model import PairWord
from wire.server.netmap import LongPollHub
from wire.server.pathbook import PathBook
from wire.policy import PolicyIndex, auto_approved
from wire.server.policybook import PolicyBook
from wire.server.punch import PunchTracker
from wire.server.ratelimit import TokenBucket
from wire.server.registry import Registered, Registry, RegistryConflict
from wire.server.relaystream import RelayStreams
from wire.protocol.report import NodeReport
from wire.server.meshview import MeshVersion
from wire.server.relay import RelayTable
from wire.server.reports import FLUSH_INTERVAL as REPORT_FLUSH_INTERVAL
from wire.server.reports import ReportBook
from wire.server.replicacall import HomeUnreachable
from wire.server.replicas import Replica, ReplicaSet
from wire.server.store import IStore, StoreConflict, StoreError, Writes
from wire.web import SharedJson, ViewerJson

SWEEP_INTERVAL = 1.0
# A heartbeating long-poll waits at most offline_after / this (no effect at
# the default 90 s with nodes' 25 s waits; 2 s with --offline-after 6).
HEARTBEATS_PER_OFFLINE_AFTER = 3.0
ENROLL_REFUSALS_AUDITED = 10  # a minute
# A new node's address taken by another replica at the same moment: tries
# with another before the enrollment is refused (409, the node tries later).
ENROLL_ADDRESS_TRIES = 3
TOUCH_FLUSH_INTERVAL = 5.0
# Encoded packet filters kept (one per class of nodes; cleared when the policy changes).
MAX_FILTERS_ENCODED = 10_000


class UnknownNode(LookupError):
    pass


class ServerStopping(Exception):
    """The server is stopping: a long-poll is refused (503), and the node asks another replica."""


class Coordinator:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: IStore,
        registry: Registry,
        relay_port: int | None = None,
        authority: Authority | None = None,
        dns_domain: str | None = DEFAULT_DOMAIN,
    ):
        self.clock = clock
        self.store = store
        self.registry = registry
        self.relay_port = relay_port
        # None: the seed's open mode, anyone may register and read.
        self.authority = authority
        self.punches = PunchTracker()
        self._refusal_audit = TokenBucket(ENROLL_REFUSALS_AUDITED / 60.0, ENROLL_REFUSALS_AUDITED, clock.seconds())
        self._refusals_suppressed = 0
        self.relay = RelayTable(clock)
        self.metrics = ServerMetrics()
        # The relay over TCP, for nodes whose networks block UDP (wire.relaystream).
        self.relay_streams = RelayStreams(clock, self.relay.handle, self.metrics.count_datagram)
        self.paths = PathBook(registry.changes, registry.changed_at)
        # The replicas that may relay (wire.server.replicas): one server
        # alone is its own only one; makeService gives a cluster's.
        self.replicas = ReplicaSet(Replica("", "", "", 0))
        # Asks a pair's home replica for a grant (wire.server.replicacall); None: no other replica.
        self.replica_caller: Any = None
        self.longpolls = LongPollHub(clock, registry.changes, self._netmap_answer, self._viewer_answer)
        # Stopping: waiting long-polls were answered, new ones are refused (503), netmap streams end.
        self.closing = False
        registry.on_change(self.longpolls.changed)
        self.policy = PolicyBook(store, registry.records, self._known_tags, self.now)
        self.policy.listeners.append(self._policy_changed)
        registry.auto_approve = self.auto_approved_routes
        # The mesh's DNS settings (dns_domain None: no mesh DNS), and the digest each node holds.
        self.dns = DnsBook(store, dns_domain, self.now)
        self.dns.listeners.append(self._dns_changed)
        self._dns_held: dict[str, str | None] = {}
        # The filter digest each node last said it holds; encoded filters by rules object.
        self._filter_held: dict[str, str | None] = {}
        self._filter_encoded: dict[int, tuple] = {}
        # The same for forwarding filters (subnet routers under a policy).
        self._route_filter_held: dict[str, str | None] = {}
        self._route_filter_encoded: dict[int, tuple] = {}
        # Who sees whom: the serial of its last change (policy, tags) and of
        # the one before, the index in force between them, and answers cut
        # to a class's view, for the serial they were cut at.
        self._visibility_serial = 0
        self._visibility_before_serial = 0
        self._index_before: PolicyIndex | None = None
        self._visible_cache: dict[tuple[int, int], tuple] = {}
        self._view_change_cache: dict[tuple[int, int, int], tuple] = {}
        self._visible_cache_serial = -1
        self._snapshot: tuple[int, SharedJson] | None = None
        # Each cut answer's records by node id, for the viewer's own ("me").
        self._by_id_cache: dict[int, tuple[dict, dict[str, dict]]] = {}
        registry.on_change(self._node_changed_for_policy)
        if authority is not None:
            for node_id, offline_for in authority.ephemeral_nodes().items():
                registry.make_ephemeral(node_id, offline_for)
        self._load_paths()
        # The policy in force approves what it approves now, too: an approval
        # its change made but a crash kept from the disk is made again.
        if self.approve_automatically([r.node_id for r in registry.records() if r.advertised_routes]):
            self.store.write_pending()
        self.paths.on_change(self._path_changed)
        registry.on_reset(self._node_reset)
        self.metrics.track_paths(self.paths.count)
        # What nodes say about their paths, for the admin's view of the mesh,
        # and that view's version (wire.server.meshview).
        self.mesh_version = MeshVersion(clock)
        registry.on_change(self.mesh_version.moved)
        self.reports = ReportBook(
            store, clock, lambda node_id: registry.get(node_id) is not None, self.may_see, self.mesh_version.moved
        )
        # This replica's part of a cluster on one database (wire.server.cluster);
        # one server alone is its own leader.
        self.cluster: Any = SingleServer()
        self.metrics.track_cluster(lambda: self.cluster.applied, lambda: self.cluster.lag)
        # The relay's kernel fast path (wire.server.fastpath), when the service made one.
        self.fastpath: Any = None
        self.metrics.track_fastpath(
            lambda: self.fastpath.state if self.fastpath is not None else "unavailable",
            lambda: self.fastpath.sessions_on if self.fastpath is not None else 0,
            lambda: self.fastpath.direct_sessions_on if self.fastpath is not None else 0,
        )
        self.metrics.track(
            nodes_total=lambda: len(registry),
            nodes_online=lambda: registry.online_count,
            longpolls_open=lambda: self.longpolls.open_count,
            netmap_serial=lambda: registry.changes.serial,
            relay_sessions=lambda: len(self.relay),
            relay_streams=lambda: len(self.relay_streams),
            relay_stream_drops=lambda: self.relay_streams.dropped,
        )
        self.metrics.relay_replicas_live.set_function(lambda: len(self.replicas.live))

    def now(self) -> float:
        return self.clock.seconds()

    def _netmap_answer(self, cursor: Cursor) -> dict:
        """A long-poll answer; a cluster's carries the live relays (a node
        whose session's relay left the list asks for a grant at once)."""
        answer = self.registry.netmap_since(cursor, self.now())
        if self.replicas.shared:
            answer["relays"] = self.replicas.relays_json()
        return answer

    def use_replicas(self, replicas: ReplicaSet, caller: Any) -> None:
        """Relay with the other replicas of a cluster: a pair's session at
        its home, and every long-poll told at once when the live set changes."""
        self.replicas, self.replica_caller = replicas, caller
        replicas.listeners.append(self._replicas_changed)

    def _replicas_changed(self) -> None:
        live = self.replicas.live
        self.log.info("relay replicas live now: {names}", names=", ".join(sorted(live)) or "none")
        urls: dict[str, list[str]] = {}
        for replica in live.values():
            urls.setdefault(replica.api_url, []).append(replica.name)
        for url, names in urls.items():
            if len(names) > 1:
                # Grants for their pairs would go to the wrong one.
                self.log.warn(
                    "replicas {names} all say they are at {url}: give each its own URL as its first --public-url",
                    names=", ".join(sorted(names)), url=url,
                )
        self.longpolls.changed()

    # -- the access policy --------------------------------------------------

    def audit(self, db: Writes, event: str, detail: str) -> None:
        """Into the audit log, inside ``db``'s transaction (an open server keeps none: the log says it)."""
        if self.authority is not None:
            self.authority.audit(db, event, detail)
        else:
            self.log.info("{event} {detail}", event=event, detail=detail)

    def _known_tags(self) -> set[str]:
        """Tags the policy may name without a node carrying them yet: those join keys give."""
        if self.authority is None:
            return set()
        return {tag for key in self.authority.keys() for tag in key.tags}

    # -- routes approved by the policy (autoApprovers) ----------------------

    def auto_approved_routes(self, record: NodeRecord) -> tuple[str, ...]:
        """The routes among those ``record`` advertises that the policy approves."""
        return auto_approved(self.policy.policy, record.node_name, record.tags, record.advertised_routes)

    def approve_automatically(self, node_ids) -> dict[str, tuple[str, ...]]:
        """What the policy now approves of these nodes' advertised routes is
        approved (kept like the admin's approvals); the caller makes it durable.
        Returns the routes newly approved, by node id."""
        approved = {}
        for node_id in node_ids:
            new = self.registry.approve_automatically(node_id)
            if new:
                approved[node_id] = new
                self.log.info(
                    "routes {routes} of {name} approved by the policy's autoApprovers",
                    routes=", ".join(new),
                    name=self.registry.get(node_id).node_name,  # type: ignore[union-attr]
                )
        return approved

    def _policy_changed(self, index_before: PolicyIndex) -> None:
        """Nodes' filters and views may have changed: the serial moves (a poll
        with the old cursor answers at once), and the long-polls of the nodes
        whose view or filter did change wake now; the others learn the new
        cursor at their next poll. Its autoApprovers may approve routes."""
        if self.approve_automatically([r.node_id for r in self.registry.records() if r.advertised_routes]):
            self._commit_soon()
        self._filter_encoded.clear()
        self._route_filter_encoded.clear()
        self._visibility_changed(index_before, self.registry.changes.advance())
        compared: dict[tuple[int, int], bool] = {}
        affected = [v for v in self.longpolls.waiting_viewers() if self._view_changed(v, index_before, compared)]
        self.longpolls.changed_for(affected)

    def _view_changed(self, viewer: str, before: PolicyIndex, compared: dict[tuple[int, int], bool]) -> bool:
        """Whether ``viewer``'s peers or filter differ between ``before`` and now
        (worked out once per pair of classes: ``compared``)."""
        now = self.policy.index
        if before.node(viewer) is None or now.node(viewer) is None:
            return True
        key = (before.class_of(viewer), now.class_of(viewer))
        if key not in compared:
            compared[key] = (
                before.peers_of(viewer) != now.peers_of(viewer)
                or self._filter_of(before, viewer) != self._filter_of(now, viewer)
            )
        # A router's forwarding filter depends on its own routes too, not on its
        # class alone (cached per route set in the index: cheap to ask).
        return compared[key] or before.route_filter_for(viewer) != now.route_filter_for(viewer)

    @staticmethod
    def _filter_of(index: PolicyIndex, viewer: str):
        return None if index.policy is None else index.filter_for(viewer)

    def _node_changed_for_policy(self, node_id: str) -> None:
        """The policy's index follows the node. Its tags decide who sees it:
        changed tags are a change of who sees whom (a node that came or went
        is not: the change log tells its peers)."""
        record = self.registry.get(node_id)
        index_before = self.policy.index
        self.policy.node_changed(record, node_id)
        if record is None:
            self._filter_held.pop(node_id, None)
            self._route_filter_held.pop(node_id, None)
            self._dns_held.pop(node_id, None)
            return
        # The index had the node's tags and routes as they were (the open index too):
        # a router's routes decide who must hold it, under a policy.
        known = index_before.node(node_id)
        now = self.policy.index.node(node_id)
        moved = known is not None and now is not None and (known.tags != now.tags or known.routes != now.routes)
        if moved and self.policy.active:
            self._visibility_changed(index_before, self.registry.changes.serial)

    def _dns_changed(self) -> None:
        """Every node's answer carries the new DNS settings: the serial moves
        and every waiting long-poll answers now."""
        self.registry.changes.advance()
        self.longpolls.changed()

    def _visibility_changed(self, index_before: PolicyIndex, serial: int) -> None:
        self._visibility_before_serial, self._visibility_serial = self._visibility_serial, serial
        self._index_before = index_before

    # -- pair paths --------------------------------------------------------

    def _load_paths(self) -> None:
        """The stored words, less those of nodes no longer in the registry."""
        dropped = self.paths.load(self.store.load_pairs(), lambda node_id: self.registry.get(node_id) is not None)
        for lo, hi in dropped:
            self.store.put_pair(lo, hi, None)
        if dropped:
            self.log.info("dropped {count} stored pair paths of nodes no longer registered", count=len(dropped))
            self.store.write_pending()

    def _path_changed(self, lo: str, hi: str, word: PairWord | None) -> None:
        self.store.put_pair(lo, hi, word)
        self.longpolls.changed_for((lo, hi))

    def _node_reset(self, node_id: str) -> None:
        if self.paths.forget_node(node_id, self.now()):
            self._commit_soon()

    def _commit_soon(self) -> None:
        """Write changes nobody waits on (retries, forgotten words) with the next group commit."""
        self.store.commit().addErrback(lambda failure: self.log.failure("saving pair paths failed", failure))

    def _rule(self, lo: str, hi: str) -> PathMode | None:
        a, b = self.registry.get(lo), self.registry.get(hi)
        return None if a is None or b is None else pair_rule(a, b)[0]

    def _viewer_answer(self, shared: dict, viewer: str, cursor: Cursor) -> dict | None:
        """``shared`` as ``viewer`` gets it: with its pairs' words if any
        changed since ``cursor`` (all of them, with a full snapshot), and its
        packet filter if it holds another; None when the shared one will do."""
        original = shared
        extras: dict = {}
        if self._visible_cache_serial != self.registry.changes.serial:
            # Cut answers are for one serial: the next change makes new ones.
            self._visible_cache.clear()
            self._view_change_cache.clear()
            self._by_id_cache.clear()
            self._visible_cache_serial = self.registry.changes.serial
        if not shared.get("full") and cursor.serial < self._visibility_serial:
            # Who sees whom changed since (a policy, tags): the peers it gained
            # and lost are in no change log; told from the index it saw, or
            # (a cursor older than that) the whole view, once.
            before = self._index_before
            if cursor.serial >= self._visibility_before_serial and before is not None and before.node(viewer) is not None:
                shared = self._with_view_change(shared, viewer, before)
            else:
                shared = self._full_snapshot()
        base: dict = shared
        if self.policy.active:
            base, me = self._visible_to(shared, viewer)
            if me is not None:
                extras["me"] = me
        paths, complete = self.paths.changes_for(viewer, cursor)
        if base.get("full"):
            if not complete:
                paths = self.paths.words_of(viewer)
            complete = True
            if paths:  # a full answer without paths already says "no words"
                extras.update(paths=[path.to_json() for path in paths], paths_full=True)
        elif paths or complete:
            extras.update(paths=[path.to_json() for path in paths], paths_full=complete)
        extras.update(self._filter_extra(viewer))
        extras.update(self._route_filter_extra(viewer))
        if self.registry.get(viewer) is not None:  # not to a node removed while its poll waited
            extras.update(self.dns.extra_for(self._dns_held.get(viewer)))
        if not extras:
            return base if base is not original else None
        assert isinstance(base, SharedJson)
        return ViewerJson(base, extras)

    def _visible_to(self, shared: dict, viewer: str) -> tuple[SharedJson, dict | None]:
        """``shared`` with only the peers ``viewer`` may see (those it may
        reach or that may reach it), shared by every viewer of its class, and
        its own record apart (``"me"``)."""
        # A viewer the index does not know (removed while its poll waited) sees no one.
        visible = self.policy.index.peers_of(viewer) if self.policy.index.node(viewer) else frozenset()
        key = (id(shared), id(visible))
        cached = self._visible_cache.get(key)
        if cached is None or cached[0] is not shared or cached[1] is not visible:
            upserts = [view for view in shared["upserts"] if view["node_id"] in visible]
            cached = (shared, visible, SharedJson({**shared, "upserts": upserts}))
            self._visible_cache[key] = cached
        return cached[2], self._views_by_id(shared).get(viewer)

    def _views_by_id(self, shared: dict) -> dict[str, dict]:
        """``shared``'s upserts by node id, made once per answer (not per viewer)."""
        cached = self._by_id_cache.get(id(shared))
        if cached is None or cached[0] is not shared:
            cached = (shared, {view["node_id"]: view for view in shared["upserts"]})
            self._by_id_cache[id(shared)] = cached
        return cached[1]

    def _with_view_change(self, shared: dict, viewer: str, before: PolicyIndex) -> SharedJson:
        """``shared`` (a delta) plus the peers ``viewer`` gained (their records)
        and lost (removals) when who sees whom changed: shared by every viewer
        whose view moved between the same two sets."""
        seen_before = before.peers_of(viewer)
        seen_now = self.policy.index.peers_of(viewer) if self.policy.index.node(viewer) else frozenset()
        key = (id(shared), id(seen_before), id(seen_now))
        cached = self._view_change_cache.get(key)
        if cached is None or cached[0] is not shared:
            now = self.now()
            present = self._views_by_id(shared)
            gained = [self.registry.get(n) for n in sorted(seen_now - seen_before - present.keys())]
            upserts = shared["upserts"] + [self.registry.view(r, now) for r in gained if r is not None]
            removals = sorted(set(shared["removals"]) | (seen_before - seen_now))
            cached = (shared, seen_before, seen_now, SharedJson({**shared, "upserts": upserts, "removals": removals}))
            self._view_change_cache[key] = cached
        return cached[3]

    def _full_snapshot(self) -> SharedJson:
        serial = self.registry.changes.serial
        if self._snapshot is None or self._snapshot[0] != serial:
            full = self.registry.netmap_since(Cursor(self.registry.changes.epoch, 0), self.now())
            self._snapshot = (serial, SharedJson(full))
        return self._snapshot[1]

    def _shown_to(self, seen_by: str | None, node_id: str) -> bool:
        return seen_by is None or seen_by == node_id or self.may_see(seen_by, node_id)

    def may_see(self, node_id: str, peer_id: str) -> bool:
        """Whether the policy lets these two be peers (either may reach the other); True without one."""
        if not self.policy.active:
            return True
        return self.policy.index.node(node_id) is not None and peer_id in self.policy.index.peers_of(node_id)

    def _filter_extra(self, viewer: str) -> dict:
        """``{"filter": ...}`` when the viewer holds another filter than its own now
        (what it holds, it says in its poll); else nothing."""
        held = self._filter_held.get(viewer)
        if not self.policy.active:
            # No policy: a node that holds a filter is told to drop it.
            return {"filter": None} if held not in (None, NO_FILTER) else {}
        if self.policy.index.node(viewer) is None:
            return {}  # removed while its poll waited: its answer says so, and nothing more
        rules = self.policy.filter_for(viewer)
        assert rules is not None
        encoded = self._filter_encoded.get(id(rules))
        if encoded is None or encoded[0] is not rules:
            if len(self._filter_encoded) > MAX_FILTERS_ENCODED:
                self._filter_encoded.clear()
            as_json = filter_json(rules)
            encoded = (rules, as_json, filter_digest(as_json))
            self._filter_encoded[id(rules)] = encoded
        return {} if held == encoded[2] else {"filter": encoded[1]}

    def _route_filter_extra(self, viewer: str) -> dict:
        """``{"route_filter": ...}`` when the viewer holds another forwarding filter
        than its own now: null without a policy or routes (forward as before), else
        its rules. A node that names none it holds (an older node) is never sent one."""
        held = self._route_filter_held.get(viewer)
        if held is None or self.policy.index.node(viewer) is None:
            return {}
        rules = self.policy.index.route_filter_for(viewer) if self.policy.active else None
        if rules is None and self.policy.active:
            # A policy, and no served route (pending, rejected): forward
            # nothing. The node builds its table from what it advertises,
            # so "no rules" must never read as "no policy".
            rules = ()
        if rules is None:
            return {ROUTE_FILTER: None} if held != NO_FILTER else {}
        encoded = self._route_filter_encoded.get(id(rules))
        if encoded is None or encoded[0] is not rules:
            if len(self._route_filter_encoded) > MAX_FILTERS_ENCODED:
                self._route_filter_encoded.clear()
            as_json = route_filter_json(rules)
            encoded = (rules, as_json, filter_digest(as_json))
            self._route_filter_encoded[id(rules)] = encoded
        return {} if held == encoded[2] else {ROUTE_FILTER: encoded[1]}

    async def report_path(self, report: PathReport, caller: str | None = None) -> PathReportAnswer:
        """A node's direct path to a peer failed: the server decides the
        pair's path, for both; answered once the decision is durable."""
        reporter = self._node_with_key(report.node_id, report.wg_public_key, caller)
        if report.peer_node_id == report.node_id:
            raise ProtocolError("peer_node_id", "is the reporting node itself; a node has no path to itself")
        peer = self.registry.get(report.peer_node_id)
        if peer is None:
            raise UnknownNode(f"no node {report.peer_node_id}")
        answer = self.paths.report(reporter, peer, report.failure, self.now())
        self.metrics.path_reports.labels(str(report.failure), "accepted" if answer.accepted else "refused").inc()
        if answer.accepted:
            await self.store.commit()
        return answer

    def report(self, report: NodeReport, caller: str | None = None) -> int:
        """A node's report of its paths (wire.server.reports): how many peer entries were kept."""
        self._node_with_key(report.node_id, report.wg_public_key, caller)
        return self.reports.accept(report)

    @property
    def open_mode(self) -> bool:
        return self.authority is None

    def authenticate(self, credential: str | None) -> str | None:
        """The node a credential belongs to (None in open mode); raises AuthError."""
        if self.authority is None:
            return None
        if not credential:
            raise AuthError("this server needs a node credential: join with 'wire up --join TOKEN'")
        node_id = self._node_with_credential(hash_secret(credential))
        if node_id is None:
            raise AuthError("unknown or revoked node credential")
        return node_id

    def _node_with_credential(self, credential_hash: str) -> str | None:
        """The registered node this (hashed) credential belongs to, if any; an authenticating server's."""
        assert self.authority is not None
        node_id = self.authority.node_for_hash(credential_hash)
        return node_id if node_id is not None and self.registry.get(node_id) is not None else None

    def authenticate_stream(self, credential: str | None, node_id: str) -> str:
        """The node a relay stream carries: the credential's (its claimed id
        must match), or on an open server the registered node it names."""
        authenticated = self.authenticate(credential)
        if authenticated is not None:
            if node_id and node_id != authenticated:
                raise AuthError("X-Wire-Node names another node than the credential's")
            return authenticated
        if not node_id or self.registry.get(node_id) is None:
            raise AuthError("X-Wire-Node must name a registered node")
        return node_id

    async def enroll(self, secret: str, registration: Registration, public_ip: str) -> tuple[Registered, str]:
        """A new node with a join key: registered, and given its credential.

        Two replicas enrolling at one moment may give out one address (each
        hears of the other's node only once it is committed): the database
        refuses the second, which then tries again with another address
        rather than refuse the node, ENROLL_ADDRESS_TRIES times at most."""
        if self.authority is None:
            raise AuthError("this server is open: register with POST /register, no join key needed")
        taken_elsewhere: set[str] = set()
        while True:
            try:
                return await self._enroll_once(secret, registration, public_ip, taken_elsewhere)
            except _AddressTakenElsewhere as e:
                taken_elsewhere.add(e.address)
                self.log.info(
                    "enrollment of {name}: another replica gave out {address} a moment ago; trying another address",
                    name=registration.node_name, address=e.address,
                )

    async def _enroll_once(
        self, secret: str, registration: Registration, public_ip: str, taken_elsewhere: set[str]
    ) -> tuple[Registered, str]:
        assert self.authority is not None
        try:
            key = self.authority.check_join_key(secret)
        except AuthError as e:
            self._enrollment_refused(public_ip, registration.node_name, str(e))
            raise
        if self.registry.get(registration.node_id) is not None:
            # A node's id and key are no secret (every peer sees them): a join
            # key must never let anyone take over an enrolled node.
            raise RegistryConflict(
                "node_id is already enrolled; to enroll this machine again, remove the old node first "
                "(wire admin nodes remove NAME)"
            )
        result = self.registry.register(registration, public_ip, self.now(), tags=key.tags, taken_elsewhere=taken_elsewhere)
        writes = Writes()
        writes.put_record(result.record)
        credential_hash, credential = self.authority.record_enrollment(
            writes, result.record.node_id, result.record.node_name, key
        )
        try:
            await self.store.transaction(writes)
        except StoreError as e:
            # The database's rules refused it (a conflict): another replica took the address (or the key) first.
            address = _address_in(result.record, e.column) if isinstance(e, StoreConflict) else ""
            again = bool(address) and len(taken_elsewhere) < ENROLL_ADDRESS_TRIES
            # A conflict is told here (or, tried again, by enroll), with its reason.
            quietly = isinstance(e, StoreConflict)
            self.registry.revert(registration.node_id, None, was_online=False, refused=result.record, quietly=quietly)
            self.authority.enrollment_refused(key)
            if again:
                raise _AddressTakenElsewhere(address) from None
            if isinstance(e, StoreConflict):
                self.log.warn("enrollment of {name} refused by the database: {error}", name=registration.node_name, error=e)
                raise await self._conflict_refusal(key.key_id, e) from None
            raise
        self.authority.enrolled(result.record.node_id, credential_hash, key)
        if key.ephemeral_after:
            self.registry.make_ephemeral(result.record.node_id, key.ephemeral_after)
        self.metrics.registrations.labels(result.outcome).inc()
        return result, credential

    async def _conflict_refusal(self, key_id: str, conflict: StoreConflict) -> Exception:
        """What to answer an enrollment the database refused: the key's own
        refusal (401) if it is spent or revoked now, else a conflict (409)."""
        assert self.authority is not None
        try:
            key = await self.authority.reread_key(key_id)
        except StoreError:
            return conflict
        problem = "this join key was removed" if key is None else key.unusable_because(self.now())
        if problem:
            return AuthError(problem)
        return RegistryConflict(f"another node enrolled with this name or address at the same moment; try again ({conflict})")

    def _enrollment_refused(self, public_ip: str, node_name: str, reason: str) -> None:
        """A refused join key goes to the audit log and the log, with who
        tried: at most ENROLL_REFUSALS_AUDITED a minute (a guessing flood
        must not fill the database), the rest counted and told with the next."""
        assert self.authority is not None
        now = self.now()
        if not self._refusal_audit.spend(1, now):
            self._refusals_suppressed += 1
            return
        suppressed, self._refusals_suppressed = self._refusals_suppressed, 0
        detail = f"from {public_ip} as {node_name!r}: {reason}"
        if suppressed:
            detail += f" (and {suppressed} more refused since the last one recorded)"
        writes = Writes()
        self.authority.audit(writes, "node.enroll.refused", detail)

        def failed(failure: Failure) -> None:
            failure.trap(StoreError)
            self.log.warn("enrollment refused {detail} (not in the audit log: the store failed)", detail=detail)

        # Nobody waits on it: the refusal is answered at once.
        self.store.transaction(writes).addErrback(failed)

    async def register(self, registration: Registration, public_ip: str, node_id: str | None = None) -> Registered:
        """Record a registration; returns once any change is durable.

        ``node_id`` is the authenticated caller: it may only register itself,
        and its name is the one it enrolled with (or the admin gave it).
        """
        if node_id is not None:
            if registration.node_id != node_id:
                raise Forbidden("a node may only register itself")
            record = self.registry.get(node_id)
            if record is None:  # removed since it authenticated
                raise AuthError("unknown or revoked node credential")
            registration = replace(registration, node_name=record.node_name)
        previous = self.registry.get(registration.node_id)
        was_online = self.registry.is_online(registration.node_id)
        public_ip = _same_family(public_ip, previous.public_ip if previous is not None else "")
        result = self.registry.register(registration, public_ip, self.now())
        if result.outcome is not RegisterOutcome.HEARTBEAT:
            try:
                await self.store.commit()
            except StoreError:
                # Refused means not stored: not in memory, the netmap or the database
                # (unless a newer registration replaced it: that one waits for its own commit).
                self.registry.revert(registration.node_id, previous, was_online, refused=result.record)
                raise
        elif self.store.is_pending(registration.node_id):
            # The record it repeats is not durable yet (a retry while its commit
            # is under way): answered once the commit after that one is done,
            # and refused if that first commit was.
            await self.store.commit()
            if self.registry.get(registration.node_id) is not result.record:
                raise StoreError("the registration could not be saved (an earlier write of it was refused); try again")
        self.metrics.registrations.labels(result.outcome).inc()
        return result

    def registered_answer(self, record: NodeRecord, public_ip: str, credential: str | None = None) -> RegisterAnswer:
        """What ``POST /register`` (and ``/enroll``, with the credential) answers."""
        return RegisterAnswer(
            vpn_ip=record.vpn_ip,
            your_ip=public_ip,
            node_id=record.node_id,
            node_name=record.node_name,
            vpn_subnet=str(self.registry.pool.network),
            offline_after=self.registry.offline_after,
            cursor=str(self.registry.changes.cursor),
            heartbeat=Heartbeat.LONGPOLL if self.longpoll_heartbeats else Heartbeat.REGISTER,
            credential=credential,
            vpn_ip6=record.vpn_ip6,
            vpn_subnet6=str(self.registry.pool6.network) if self.registry.pool6 is not None and record.vpn_ip6 else "",
        )

    def health(self) -> dict:
        health = {"ok": True, "version": __version__, "total": len(self.registry), "online": self.registry.online_count}
        cluster = self.cluster.health()
        if cluster:  # replicas: which one, whether it reaches the database, its lag behind the stream
            health["cluster"] = cluster
        return health

    def status(self, seen_by: str | None = None) -> dict:
        """The seed's /status: every node, sorted by name; for a node
        (``seen_by``) under an access policy, itself and the peers it may see."""
        now = self.now()
        records = [r for r in self.registry.records() if self._shown_to(seen_by, r.node_id)]
        nodes = sorted((self.registry.view(r, now) for r in records), key=lambda v: v["node_name"])
        online = self.registry.online_count if len(records) == len(self.registry) else sum(v["online"] for v in nodes)
        return {
            "version": __version__,
            "total": len(nodes),
            "online": online,
            "offline": len(nodes) - online,
            "nodes": nodes,
            "timestamp": now,
        }

    def online_peers(self, seen_by: str | None = None) -> dict:
        """The seed's /peers: online nodes only (those ``seen_by`` may see)."""
        now = self.now()
        peers = [self.registry.view(r, now) for r in self.registry.online_records() if self._shown_to(seen_by, r.node_id)]
        return {"peers": peers, "count": len(peers), "cursor": str(self.registry.changes.cursor)}

    @property
    def longpoll_heartbeats(self) -> bool:
        """Whether a node's long-poll counts as its heartbeat: only when the
        server knows who polls (authentication); an open server cannot tell."""
        return self.authority is not None

    def longpoll_wait(self, wait: float, node_id: str | None) -> float:
        """How long a node's long-poll (or stream) may wait: a poll that is
        the node's heartbeat must come back well within offline_after, or a
        short --offline-after (fast router failover) would take idle nodes
        offline while they wait."""
        if node_id is not None and self.longpoll_heartbeats:
            return min(wait, self.registry.offline_after / HEARTBEATS_PER_OFFLINE_AFTER)
        return wait

    def may_still_hear(self, credential_hash: str, node_id: str | None) -> bool:
        """Whether a node's netmap stream may carry on: the server is not
        stopping, and the credential it opened with (hashed once, as it
        opened) still works: a node removed meanwhile hears nothing more."""
        if self.closing:
            return False
        if node_id is None or self.authority is None:
            return True  # an open server: it never knew who asked
        return self._node_with_credential(credential_hash) == node_id

    def netmap(
        self,
        since: str,
        wait: float,
        node_id: str | None = None,
        public_ip: str | None = None,
        viewer: str | None = None,
        holds_filter: str | None = None,
        holds_dns: str | None = None,
        holds_route_filter: str | None = None,
    ) -> Deferred:
        """Long-poll: changes after ``since``, as soon as there are any.

        ``node_id``, the authenticated caller, is alive: its poll is its
        heartbeat, so it need not also ``POST /register`` every 30 s (one
        connection per node, not two). Seen from an address other than the
        one it registered from (``public_ip``), it still counts, and the
        answer carries ``"register": true``: its endpoint moved, and only a
        registration tells the server (and the node) where it is now.

        The answer carries the words on the caller's pairs: ``node_id``'s,
        or on an open server ``viewer``'s (the node's own say-so; words are
        no secret, and only choose what the answer carries). Its packet
        filter and the mesh's DNS settings come when the digests it holds
        (``holds_filter``, ``holds_dns``) are not the current ones; a node
        that names no DNS digest (a seed node) is never sent them.
        """
        if self.closing:
            # Its waiters were answered when it began to stop: one asking
            # now would wait for a change that never comes.
            raise ServerStopping("this server is stopping; ask another replica or again shortly")
        # A cursor from a replica further along the change stream waits for
        # this one to read as far (LongPollHub.poll).
        cursor = parse_cursor(since, self.registry.changes.epoch)
        moved = False
        wait = self.longpoll_wait(wait, node_id)
        if node_id is not None and self.longpoll_heartbeats:
            record = self.registry.get(node_id)
            if record is not None:
                self.registry.seen(node_id, self.now())
                moved = public_ip is not None and _same_family(public_ip, record.public_ip) != record.public_ip
        who = node_id if node_id is not None else viewer
        if who is not None:
            # What it holds decides whether its answer carries its filter.
            self._filter_held[who] = holds_filter
            self._route_filter_held[who] = holds_route_filter
            self._dns_held[who] = holds_dns
        answer = self.longpolls.poll(cursor, wait, who)
        if moved:
            answer.addCallback(asking_to_register)
        return answer

    def _node_with_key(self, node_id: str, wg_public_key: str, caller: str | None = None):
        """The node a request speaks for: the authenticated caller, or (open
        mode) whoever shows the node's id and public key."""
        if caller is not None and caller != node_id:
            raise Forbidden("a node may only act for itself")
        record = self.registry.get(node_id)
        if record is None or record.wg_public_key != wg_public_key:
            raise UnknownNode(f"no node {node_id} with that key")
        return record

    def leave(self, node_id: str, wg_public_key: str, caller: str | None = None) -> bool:
        """A node going down (``wire down``): offline for everyone at once."""
        self._node_with_key(node_id, wg_public_key, caller)
        return self.registry.mark_offline(node_id)

    async def relay_grant(
        self,
        node_id: str,
        wg_public_key: str,
        peer_node_id: str,
        caller: str | None = None,
        fastpath: bool = False,
        held: bytes | None = None,
        direct: bool = False,
    ) -> RelayGrant:
        """The caller's side of a relay session with ``peer_node_id``, at the pair's home replica."""
        self._node_with_key(node_id, wg_public_key, caller)
        if self.registry.get(peer_node_id) is None:
            raise UnknownNode(f"no node {peer_node_id}")
        if peer_node_id == node_id:
            raise UnknownNode("a node cannot relay to itself")
        if not self.may_see(node_id, peer_node_id):
            raise Forbidden("the access policy does not let these two nodes be peers")
        # A node asks only when it has no live side of the session (see RelayTable.grant).
        return await self._grant_at_home(RelayRequest(node_id, wg_public_key, peer_node_id, fastpath, held, direct), fresh=True)

    async def _grant_at_home(self, asked: RelayRequest, fresh: bool) -> RelayGrant:
        """The grant from the pair's home: this replica's table, or the home's
        over the replicas' call (wire.server.replicacall; HomeUnreachable if it fails)."""
        if not self.replicas.ready:
            self.metrics.relay_grants.labels("failed").inc()
            raise HomeUnreachable("this replica has not read which replicas live yet (it just started); ask again in a second")
        home = self.replicas.home_of(asked.node_id, asked.peer_node_id)
        if home.name == self.replicas.me.name or self.replica_caller is None:
            self.metrics.relay_grants.labels("here").inc()
            return self.grant_here(asked, fresh)
        try:
            grant = await self.replica_caller.relay_grant(home, asked, fresh)
        except HomeUnreachable:
            self.metrics.relay_grants.labels("failed").inc()
            raise
        self.metrics.relay_grants.labels("forwarded").inc()
        return grant

    def grant_here(self, asked: RelayRequest, fresh: bool = True) -> RelayGrant:
        """A side of the pair's session in this replica's relay table (the
        caller checked who asks); a cluster's grant names this relay."""
        grant = self.relay.grant(
            asked.node_id, asked.peer_node_id, self.relay_port, fresh=fresh, fastpath=asked.fastpath, held=asked.held,
            direct=asked.direct,
        )
        if self.replicas.shared:
            me = self.replicas.me
            grant = replace(grant, relay_host=me.relay_host, relay_port=me.relay_port, relay_replica=me.name)
        return grant

    async def punch(self, request: PunchRequest, caller: str | None = None) -> PunchAnswer:
        """The seed's attempt counter; with ``use_relay``, the caller's relay session too."""
        nodes = []
        for address in (request.from_vpn_ip, request.to_vpn_ip):
            record = self.registry.by_vpn_ip(address)
            if record is None:
                raise UnknownNode(f"no node has the VPN address {address}")
            nodes.append(record)
        if caller is not None and nodes[0].node_id != caller:
            raise Forbidden("from_vpn_ip must be the caller's own address")
        answer = self.punches.attempt(request.from_vpn_ip, request.to_vpn_ip, self.now())
        if answer.use_relay and nodes[0].node_id != nodes[1].node_id and self.may_see(nodes[0].node_id, nodes[1].node_id):
            asked = RelayRequest(nodes[0].node_id, nodes[0].wg_public_key, nodes[1].node_id)
            answer = replace(answer, relay=await self._grant_at_home(asked, fresh=False))
        return answer

    async def remove_node(self, record: NodeRecord, event: str = "node.remove") -> int:
        """Out of the mesh now: the registry, the relay, the credential, the
        audit log (``event``), durably once it returns. Returns how many
        relay sessions ended. Refused (StoreError), the node is back as it was,
        credential and all (its sessions come back when it asks)."""
        node_id = record.node_id
        was_online, was_pending = self.registry.is_online(node_id), self.store.is_pending(node_id)
        ephemeral_after = self.registry.ephemeral_after(node_id)
        credential_hash = self.authority.credential_of(node_id) if self.authority is not None else None
        removed = self.registry.remove(node_id)
        ended = self.end_relay_of(node_id)
        self.reports.forget(node_id)
        writes = Writes()
        writes.remove_node(node_id)  # the delete queued by the registry is this transaction's
        if self.authority is not None:
            self.authority.forget_node(writes, node_id)
            self.authority.audit(writes, event, f"node {record.node_name} ({node_id}) {record.vpn_ip}")
        try:
            await self.store.transaction(writes)
        except StoreError:
            if removed is not None and self.registry.get(node_id) is None:
                self.registry.restore(removed, was_online, ephemeral_after)
                if was_pending:
                    self.store.put(removed)  # a change of it was queued: written as before
                if credential_hash is not None and self.authority is not None and self.authority.credential_of(node_id) is None:
                    self.authority.adopt(node_id, credential_hash)
            raise
        return ended

    def end_relay_of(self, node_id: str) -> int:
        """The node is out of the mesh: its relay sessions and streams here
        end (on a cluster, every replica does this when it learns of it).
        Returns how many sessions ended."""
        ended = self.relay.end_sessions_of(node_id)
        self.relay_streams.end_node(node_id)
        return ended

    def sweep(self) -> None:
        # Decided once for the mesh: by the cluster's leader (the others hear it from the stream).
        if self.cluster.leader:
            for record in self.registry.gone_ephemeral(self.now()):
                self._remove_ephemeral(record)
            self.registry.sweep(self.now())
        self.relay.expire()
        if self.paths.tick(self.now(), self._rule):
            self._commit_soon()

    def _remove_ephemeral(self, record: NodeRecord) -> None:
        def failed(failure: Failure) -> None:
            failure.trap(StoreError)
            self.log.warn("ephemeral node {name} not removed yet: {error}", name=record.node_name, error=failure.value)

        Deferred.fromCoroutine(self.remove_node(record, "node.remove.ephemeral")).addErrback(failed)

    def close(self) -> Deferred:
        self.closing = True  # before the waiters are answered: streams end with that answer
        self.longpolls.close()
        return self.store.close()


class MaintenanceService(Service):
    """The coordinator's timers: offline sweeps and batched heartbeat writes."""

    log = Logger()

    def __init__(self, coordinator: Coordinator):
        self._coordinator = coordinator
        self._loops = [
            self._loop(coordinator.sweep, SWEEP_INTERVAL, "offline sweep"),
            self._loop(coordinator.store.flush_touches, TOUCH_FLUSH_INTERVAL, "heartbeat flush"),
            self._loop(coordinator.reports.flush, REPORT_FLUSH_INTERVAL, "node report flush"),
        ]

    def _loop(self, body, interval: float, what: str) -> tuple[LoopingCall, float, str]:
        def failed(failure: Failure) -> None:
            self.log.failure("{what} failed; will try again", failure, what=what)

        def guarded() -> Deferred | None:
            # A raising body (or a failing Deferred) would stop the LoopingCall for good.
            try:
                result = body()
            except Exception:
                self.log.failure("{what} failed; will try again", what=what)
                return None
            return result.addErrback(failed) if isinstance(result, Deferred) else None

        loop = LoopingCall(guarded)
        loop.clock = self._coordinator.clock
        return loop, interval, what

    def startService(self) -> None:
        super().startService()
        # The reactor runs: the store stops waiting for its database.
        self._coordinator.store.serve()
        for loop, interval, _ in self._loops:
            loop.start(interval, now=False)

    def stopService(self):
        for loop, _, _ in self._loops:
            if loop.running:
                loop.stop()
        closed = self._coordinator.close()
        super().stopService()
        return closed


def _same_family(source: str, known: str) -> str:
    """The node's public (IPv4) address: a request that came over IPv6 (the
    server listens on both; a named server's AAAA) keeps the IPv4 one already
    known, which its STUN mapping and its peers' direct paths belong to. Its
    IPv6 underlay address is ``public_ip6``, which the node reports."""
    if ":" in source and known and ":" not in known:
        return known
    return source


class _AddressTakenElsewhere(Exception):
    """An enrollment's address was refused by the database: another replica holds it."""

    def __init__(self, address: str):
        super().__init__(address)
        self.address = address


def _address_in(record: NodeRecord, column: str) -> str:
    """The record's address the database refused as taken ("" if the conflict was on anything else)."""
    if column == "nodes.vpn_ip":
        return record.vpn_ip
    if column == "nodes.vpn_ip6":
        return record.vpn_ip6
    return ""
