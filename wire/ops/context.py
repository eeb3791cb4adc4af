"""What every operation is given (:class:`Context`) and how it fails (:class:`OpError`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, overload
from urllib.parse import urlsplit

from wire.client import (
    ControlClient,
    CoordinationClient,
    ServerError,
    ServerUnreachable,
    make_http_client,
)
from wire.install import InstallCheck, check_install
from wire.node.config import (
    SYSTEM_CONFIG_DIR,
    ConfigError,
    NodeConfig,
    config_path,
    load_config,
    parse_server_url,
)
from wire.node.control import control_socket_path
from wire.node.enroll import coordination_client, load_credential, load_join_request
from wire.node.proxy import node_proxy
from wire.node.servers import servers_of
from wire.proxy import ProxyConfig, ProxyConfigError
from wire.node.messages import REJOIN, REMOVED, removed_message  # noqa: F401  (the node's words; ops modules import them from here)
from wire.protocol import ProtocolError
from wire.runner import IProcessRunner, ProcessRunner


class OpError(Exception):
    """An operation failed; ``str()`` says why and what to do."""


class ConfigProblem(OpError):
    """No usable node config: ``detail`` says why, ``suggestion`` what to do
    (diagnose shows them apart; everyone else the whole message)."""

    def __init__(self, detail: str, suggestion: str = ""):
        super().__init__(f"{detail}; {suggestion}" if suggestion else detail)
        self.detail = detail
        self.suggestion = suggestion


# The one way a machine joins, told wherever a machine has not: the join
# token first (authentication is the default), the open mode second.
JOIN = (
    "sudo wire up --join TOKEN (a join token from 'wire admin keys create' on the server); "
    "for an open server: sudo wire up --server URL"
)
JOIN_HINT = f"run: {JOIN}"
RUN_AS_ROOT = "run as root (sudo wire ...)"


def daemon_was_removed(local: dict | None) -> bool:
    """Whether the running daemon's server refuses its credential (401), or
    the daemon says outright that the node was removed."""
    if local is None:
        return False
    return local.get("node", {}).get("state") == "removed" or local.get("server", {}).get("last_status") == 401


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Context:
    """What an operation may touch. ``is_root`` and ``check_install`` are the
    host's facts; tests replace them rather than the host."""

    reactor: Any
    config_dir: str
    # None: __post_init__ makes one on the reactor (a dataclass default cannot).
    runner: IProcessRunner = None  # type: ignore[assignment]
    is_root: Callable[[], bool] = _is_root
    check_install: Callable[[], InstallCheck] = check_install
    # Where a node joined as root keeps its config (a user's ~/.wire is empty then).
    system_config_dir: str = SYSTEM_CONFIG_DIR
    # The machine's resolver file, which the mesh DNS may manage (tests use a temp file).
    resolv_conf: str = "/etc/resolv.conf"

    def __post_init__(self) -> None:
        if self.runner is None:
            self.runner = ProcessRunner(self.reactor)

    @overload
    def config(self, required: Literal[True] = True) -> NodeConfig: ...

    @overload
    def config(self, required: bool) -> NodeConfig | None: ...

    def config(self, required: bool = True) -> NodeConfig | None:
        """The node's config; a :class:`ConfigProblem` when it cannot be read
        (or, with ``required``, when there is none)."""
        path = config_path(self.config_dir)
        try:
            config = load_config(self.config_dir)
        except ConfigError as e:
            # load_config raises from the OSError: unreadable for this user is
            # not a broken config.
            if isinstance(e.__cause__ or e.__context__, PermissionError):
                raise ConfigProblem(f"permission denied reading {path}", RUN_AS_ROOT)
            raise ConfigProblem(str(e))
        if config is None and required:
            if not self.is_root() and self.config_dir != self.system_config_dir and self._root_has_config():
                # Joined with sudo: the node's config is root's.
                raise ConfigProblem(
                    f"{self.config_dir} has no config, and this machine's node is set up as root in {self.system_config_dir}",
                    RUN_AS_ROOT,
                )
            joining = self._pending_join()
            if joining is not None:
                # 'wire up' gave up waiting; the daemon has not.
                raise ConfigProblem(
                    f"this machine is still joining {joining}: the daemon keeps trying in the background "
                    f"(its log: {os.path.join(self.config_dir, 'wire-node.log')})",
                    "wait, or stop it with: sudo wire down",
                )
            raise ConfigProblem(f"this machine has not joined a mesh ({self.config_dir} has no config)", JOIN_HINT)
        return config

    def _pending_join(self) -> str | None:
        """The server of a join request the daemon still works on (join.json), or None."""
        try:
            request = load_join_request(self.config_dir)
        except (ConfigError, OSError):
            return None
        return request.server_url if request is not None else None

    def _root_has_config(self) -> bool:
        try:
            os.stat(config_path(self.system_config_dir))
        except PermissionError:
            return True  # a directory only root may enter: the node's, most likely
        except OSError:
            return False
        return True

    def is_node_client(self, server_url: str) -> bool:
        """Whether :meth:`coordination` speaks for this node (its credential) to ``server_url``."""
        try:
            config = load_config(self.config_dir)
        except ConfigError:
            return False
        if config is None or server_url.rstrip("/") not in servers_of(config):
            return False
        try:
            return load_credential(self.config_dir) is not None
        except PermissionError:
            return False

    def coordination(self, server_url: str) -> CoordinationClient:
        """A client for ``server_url``: as this node (pinned TLS, its
        credential) when that is the server it joined, else anonymous."""
        try:
            config = load_config(self.config_dir)
        except ConfigError:
            config = None
        if config is not None and server_url.rstrip("/") in servers_of(config):
            try:
                # Any replica of its mesh: the same credential and pinned certificate.
                asked = replace(config, server_url=server_url.rstrip("/"))
                return coordination_client(self.reactor, asked, self.config_dir, persistent=False)
            except PermissionError as e:
                # The credential is root's (0600) even where the config is not.
                raise ConfigProblem(f"permission denied reading {e.filename}", RUN_AS_ROOT)
        return CoordinationClient(make_http_client(self.reactor, persistent=False, proxy=self._proxy(config)), server_url)

    def _proxy(self, config: NodeConfig | None) -> ProxyConfig | None:
        try:
            return node_proxy(config, None, self.config_dir if config is not None else None)
        except ProxyConfigError as e:
            raise ConfigProblem(str(e), "fix it, or give --proxy URL (wire set --proxy '' to use the environment)")

    def proxy_in_use(self, server_url: str) -> dict | None:
        """For status output: the proxy this node's client takes to ``server_url``
        (credentials as ***), or None when it goes direct."""
        try:
            config = load_config(self.config_dir)
        except ConfigError:
            config = None
        proxy = self._proxy(config)
        parts = urlsplit(server_url)
        default_port = 443 if parts.scheme == "https" else 80
        if proxy is None or not proxy.applies_to(parts.hostname or "", parts.port or default_port):
            return None
        return proxy.describe()

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


def refuses_this_node(ctx: Context, server_url: str, error: Exception | None) -> bool:
    """Whether ``error`` is the server turning away this node's own credential."""
    return isinstance(error, ServerError) and error.status == 401 and ctx.is_node_client(server_url)


def server_problem(ctx: Context, server_url: str, error: ServerUnreachable | ServerError) -> str:
    """What a failed request to the coordination server means, and what to do."""
    if refuses_this_node(ctx, server_url, error):
        return removed_message()
    if isinstance(error, ServerError):
        if error.status == 401:
            return f"{error} (this machine holds no credential for {server_url.rstrip('/')}; to join it: {JOIN})"
        return str(error)
    return f"{error}; is the wire server running?"


async def _mesh(ctx: Context, server_url: str) -> dict:
    try:
        return await ctx.coordination(server_url).status()
    except (ServerUnreachable, ServerError) as e:
        raise OpError(server_problem(ctx, server_url, e))
