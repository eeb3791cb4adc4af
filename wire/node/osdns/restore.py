"""Putting the saved original resolv.conf back: on `wire down`, and on the
next start after a crash.

The original goes back byte for byte when the file still holds what wire
wrote (or wire's mark, or nothing: a crash between truncation and write).
When another program has rewritten it since (DHCP, a person), its content is
newer than wire's original and is left as it is; the save file is then kept
beside it as ``….superseded``, so nothing is lost. The save file is removed
only once the file is the original again.
"""

from __future__ import annotations

import os

from twisted.logger import Logger

from .errors import OsDnsError
from .inplace import read_file, remove_file, write_in_place
from .interface import OsDnsPaths
from .resolvconf import is_managed
from .savefile import SavedOriginal, digest, read_saved

log = Logger()


def holds_wire_content(current: bytes | None, saved: SavedOriginal) -> bool:
    """Whether the file still has what wire wrote (or nothing, after a crash mid-write)."""
    if current is None:
        return True  # deleted by someone: the original is still the best content
    return current == b"" or is_managed(current) or digest(current) == saved.managed_sha256


def restore_original(paths: OsDnsPaths) -> str | None:
    """Undo wire's resolv.conf; a sentence saying what was done, None when
    there was nothing to undo. Raises OsDnsError, leaving the save file."""
    saved = read_saved(paths.save_file)
    if saved is None:
        return None
    target = os.path.realpath(paths.resolv_conf)
    current = read_file(target)
    if target != saved.target:
        outcome = keep_superseded(paths, f"{paths.resolv_conf} now leads to {target}, not {saved.target}; left as it is")
    elif current == saved.original:
        outcome = f"{paths.resolv_conf} already held its original content"
    elif holds_wire_content(current, saved):
        _put_back(target, saved)
        outcome = f"restored the original {paths.resolv_conf}"
    else:
        outcome = keep_superseded(paths, f"{paths.resolv_conf} was rewritten by another program since wire managed it; left as it is")
    remove_file(paths.save_file)
    log.info("resolv.conf: {outcome}", outcome=outcome)
    return outcome


def _put_back(target: str, saved: SavedOriginal) -> None:
    if saved.original is None:
        remove_file(target)
        return
    write_in_place(target, saved.original)
    if read_file(target) != saved.original:
        raise OsDnsError(f"{target} does not read back as the original after restoring it; the save file is kept")


def keep_superseded(paths: OsDnsPaths, outcome: str) -> str:
    """Keep the save file under another name (replacing an older one): its
    original may still matter to a person."""
    kept = paths.save_file + ".superseded"
    try:
        os.replace(paths.save_file, kept)
    except OSError as e:
        raise OsDnsError(f"cannot keep the saved original as {kept}: {e.strerror}") from None
    return f"{outcome} (the original wire saved is in {kept})"
