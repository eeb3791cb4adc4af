"""Who may join and who is who: join keys, node credentials, the audit log.

A join key is created by the admin (one-time by default, or reusable, with
an optional expiry) and handed to a new node inside a join token. Enrolling
with it gives the node a credential: a random secret it sends with every
later request. The server keeps only SHA-256 hashes of both secrets, so its
database does not let anyone join or impersonate a node. Every enrollment,
removal and key operation is written to the audit log.
"""

from __future__ import annotations

import contextvars
import datetime
import enum
import hashlib
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wire.server.store import IStore, Writes

SECRET_BYTES = 32
# A join key's row changed (made, used, revoked): a change for the cluster's stream (wire.server.cluster).
KEY_CHANGE = "key"
KEY_COLUMNS = "key_id, secret_hash, created, expires, reusable, uses, revoked, note, tags, ephemeral_after"

# Who an audit entry is by: the admin operation's caller ("admin" over the
# socket, "apikey:ID" over /api/v1), for every entry written while it runs,
# however deep (the coordinator's, the policy's, the DNS book's). A context
# variable, so concurrent requests each keep their own; "" is the server itself.
ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("wire_audit_actor", default="")


@contextmanager
def acting_as(actor: str):
    """Audit entries written inside are ``actor``'s (a coroutine started
    inside keeps it across its awaits: Deferred.fromCoroutine copies the context)."""
    token = ACTOR.set(actor)
    try:
        yield
    finally:
        ACTOR.reset(token)


@dataclass(frozen=True)
class Caller:
    """Who makes an admin request (wire.server.adminapi): their name in the
    audit log, and whether they may only GET."""

    actor: str
    read_only: bool


class AuthError(Exception):
    """Authentication failed (HTTP 401); ``str()`` is safe to return to the client."""

    status = 401


class Forbidden(AuthError):
    """Authenticated, but not allowed to do this (HTTP 403)."""

    status = 403


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class JoinKey:
    key_id: str
    secret_hash: str
    created: float
    expires: float  # 0: never
    reusable: bool
    uses: int
    revoked: bool
    note: str
    # Given to every node the key enrolls; ephemeral_after > 0: such a node is
    # removed once offline that long (CI runners, containers).
    tags: tuple[str, ...] = ()
    ephemeral_after: float = 0.0

    def state(self, now: float) -> KeyState:
        """The one place that decides whether a key still lets a node join."""
        if self.revoked:
            return KeyState.REVOKED
        if self.expires and now >= self.expires:
            return KeyState.EXPIRED
        if not self.reusable and self.uses > 0:
            return KeyState.SPENT
        return KeyState.USABLE

    def unusable_because(self, now: float) -> str | None:
        return _UNUSABLE_BECAUSE.get(self.state(now))

    def as_dict(self, now: float) -> dict:
        state = self.state(now)
        return {
            "key_id": self.key_id,
            "created": self.created,
            "expires": self.expires or None,
            "reusable": self.reusable,
            "uses": self.uses,
            "revoked": self.revoked,
            "usable": state is KeyState.USABLE,
            "state": state.value,
            "created_at": utc(self.created),
            "expires_at": utc(self.expires) if self.expires else None,
            "note": self.note,
            "tags": list(self.tags),
            "ephemeral": bool(self.ephemeral_after),
            "ephemeral_after": self.ephemeral_after or None,
        }


class KeyState(enum.Enum):
    USABLE = "usable"
    SPENT = "spent"  # a one-time key that a node has joined with
    REVOKED = "revoked"
    EXPIRED = "expired"


_UNUSABLE_BECAUSE = {
    KeyState.REVOKED: "this join key was revoked",
    KeyState.EXPIRED: "this join key has expired",
    KeyState.SPENT: "this join key was already used (it is one-time)",
}


def utc(at: float) -> str:
    """ISO 8601 in UTC, for readers of --json that do not want epoch seconds."""
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


async def revoke_durably(store: Any, key: Any, table: str, change: str, audit: Callable[[Writes], None]) -> None:
    """A key (join or admin API: ``table``) revoked durably, audited and told
    to the other replicas (``change``). Refused here at once: what arrives
    while it is written is not let in; if the write is refused, it is as it was."""
    writes = Writes()
    writes.execute(f"UPDATE {table} SET revoked = 1 WHERE key_id = ?", (key.key_id,))
    audit(writes)
    writes.change(change, key.key_id)
    was_revoked, key.revoked = key.revoked, True
    try:
        await store.transaction(writes)
    except BaseException:
        key.revoked = was_revoked
        raise


