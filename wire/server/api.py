"""The coordination server's HTTP API (the seed's paths, plus the long-poll).

Seed-compatible: ``POST /register``, ``GET /peers``, ``GET /status``,
``GET /health``, ``GET /ip``, ``POST /punch``. Beyond the seed:
``GET /peers?since=CURSOR&wait=SECONDS`` (the netmap long-poll; with
``&stream=1`` one response carries every change of the wait, a line each:
wire.server.netmapstream),
``POST /leave`` (a node going down shows offline at once), ``POST /enroll``
(joining with a join key), ``POST /relay`` (a relay session), ``POST /path``
(a direct path failed: the server decides the pair's path), ``POST /report``
(how a node reaches its peers, for the admin's view of the mesh) and
``GET /metrics`` (Prometheus).

Who the client is comes from the TCP peer, or from ``X-Forwarded-For`` when
the peer is a trusted proxy (see :class:`ClientRules`); registrations and
enrollments (and path reports) are rate-limited per client address (HTTP 429).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import cast

from twisted.web import server

from wire.addressing import PoolExhausted
from wire.protocol.dns import parse_dns_digest
from wire.protocol.report import NodeReport
from wire.protocol.filter import parse_filter_digest
from wire.protocol import (
    LeaveRequest,
    PathReport,
    ProtocolError,
    RelayRequest,
    parse_enrollment,
    parse_node_id,
    parse_punch,
    parse_registration,
)
from wire.server.auth import AuthError, Forbidden, hash_secret
from wire.server.coordinator import Coordinator, ServerStopping, UnknownNode
from wire.server.metrics import MetricsResource
from wire.server.netmap import MAX_WAIT_SECONDS
from wire.server.netmapstream import NetmapStream, stream_answer
from wire.server.ratelimit import RateLimiter, address_key
from wire.server.registry import RegistryConflict
from wire.server.reports import ReportTooSoon
from wire.server.replicacall import HomeUnreachable, cluster_root
from wire.server.store import StoreError
from wire.sourceaddress import normalize_client_ip
from wire.web import (
    ApiError,
    BoundedRequest,
    JsonResource,
    JsonRoot,
    forget_input,
    make_site,
    read_json_body,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def forwarded_client(peer: str, forwarded_for: str, trusted_proxies: tuple[IPNetwork, ...]) -> str:
    """The client behind a chain of trusted proxies.

    Each proxy appends the address it received the request from, so the
    header reads ``client, proxy1, proxy2`` and only its right end is
    trustworthy: walk from the TCP peer leftwards while the hop we stand on
    is a trusted proxy. The first address that is not one is the client.
    An entry that is not a plain IP address ends the walk, leaving the last
    trusted hop as the client (whatever stands left of it was written by
    someone we do not trust).
    """
    client = normalize_client_ip(peer)
    for entry in reversed(forwarded_for.split(",")):
        if not is_trusted(client, trusted_proxies):
            break
        try:
            address = ipaddress.ip_address(entry.strip())
        except ValueError:
            break
        # A zone (fe80::1%eth0) means nothing past the proxy's own link,
        # and its text is free-form.
        if getattr(address, "scope_id", None):
            break
        client = normalize_client_ip(str(address))
    return client


def is_trusted(host: str, trusted_proxies: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in trusted_proxies)


def client_ip(request: server.Request, trusted_proxies: tuple[IPNetwork, ...] = ()) -> str:
    peer = request.getClientAddress().host
    if not trusted_proxies:
        return _peer_ip(request.channel, peer)
    # Several X-Forwarded-For lines mean the same as one joined with commas.
    lines = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
    return forwarded_client(peer, ",".join(line.decode("latin-1") for line in lines), trusted_proxies)


def _peer_ip(channel: object, peer: str) -> str:
    """``peer`` normalized, once per connection: every long-poll asks, and
    parsing the address each time cost 2 % of a replica's time fanning a
    change out to 10,000 nodes. Kept on the channel with the text it came
    from, so a channel that is handed another peer's requests (a test's)
    is never told the first one's."""
    cached = getattr(channel, "_wire_peer_ip", None)
    if cached is not None and cached[0] == peer:
        return cached[1]
    ip = normalize_client_ip(peer)
    try:
        setattr(channel, "_wire_peer_ip", (peer, ip))
    except AttributeError:
        pass  # a channel that takes no attributes: parsed each time
    return ip


