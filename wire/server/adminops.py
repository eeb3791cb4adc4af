"""The admin's operations as one table: each one's name, what it takes,
the Admin method it runs, and where it is served.

Three things are built from ``OPERATIONS`` and nothing else: the admin
socket's site (wire.server.admin), the remote API under ``/api/v1``
(wire.server.adminapi) and its OpenAPI description (wire.server.openapi).
So an operation's input is checked once, here, however it came (a JSON
body, a query string, a path segment), the same Admin method runs, and the
description cannot drift from what is served.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, cast

from twisted.web import server

from wire.policy import PolicyError
from wire.protocol import ProtocolError
from wire.protocol.fields import MAX_TAGS, parse_tags
from wire.server.admin import MAX_EXPIRY, MIN_EPHEMERAL_AFTER, Admin, RouteRefused
from wire.server.apikeys import DEFAULT_EXPIRY as API_KEY_EXPIRY
from wire.server.apikeys import MAX_EXPIRY as API_KEY_MAX_EXPIRY
from wire.server.apikeys import parse_api_key_name
from wire.server.auth import ACTOR, AuthError, acting_as
from wire.server.dnsbook import DnsError
from wire.server.meshview import TooManyWaiters
from wire.server.registry import RegistryConflict
from wire.server.store import StoreError
from wire.urls import parse_server_url
from wire.web import ApiError

MAX_TEXT = 1000
MAX_AUDIT = 1000
# Who calls over the admin socket (root, or the server's user, on its machine).
SOCKET_ACTOR = "admin"


# -- what a parameter may be ---------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A parameter's type: how a JSON value is checked (``parse(value, field)``,
    ApiError 400 naming the field), how a query or path string becomes that
    value (``from_text``), and its JSON Schema (for OpenAPI)."""

    schema: dict
    parse: Callable[[Any, str], Any]
    from_text: Callable[[str, str], Any] = lambda text, field: text

    def read_text(self, text: str, field: str) -> Any:
        return self.parse(self.from_text(text, field), field)


