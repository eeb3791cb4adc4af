"""The admin API's OpenAPI 3.1 description, made from the operations'
table (wire.server.adminops), so it describes exactly what is served.

It is served without authentication (``GET /api/v1/openapi.json``): it
holds the API's shape only, which the README and the source publish anyway,
nothing of the mesh; tools that read it (code generators, Swagger UI) can
then fetch it before they are given a key.
"""

from __future__ import annotations

from typing import Any

from wire import __version__
from wire.server.adminops import OPERATIONS, Operation

ERRORS = {
    "400": "Bad input: the error names the field",
    "401": "No API key, or a malformed, unknown, expired or revoked one",
    "403": "A read-only key, on a method other than GET",
    "404": "No such node, key, record or version",
    "409": "In conflict with the mesh (a name taken, a route approved by the policy)",
    "413": "The body is too large",
    "429": "Too many failed authentications from this address (see Retry-After)",
    "503": "The database could not be written: nothing changed",
}


def _error() -> dict:
    return {"$ref": "#/components/responses/Error"}


def _operation(op: Operation) -> dict[str, Any]:
    assert op.api is not None
    method, _ = op.api
    in_path = set(op.path_params())
    in_body = method in ("POST", "PUT")
    parameters = [
        {
            "name": p.name,
            "in": "path" if p.name in in_path else "query",
            "required": p.required or p.name in in_path,
            "description": p.doc,
            "schema": p.kind.schema,
        }
        for p in op.params
        if p.name in in_path or not in_body
    ]
    described: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.summary,
        "tags": [op.name.split(".")[0]],
        "responses": {"200": {"$ref": "#/components/responses/Ok"}, **{code: _error() for code in ERRORS if code != "403" or op.changes}},
    }
    if parameters:
        described["parameters"] = parameters
    body = [p for p in op.params if p.name not in in_path] if in_body else []
    if body:
        schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {p.name: {**p.kind.schema, "description": p.doc} for p in body},
        }
        needed = [p.name for p in body if p.required]
        if needed:
            schema["required"] = needed
        described["requestBody"] = {"required": bool(needed), "content": {"application/json": {"schema": schema}}}
    return described


def openapi_document(prefix: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        if op.api is not None:
            method, path = op.api
            paths.setdefault(prefix + path, {})[method.lower()] = _operation(op)
    paths[prefix + "/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This description",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {}}}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wire admin API",
            "version": __version__,
            "description": "The coordination server's admin operations, for admin API keys (wire admin apikeys create).",
        },
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "wire_ak_<id>_<secret>, from wire admin apikeys create"}
            },
            "responses": {
                "Ok": {
                    "description": "Done: the answer, with ok true",
                    "content": {"application/json": {"schema": {"type": "object", "properties": {"ok": {"const": True}}, "required": ["ok"]}}},
                },
                "Error": {
                    "description": " / ".join(f"{code}: {text}" for code, text in ERRORS.items()),
                    "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}},
                },
            },
        },
    }
