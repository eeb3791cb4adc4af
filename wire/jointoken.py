"""Join tokens: everything a new node needs, in one pasteable string.

``wire1.`` followed by URL-safe base64 of ``{"u": server URL, "f": the
server certificate's SHA-256 fingerprint (hex, or "" for a CA-signed
certificate checked by hostname), "k": the join key's secret}``, and
"r": the URLs of the server's other replicas (same mesh, same certificate),
only when it has some: a node fails over to them (wire.node.servers).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from wire.protocol import ProtocolError
from wire.urls import check_one_scheme, parse_server_url, parse_server_urls

PREFIX = "wire1."
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{20,100}$")


class JoinTokenError(ValueError):
    pass


@dataclass(frozen=True)
class JoinToken:
    server_url: str
    fingerprint: str
    secret: str
    # The other replicas' URLs, in the order nodes try them.
    replicas: tuple[str, ...] = ()

    @property
    def server_urls(self) -> tuple[str, ...]:
        return (self.server_url, *self.replicas)

    def encode(self) -> str:
        fields: dict = {"u": self.server_url, "f": self.fingerprint, "k": self.secret}
        if self.replicas:
            fields["r"] = list(self.replicas)
        body = json.dumps(fields, separators=(",", ":"))
        return PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_join_token(text: str) -> JoinToken:
    text = text.strip()
    if not text.startswith(PREFIX):
        raise JoinTokenError("a join token starts with 'wire1.'; ask the server's admin for one (wire admin keys create)")
    encoded = text[len(PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise JoinTokenError("the join token is damaged (was it cut when pasting?)")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in "ufk"):
        raise JoinTokenError("the join token is damaged (missing fields)")
    if data["f"] and not _FINGERPRINT.match(data["f"]):
        raise JoinTokenError("the join token's certificate fingerprint is malformed")
    if not _SECRET.match(data["k"]):
        raise JoinTokenError("the join token's key is malformed")
    try:
        url = parse_server_url(data["u"])
    except ProtocolError as e:
        raise JoinTokenError(f"the join token's server URL is unusable: {e.problem}")
    try:
        replicas = parse_server_urls(data.get("r", []), "r")
        check_one_scheme((url, *replicas), "r")
    except ProtocolError as e:
        raise JoinTokenError(f"the join token's replica URLs are unusable: {e.problem}")
    return JoinToken(url, data["f"], data["k"], tuple(r for r in replicas if r != url))
