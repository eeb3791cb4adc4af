"""The one call between replicas: a relay grant asked of the pair's home.

A node asks its own replica for its side of a relay session; when the pair
is homed at another replica (wire.server.replicas), that replica asks the
home with ``POST /cluster/v1/relay-grant`` on the home's API URL, and hands
the home's grant (naming the home's relay in ``relay_host``) to the node.
The relay table stays one authority per pair: fresh sides, held tokens,
peer keys for the kernel path and side ports are all the home's.

The call goes over the API's own TLS, pinned to the certificate every
replica shares (its fingerprint; a CA-signed one is checked by hostname).
It is authenticated by an HMAC-SHA256, under the cluster secret drawn once
into the database's ``meta`` (like the shared TLS pair: access to the
database is access to the mesh), over the calling replica's name, the
time it asked and the request. The home refuses with 403 a call without a
valid MAC, or made more than ``MAX_SKEW`` seconds from its own clock; it
never forwards a call again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

from twisted.web import server

from twisted.web.client import Agent, HTTPConnectionPool

from wire.protocol import ProtocolError, RelayGrant, RelayRequest, error_message
from wire.protocol.fields import parse_object, parse_str, required
from wire.server.replicas import Replica
from wire.web import ApiError, JsonResource, JsonRoot, read_json_body

PATH = "/cluster/v1/relay-grant"
SECRET_META = "cluster_secret"
# A call's time may differ this much from the home's clock (a replayed call is refused after it).
MAX_SKEW = 30.0
# The home's answer comes within this (a forward must not hold the node's request long).
CALL_TIMEOUT = 3.0
# A grant is a few hundred bytes: a longer answer is not one.
MAX_ANSWER_BYTES = 16 * 1024
_DOMAIN = b"wire relay-grant v1\0"


class ReplicaCallRefused(Exception):
    """The call is not from a replica of this mesh (answered 403)."""


class HomeUnreachable(Exception):
    """The pair's home did not give a grant (answered 502: the node asks again)."""


def cluster_secret(store: Any) -> bytes:
    """The mesh's cluster secret, drawn by the first replica (startup: blocks)."""
    return bytes.fromhex(store.draw_meta(SECRET_META, secrets.token_hex(32)))


def _mac(secret: bytes, fields: dict) -> str:
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, _DOMAIN + text.encode(), hashlib.sha256).hexdigest()


def sign(secret: bytes, caller: str, at: float, request: RelayRequest, fresh: bool = True) -> dict:
    """The call's body: the request, who asks and when, and their MAC."""
    fields = {"from": caller, "at": at, "fresh": fresh, "request": request.to_json()}
    return {**fields, "mac": _mac(secret, fields)}


def verify(secret: bytes, envelope: Any, now: float) -> tuple[str, RelayRequest, bool]:
    """The calling replica's name, its request and whether the side is to be
    fresh; raises ReplicaCallRefused (or ProtocolError for a well-signed
    request that does not parse)."""
    try:
        body = parse_object(envelope, "call")
        caller = parse_str(required(body, "from"), "from", limit=200)
        mac = parse_str(required(body, "mac"), "mac", limit=64)
        request = parse_object(required(body, "request"), "request")
    except ProtocolError as e:
        raise ReplicaCallRefused(f"not a replica's call: {e}")
    at, fresh = body.get("at"), body.get("fresh")
    if not isinstance(at, (int, float)) or isinstance(at, bool):
        raise ReplicaCallRefused("not a replica's call: at: must be a number")
    if not isinstance(fresh, bool):
        raise ReplicaCallRefused("not a replica's call: fresh: must be true or false")
    fields = {"from": caller, "at": at, "fresh": fresh, "request": request}
    if set(body) != {*fields, "mac"} or not hmac.compare_digest(_mac(secret, fields), mac):
        raise ReplicaCallRefused("the call's MAC is not this mesh's")
    if abs(now - at) > MAX_SKEW:
        raise ReplicaCallRefused(f"the call was made {now - at:+.0f}s from now; a replica's clock is off, or this is a replay")
    return caller, RelayRequest.from_json(request), fresh


class RelayGrantCall(JsonResource):
    """``POST /cluster/v1/relay-grant``: a replica asks this one, the pair's home."""

    methods = ("POST",)

    def __init__(self, coordinator: Any, secret: bytes):
        super().__init__()
        self._coordinator = coordinator
        self._secret = secret

    def post(self, request: server.Request) -> dict:
        envelope = read_json_body(request)
        try:
            _, asked, fresh = verify(self._secret, envelope, self._coordinator.now())
        except ReplicaCallRefused as e:
            self._coordinator.log.warn("refused a replica call from {peer}: {why}", peer=_peer(request), why=e)
            raise ApiError(403, str(e))
        except ProtocolError as e:
            raise ApiError(400, str(e))
        grant = self._coordinator.grant_here(asked, fresh)
        return {"ok": True, **grant.to_json()}


def cluster_root(coordinator: Any, secret: bytes) -> JsonRoot:
    """``/cluster``, with the one call under ``v1``."""
    root, v1 = JsonRoot(), JsonRoot()
    v1.putChild(b"relay-grant", RelayGrantCall(coordinator, secret))
    root.putChild(b"v1", v1)
    return root


def _peer(request: server.Request) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", str(address))


def replica_http(reactor: Any, fingerprint: str) -> Any:
    """The HTTP client of the replicas' calls: pinned to the shared
    certificate's fingerprint (by hostname for a CA-signed one, "")."""
    from treq.client import HTTPClient

    from wire.tls import client_policy

    pool = HTTPConnectionPool(reactor, persistent=True)
    return HTTPClient(Agent(reactor, contextFactory=client_policy(fingerprint), pool=pool, connectTimeout=CALL_TIMEOUT))


class ReplicaCaller:
    """Asks a pair's home for a grant, over pinned TLS, signed."""

    def __init__(self, clock: Any, secret: bytes, me: str, http: Any):
        self._clock = clock
        self.secret = secret
        self._me = me
        self._http = http  # a treq HTTPClient (replica_http), or a test's StubTreq

    async def relay_grant(self, home: Replica, asked: RelayRequest, fresh: bool = True) -> RelayGrant:
        envelope = sign(self.secret, self._me, self._clock.seconds(), asked, fresh)
        url = home.api_url.rstrip("/") + PATH
        try:
            d = self._http.request("POST", url, data=json.dumps(envelope).encode(), headers={b"content-type": [b"application/json"]})
            d.addTimeout(CALL_TIMEOUT, self._clock)
            response = await d
            d = response.content()
            d.addTimeout(CALL_TIMEOUT, self._clock)
            content = await d
        except Exception as e:  # refused, timed out, TLS refused: the home gave nothing
            raise HomeUnreachable(f"the pair's relay is at replica {home.name} ({home.api_url}), which did not answer: {e}")
        try:
            if len(content) > MAX_ANSWER_BYTES:
                raise ProtocolError("answer", f"is {len(content)} bytes; a grant is far less")
            answer = json.loads(content)
            if response.code != 200:
                raise HomeUnreachable(f"replica {home.name} refused the pair's grant ({response.code}): {error_message(answer)}")
            return RelayGrant.from_json(answer)
        except (ProtocolError, ValueError) as e:
            raise HomeUnreachable(f"replica {home.name} answered no grant: {e}")