@dataclass(frozen=True)
class ClientRules:
    """How the API tells who a client is, and how often it may register or enroll.

    Without limiters (the default, for tests and embedding) nothing is
    limited; ``twistd wire-server`` always gives them unless
    ``--no-rate-limits``.
    """

    trusted_proxies: tuple[IPNetwork, ...] = ()
    register_limit: RateLimiter | None = None
    enroll_limit: RateLimiter | None = None
    path_limit: RateLimiter | None = None

    def client_ip(self, request: server.Request) -> str:
        return client_ip(request, self.trusted_proxies)

    def admit(self, request: server.Request, limiter: RateLimiter | None, what: str) -> str:
        """The client's address, once its rate limit lets it in; else a 429."""
        ip = self.client_ip(request)
        if limiter is None:
            return ip
        key = address_key(ip)
        if limiter.allow(key):
            return ip
        wait = max(1, math.ceil(limiter.retry_after(key)))
        request.setHeader(b"retry-after", str(wait).encode())
        raise ApiError(429, f"too many {what} from {ip}; try again in {wait} s")


def bearer_credential(request: server.Request) -> str | None:
    """The credential a request carries as ``Authorization: Bearer``, if any."""
    header = request.getHeader(b"authorization") or b""
    scheme, _, credential = header.decode("latin-1").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


def caller(coordinator: Coordinator, request: server.Request) -> str | None:
    """The authenticated node making the request (None on an open server)."""
    credential = bearer_credential(request)
    with answering_errors():
        return coordinator.authenticate(credential)


def query_arg(request: server.Request, name: str) -> str | None:
    # Twisted declares Request.args as None (its class default); the request
    # has parsed its query into a dict before any resource renders it.
    args = cast(dict[bytes, list[bytes]], request.args)
    values = args.get(name.encode())
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"{name}: given {len(values)} times; give it once")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{name}: is not UTF-8 text")


# What the coordinator refuses, and the HTTP status that says so.
_REFUSALS: tuple[tuple[type[Exception], int], ...] = (
    (ProtocolError, 400),
    (UnknownNode, 404),
    (RegistryConflict, 409),
    (StoreError, 503),
    (ReportTooSoon, 429),
    (HomeUnreachable, 502),
    (ServerStopping, 503),
)


def _status_of(error: Exception) -> tuple[int, str] | None:
    """The one mapping from what the coordinator refuses to HTTP statuses."""
    if isinstance(error, AuthError):
        return error.status, str(error)
    if isinstance(error, PoolExhausted):
        return 503, f"no VPN address left to give: {error}"
    for kind, status in _REFUSALS:
        if isinstance(error, kind):
            return status, str(error)
    return None


