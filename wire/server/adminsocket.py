"""The admin socket's site: the operations' table (wire.server.adminops) at
the socket's own paths, which ``wire admin`` (wire.client.AdminClient) speaks.

Several operations share a path there (``POST /policy`` sets, checks,
clears...), told apart by the body's ``action``: the socket's paths predate
the table. Whoever opens the socket is the server's admin (it is 0600 in the
data dir): their changes are audited as ``admin``.
"""

from __future__ import annotations

from collections import defaultdict

from twisted.web import server

from wire.server.admin import Admin
from wire.server.adminops import OPERATIONS, SOCKET_ACTOR, Operation, query_texts
from wire.web import ApiError, JsonResource, JsonRoot, make_site, read_json_body


def _one_of(actions: list[str]) -> str:
    return actions[0] if len(actions) == 1 else f"{', '.join(actions[:-1])} or {actions[-1]}"


class SocketEndpoint(JsonResource):
    """One socket path: the operations served there, by method (and action)."""

    def __init__(self, admin: Admin, operations: dict[str, list[Operation]]):
        super().__init__()
        self.admin = admin
        self.operations = operations
        self.methods = tuple(operations)

    def get(self, request: server.Request):
        return self._answer(request, "GET")

    def post(self, request: server.Request):
        return self._answer(request, "POST")

    async def _answer(self, request: server.Request, method: str) -> dict:
        inputs = read_json_body(request) if method != "GET" else {}
        operations = self.operations[method]
        actions = {op.socket[2]: op for op in operations if op.socket is not None and op.socket[2] is not None}
        if not actions:
            operation = operations[0]
        else:
            action = inputs.pop("action", None)
            if action not in actions:
                raise ApiError(400, f"action: must be {_one_of(list(actions))}")
            operation = actions[action]
        return await operation.call(self.admin, operation.parse(inputs, query_texts(request)), SOCKET_ACTOR)


def socket_site(admin: Admin) -> server.Site:
    by_path: dict[str, dict[str, list[Operation]]] = defaultdict(lambda: defaultdict(list))
    for operation in OPERATIONS:
        if operation.socket is not None:
            method, path, _ = operation.socket
            by_path[path][method].append(operation)
    root = JsonRoot()
    for path, operations in by_path.items():
        root.putChild(path.strip("/").encode(), SocketEndpoint(admin, dict(operations)))
    return make_site(root, timeout=30, reactor=admin.coordinator.clock)