class Authority:
    log = Logger()

    def __init__(self, store: IStore, clock: IReactorTime):
        self._store = store
        self._clock = clock
        self._keys: dict[str, JoinKey] = {}
        self._key_by_hash: dict[str, str] = {}
        self._node_by_credential: dict[str, str] = {}
        self._credential_of_node: dict[str, str] = {}
        self._load()
        from wire.server.apikeys import ApiKeys  # here: it imports this module's hashing and errors

        self.api_keys = ApiKeys(store, clock, self._audit)

    def _load(self) -> None:
        # At startup: blocks, before the reactor serves.
        for row in self._store.read_now(f"SELECT {KEY_COLUMNS} FROM join_keys"):
            self.adopt_key(row)
        for credential_hash, node_id in self._store.read_now("SELECT credential_hash, node_id FROM credentials"):
            self._node_by_credential[credential_hash] = node_id
            self._credential_of_node[node_id] = credential_hash

    # -- join keys ---------------------------------------------------------

    def adopt_key(self, row: tuple) -> None:
        """A join key as stored (KEY_COLUMNS): at startup, or changed by another replica (wire.server.cluster)."""
        key = JoinKey(row[0], row[1], row[2], row[3], bool(row[4]), row[5], bool(row[6]), row[7], tuple(row[8].split()), row[9])
        self._keys[key.key_id] = key
        self._key_by_hash[key.secret_hash] = key.key_id

    async def create_key(
        self,
        reusable: bool = False,
        expires_in: float | None = None,
        note: str = "",
        tags: tuple[str, ...] = (),
        ephemeral_after: float = 0.0,
    ) -> tuple[JoinKey, str]:
        """A new join key and its secret (shown once, never stored); ``tags``
        already validated (wire.protocol.parse_tags)."""
        now = self._clock.seconds()
        secret = secrets.token_urlsafe(SECRET_BYTES)
        key = JoinKey(
            key_id=secrets.token_hex(4),
            secret_hash=hash_secret(secret),
            created=now,
            expires=now + expires_in if expires_in else 0.0,
            reusable=reusable,
            uses=0,
            revoked=False,
            note=note[:200],
            tags=tags,
            ephemeral_after=ephemeral_after,
        )
        writes = Writes()
        writes.execute(
            "INSERT INTO join_keys (key_id, secret_hash, created, expires, reusable, uses, revoked, note, tags, "
            "ephemeral_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key.key_id, key.secret_hash, key.created, key.expires, int(key.reusable), 0, 0, key.note, " ".join(tags), ephemeral_after),
        )
        extras = (f" tags={','.join(tags)}" if tags else "") + (f" ephemeral_after={ephemeral_after:g}s" if ephemeral_after else "")
        self._audit(writes, "key.create", f"key {key.key_id} reusable={reusable} expires_in={expires_in or 'never'}{extras}")
        writes.change(KEY_CHANGE, key.key_id)
        await self._store.transaction(writes)
        self._keys[key.key_id] = key
        self._key_by_hash[key.secret_hash] = key.key_id
        return key, secret

    def keys(self) -> list[JoinKey]:
        return sorted(self._keys.values(), key=lambda k: k.created)

    async def revoke_key(self, key_id: str) -> JoinKey:
        key = self._keys.get(key_id)
        if key is None:
            raise KeyError(f"no join key {key_id}")
        await revoke_durably(self._store, key, "join_keys", KEY_CHANGE, lambda writes: self._audit(writes, "key.revoke", f"key {key_id}"))
        return key

    def check_join_key(self, secret: str) -> JoinKey:
        key_id = self._key_by_hash.get(hash_secret(secret))
        if key_id is None:
            raise AuthError("unknown join key")
        key = self._keys[key_id]
        problem = key.unusable_because(self._clock.seconds())
        if problem:
            raise AuthError(problem)
        return key

    # -- credentials -------------------------------------------------------

    def node_for(self, credential: str) -> str | None:
        return self.node_for_hash(hash_secret(credential))

    def node_for_hash(self, credential_hash: str) -> str | None:
        """``node_for`` of a credential already hashed (one kept to check again)."""
        return self._node_by_credential.get(credential_hash)

    def ephemeral_nodes(self) -> dict[str, float]:
        """node id -> how long it may stay offline, for nodes enrolled with an
        ephemeral key (at startup: blocks, before the reactor serves)."""
        rows = self._store.read_now(
            "SELECT credentials.node_id, join_keys.ephemeral_after FROM credentials "
            "JOIN join_keys ON join_keys.key_id = credentials.key_id WHERE join_keys.ephemeral_after > 0"
        )
        return {node_id: after for node_id, after in rows}

    def record_enrollment(self, db: Writes, node_id: str, node_name: str, key: JoinKey) -> tuple[str, str]:
        """Inside the enrollment's transaction: use the key, issue a credential.
        The use counts in memory from now on (a one-time key lets no second
        enrollment in while this one is written); ``enrollment_refused`` gives it back."""
        key.uses += 1
        credential = secrets.token_urlsafe(SECRET_BYTES)
        credential_hash = hash_secret(credential)
        db.execute("DELETE FROM credentials WHERE node_id = ?", (node_id,))
        db.execute(
            "INSERT INTO credentials VALUES (?, ?, ?, ?)", (credential_hash, node_id, self._clock.seconds(), key.key_id)
        )
        db.execute("UPDATE join_keys SET uses = uses + 1 WHERE key_id = ?", (key.key_id,))
        db.change(KEY_CHANGE, key.key_id)  # a one-time key is used up on every replica
        self._audit(db, "node.enroll", f"node {node_name} ({node_id}) with key {key.key_id}")
        return credential_hash, credential

    def enrolled(self, node_id: str, credential_hash: str, key: JoinKey) -> None:
        """After the transaction committed: the in-memory side (the key's use is counted already)."""
        self.adopt(node_id, credential_hash)

    def enrollment_refused(self, key: JoinKey) -> None:
        """The enrollment's transaction failed: its use of the key is given back."""
        key.uses = max(0, key.uses - 1)

    async def reread_key(self, key_id: str) -> JoinKey | None:
        """The key as the database has it now (another replica may have used or revoked it)."""
        rows = await self._store.query(f"SELECT {KEY_COLUMNS} FROM join_keys WHERE key_id = ?", (key_id,))
        if not rows:
            return None
        self.adopt_key(rows[0])
        return self._keys[key_id]

    def adopt(self, node_id: str, credential_hash: str) -> None:
        """A node's credential, as stored (one another replica issued: wire.server.cluster)."""
        old = self._credential_of_node.pop(node_id, None)
        if old is not None:
            self._node_by_credential.pop(old, None)
        self._node_by_credential[credential_hash] = node_id
        self._credential_of_node[node_id] = credential_hash

    def forget_node(self, db: Writes, node_id: str) -> None:
        """Inside a transaction: the node's credential stops working."""
        db.execute("DELETE FROM credentials WHERE node_id = ?", (node_id,))
        self.forgotten(node_id)

    def forgotten(self, node_id: str) -> None:
        """The node's credential stops working here (its row is gone already)."""
        credential_hash = self._credential_of_node.pop(node_id, None)
        if credential_hash is not None:
            self._node_by_credential.pop(credential_hash, None)

    def credential_of(self, node_id: str) -> str | None:
        """The hash of the node's credential, if it has one here."""
        return self._credential_of_node.get(node_id)

    # -- audit -------------------------------------------------------------

    def _audit(self, db: Writes, event: str, detail: str) -> None:
        actor = ACTOR.get()
        db.execute("INSERT INTO audit (at, event, detail, actor) VALUES (?, ?, ?, ?)", (self._clock.seconds(), event, detail, actor))
        self.log.info("audit: {event} {detail}" + (" (by {actor})" if actor else ""), event=event, detail=detail, actor=actor)

    def audit(self, db: Writes, event: str, detail: str) -> None:
        self._audit(db, event, detail)

    async def audit_log(self, limit: int = 100) -> list[dict]:
        rows = await self._store.query("SELECT at, event, detail, actor FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [{"at": at, "event": event, "detail": detail, "actor": actor or None} for at, event, detail, actor in rows]

