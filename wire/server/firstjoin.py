"""``first-join.txt``: the one-time join command a new server leaves for its
first node (root only), kept in step with the public URL while its key is unused."""

from __future__ import annotations

import os

from twisted.logger import Logger

from wire.fsutil import write_atomically
from wire.jointoken import JoinTokenError, decode_join_token
from wire.server.admin import Admin, join_command
from wire.server.auth import AuthError
from wire.urls import is_loopback_url

log = Logger()
from wire.server.options import Options

log = Logger()


FIRST_JOIN_FILE = "first-join.txt"


def loopback_warning(config: Options) -> str:
    scheme = "https" if config["tls"] else "http"
    return (
        f"the public URL {config['public-url']} is a loopback address: join tokens work only on this machine; "
        f"start wire-server with --public-url {scheme}://NAME:{config['port']} (a name or address other machines reach it by)"
    )


def first_join_notes(config: Options) -> list[str]:
    """What first-join.txt says above its command about the URL in it."""
    if is_loopback_url(config["public-url"]):
        return [f"warning: {loopback_warning(config)}; this file is then rewritten."]
    if config.public_url_from:
        return [
            f"the server URL in this token, {config['public-url']}, comes from {config.public_url_from}; "
            "if nodes reach the server by another, restart it with --public-url URL and this file is rewritten."
        ]
    return []


def _first_join_text(command: str, notes: list[str]) -> str:
    return "".join(f"# {note}\n" for note in notes) + command + "\n"


async def write_first_join(admin: Admin, data_dir: str, notes: list[str]) -> None:
    """On a server's first start, a one-time join key for the first node;
    on later starts, the same key's command kept in step with the public
    URL (and certificate) while the key is unused.

    The command holds a secret, so it goes to a root-only file, not the log.
    """
    path = os.path.join(data_dir, FIRST_JOIN_FILE)
    if not admin.authority.keys():
        created = await admin.create_key(reusable=False, expires_in=86400, note="made at first start")
        write_atomically(path, _first_join_text(created["join_command"], notes).encode(), mode=0o600)
        log.info(
            "wire-server: first start; a one-time join command (valid 24 h) is in {path}; more with: wire admin keys create",
            path=path,
        )
        return
    try:
        with open(path) as f:
            old_text = f.read()
        command = next(line for line in old_text.splitlines() if line.startswith(join_command("")))
        secret = decode_join_token(command[len(join_command("")):]).secret
        admin.authority.check_join_key(secret)
    except (OSError, UnicodeDecodeError, StopIteration, JoinTokenError, AuthError):
        # No file, or its key is used, expired or revoked: nothing to keep in step.
        return
    text = _first_join_text(join_command(admin.token(secret)), notes)
    if text != old_text:
        write_atomically(path, text.encode(), mode=0o600)
        log.info("wire-server: {path} rewritten: its join key, still unused, now points at {url}", path=path, url=admin.public_url)