class _AnsweringErrors:
    """``with answering_errors():`` turns a refusal into its ApiError. A
    class, not a @contextmanager generator: every long-poll passes through
    it twice, and a generator's setup and teardown cost several times more
    (2.4 % of a replica's time fanning a change out to 10,000 nodes)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> None:
        # Never swallows: what it does not map goes on as it is.
        answer = _status_of(error) if isinstance(error, Exception) else None
        if answer is not None:
            raise ApiError(*answer) from error


_ANSWERING_ERRORS = _AnsweringErrors()


def answering_errors() -> _AnsweringErrors:
    """Map what the coordinator refuses to HTTP statuses (it holds no state: one serves all)."""
    return _ANSWERING_ERRORS


class CoordinatorResource(JsonResource):
    def __init__(self, coordinator: Coordinator, rules: ClientRules | None = None):
        super().__init__()
        self._coordinator = coordinator
        self._rules = rules or ClientRules()


class Register(CoordinatorResource):
    methods = ("POST",)

    async def post(self, request: server.Request) -> dict:
        # The limit comes first: a refused request costs no parsing.
        public_ip = self._rules.admit(request, self._rules.register_limit, "registrations")
        body = read_json_body(request)
        with answering_errors():
            registration = parse_registration(body)
            node_id = caller(self._coordinator, request)
            result = await self._coordinator.register(registration, public_ip, node_id)
        return self._coordinator.registered_answer(result.record, public_ip).to_json()


class Enroll(CoordinatorResource):
    """``POST /enroll``: a registration body plus ``join_key``; answers with
    the registration's fields and the node's ``credential``."""

    methods = ("POST",)

    async def post(self, request: server.Request) -> dict:
        public_ip = self._rules.admit(request, self._rules.enroll_limit, "enrollments")
        body = read_json_body(request)
        with answering_errors():
            secret, registration = parse_enrollment(body)
            result, credential = await self._coordinator.enroll(secret, registration, public_ip)
        return self._coordinator.registered_answer(result.record, public_ip, credential).to_json()


class Peers(CoordinatorResource):
    methods = ("GET",)

    def get(self, request: server.Request):
        node_id = caller(self._coordinator, request)
        since = query_arg(request, "since")
        wait_text = query_arg(request, "wait")
        if since is None:
            if wait_text is not None:
                raise ApiError(400, "wait: only makes sense with since (the cursor to wait past)")
            return self._coordinator.online_peers(seen_by=node_id)
        wait = 0.0
        if wait_text is not None:
            try:
                wait = float(wait_text)
            except ValueError:
                raise ApiError(400, f"wait: {wait_text[:20]!r} is not a number of seconds")
            if not 0 <= wait <= MAX_WAIT_SECONDS:
                raise ApiError(400, f"wait: must be from 0 to {MAX_WAIT_SECONDS:.0f} seconds")
        viewer = self._viewer(request, node_id)
        holds = query_arg(request, "filter")
        holds_dns = query_arg(request, "dns")
        holds_route_filter = query_arg(request, "route_filter")
        streaming = stream_answer(query_arg(request, "stream")) and request.method == b"GET"
        coordinator = self._coordinator
        with answering_errors():
            if holds_route_filter is not None:
                holds_route_filter = parse_filter_digest(holds_route_filter)
            if holds is not None:
                holds = parse_filter_digest(holds)
            if holds_dns is not None:
                holds_dns = parse_dns_digest(holds_dns)
            public_ip = self._rules.client_ip(request) if node_id else None

            def ask(cursor: str, seconds: float):
                return coordinator.netmap(
                    cursor,
                    seconds,
                    node_id,
                    public_ip,
                    viewer=viewer,
                    holds_filter=holds,
                    holds_dns=holds_dns,
                    holds_route_filter=holds_route_filter,
                )

            answer = ask(since, wait)
        if streaming:
            # Checked again before each line: hashed once, here.
            credential_hash = hash_secret(bearer_credential(request) or "")
            stream = NetmapStream(
                cast(BoundedRequest, request), ask, coordinator.clock, coordinator.longpoll_wait(wait, node_id),
                lambda: coordinator.may_still_hear(credential_hash, node_id),
            )
            stream.start(answer)
            if not stream.ended:
                forget_input(request)
            return server.NOT_DONE_YET
        if not answer.called:
            forget_input(request)  # it may wait minutes; all it asked was read
        return answer


    @staticmethod
    def _viewer(request: server.Request, node_id: str | None) -> str | None:
        """``?node_id=``: on an open server, which node asks (to carry the
        words on its pairs); an authenticated node is known by its credential."""
        text = query_arg(request, "node_id")
        if text is None:
            return None
        with answering_errors():
            viewer = parse_node_id(text, "node_id")
            if node_id is not None and viewer != node_id:
                raise Forbidden("node_id: not the node this credential belongs to")
        return viewer


class Status(CoordinatorResource):
    methods = ("GET",)

    def get(self, request: server.Request) -> dict:
        return self._coordinator.status(seen_by=caller(self._coordinator, request))


class Health(CoordinatorResource):
    methods = ("GET",)

    def get(self, request: server.Request) -> dict:
        return self._coordinator.health()


class YourIp(JsonResource):
    methods = ("GET",)

    def __init__(self, rules: ClientRules):
        super().__init__()
        self._rules = rules

    def get(self, request: server.Request) -> dict:
        return {"ip": self._rules.client_ip(request)}


class Punch(CoordinatorResource):
    methods = ("POST",)

    async def post(self, request: server.Request) -> dict:
        node_id = caller(self._coordinator, request)
        with answering_errors():
            answer = await self._coordinator.punch(parse_punch(read_json_body(request)), node_id)
        return answer.to_json()


class Leave(CoordinatorResource):
    methods = ("POST",)

    def post(self, request: server.Request) -> dict:
        calling = caller(self._coordinator, request)
        body = read_json_body(request)
        with answering_errors():
            leaving = LeaveRequest.from_json(body)
            was_online = self._coordinator.leave(leaving.node_id, leaving.wg_public_key, calling)
        return {"ok": True, "was_online": was_online}


class Relay(CoordinatorResource):
    """``POST /relay``: the caller's side of a relay session with a peer."""

    methods = ("POST",)

    async def post(self, request: server.Request) -> dict:
        calling = caller(self._coordinator, request)
        body = read_json_body(request)
        with answering_errors():
            asked = RelayRequest.from_json(body)
            grant = await self._coordinator.relay_grant(
                asked.node_id, asked.wg_public_key, asked.peer_node_id, calling, fastpath=asked.fastpath, held=asked.held,
                direct=asked.direct,
            )
        return {"ok": True, **grant.to_json()}


