"""``twistd wire-server --config FILE``: the server's options in a TOML file.

The keys are the long options' names (``port = 8787``, ``data-dir =
"/var/lib/wire"``, ``open = false``, ``trusted-proxy = ["10.0.0.1"]``).
This module only reads the file and checks each key and the type of its
value; the options themselves check the values, as they do on the command
line.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from typing import Any

# What a key's value must be, by kind; "path" is text, read relative to the file.
KINDS = {
    "text": "a string",
    "path": "a string (a path; relative to the file's directory)",
    "integer": "an integer",
    "number": "a number",
    "flag": "true or false",
    "list": 'a list of strings (for example ["10.0.0.1"])',
    "text-or-list": 'a string or a list of strings (for example ["https://a:8787", "https://b:8787"])',
}


class ConfigFileError(Exception):
    """The file cannot be used; ``str()`` is one line naming the file (and key)."""


def read_config_file(path: str, kinds: Mapping[str, str]) -> dict[str, Any]:
    """The file's settings, each checked against ``kinds`` (key -> kind);
    paths made absolute."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read it ({(e.strerror or str(e)).lower()})")
    except ValueError as e:  # tomllib.TOMLDecodeError, or bytes that are not UTF-8
        raise ConfigFileError(f"{path}: not a TOML file ({e})")
    settings = {}
    for key, value in data.items():
        kind = kinds.get(key)
        if kind is None:
            raise ConfigFileError(f"{path}: unknown key {key!r}{_did_you_mean(key, kinds)}")
        if not _is_a(kind, value):
            raise ConfigFileError(f"{path}: {key} must be {KINDS[kind]}, not {_shown(value)}")
        if kind == "path":
            value = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(value))
        settings[key] = value
    return settings


def _is_a(kind: str, value: Any) -> bool:
    if kind in ("text", "path"):
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "flag":
        return isinstance(value, bool)
    if kind == "text-or-list" and isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _did_you_mean(key: str, kinds: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(key.replace("_", "-"), list(kinds), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return " (the keys are the long options: " + ", ".join(sorted(kinds)) + ")"
