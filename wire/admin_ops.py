"""The server admin's operations (``wire admin``), over the admin socket.

They talk to a running ``wire-server`` through the UNIX socket in its data
dir, which only root (or the server's own user) can open.
"""

from __future__ import annotations

import os
import re
from typing import Any

from wire.client import AdminClient, ServerError, ServerUnreachable
from wire.datadir import admin_socket_path

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# How long a node enrolled with an --ephemeral key may stay offline.
DEFAULT_EPHEMERAL_AFTER = 1800.0


class AdminError(Exception):
    pass


class DurationError(ValueError):
    """Not a duration ``parse_duration`` accepts; ``str()`` says why."""


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` → seconds. The unit is required:
    a bare ``5`` once meant 5 seconds, which nobody who typed it wanted."""
    match = _DURATION.match(text.strip().lower())
    units = ", ".join(UNITS)
    if not match:
        raise DurationError(f"{text!r} is not a duration like 30m, 24h or 7d (units: {units})")
    number, unit = match.groups()
    if not unit:
        raise DurationError(f"{text!r} needs a unit ({units}), e.g. {number}m, {number}h or {number}d")
    if unit not in UNITS:
        raise DurationError(f"unknown unit {unit!r} in {text!r} (units: {units})")
    if float(number) <= 0:
        raise DurationError(f"{text!r} must be longer than zero")
    return float(number) * UNITS[unit]


class AdminOps:
    def __init__(self, reactor, data_dir: str):
        self.socket = admin_socket_path(os.path.abspath(data_dir))
        self._client = AdminClient(reactor, self.socket)

    async def _call(self, request) -> dict:
        if not os.path.exists(self.socket):
            request.close()
            # As another user the data dir may hide the socket: say so. Root sees it.
            hint = "" if os.geteuid() == 0 else " The socket is root-only: use sudo"
            raise AdminError(
                f"no admin socket at {self.socket}: is wire-server running with this --data-dir "
                f"(and without --open)?{hint}"
            )
        if not os.access(self.socket, os.R_OK | os.W_OK):
            request.close()
            raise AdminError(f"permission denied on {self.socket}: the admin socket is root-only; run as root (sudo wire admin ...)")
        try:
            return await request
        except ServerError as e:
            raise AdminError(e.message)
        except ServerUnreachable as e:
            raise AdminError(f"the server's admin socket does not answer: {e}")

    async def create_key(self, **options: Any) -> dict:
        """A new join key; the options are :meth:`AdminClient.create_key`'s
        (``expires_in`` in seconds, see ``parse_duration``; ``tags``; ``ephemeral_after``)."""
        return await self._call(self._client.create_key(**options))

    async def keys(self) -> dict:
        return await self._call(self._client.keys())

    async def revoke_key(self, key_id: str) -> dict:
        return await self._call(self._client.revoke_key(key_id))

    async def nodes(self) -> dict:
        return await self._call(self._client.nodes())

    async def remove_node(self, node: str) -> dict:
        return await self._call(self._client.remove_node(node))

    async def rename_node(self, node: str, new_name: str) -> dict:
        return await self._call(self._client.rename_node(node, new_name))

    async def tag_node(self, node: str, tags: tuple[str, ...]) -> dict:
        return await self._call(self._client.tag_node(node, tags))

    async def policy(self) -> dict:
        return await self._call(self._client.policy())

    async def policy_action(self, action: str, **fields) -> dict:
        return await self._call(self._client.policy_action(action, **fields))

    async def dns(self) -> dict:
        return await self._call(self._client.dns())

    async def dns_action(self, action: str, **fields) -> dict:
        return await self._call(self._client.dns_action(action, **fields))

    async def routes(self) -> dict:
        return await self._call(self._client.routes())

    async def route_action(self, action: str, node: str, route: str) -> dict:
        return await self._call(self._client.route_action(action, node, route))

    async def audit(self) -> dict:
        return await self._call(self._client.audit())

    async def create_api_key(self, name: str = "", expires_in: float | None = None, read_only: bool = False) -> dict:
        return await self._call(self._client.create_api_key(name, expires_in, read_only))

    async def api_keys(self) -> dict:
        return await self._call(self._client.api_keys())

    async def dashboard_link(self) -> dict:
        """A one-time login link to the dashboard (valid 10 minutes)."""
        return await self._call(self._client.dashboard_link())

    async def revoke_api_key(self, key_id: str) -> dict:
        return await self._call(self._client.revoke_api_key(key_id))
