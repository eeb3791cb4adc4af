"""The peer diff: the ``wg set`` arguments that turn the interface's peers into the desired ones.

Only what differs is sent, in as few spawns as argv allows (one, for any
netmap of realistic size).
"""

from __future__ import annotations

from collections.abc import Mapping

from wire.node.wireguard.model import PeerConfig, invalid_config, shown_value


# Bytes of argv beyond which one `wg set` is split in several (Linux's limit
# for argv plus environment is a quarter of the stack limit, 2 MiB by
# default); a 1,000-peer netmap is about 110 KB of words, far below.
_MAX_ARGV_BYTES = 1024 * 1024


def peer_arguments(desired: PeerConfig, current: PeerConfig | None, *, known: bool = True) -> list[str]:
    """
    `wg set` words for one peer: only what differs from current (None: a new
    peer, or with known=False one whose settings we cannot tell, so all of
    them are sent); [] when nothing differs.
    """
    if not known:
        current = None
    words: list[str] = []
    if desired.endpoint is not None and (current is None or current.endpoint != desired.endpoint):
        words += ["endpoint", desired.endpoint]
    if current is None or current.allowed_ips != desired.allowed_ips:
        # An empty argument clears the list; wg replaces allowed-ips, never adds.
        words += ["allowed-ips", ",".join(desired.allowed_ips)]
    # A new peer starts with keepalives off.
    if desired.persistent_keepalive != (current.persistent_keepalive if current else 0) or not known:
        words += ["persistent-keepalive", str(desired.persistent_keepalive)]
    if current is not None and not words:
        return []
    return ["peer", desired.public_key, *words]


def diff_peers(
    current: Mapping[str, PeerConfig | None], desired: Mapping[str, PeerConfig]
) -> tuple[list[list[str]], int, int, int]:
    """
    Per-peer `wg set` words turning current into desired, and how many peers
    are (added, changed, removed).  A None in current is a peer present with
    settings we cannot tell.
    """
    groups: list[list[str]] = []
    added = changed = 0
    for key, config in desired.items():
        present = key in current
        words = peer_arguments(config, current.get(key), known=not present or current[key] is not None)
        if words:
            groups.append(words)
            if present:
                changed += 1
            else:
                added += 1
    removed = [key for key in current if key not in desired]
    groups += [["peer", key, "remove"] for key in removed]
    return groups, added, changed, len(removed)


def check_desired(desired: Mapping[str, PeerConfig]) -> dict[str, PeerConfig]:
    checked = {}
    for key, config in desired.items():
        if not isinstance(config, PeerConfig):
            raise invalid_config("peers", f"the peer under {shown_value(key)} is a {type(config).__name__}, not a PeerConfig")
        if key != config.public_key:
            raise invalid_config("peers", f"peer {config.public_key} is listed under another key, {shown_value(key)}")
        checked[key] = config
    return checked


def argv_batches(prefix: list[str], groups: list[list[str]], limit: int = _MAX_ARGV_BYTES) -> list[list[str]]:
    """Pack peer groups into as few argvs as fit (one, short of a huge netmap)."""
    def size(words: list[str]) -> int:
        return sum(len(w) + 1 + 8 for w in words)  # the string, its NUL, its pointer

    batches: list[list[str]] = []
    current, current_size = list(prefix), size(prefix)
    for group in groups:
        if len(current) > len(prefix) and current_size + size(group) > limit:
            batches.append(current)
            current, current_size = list(prefix), size(prefix)
        current += group
        current_size += size(group)
    if len(current) > len(prefix):
        batches.append(current)
    return batches
