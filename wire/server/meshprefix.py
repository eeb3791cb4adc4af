"""The mesh's IPv6 prefix: drawn once, kept in the registry database.

A server's first start draws a random /48 (RFC 4193: ``fd`` and a 40-bit
global ID) and keeps it in the store's ``meta`` table, beside the node
addresses taken from it: one file holds both, so a backup or a move of the
data dir can never pair nodes with another prefix than theirs. A
``--subnet6`` puts another prefix in force, and it is kept too: dropping the
option later does not renumber the mesh. Nodes whose address lies outside
the prefix in force get a new one as the registry loads (Registry.load).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Callable

from wire.addressing import parse_subnet6, random_ula_prefix
from wire.protocol import ProtocolError
from wire.server.store import IStore, StoreError

SUBNET6_KEY = "subnet6"


@dataclass(frozen=True)
class MeshPrefix:
    network: ipaddress.IPv6Network
    # The prefix kept before, when this one replaced it (--subnet6 changed).
    replaced: ipaddress.IPv6Network | None = None
    # Drawn at this start (the server had none).
    drawn: bool = False


def mesh_prefix6(
    store: IStore, given: ipaddress.IPv6Network | None, random_bytes: Callable[[int], bytes] = os.urandom
) -> MeshPrefix:
    """The prefix in force: ``given`` (--subnet6), else the one kept, else a
    new one; whichever it is, kept (queued: the caller writes the store's
    pending changes before serving). At startup: blocks."""
    kept_text = store.read_meta(SUBNET6_KEY)
    kept = None
    if kept_text is not None:
        try:
            kept = parse_subnet6(kept_text)
        except ProtocolError as e:
            if given is None:
                raise StoreError(
                    f"the mesh's IPv6 prefix kept in the registry is unusable ({e.problem}); "
                    "give one with --subnet6 (nodes get addresses from it)"
                )
    if given is None and kept is not None:
        return MeshPrefix(kept)
    network = given if given is not None else random_ula_prefix(random_bytes)
    if network != kept:
        store.put_meta(SUBNET6_KEY, str(network))
    return MeshPrefix(network, replaced=kept if kept != network else None, drawn=given is None)
