"""One TLS identity for every replica: the self-signed pair kept in the database.

Nodes pin the server certificate's fingerprint (it comes in the join
token), so every replica of a mesh must present the same certificate. Given
``--tls-cert/--tls-key``, each replica serves those. Without them, a server
on PostgreSQL keeps its self-signed pair in the database (``meta``): the
first replica to start stores the pair of its data dir (made there if there
is none); every later one adopts the stored pair into its own data dir (the
key 0600, written atomically). A data dir holding another pair, made by an
earlier run on its own, is refused rather than replaced: nodes may pin it.
The database holds the mesh's private key then, beside its credentials'
hashes: access to it is access to the mesh.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred

from wire.fsutil import write_atomically
from wire.server.dbthread import result_now
from wire.server.store import IStore, Writes
from wire.tls import CERT_FILE, KEY_FILE, ensure_self_signed, fingerprint_of_pem

CERT_META, KEY_META = "tls_cert_pem", "tls_key_pem"


class SharedIdentityError(Exception):
    """The data dir's certificate is not the one the mesh's replicas share."""


def shared_self_signed(store: IStore, data_dir: str) -> tuple[str, str]:
    """The certificate and key paths in ``data_dir``: the pair the database
    holds, or this data dir's, stored for the other replicas. Startup only
    (the store answers at once before the reactor serves)."""
    cert_path, key_path = os.path.join(data_dir, CERT_FILE), os.path.join(data_dir, KEY_FILE)
    had_own = os.path.exists(cert_path) and os.path.exists(key_path)
    stored = _stored(store)
    if stored is None:
        ensure_self_signed(data_dir)
        own = _read(cert_path), _read(key_path)
        _offer(store, *own)
        stored = _stored(store)
        if stored is None:
            raise SharedIdentityError("the certificate offered to the database was not kept there")
        if stored == own:
            return cert_path, key_path
        # Another replica starting at the same time stored its pair first.
    if had_own and (_read(cert_path), _read(key_path)) != stored:
        raise SharedIdentityError(
            f"{cert_path} (fingerprint {fingerprint_of_pem(_read(cert_path))}) is not the certificate this mesh's "
            f"replicas share (fingerprint {fingerprint_of_pem(stored[0])}, in the database): nodes may pin either. "
            f"Move {cert_path} and {key_path} away to use the shared one, or give every replica --tls-cert/--tls-key"
        )
    write_atomically(key_path, stored[1], mode=0o600)
    write_atomically(cert_path, stored[0], mode=0o644)
    return cert_path, key_path


def _stored(store: IStore) -> tuple[bytes, bytes] | None:
    cert, key = store.read_meta(CERT_META), store.read_meta(KEY_META)
    if not cert or not key:
        return None
    return cert.encode(), key.encode()


def _offer(store: IStore, cert: bytes, key: bytes) -> None:
    """Store the pair unless a replica starting at the same time stored one
    first (one transaction: both rows or neither)."""
    writes = Writes()
    for name, value in ((CERT_META, cert), (KEY_META, key)):
        writes.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (name, value.decode()))
    done: Deferred = store.transaction(writes)
    result_now(done)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
