"""What every operation is given (:class:`Context`) and how it fails (:class:`OpError`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from wire.client import (
    ControlClient,
    CoordinationClient,
    ServerError,
    ServerUnreachable,
    make_http_client,
)
from wire.install import InstallCheck, check_install
from wire.node.config import (
    ConfigError,
    NodeConfig,
    load_config,
    parse_server_url,
)
from wire.node.control import control_socket_path
from wire.node.enroll import coordination_client
from wire.protocol import ProtocolError
from wire.runner import IProcessRunner, ProcessRunner


class OpError(Exception):
    """An operation failed; ``str()`` says why and what to do."""


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Context:
    """What an operation may touch. ``is_root`` and ``check_install`` are the
    host's facts; tests replace them rather than the host."""

    reactor: Any
    config_dir: str
    runner: IProcessRunner | None = None
    is_root: Callable[[], bool] = _is_root
    check_install: Callable[[], InstallCheck] = check_install

    def __post_init__(self) -> None:
        if self.runner is None:
            self.runner = ProcessRunner(self.reactor)

    def config(self, required: bool = True) -> NodeConfig | None:
        try:
            config = load_config(self.config_dir)
        except ConfigError as e:
            raise OpError(str(e))
        if config is None and required:
            raise OpError(f"this machine has not joined a mesh ({self.config_dir} has no config); run: wire up --server URL")
        return config

    def coordination(self, server_url: str) -> CoordinationClient:
        """A client for ``server_url``: as this node (pinned TLS, its
        credential) when that is the server it joined, else anonymous."""
        try:
            config = load_config(self.config_dir)
        except ConfigError:
            config = None
        if config is not None and config.server_url == server_url.rstrip("/"):
            return coordination_client(self.reactor, config, self.config_dir, persistent=False)
        return CoordinationClient(make_http_client(self.reactor, persistent=False), server_url)

    def control(self) -> ControlClient:
        return ControlClient(self.reactor, control_socket_path(self.config_dir))

    async def daemon_status(self) -> dict | None:
        """The local daemon's own view, or None when it is not running."""
        if not os.path.exists(control_socket_path(self.config_dir)):
            return None
        try:
            return await self.control().status()
        except (ServerUnreachable, ServerError):
            return None


def _require_root(ctx: Context, what: str) -> None:
    if not ctx.is_root():
        raise OpError(f"{what} changes network interfaces and must run as root (sudo {what} ...)")


def _server_url(config: NodeConfig | None, server: str | None) -> str:
    """``--server`` when given (validated), else the configured server."""
    if not server:
        assert config is not None  # ctx.config(required=True) made sure
        return config.server_url
    try:
        return parse_server_url(server)
    except ProtocolError as e:
        raise OpError(f"--server: {e.problem}")


async def _mesh(ctx: Context, server_url: str) -> dict:
    try:
        return await ctx.coordination(server_url).status()
    except (ServerUnreachable, ServerError) as e:
        raise OpError(f"{e}; is the wire server running?")
