"""The server's access policy: the one in force, its history, and the index
that answers "what may reach this node" for every node, kept in step with
the registry.

A policy is set only whole and only valid: it parses, names only nodes,
tags and hosts that exist (or tags a join key hands out), and every entry
under its ``tests`` holds. Each change is a new version in the registry
database (``policies``), with the text as given, when and by what
(``admin``, ``file PATH``, ``rollback N``, ``clear``); a rollback is a new
version with an old text, so history only grows. Version 0 is "no policy":
everything may reach everything, as before access control existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from wire.policy import DirectoryNode, Policy, PolicyError, PolicyIndex, check_against, parse_policy
from wire.protocol.filter import FilterRule
from wire.server.model import NodeRecord
from wire.server.store import IStore, Writes

# The policy in force changed: a change for the cluster's stream (wire.server.cluster).
POLICY_CHANGE = "policy"
LATEST_POLICY = "SELECT version, text, set_at, source FROM policies ORDER BY version DESC LIMIT 1"
# Writes an audit entry into a transaction's writes (Coordinator.audit).
Audit = Callable[[Writes, str, str], None]

# As the admin socket takes it: one JSON body (wire.protocol.MAX_BODY_BYTES).
MAX_POLICY_BYTES = 64 * 1024


@dataclass(frozen=True)
class PolicyVersion:
    version: int
    text: str | None  # None: no policy
    set_at: float
    source: str

    def as_dict(self, with_text: bool = True) -> dict:
        shown: dict = {"version": self.version, "set_at": self.set_at, "source": self.source, "policy_set": self.text is not None}
        if with_text:
            shown["text"] = self.text
        return shown


def directory_node(record: NodeRecord) -> DirectoryNode:
    # Both mesh addresses: a rule naming the node covers either family.
    addresses = (record.vpn_ip, record.vpn_ip6) if record.vpn_ip6 else record.vpn_ip
    # Its served routes: the policy's rules to those networks are its to enforce (and make peers).
    return DirectoryNode(record.node_id, record.node_name, addresses, frozenset(record.tags), tuple(record.served_routes))


class PolicyBook:
    log = Logger()

    def __init__(
        self,
        store: IStore,
        records: Callable[[], Iterable[NodeRecord]],
        known_tags: Callable[[], Iterable[str]] = lambda: (),
        now: Callable[[], float] = lambda: 0.0,
    ):
        self._store = store
        self._records = records
        self._known_tags = known_tags
        self._now = now
        self._changing = DeferredLock()
        self.current = PolicyVersion(0, None, 0.0, "none")
        # At startup: blocks, before the reactor serves.
        rows = store.read_now(LATEST_POLICY)
        if rows:
            self.current = PolicyVersion(*rows[0])
        # The stored text was valid when set; it must still parse (a newer
        # wire may have written it): else the server refuses to start.
        self.policy: Policy | None = None if self.current.text is None else parse_policy(self.current.text)
        self.index = self._build(self.policy)
        # Called after every change of the policy in force, with the index before it.
        self.listeners: list[Callable[[PolicyIndex], None]] = []

    # -- reading ------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.policy is not None

    def filter_for(self, node_id: str) -> tuple[FilterRule, ...] | None:
        """The packet filter for traffic to ``node_id``; None: no policy."""
        return None if self.policy is None else self.index.filter_for(node_id)

    async def history(self) -> list[PolicyVersion]:
        rows = await self._store.query("SELECT version, text, set_at, source FROM policies ORDER BY version")
        return [PolicyVersion(*row) for row in rows]

    # -- checking and changing --------------------------------------------------

    def check(self, text: str) -> Policy:
        """The policy ``text`` says, if it may be set now; else PolicyError saying why."""
        if len(text.encode()) > MAX_POLICY_BYTES:
            raise PolicyError(f"the policy is larger than {MAX_POLICY_BYTES} bytes")
        policy = parse_policy(text)
        check_against(policy, [directory_node(r) for r in self._records()], self._known_tags())
        return policy

    async def set(self, text: str, source: str, audit: Audit) -> PolicyVersion:
        """Validate and put ``text`` in force as a new version (audited in the same transaction)."""
        policy = self.check(text)
        return await self._put(text, policy, source, audit)

    async def clear(self, audit: Audit) -> PolicyVersion:
        """No policy: everything may reach everything again."""
        return await self._put(None, None, "clear", audit)

    async def rollback(self, version: int, audit: Audit) -> PolicyVersion:
        """Version ``version``'s text in force again, as a new version (checked against today's nodes)."""
        rows = await self._store.query("SELECT version, text, set_at, source FROM policies WHERE version = ?", (version,))
        if not rows:
            raise LookupError(f"no policy version {version} (see: wire admin policy history)")
        old = PolicyVersion(*rows[0])
        policy = None if old.text is None else self.check(old.text)
        return await self._put(old.text, policy, f"rollback {version}", audit)

    async def _put(self, text: str | None, policy: Policy | None, source: str, audit: Audit) -> PolicyVersion:
        # One version at a time (a SIGHUP reload and `wire admin policy set`
        # together): each numbered after the one before it.
        async with self._changing:
            version = PolicyVersion(self.current.version + 1, text, self._now(), source)
            writes = Writes()
            writes.execute(
                "INSERT INTO policies (version, text, set_at, source) VALUES (?, ?, ?, ?)",
                (version.version, version.text, version.set_at, version.source),
            )
            audit(writes, "policy.set" if text is not None else "policy.clear", f"version {version.version} ({source}), was {self.current.version}")
            writes.change(POLICY_CHANGE, str(version.version))
            await self._store.transaction(writes)
            self._in_force(version, policy)
            return version

    def adopt(self, row: tuple) -> None:
        """The version another replica put in force (wire.server.cluster), as stored."""
        version = PolicyVersion(*row)
        if version.version <= self.current.version:
            return
        try:
            policy = None if version.text is None else parse_policy(version.text)
        except PolicyError as e:
            # Written by a newer wire: this replica keeps the one it has.
            self.log.error("access policy version {version} cannot be read here: {error}", version=version.version, error=e)
            return
        self._in_force(version, policy)

    def _in_force(self, version: PolicyVersion, policy: Policy | None) -> None:
        before = self.index
        self.current, self.policy = version, policy
        self.index = self._build(policy)
        self.log.info("access policy version {version} in force ({source})", version=version.version, source=version.source)
        for listener in self.listeners:
            listener(before)

    # -- in step with the registry --------------------------------------------------

    def node_changed(self, record: NodeRecord | None, node_id: str) -> None:
        """A node came, changed (name, address, tags) or went: the index follows
        (without a policy too: its open index still answers who sees whom)."""
        if record is None:
            self.index = self.index.without_node(node_id)
        else:
            node = directory_node(record)
            if self.index.node(node_id) != node:
                self.index = self.index.with_node(node)

    def _build(self, policy: Policy | None) -> PolicyIndex:
        return PolicyIndex(policy, [directory_node(r) for r in self._records()])