class Path(CoordinatorResource):
    """``POST /path``: the caller's direct path to a peer failed; answers
    with whether the server changed the pair's path, and the path now."""

    methods = ("POST",)

    async def post(self, request: server.Request) -> dict:
        self._rules.admit(request, self._rules.path_limit, "path reports")
        calling = caller(self._coordinator, request)
        body = read_json_body(request)
        with answering_errors():
            report = PathReport.from_json(body)
            answer = await self._coordinator.report_path(report, calling)
        return answer.to_json()


class Report(CoordinatorResource):
    """``POST /report``: the caller's paths to its peers, for the admin's view of the mesh."""

    methods = ("POST",)

    def post(self, request: server.Request) -> dict:
        calling = caller(self._coordinator, request)
        body = read_json_body(request)
        with answering_errors():
            kept = self._coordinator.report(NodeReport.from_json(body), calling)
        return {"ok": True, "kept": kept}


def build_root(coordinator: Coordinator, rules: ClientRules = ClientRules()) -> JsonRoot:
    root = JsonRoot()
    root.putChild(b"register", Register(coordinator, rules))
    root.putChild(b"enroll", Enroll(coordinator, rules))
    root.putChild(b"peers", Peers(coordinator, rules))
    root.putChild(b"status", Status(coordinator))
    root.putChild(b"health", Health(coordinator))
    root.putChild(b"ip", YourIp(rules))
    root.putChild(b"punch", Punch(coordinator))
    root.putChild(b"leave", Leave(coordinator))
    root.putChild(b"relay", Relay(coordinator))
    root.putChild(b"path", Path(coordinator, rules))
    root.putChild(b"report", Report(coordinator))
    root.putChild(b"metrics", MetricsResource(coordinator.metrics))
    if coordinator.replica_caller is not None:
        # Replicas only: the call a replica makes of a pair's home (403 to anyone else).
        root.putChild(b"cluster", cluster_root(coordinator, coordinator.replica_caller.secret))
    return root


def build_site(coordinator: Coordinator, rules: ClientRules = ClientRules()) -> server.Site:
    """The API as served; its connections are timed by the coordinator's clock."""

    def observe_status(code: int) -> None:
        if code >= 400:
            coordinator.metrics.http_errors.labels(str(code)).inc()

    return make_site(build_root(coordinator, rules), observe_status=observe_status, reactor=coordinator.clock)
