"""The remote admin API for real: a ``twistd wire-server`` process on
127.0.0.1 with its self-signed certificate, a key made by the ``wire admin
apikeys create`` command over the real admin socket, and treq pinned to the
server's certificate fingerprint (as ``curl --cacert`` would pin it)."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.trial import unittest

from tests.helpers import registration_for, short_dir
from tests.serverproc import ServerProcess
from tests.test_cli import run_wire
from tests.test_replicas import OnOneDatabase, eventually
from wire.admin_ops import AdminOps
from wire.client import CoordinationClient
from wire.jointoken import decode_join_token
from wire.protocol import MAX_BODY_BYTES


class RealServerTests(unittest.TestCase):
    timeout = 120

    async def apikey(self, *options: str) -> dict:
        code, out, err = await run_wire("admin", "--data-dir", self.server.data_dir, "apikeys", "create", "--json", *options)
        self.assertEqual(code, 0, err)
        return json.loads(out)

    async def request(self, method: str, path: str, token: str | None, body=None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        response = await self.http.request(method, f"{self.server.url}/api/v1{path}", data=data, headers=headers, timeout=10)
        return response.code, json.loads(await response.content())

    async def test_a_key_from_the_cli_lists_and_tags_nodes_over_pinned_https_until_revoked(self):
        self.server = ServerProcess(self, short_dir(self))
        await self.server.start()
        self.assertTrue(self.server.url.startswith("https://127.0.0.1:"))
        self.http = self.server.client()  # pinned to the server's self-signed certificate
        token = (await AdminOps(reactor, self.server.data_dir).create_key(reusable=True))["token"]
        for name in ("web1", "db1"):
            await CoordinationClient(self.server.client(), self.server.url).enroll(registration_for(name), decode_join_token(token).secret)

        created = await self.apikey("--name", "automation")
        key, key_id = created["token"], created["api_key"]["key_id"]
        code, listed = await self.request("GET", "/nodes", key)
        self.assertEqual((code, sorted(n["node_name"] for n in listed["nodes"])), (200, ["db1", "web1"]), listed)
        code, tagged = await self.request("PUT", "/nodes/web1/tags", key, {"tags": ["tag:web", "tag:prod"]})
        self.assertEqual((code, tagged["tags"]), (200, ["tag:prod", "tag:web"]), tagged)
        code, listed = await self.request("GET", "/nodes", key)
        self.assertEqual({n["node_name"]: n["tags"] for n in listed["nodes"]}, {"db1": [], "web1": ["tag:prod", "tag:web"]})

        # The server's own size limit, on the real request path.
        code, answer = await self.request("PUT", "/policy", key, b'{"text": "' + b" " * MAX_BODY_BYTES + b'"}')
        self.assertEqual((code, answer["error"]), (413, f"body is larger than {MAX_BODY_BYTES} bytes"))
        reader = (await self.apikey("--read-only"))["token"]
        code, answer = await self.request("PUT", "/nodes/web1/tags", reader, {"tags": []})
        self.assertEqual(code, 403, answer)
        code, document = await self.request("GET", "/openapi.json", None)
        self.assertEqual((code, document["info"]["title"]), (200, "wire admin API"))

        code, out, err = await run_wire("admin", "--data-dir", self.server.data_dir, "apikeys", "revoke", key_id)
        self.assertEqual(code, 0, err)
        code, answer = await self.request("GET", "/nodes", key)
        self.assertEqual((code, answer["error"]), (401, f"API key {key_id} was revoked"))
        code, answer = await self.request("GET", "/nodes", None)
        self.assertEqual(code, 401, answer)

        code, out, err = await run_wire("admin", "--data-dir", self.server.data_dir, "audit", "--json")
        events = json.loads(out)["events"]
        self.assertEqual([(e["event"], e["actor"]) for e in events if e["event"] == "node.tag"], [("node.tag", f"apikey:{key_id}")])
        self.assertEqual([e["actor"] for e in events if e["event"] == "apikey.revoke"], ["admin"])


class ReplicaApiTests(OnOneDatabase):
    """Two real replicas on one real PostgreSQL: a key made at one works at the
    other, and a key revoked at one stops working at the other."""

    MODE = "--plain-http"

    async def status(self, server, token: str) -> tuple[int, dict]:
        response = await self.http.get(f"{server.url}/api/v1/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        return response.code, json.loads(await response.content())

    async def test_a_key_made_at_one_replica_works_at_the_other_until_revoked_there(self):
        a, b = self.replica("a"), self.replica("b")
        await a.start()
        await b.start()
        code, out, err = await run_wire("admin", "--data-dir", a.data_dir, "apikeys", "create", "--json")
        self.assertEqual(code, 0, err)
        token, key_id = json.loads(out)["token"], json.loads(out)["api_key"]["key_id"]

        async def works_at_b():
            return (await self.status(b, token))[0] == 200

        self.assertTrue(await eventually(works_at_b), "b does not know a's key")
        code, out, err = await run_wire("admin", "--data-dir", b.data_dir, "apikeys", "revoke", key_id)
        self.assertEqual(code, 0, err)

        async def refused_at_a():
            code, answer = await self.status(a, token)
            return (code, answer.get("error")) if code == 401 else None

        self.assertEqual(await eventually(refused_at_a), (401, f"API key {key_id} was revoked"))
