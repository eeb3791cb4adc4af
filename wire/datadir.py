"""The coordination server's data dir as both sides see it: where it is by
default, and where its admin socket lives in it.

The server (which creates the socket) and ``wire admin`` (which connects to
it) both import this, so neither needs the other's internals.
"""

from __future__ import annotations

import os

DEFAULT_DATA_DIR = "/var/lib/wire"
ADMIN_SOCKET = "admin.sock"


def default_data_dir() -> str:
    """``$WIRE_DATA_DIR``, else /var/lib/wire."""
    return os.environ.get("WIRE_DATA_DIR") or DEFAULT_DATA_DIR


def admin_socket_path(data_dir: str) -> str:
    return os.path.join(data_dir, ADMIN_SOCKET)
