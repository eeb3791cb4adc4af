"""A node's settings that change without re-joining: ``wire up`` may give
them, ``wire set`` changes them on a running node (as ``tailscale set``).

Each setting is a field of :class:`~wire.node.config.NodeConfig`, validated
here once for every way in (the command line, the MCP tools, the control
socket, config.json): ``parse_settings`` turns loose values into checked
ones, ``with_settings`` gives the config with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from wire.node.proxy import parse_proxy_setting
from wire.protocol import ProtocolError
from wire.protocol.fields import parse_bool, parse_node_name
from wire.protocol.routes import EXIT_ROUTES, is_exit_route, parse_routes


def _exit_node(value: Any, field: str) -> str:
    """A peer's name, or "" (no exit node)."""
    if value in ("", None):
        return ""
    return parse_node_name(value, field)


def _routes(value: Any, field: str) -> tuple[str, ...]:
    routes = parse_routes(value, field)
    exits = [r for r in routes if is_exit_route(r)]
    if exits:
        raise ProtocolError(field, f"{', '.join(exits)}: offer an exit with --advertise-exit-node, not as a route")
    return routes


# Setting -> its parser (value, field name) -> checked value.
SETTINGS: dict[str, Callable[[Any, str], Any]] = {
    "accept_dns": parse_bool,
    "accept_routes": parse_bool,
    "advertise_routes": _routes,
    "advertise_exit_node": parse_bool,
    "snat_subnet_routes": parse_bool,
    "exit_node": _exit_node,
    "exit_node_allow_lan_access": parse_bool,
    "proxy": parse_proxy_setting,
}
# The command line's name of each (for messages).
FLAGS = {name: "--" + name.replace("_", "-") for name in SETTINGS}


def parse_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The settings given (None: not given), checked; a ProtocolError names the first bad one."""
    checked = {}
    for name, value in values.items():
        if name not in SETTINGS:
            raise ProtocolError(name, f"is not a setting (one of {', '.join(sorted(SETTINGS))})")
        if value is not None:
            checked[name] = SETTINGS[name](value, name)
    return checked


def with_settings(config, changes: dict[str, Any]):
    """``config`` with these checked settings."""
    return replace(config, **changes)


def settings_of(config) -> dict[str, Any]:
    """Every setting as the config has it (JSON-able)."""
    return {name: list(value) if isinstance(value, tuple) else value for name in SETTINGS for value in [getattr(config, name)]}


def advertised_routes(config) -> tuple[str, ...]:
    """What the node's registration offers: its routes, and the exit routes when it offers an exit."""
    return tuple(config.advertise_routes) + (EXIT_ROUTES if config.advertise_exit_node else ())
