"""The node's proxy: its ``proxy`` setting (a URL without credentials, kept
in config.json), the credentials beside it (a 0600 file of their own), and
the ProxyConfig the node's HTTP client uses (the setting, else the
environment: wire.proxy).

``wire up --proxy http://user:pw@host:3128`` splits the URL: config.json
keeps ``http://host:3128``, ``proxy-auth`` keeps the user and password, so
neither the config, the daemon's command line nor a log ever shows them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from wire.fsutil import write_atomically
from wire.protocol import ProtocolError
from wire.proxy import (
    ProxyConfig,
    ProxyConfigError,
    parse_proxy_url,
    proxy_from_environment,
)

PROXY_AUTH_FILE = "proxy-auth"


def parse_proxy_setting(value: Any, field: str) -> str:
    """The ``proxy`` setting: "" (the environment's, if any) or ``http://host:port``, no credentials."""
    if value in ("", None):
        return ""
    if not isinstance(value, str):
        raise ProtocolError(field, "must be a proxy URL like http://proxy.example.com:3128, or ''")
    try:
        proxy = parse_proxy_url(value, field)
    except ProxyConfigError as e:
        raise ProtocolError(field, e.problem)
    if proxy.has_credentials:
        raise ProtocolError(field, f"{proxy.display()}: credentials are kept in {PROXY_AUTH_FILE}, not in the setting")
    return proxy.display()


def proxy_auth_path(config_dir: str) -> str:
    return os.path.join(config_dir, PROXY_AUTH_FILE)


def split_proxy_credentials(config_dir: str, settings: dict) -> dict:
    """``settings`` with a given proxy URL's credentials moved to ``proxy-auth``
    (0600; a URL without them, or "", removes the file). Other values untouched;
    a bad URL is left for the settings' parser to name."""
    value = settings.get("proxy")
    if not isinstance(value, str):
        return settings
    if not value.strip():
        _forget(config_dir)
        return settings
    try:
        proxy = parse_proxy_url(value, "proxy")
    except ProxyConfigError:
        return settings
    if proxy.has_credentials:
        os.makedirs(config_dir, mode=0o700, exist_ok=True)
        body = json.dumps({"username": proxy.username, "password": proxy.password}).encode() + b"\n"
        write_atomically(proxy_auth_path(config_dir), body, mode=0o600)
    else:
        _forget(config_dir)
    return {**settings, "proxy": proxy.display().replace("***@", "")}


def _forget(config_dir: str) -> None:
    try:
        os.unlink(proxy_auth_path(config_dir))
    except FileNotFoundError:
        pass


def load_proxy_credentials(config_dir: str) -> tuple[str, str] | None:
    """The saved proxy user and password, or None; a damaged file is a ProxyConfigError."""
    path = proxy_auth_path(config_dir)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ProxyConfigError(path, f"cannot be read ({e.__class__.__name__}); give --proxy URL again")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("username", "password")):
        raise ProxyConfigError(path, "holds no username and password; give --proxy URL again")
    return data["username"], data["password"]


def node_proxy(config, environ: Mapping[str, str] | None = None, config_dir: str | None = None) -> ProxyConfig | None:
    """The proxy the node's client uses: its ``proxy`` setting (with the saved
    credentials), else HTTPS_PROXY and the rest; NO_PROXY either way.
    Raises ProxyConfigError."""
    proxy = proxy_from_environment(environ, explicit=getattr(config, "proxy", ""))
    if proxy is not None and proxy.source == "--proxy" and config_dir is not None:
        credentials = load_proxy_credentials(config_dir)
        if credentials is not None:
            proxy = replace(proxy, username=credentials[0], password=credentials[1])
    return proxy
