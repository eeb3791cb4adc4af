"""WireGuard X25519 keys: generated in-process, stored 0600, shown as base64."""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wire.fsutil import write_atomically
from wire.protocol import ProtocolError, parse_wg_public_key

PRIVATE_KEY_FILE = "private.key"
PUBLIC_KEY_FILE = "public.key"


class KeyFileError(Exception):
    """A key file exists but cannot be used; the message names it."""


def generate_private_key() -> str:
    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def public_key_for(private_key: str) -> str:
    raw = base64.b64decode(private_key)
    public = X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def load_or_create_keys(config_dir: str) -> tuple[str, str]:
    """(private, public) for this node; created once, then reused."""
    private_path = os.path.join(config_dir, PRIVATE_KEY_FILE)
    public_path = os.path.join(config_dir, PUBLIC_KEY_FILE)
    if os.path.exists(private_path):
        private = _read_private_key(private_path)
    else:
        private = generate_private_key()
        write_atomically(private_path, private.encode() + b"\n", mode=0o600)
    public = public_key_for(private)
    # The public file is a convenience copy; keep it in step with the private key.
    try:
        with open(public_path) as f:
            current = f.read().strip()
    except OSError:
        current = None
    if current != public:
        write_atomically(public_path, public.encode() + b"\n", mode=0o644)
    return private, public


def _read_private_key(path: str) -> str:
    try:
        mode = os.stat(path).st_mode & 0o777
        with open(path) as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read the private key {path}: {e}")
    if mode & 0o077:
        os.chmod(path, 0o600)
    try:
        # Same shape as a public key: base64 of 32 bytes.
        parse_wg_public_key(text, field=path)
    except ProtocolError:
        raise KeyFileError(
            f"{path} is not a WireGuard private key (base64 of 32 bytes); "
            "restore it from a backup, or remove it to make this node a new identity"
        )
    return text