def _bad(field: str, problem: str) -> ApiError:
    return ApiError(400, f"{field}: {problem}")


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(field, "must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise _bad(field, f"at most {MAX_TEXT} characters")
    return value


def _any_text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _bad(field, "must be a string")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(field, "must be true or false")
    return value


def _bool_text(text: str, field: str) -> Any:
    return {"true": True, "false": False}.get(text, text)


def _int_text(text: str, field: str) -> Any:
    try:
        return int(text)
    except ValueError:
        raise _bad(field, f"{text[:20]!r} is not a whole number")


def _number_text(text: str, field: str) -> Any:
    try:
        return float(text)
    except ValueError:
        raise _bad(field, f"{text[:20]!r} is not a number")


def seconds(low: float, high: float, problem: str = "", above: bool = False) -> Kind:
    """A number of seconds from ``low`` (or, ``above``, more than ``low``) to ``high``."""

    def parse(value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low < value if above else low <= value) or value > high:
            raise _bad(field, problem or f"must be a number of seconds from {low:g} to {high:.0f}")
        return float(value)

    bound = {"exclusiveMinimum": low} if above else {"minimum": low}
    return Kind({"type": "number", **bound, "maximum": high}, parse, _number_text)


def whole(low: int, high: int, problem: str) -> Kind:
    def parse(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _bad(field, problem)
        return value

    return Kind({"type": "integer", "minimum": low, "maximum": high}, parse, _int_text)


def _strings(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _bad(field, "must be a list of strings")
    return value


def _tags(value: Any, field: str) -> tuple[str, ...]:
    try:
        return parse_tags(value, field)
    except ProtocolError as e:
        raise ApiError(400, str(e))


def _url(value: Any, field: str) -> str:
    try:
        return parse_server_url(_text(value, field))
    except ProtocolError as e:
        raise _bad(field, e.problem)


def _name(value: Any, field: str) -> str:
    try:
        return parse_api_key_name(value)
    except ValueError as e:
        raise ApiError(400, str(e))


def _ephemeral_after(value: Any, field: str) -> float:
    after = seconds(0, MAX_EXPIRY, f"must be a number of seconds from 1 to {MAX_EXPIRY:.0f}, or absent").parse(value or 0.0, field)
    if after and after < MIN_EPHEMERAL_AFTER:
        raise _bad(field, f"at least {MIN_EPHEMERAL_AFTER:.0f} s (a node offline for less may just be rebooting)")
    return after


TEXT = Kind({"type": "string", "minLength": 1, "maxLength": MAX_TEXT}, _text)
ANY_TEXT = Kind({"type": "string"}, _any_text)
BOOL = Kind({"type": "boolean"}, _bool, _bool_text)
STRINGS = Kind({"type": "array", "items": {"type": "string"}}, _strings)
TAGS = Kind({"type": "array", "maxItems": MAX_TAGS, "items": {"type": "string", "description": "tag:NAME (or NAME), NAME a DNS label"}}, _tags)
URL = Kind({"type": "string", "format": "uri"}, _url)
NAME = Kind({"type": "string", "maxLength": 64}, _name)
PORT = whole(0, 65535, "must be 0..65535, or absent")
EPHEMERAL_AFTER = Kind({"type": "number", "minimum": 0, "maximum": MAX_EXPIRY}, _ephemeral_after, _number_text)


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind
    doc: str
    required: bool = False
    default: Any = None


def required(name: str, kind: Kind, doc: str) -> Param:
    return Param(name, kind, doc, required=True)


def optional(name: str, kind: Kind, doc: str, default: Any = None) -> Param:
    return Param(name, kind, doc, default=default)


# -- the operations ------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One admin operation.

    ``api``: its method and path under /api/v1 (``{name}`` segments are
    parameters); None: not served there. ``socket``: its method and path on
    the admin socket, and the ``action`` that picks it when several share
    one path (the socket's paths predate /api/v1); None: not served there.
    ``run(admin, args)`` gets every parameter, parsed, by name (absent
    optional ones as their default).
    """

    name: str
    summary: str
    run: Callable[[Admin, dict[str, Any]], Any]
    params: tuple[Param, ...] = ()
    api: tuple[str, str] | None = None
    socket: tuple[str, str, str | None] | None = None

    @property
    def changes(self) -> bool:
        """Whether it changes anything (what a read-only key may not do: any method but GET)."""
        method = self.api[0] if self.api else self.socket[0] if self.socket else "GET"
        return method != "GET"

    def path_params(self) -> tuple[str, ...]:
        if self.api is None:
            return ()
        return tuple(segment[1:-1] for segment in self.api[1].strip("/").split("/") if segment.startswith("{"))

    def parse(self, inputs: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
        """Every parameter from ``inputs`` (JSON values) or ``texts`` (a query's
        or a path's strings); an unknown field or a missing one is a 400 naming it."""
        known = {p.name for p in self.params}
        for field in [*inputs, *texts]:
            if field not in known:
                raise ApiError(400, f"{field}: not a field of {self.name} (it takes: {', '.join(sorted(known)) or 'nothing'})")
        args: dict[str, Any] = {}
        for param in self.params:
            if param.name in texts:
                args[param.name] = param.kind.read_text(texts[param.name], param.name)
            elif inputs.get(param.name) is not None:
                args[param.name] = param.kind.parse(inputs[param.name], param.name)
            elif param.required:
                param.kind.parse(None, param.name)  # the kind's own words: "route: must be a non-empty string"
                raise ApiError(400, f"{param.name}: required ({param.doc})")
            else:
                args[param.name] = param.default
        return args

    async def call(self, admin: Admin, args: dict[str, Any], actor: str) -> dict:
        """Run it as ``actor`` (its audit entries name them); what Admin refuses becomes its HTTP status."""
        with acting_as(actor), answering_admin_errors():
            result = self.run(admin, args)
            if inspect.isawaitable(result):
                result = await result
        return {"ok": True, **result}


@contextmanager
def answering_admin_errors():
    """The one mapping from what an admin operation refuses to HTTP statuses."""
    try:
        yield
    except ApiError:
        raise
    except AuthError as e:
        raise ApiError(e.status, str(e))
    except (RouteRefused, RegistryConflict) as e:
        raise ApiError(409, str(e))
    except (ProtocolError, PolicyError, DnsError) as e:
        raise ApiError(400, str(e))
    except LookupError as e:  # KeyError's str() adds quotes: its message is args[0]
        raise ApiError(404, str(e.args[0]) if e.args else "not found")
    except (StoreError, TooManyWaiters) as e:
        raise ApiError(503, str(e))


NODE = required("node", TEXT, "a node's name, node id or VPN address")


def _events(admin: Admin, args: dict) -> Any:
    async def events() -> dict:
        return {"events": await admin.audit(args["limit"])}

    return events()


OPERATIONS: tuple[Operation, ...] = (
    # -- the mesh
    Operation("health", "The mesh at a glance: the server, its nodes online and offline, keys, policy and DNS versions", lambda a, _: a.summary(), api=("GET", "/health")),
    Operation("nodes.list", "Every node", lambda a, _: a.coordinator.status(), api=("GET", "/nodes"), socket=("GET", "/nodes", None)),
    Operation("nodes.show", "One node, with its routes", lambda a, x: a.show_node(x["node"]), (NODE,), api=("GET", "/nodes/{node}")),
    Operation(
        "nodes.rename", "Rename a node (its DNS name follows)", lambda a, x: a.rename_node(x["node"], x["new_name"]),
        (NODE, required("new_name", TEXT, "the node's new name, a DNS label")),
        api=("POST", "/nodes/{node}/rename"), socket=("POST", "/rename-node", None),
    ),
    Operation(
        "nodes.tag", "Replace a node's tags (an empty list: none)", lambda a, x: a.tag_node(x["node"], x["tags"]),
        (NODE, required("tags", TAGS, "the node's tags, tag:NAME")),
        api=("PUT", "/nodes/{node}/tags"), socket=("POST", "/tag-node", None),
    ),
    Operation(
        "nodes.remove", "Remove a node: out of every peer's netmap within a second, its credential void", lambda a, x: a.remove_node(x["node"]),
        (NODE,), api=("DELETE", "/nodes/{node}"), socket=("POST", "/remove-node", None),
    ),
    # -- join keys
    Operation("keys.list", "Every join key, with its state", lambda a, _: a.keys(), api=("GET", "/keys"), socket=("GET", "/keys", None)),
    Operation(
        "keys.create", "A new join key, and the join token and command that carry it (shown once)",
        lambda a, x: a.create_key(x["reusable"], x["expires_in"], x["note"], x["url"], x["tags"], x["ephemeral_after"]),
        (
            optional("reusable", BOOL, "whether it may enroll more than one node", False),
            optional("expires_in", seconds(0, MAX_EXPIRY, f"must be a number of seconds from 1 to {MAX_EXPIRY:.0f}", above=True), "seconds until it expires (absent: never)"),
            optional("note", ANY_TEXT, "a note for the listing", ""),
            optional("url", URL, "the server URL the token gives (default: the server's public URL)"),
            optional("tags", TAGS, "tags for every node it enrolls", ()),
            optional("ephemeral_after", EPHEMERAL_AFTER, "its nodes are removed once offline this many seconds (0: never)", 0.0),
        ),
        api=("POST", "/keys"), socket=("POST", "/keys", None),
    ),
    Operation(
        "keys.revoke", "Revoke a join key: no node may join with it any more", lambda a, x: _key(a.revoke_key(x["key_id"])),
        (required("key_id", TEXT, "the key's id, from keys.list"),), api=("DELETE", "/keys/{key_id}"), socket=("POST", "/revoke-key", None),
    ),
    # -- the access policy
    Operation("policy.get", "The access policy in force", lambda a, _: a.policy(), api=("GET", "/policy"), socket=("GET", "/policy", None)),
    Operation(
        "policy.set", "Validate a policy, run its tests, and put it in force", lambda a, x: a.set_policy(x["text"], x["source"] or _actor()),
        (required("text", ANY_TEXT, "the policy (HuJSON)"), optional("source", TEXT, "who or what set it, for the history (default: the caller)")),
        api=("PUT", "/policy"), socket=("POST", "/policy", "set"),
    ),
    Operation(
        "policy.check", "Validate a policy and run its tests, changing nothing", lambda a, x: a.check_policy(x["text"]),
        (required("text", ANY_TEXT, "the policy (HuJSON)"),), api=("POST", "/policy/check"), socket=("POST", "/policy", "check"),
    ),
    Operation("policy.clear", "No policy: every node may reach every node", lambda a, _: a.clear_policy(), api=("DELETE", "/policy"), socket=("POST", "/policy", "clear")),
    Operation("policy.history", "Every version of the policy", lambda a, _: a.policy_history(), api=("GET", "/policy/history"), socket=("POST", "/policy", "history")),
    Operation(
        "policy.rollback", "Put an earlier version in force again (as a new version)", lambda a, x: a.rollback_policy(x["version"]),
        (required("version", whole(1, 2**53, "must be a version number from wire admin policy history"), "the version, from policy.history"),),
        api=("POST", "/policy/rollback"), socket=("POST", "/policy", "rollback"),
    ),
    Operation(
        "policy.explain", "Whether the policy lets src reach dst (on port/proto), and by which rule",
        lambda a, x: a.explain_policy(x["src"], x["dst"], x["port"], x["proto"]),
        (
            required("src", TEXT, "a node (name, id or address)"),
            required("dst", TEXT, "a node or address"),
            optional("port", PORT, "the port (absent: any)"),
            optional("proto", TEXT, "tcp, udp or icmp", "tcp"),
        ),
        api=("GET", "/policy/explain"), socket=("POST", "/policy", "explain"),
    ),
    # -- routes beyond the mesh
    Operation("routes.list", "Every node's advertised and approved routes", lambda a, _: a.routes(), api=("GET", "/routes"), socket=("GET", "/routes", None)),
    Operation(
        "routes.approve", "Approve a route a node advertises", lambda a, x: a.approve_route(x["node"], x["route"]),
        (NODE, required("route", TEXT, "a network, e.g. 192.168.1.0/24, or 0.0.0.0/0 for an exit node")),
        api=("POST", "/routes/approve"), socket=("POST", "/routes", "approve"),
    ),
    Operation(
        "routes.reject", "Withdraw a route's approval", lambda a, x: a.reject_route(x["node"], x["route"]),
        (NODE, required("route", TEXT, "an approved network")), api=("POST", "/routes/reject"), socket=("POST", "/routes", "reject"),
    ),
    # -- mesh DNS
    Operation("dns.get", "The mesh's DNS: domain, records, forwarded zones, nameservers", lambda a, _: a.dns(), api=("GET", "/dns"), socket=("GET", "/dns", None)),
    Operation(
        "dns.records.add", "Add a DNS record under the mesh's domain", lambda a, x: a.add_dns_record(x["name"], x["type"], x["value"]),
        (required("name", TEXT, "the name under the mesh domain"), required("type", TEXT, "A, AAAA, CNAME or TXT"), required("value", TEXT, "the record's value")),
        api=("POST", "/dns/records"), socket=("POST", "/dns", "add-record"),
    ),
    Operation(
        "dns.records.remove", "Remove a name's records (only those of type, and value, if given)",
        lambda a, x: a.remove_dns_records(x["name"], x["type"], x["value"]),
        (required("name", TEXT, "the record's name"), optional("type", TEXT, "only records of this type"), optional("value", TEXT, "only records with this value")),
        api=("DELETE", "/dns/records/{name}"), socket=("POST", "/dns", "remove-record"),
    ),
    Operation(
        "dns.forward", "Send queries under a domain to these resolvers", lambda a, x: a.forward_dns(x["domain"], x["resolvers"]),
        (required("domain", TEXT, "the domain"), required("resolvers", STRINGS, "resolver addresses")),
        api=("PUT", "/dns/forward/{domain}"), socket=("POST", "/dns", "forward"),
    ),
    Operation(
        "dns.unforward", "Stop forwarding a domain", lambda a, x: a.unforward_dns(x["domain"]),
        (required("domain", TEXT, "the domain"),), api=("DELETE", "/dns/forward/{domain}"), socket=("POST", "/dns", "unforward"),
    ),
    Operation(
        "dns.nameservers", "The nameservers nodes use for everything else (empty: each node's own)",
        lambda a, x: a.set_dns_nameservers(x["resolvers"]), (required("resolvers", STRINGS, "resolver addresses"),),
        api=("PUT", "/dns/nameservers"), socket=("POST", "/dns", "nameservers"),
    ),
    # -- the audit log
    Operation(
        "audit", "The latest audit log entries, newest first, each with who made it", _events,
        (optional("limit", whole(1, MAX_AUDIT, f"must be 1..{MAX_AUDIT}"), "how many entries", 100),),
        api=("GET", "/audit"), socket=("GET", "/audit", None),
    ),
    Operation(
        "mesh", "Every node and every path nodes report between them; with since, waits (at most wait seconds) until the mesh moves past that version",
        lambda a, x: a.mesh(x["since"], x["wait"]),
        (
            optional("since", whole(0, 2**53, "must be a version from an earlier mesh answer"), "the version held (answer when the mesh is past it)"),
            optional("wait", seconds(0, 25), "seconds to wait for a change (at most 25; a quiet mesh answers every few seconds)", 0.0),
        ),
        api=("GET", "/mesh"), socket=("GET", "/mesh", None),
    ),
    # -- the dashboard: its login links come from the server's machine only.
    Operation("dashboard.link", "A one-time login link to the dashboard, valid 10 minutes", lambda a, _: a.dashboard_link(), socket=("POST", "/dashboard", None)),
    # -- admin API keys: made and revoked on the server's machine only, so a
    # leaked key cannot mint itself a successor that outlives its revocation.
    Operation("apikeys.list", "Every admin API key", lambda a, _: a.api_keys(), socket=("GET", "/apikeys", None)),
    Operation(
        "apikeys.create", "A new admin API key (shown once)", lambda a, x: a.create_api_key(x["name"], x["expires_in"], x["read_only"]),
        (
            optional("name", NAME, "a name for the listing", ""),
            optional("expires_in", seconds(0, API_KEY_MAX_EXPIRY, f"must be a number of seconds from 1 to {API_KEY_MAX_EXPIRY:.0f}", above=True), "seconds until it expires", API_KEY_EXPIRY),
            optional("read_only", BOOL, "GET only", False),
        ),
        socket=("POST", "/apikeys", None),
    ),
    Operation(
        "apikeys.revoke", "Revoke an admin API key at once", lambda a, x: a.revoke_api_key(x["key_id"]),
        (required("key_id", TEXT, "the key's id, from apikeys list"),), socket=("POST", "/revoke-apikey", None),
    ),
)

BY_NAME = {op.name: op for op in OPERATIONS}


def query_texts(request: server.Request) -> dict[str, str]:
    """A request's query as one string per field (a field given twice is a 400)."""
    texts = {}
    # Twisted types args by its class default, None; it is a dict by the time a resource renders.
    for raw, values in cast(dict[bytes, list[bytes]], request.args).items():
        try:
            field, text = raw.decode("utf-8"), [value.decode("utf-8") for value in values]
        except UnicodeDecodeError:
            raise ApiError(400, f"{raw[:40]!r}: the query is not UTF-8 text")
        if len(text) > 1:
            raise ApiError(400, f"{field}: given {len(text)} times; give it once")
        texts[field] = text[0]
    return texts


async def _key(revoked: Any) -> dict:
    return {"key": await revoked}


def _actor() -> str:
    """Who calls: a policy's default source in its history."""
    return ACTOR.get() or SOCKET_ACTOR
