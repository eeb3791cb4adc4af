"""A hostile coordination server: the documented node API, answering what a test scripts.

Run as a program (the lab starts it in its server namespace)::

    python tests/hostile_server.py DIR ADDRESS PORT

or in a test's own reactor: ``site(Script(DIR))``.

It speaks plain HTTP like an ``--open`` wire-server: ``POST /register``,
``GET /peers?since=CURSOR&wait=S`` (the long-poll), ``GET /health`` and
``POST /leave``; ``/relay`` and ``/path`` answer 404 like a seed server.
A test steers it through two files in DIR:

- ``state.json``, rewritten atomically: ``{"version": N, "register": {...},
  "peers": SPEC}``. ``register`` replaces fields of every register answer
  (``null`` leaves a field out; ``{"raw": TEXT}`` sends TEXT as the whole
  body). ``peers`` is what a long-poll gets: ``{"json": ANSWER}``, ``{"raw":
  TEXT}``, ``{"trickle": SECONDS}`` (one byte every SECONDS, then silence)
  or ``{"flood": BYTES}`` (that many bytes of an endless JSON string). A
  ``json`` answer's cursor is ``1:N``; a long-poll already at ``1:N`` waits
  for the next version.
- ``served.jsonl``, appended here: one line per answer given (path,
  version, what), so a test knows the node has had an answer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor, task
from twisted.web import resource, server

from wire.keys import generate_private_key, public_key_for

DEFAULT_ASSIGNMENT = {"vpn_ip": "10.99.0.5", "vpn_subnet": "10.99.0.0/16", "offline_after": 60}
POLL_FILE_EVERY = 0.05


class Script:
    """The test's latest state.json, and a log of what was served."""

    def __init__(self, directory: str):
        self.directory = directory
        self.state: dict[str, Any] = {"version": 0, "register": {}, "peers": {"json": {}}}
        self._mtime = 0.0
        self._waiters: list[Any] = []
        self._reloading = task.LoopingCall(self.reload)
        self._reloading.start(POLL_FILE_EVERY)

    def stop(self) -> None:
        self._reloading.stop()

    @property
    def version(self) -> int:
        return int(self.state.get("version", 0))

    def reload(self) -> None:
        path = os.path.join(self.directory, "state.json")
        try:
            mtime = os.stat(path).st_mtime_ns
            if mtime == self._mtime:
                return
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return
        self._mtime, self.state = mtime, state
        waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    def on_change(self, wake) -> None:
        self._waiters.append(wake)

    def served(self, path: str, what: str) -> None:
        line = json.dumps({"at": time.time(), "path": path, "version": self.version, "what": what})
        with open(os.path.join(self.directory, "served.jsonl"), "a") as f:
            f.write(line + "\n")


class Steering:
    """The test's side of DIR: it writes the state, reads what was served."""

    def __init__(self, directory: str):
        self.directory = directory
        self.version = 0
        os.makedirs(directory, exist_ok=True)
        self.write()

    def write(self, register: dict | None = None, peers: dict | None = None) -> int:
        """A new state.json; returns its version (a json answer's cursor is 1:VERSION)."""
        self.version += 1
        state = {"version": self.version, "register": register or {}, "peers": peers or {"json": {}}}
        path = os.path.join(self.directory, "state.json")
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(path + ".tmp", path)
        return self.version

    def served(self) -> list[dict]:
        try:
            with open(os.path.join(self.directory, "served.jsonl")) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def was_served(self, path: str, version: int, what: str | None = None) -> bool:
        return any(s["path"] == path and s["version"] >= version and (what is None or s["what"] == what) for s in self.served())


def peers_answer(peers: list[dict], **fields) -> dict:
    """A ``peers`` spec: a full netmap of these peer views."""
    return {"json": {"upserts": peers, **fields}}


def peer(number: int, vpn_ip: str, key: str | None = None) -> dict:
    """A peer view as a server sends it (nothing listens behind it)."""
    return {
        "node_id": f"peer-{number}",
        "node_name": f"peer{number}",
        "wg_public_key": key or public_key_for(generate_private_key()),
        "vpn_ip": vpn_ip,
        "public_ip": f"198.19.200.{number % 250 + 1}",
        "port": 51820,
        "nat_port": 51820,
        "nat_type": "none",
        "online": True,
    }


