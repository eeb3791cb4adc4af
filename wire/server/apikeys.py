"""Admin API keys: who may use the remote admin API (``/api/v1``, wire.server.adminapi).

A key is made on the server's machine (``wire admin apikeys create``, over
the admin socket) and shown once, as ``wire_ak_<id>_<secret>``: 48 bits of
id to find it by, 256 bits of secret. The server keeps only the secret's
SHA-256 hash (wire.server.auth.hash_secret), like join keys and node
credentials, and compares it in constant time. Every key expires (90 days
unless told otherwise, a year at most), may be read-only (GET only), and
stops working the moment it is revoked. Its last use is kept, written at
most once a minute so a busy script does not cost an fsync per request.

Keys live in ``api_keys`` (schema 12); a key made or revoked on one replica
reaches the others through the change stream (``API_KEY_CHANGE``).
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wire.server.auth import AuthError, hash_secret, revoke_durably, utc
from wire.server.store import IStore, StoreError, Writes

# A key's row changed (made, revoked): a change for the cluster's stream (wire.server.cluster).
API_KEY_CHANGE = "apikey"
API_KEY_COLUMNS = "key_id, secret_hash, name, created, expires, read_only, revoked, last_used"
PREFIX = "wire_ak_"
ID_BYTES = 6
SECRET_BYTES = 32
_TOKEN = re.compile(r"^wire_ak_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
DEFAULT_EXPIRY = 90 * 86400.0
MAX_EXPIRY = 365 * 86400.0
MAX_NAME = 64
# How stale a key's stored last use may be: one write a minute per key at most.
LAST_USED_EVERY = 60.0

MALFORMED = "malformed API key: expected wire_ak_<id>_<secret> (from wire admin apikeys create)"


@dataclass
class ApiKey:
    key_id: str
    secret_hash: str
    name: str
    created: float
    expires: float
    read_only: bool
    revoked: bool
    last_used: float = 0.0  # 0: never used

    def unusable_because(self, now: float) -> str | None:
        if self.revoked:
            return f"API key {self.key_id} was revoked"
        if now >= self.expires:
            return f"API key {self.key_id} has expired"
        return None

    def as_dict(self, now: float) -> dict:
        problem = self.unusable_because(now)
        return {
            "key_id": self.key_id,
            "name": self.name,
            "created": self.created,
            "created_at": utc(self.created),
            "expires": self.expires,
            "expires_at": utc(self.expires),
            "read_only": self.read_only,
            "revoked": self.revoked,
            "state": "revoked" if self.revoked else "expired" if problem else "usable",
            "last_used": self.last_used or None,
            "last_used_at": utc(self.last_used) if self.last_used else None,
        }


def parse_api_key_name(value: object) -> str:
    """A key's name: up to 64 printable characters (it is shown in listings)."""
    if not isinstance(value, str) or len(value) > MAX_NAME or not value.isprintable():
        raise ValueError(f"name: up to {MAX_NAME} printable characters")
    return value


class ApiKeys:
    """Every admin API key, in memory (loaded at startup), and their rows."""

    log = Logger()

    def __init__(self, store: IStore, clock: IReactorTime, audit):
        """``audit(writes, event, detail)`` writes an audit entry (Authority.audit)."""
        self._store = store
        self._clock = clock
        self._audit = audit
        self._keys: dict[str, ApiKey] = {}
        self._written_use: dict[str, float] = {}
        # At startup: blocks, before the reactor serves.
        for row in store.read_now(f"SELECT {API_KEY_COLUMNS} FROM api_keys"):
            self.adopt(row)

    def adopt(self, row: tuple) -> None:
        """A key as stored: at startup, or made or revoked by another replica (wire.server.cluster)."""
        key = ApiKey(row[0], row[1], row[2], row[3], row[4], bool(row[5]), bool(row[6]), row[7])
        known = self._keys.get(key.key_id)
        if known is not None:
            key.last_used = max(key.last_used, known.last_used)
        self._keys[key.key_id] = key
        self._written_use.setdefault(key.key_id, key.last_used)

    async def refresh(self) -> None:
        """Every key as the database has it: for a listing, with the last use
        other replicas wrote (a use changes no row's stream: it is no change)."""
        for row in await self._store.query(f"SELECT {API_KEY_COLUMNS} FROM api_keys"):
            self.adopt(row)

    async def reread(self, key_ids: list[str]) -> None:
        """These keys as the database has them now (another replica changed them)."""
        for key_id in key_ids:
            for row in await self._store.query(f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)):
                self.adopt(row)

    async def create(self, name: str = "", expires_in: float = DEFAULT_EXPIRY, read_only: bool = False) -> tuple[ApiKey, str]:
        """A new key and its token (shown once, never stored)."""
        if not 0 < expires_in <= MAX_EXPIRY:
            raise ValueError(f"expires_in: from 1 s to {MAX_EXPIRY / 86400:.0f} days")
        now = self._clock.seconds()
        key_id, secret = secrets.token_hex(ID_BYTES), secrets.token_urlsafe(SECRET_BYTES)
        key = ApiKey(key_id, hash_secret(secret), parse_api_key_name(name), now, now + expires_in, read_only, False)
        writes = Writes()
        writes.execute(
            f"INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key.key_id, key.secret_hash, key.name, key.created, key.expires, int(read_only), 0, 0.0),
        )
        self._audit(writes, "apikey.create", f"API key {key_id} {key.name!r} {'read-only' if read_only else 'read-write'}, expires {utc(key.expires)}")
        writes.change(API_KEY_CHANGE, key_id)
        await self._store.transaction(writes)
        self._keys[key_id] = key
        self._written_use[key_id] = 0.0
        return key, f"{PREFIX}{key_id}_{secret}"

    def keys(self) -> list[ApiKey]:
        return sorted(self._keys.values(), key=lambda k: (k.created, k.key_id))

    async def revoke(self, key_id: str) -> ApiKey:
        key = self._keys.get(key_id)
        if key is None:
            raise KeyError(f"no API key {key_id} (see: wire admin apikeys list)")
        await revoke_durably(
            self._store, key, "api_keys", API_KEY_CHANGE, lambda writes: self._audit(writes, "apikey.revoke", f"API key {key_id} {key.name!r}")
        )
        return key

    def check(self, token: str) -> ApiKey:
        """The key ``token`` is, if it may be used now; else AuthError saying why."""
        match = _TOKEN.match(token)
        if match is None:
            raise AuthError(MALFORMED)
        key_id, secret = match.groups()
        key = self._keys.get(key_id)
        # Constant time: the hash is compared whole, whatever its first bytes.
        if key is None or not hmac.compare_digest(key.secret_hash, hash_secret(secret)):
            raise AuthError("unknown API key")
        now = self._clock.seconds()
        problem = key.unusable_because(now)
        if problem:
            raise AuthError(problem)
        key.last_used = now
        if now - self._written_use.get(key_id, 0.0) >= LAST_USED_EVERY:
            self._write_use(key)
        return key

    def _write_use(self, key: ApiKey) -> None:
        self._written_use[key.key_id] = key.last_used
        writes = Writes()
        writes.execute("UPDATE api_keys SET last_used = ? WHERE key_id = ? AND last_used < ?", (key.last_used, key.key_id, key.last_used))
        d = self._store.transaction(writes)

        def failed(failure):
            failure.trap(StoreError)
            self._written_use[key.key_id] = 0.0  # written again on its next use
            self.log.warn("API key {key_id}: its last use was not saved: {error}", key_id=key.key_id, error=failure.value)

        d.addErrback(failed)
