"""The original resolv.conf, saved in the node's state dir before wire changes it.

One JSON file written atomically (mode 0600): the path and the file it
resolved to, whether it existed, its exact bytes (base64), and the digest of
the content wire is about to write in its place, so that a later run can tell
wire's content from another program's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass

from wire.fsutil import write_atomically

from .errors import OsDnsError

FORMAT = 1
# resolv.conf is a few hundred bytes; a save file far larger is not ours.
MAX_SAVE_FILE = 1 << 20


@dataclass(frozen=True)
class SavedOriginal:
    path: str  # /etc/resolv.conf as configured
    target: str  # the file it resolved to (itself, or a symlink's target)
    original: bytes | None  # None: there was no file
    managed_sha256: str  # of the content wire wrote


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_saved(save_file: str, saved: SavedOriginal) -> None:
    """Save it atomically (mode 0600), or raise OsDnsError."""
    body = {
        "format": FORMAT,
        "path": saved.path,
        "target": saved.target,
        "existed": saved.original is not None,
        "original": base64.b64encode(saved.original or b"").decode("ascii"),
        "original_sha256": digest(saved.original or b""),
        "managed_sha256": saved.managed_sha256,
    }
    try:
        os.makedirs(os.path.dirname(os.path.abspath(save_file)), mode=0o700, exist_ok=True)
        write_atomically(save_file, (json.dumps(body, indent=1) + "\n").encode(), mode=0o600)
    except OSError as e:
        raise OsDnsError(f"cannot save the original resolv.conf to {save_file}: {e.strerror or e}; resolv.conf is unchanged") from None


def read_saved(save_file: str) -> SavedOriginal | None:
    """The saved original, None when there is no save file; OsDnsError when
    it cannot be trusted (the file is then left where it is, for a person)."""
    try:
        with open(save_file, "rb") as f:
            data = f.read(MAX_SAVE_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise OsDnsError(f"cannot read the saved original resolv.conf {save_file}: {e.strerror}") from None
    try:
        return _parsed(data)
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        why = f"it lacks {e}" if isinstance(e, KeyError) else str(e)
        raise OsDnsError(
            f"the saved original resolv.conf {save_file} is corrupt ({why}); wire leaves it and resolv.conf "
            "as they are: restore resolv.conf by hand, then remove the save file"
        ) from None


def _parsed(data: bytes) -> SavedOriginal:
    if len(data) > MAX_SAVE_FILE:
        raise ValueError("it is too large")
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ValueError("it is not in wire's format")
    path, target, existed, managed = body["path"], body["target"], body["existed"], body["managed_sha256"]
    if not all(isinstance(v, str) for v in (path, target, managed)) or not isinstance(existed, bool):
        raise ValueError("a field has the wrong type")
    original = base64.b64decode(body["original"], validate=True)
    if digest(original) != body["original_sha256"]:
        raise ValueError("its content does not match its digest")
    return SavedOriginal(path, target, original if existed else None, managed)