def _json(request, body: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode()


class Register(resource.Resource):
    isLeaf = True

    def __init__(self, script: Script):
        super().__init__()
        self.script = script

    def render_POST(self, request) -> bytes:
        try:
            asked = json.loads(request.content.read())
            node_id = asked["node_id"]
        except (ValueError, KeyError, TypeError):
            return _json(request, {"error": "bad registration"}, 400)
        poison = self.script.state.get("register") or {}
        self.script.served("/register", "raw" if "raw" in poison else "json")
        if "raw" in poison:
            request.setHeader(b"content-type", b"application/json")
            return poison["raw"].encode()
        answer: dict[str, Any] = {"ok": True, "your_ip": request.getClientAddress().host, "node_id": node_id}
        answer |= DEFAULT_ASSIGNMENT | {"node_name": asked.get("node_name", "")}
        for field, value in poison.items():
            if value is None:
                answer.pop(field, None)
            else:
                answer[field] = value
        return _json(request, answer)


class Peers(resource.Resource):
    isLeaf = True

    def __init__(self, script: Script):
        super().__init__()
        self.script = script

    def render_GET(self, request):
        query = parse_qs(urlsplit(request.uri.decode()).query)
        since = query.get("since", ["0"])[0]
        wait = min(float(query.get("wait", ["0"])[0] or 0), 60.0)
        if since == f"1:{self.script.version}" and wait > 0:
            self._hold(request, since, wait)
        else:
            self._answer(request)
        return server.NOT_DONE_YET

    def _hold(self, request, since: str, wait: float) -> None:
        done = {"done": False}

        def answer_now(nothing_new: bool) -> None:
            if done["done"]:
                return
            done["done"] = True
            if timeout.active():
                timeout.cancel()
            if nothing_new:
                self.script.served("/peers", "no change")
                request.write(_json(request, {"cursor": since, "full": False, "upserts": [], "removals": []}))
                request.finish()
            else:
                self._answer(request)

        def gone(_) -> None:
            done["done"] = True
            if timeout.active():
                timeout.cancel()

        timeout = reactor.callLater(wait, answer_now, True)
        self.script.on_change(lambda: answer_now(False))
        request.notifyFinish().addErrback(gone)

    def _answer(self, request) -> None:
        spec = self.script.state.get("peers") or {"json": {}}
        request.setHeader(b"content-type", b"application/json")
        if "json" in spec:
            self.script.served("/peers", "json")
            body = {"cursor": f"1:{self.script.version}", "full": True, "upserts": [], "removals": []}
            request.write(json.dumps(body | spec["json"]).encode())
            request.finish()
        elif "raw" in spec:
            self.script.served("/peers", "raw")
            request.write(spec["raw"].encode())
            request.finish()
        elif "trickle" in spec:
            self.script.served("/peers", "trickle")
            _trickle(request, float(spec["trickle"]))
        elif "flood" in spec:
            self.script.served("/peers", "flood")
            _flood(request, int(spec["flood"]))


def _trickle(request, every: float, count: int = 5) -> None:
    """One byte of a JSON object every ``every`` seconds, ``count`` times, then silence."""
    gone = {"gone": False}
    request.notifyFinish().addBoth(lambda _: gone.update(gone=True))

    def one(left: int) -> None:
        if gone["gone"] or left == 0:
            return  # and never finish: the client's deadline must end it
        request.write(b'{"cursor": "1:0"'[count - left : count - left + 1])
        reactor.callLater(every, one, left - 1)

    one(count)


def _flood(request, total: int, chunk: int = 64 * 1024) -> None:
    """``{"upserts": "xxxx…`` for ``total`` bytes, as fast as the client reads."""
    request.write(b'{"upserts": "')
    state = {"written": 0, "paused": False, "gone": False}

    class Producer:
        def pauseProducing(self):
            state["paused"] = True

        def resumeProducing(self):
            state["paused"] = False
            reactor.callLater(0, more)

        def stopProducing(self):
            state["gone"] = True

    def more() -> None:
        if state["gone"] or state["paused"]:
            return
        if state["written"] >= total:
            request.unregisterProducer()
            request.write(b'"}')
            request.finish()
            return
        request.write(b"x" * chunk)
        state["written"] += chunk
        reactor.callLater(0, more)

    request.registerProducer(Producer(), True)
    request.notifyFinish().addBoth(lambda _: state.update(gone=True))
    more()


class Fixed(resource.Resource):
    isLeaf = True

    def __init__(self, code: int, body: dict):
        super().__init__()
        self.code, self.body = code, body

    def render(self, request) -> bytes:
        return _json(request, self.body, self.code)


def site(script: Script) -> server.Site:
    root = resource.Resource()
    root.putChild(b"register", Register(script))
    root.putChild(b"peers", Peers(script))
    root.putChild(b"health", Fixed(200, {"ok": True, "status": "healthy"}))
    root.putChild(b"leave", Fixed(200, {"ok": True}))
    root.putChild(b"relay", Fixed(404, {"error": "no such endpoint"}))
    root.putChild(b"path", Fixed(404, {"error": "no such path"}))
    return server.Site(root)


def main(directory: str, address: str, port: str) -> None:
    reactor.listenTCP(int(port), site(Script(directory)), interface=address)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
