"""The remote admin API: the operations' table (wire.server.adminops) under
``/api/v1`` on the server's own HTTPS port, for admin API keys.

``Authorization: Bearer wire_ak_...`` (wire.server.apikeys) on every
request but ``GET /api/v1/openapi.json``; a read-only key may only GET.
JSON in (a body for POST and PUT, the query for GET and DELETE, path
segments for what an operation acts on) and JSON out, with the socket's
answers; every change is audited as ``apikey:ID``. Failed authentications
are rate-limited per client address (the API's own rules for who the client
is, behind trusted proxies): past a burst of them, the address gets 429s,
even with a good key, until its bucket refills.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence, cast

from twisted.logger import Logger
from twisted.web import resource, server

from wire.server.admin import Admin
from wire.server.adminops import OPERATIONS, Operation, query_texts
from wire.server.api import ClientRules
from wire.server.auth import AuthError, Caller
from wire.server.openapi import openapi_document
from wire.server.ratelimit import RateLimiter, TokenBucket, address_key
from wire.web import ApiError, JsonNotFound, JsonResource, JsonRoot, read_json_body

PREFIX = "/api/v1"
# Failed authentications per client address: a burst of 10, then one every 5 s.
AUTH_FAILURE_RATE = 0.2
AUTH_FAILURE_BURST = 10
# Refused authentications logged per minute, at most (the rest are counted).
FAILURES_LOGGED = 10


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/"))


def _match(template: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    """The path's parameters, if ``segments`` fit ``template`` (``{name}`` takes one segment)."""
    if len(template) != len(segments):
        return None
    params = {}
    for expected, segment in zip(template, segments):
        if expected.startswith("{"):
            if not segment:
                return None
            params[expected[1:-1]] = segment
        elif expected != segment:
            return None
    return params


def _body(request: server.Request) -> dict[str, Any]:
    """The JSON body; none at all (``curl -X POST``) is an empty object."""
    content = request.content
    if not getattr(request, "body_too_large", False) and content is not None:
        empty = not content.read(1)
        content.seek(0)
        if empty:
            return {}
    return read_json_body(request)


class CallerSource(Protocol):
    """Another way to be a caller than an API key (the dashboard's session):
    ``caller_of`` gives the request's caller, None when the request carries
    none of its credentials, or raises AuthError (401, 403) to refuse it. A
    credential a browser sends by itself (a cookie) must come with the
    session's CSRF token on every method but GET: checking it is the source's job."""

    def caller_of(self, request: server.Request) -> Caller | None: ...


class ApiKeyGate:
    """Who a request is: its API key (or, without an Authorization header, a
    caller one of ``others`` knows), checked, with failures limited per
    address and logged (a few a minute: a flood from many addresses must not
    fill the log)."""

    log = Logger()

    def __init__(self, admin: Admin, rules: ClientRules, failures: RateLimiter | None, others: Sequence[CallerSource] = ()):
        self._keys = admin.authority.api_keys
        self._rules = rules
        self._failures = failures
        self._others = tuple(others)
        self._clock = admin.coordinator.clock
        self._logged = TokenBucket(FAILURES_LOGGED / 60.0, FAILURES_LOGGED, self._clock.seconds())
        self._unlogged = 0

    def caller_of(self, request: server.Request) -> Caller:
        where = address_key(self._rules.client_ip(request))
        if self._failures is not None and self._failures.retry_after(where) > 0:
            wait = max(1, math.ceil(self._failures.retry_after(where)))
            request.setHeader(b"retry-after", str(wait).encode())
            raise ApiError(429, f"too many failed authentications from {where}; try again in {wait} s")
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = header.strip().partition(" ")
        try:
            if not header:
                for source in self._others:
                    caller = source.caller_of(request)
                    if caller is not None:
                        return caller
                raise AuthError("no Authorization header: send Authorization: Bearer <API key> (wire admin apikeys create)")
            if scheme.lower() != "bearer":
                raise AuthError("Authorization: use Bearer <API key>")
            key = self._keys.check(token.strip())
            return Caller(f"apikey:{key.key_id}", key.read_only)
        except AuthError as e:
            if self._failures is not None:
                self._failures.allow(where)  # one token of the address's burst spent
            self._note(where, str(e))
            if e.status == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="wire"')
            raise ApiError(e.status, str(e))

    def _note(self, where: str, problem: str) -> None:
        if not self._logged.spend(1, self._clock.seconds()):
            self._unlogged += 1
            return
        more, self._unlogged = self._unlogged, 0
        self.log.warn(
            "admin API: refused a request from {where}: {problem}" + (" ({more} more refusals not logged)" if more else ""),
            where=where, problem=problem, more=more,
        )


