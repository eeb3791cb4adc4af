"""What the node tells its user when the server will not have it: a join
token needed, the node removed by the admin, a rename that is the admin's.
One wording each, for the daemon's reasons and every view's (wire.ops)."""

from __future__ import annotations

NEEDS_TOKEN = (
    "this server needs a join token: get one with 'wire admin keys create' on the server, then run: wire up --join TOKEN"
)
# A 401 to this node's own credential: the admin removed it (or revoked it).
# The one wording, the daemon's reason and every view's (wire.ops.context).
REMOVED = (
    "the server no longer accepts this node: it was removed from the mesh by the admin "
    "(or its credential was revoked)"
)
REJOIN = "to join again: get a new join key ('wire admin keys create' on the server) and run: sudo wire up --join TOKEN"
RENAME_IS_ADMINS = (
    "on this server renames are the admin's: ask them to run 'wire admin nodes rename {old} {new}' on the server"
)


def removed_message() -> str:
    return f"{REMOVED}; {REJOIN}"