class Endpoint(JsonResource):
    """One path under /api/v1: the operations served there, by method."""

    def __init__(self, answer: Callable[[server.Request, str], Any], methods: tuple[str, ...]):
        super().__init__()
        self._answer = answer
        self.methods = methods

    def get(self, request: server.Request):
        return self._answer(request, "GET")

    def post(self, request: server.Request):
        return self._answer(request, "POST")

    def put(self, request: server.Request):
        return self._answer(request, "PUT")

    def delete(self, request: server.Request):
        return self._answer(request, "DELETE")


class AdminApi(resource.Resource):
    """``/api/v1``: it routes the rest of the path itself (the table's paths have parameters)."""

    def __init__(self, admin: Admin, gate: ApiKeyGate):
        super().__init__()
        self._admin = admin
        self._gate = gate
        self._routes = [(op.api[0], _segments(op.api[1]), op) for op in OPERATIONS if op.api is not None]
        self._document = openapi_document(PREFIX)

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.Resource:
        # Twisted types both as None (their class defaults); they are lists while a request is routed.
        rest, before = cast(list[bytes], request.postpath), cast(list[bytes], request.prepath)
        raw = [path, *rest]
        # The whole rest of the path is this resource's: the endpoint is a leaf.
        before.extend(rest)
        request.postpath = []
        if len(raw) > 1 and raw[-1] == b"":
            raw.pop()  # a trailing slash
        try:
            segments = [segment.decode("utf-8") for segment in raw]
        except UnicodeDecodeError:
            return JsonNotFound()
        if segments == ["openapi.json"]:
            return Endpoint(lambda request, method: self._document, ("GET",))
        matches: dict[str, tuple[Operation, dict[str, str]]] = {}
        for method, template, operation in self._routes:
            params = _match(template, segments)
            if params is not None:
                matches.setdefault(method, (operation, params))
        if not matches:
            return JsonNotFound()
        return Endpoint(lambda request, method: self._call(request, *matches[method]), tuple(matches))

    def render(self, request: server.Request) -> bytes:
        return JsonNotFound().render(request)

    async def _call(self, request: server.Request, operation: Operation, params: dict[str, str]) -> dict:
        caller = self._gate.caller_of(request)
        if operation.changes and caller.read_only:
            raise ApiError(403, f"{caller.actor} is read-only: it may only GET")
        method = request.method.decode("ascii")
        inputs = _body(request) if method in ("POST", "PUT") else {}
        query = query_texts(request)
        for field in query.keys() & params.keys():
            raise ApiError(400, f"{field}: given in the path; do not give it in the query too")
        texts = {**query, **params}
        return await operation.call(self._admin, operation.parse(inputs, texts), caller.actor)


def admin_api(admin: Admin, rules: ClientRules, failures: RateLimiter | None, others: Sequence[CallerSource] = ()) -> resource.Resource:
    """The ``/api`` child of the server's root: ``v1`` under it; ``others``:
    callers without an API key (the dashboard's sessions)."""
    api = JsonRoot()
    api.putChild(b"v1", AdminApi(admin, ApiKeyGate(admin, rules, failures, others)))
    return api
