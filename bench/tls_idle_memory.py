#!/usr/bin/env python3
"""What a node's connection costs the server in memory, with TLS and without.

Starts a real ``twistd -n wire-server`` (TLS, as shipped; ``--plain-http``
to compare) in a temporary data dir, then a separate client process that
opens ``--connections`` keep-alive connections and holds them. What each
connection did before it is held (``--requests``):

- ``health``: one ``GET /health``, then idle, as a kept connection between
  requests;
- ``snapshot``: one ``GET /peers?since=0``, a node's first long-poll, whose
  answer (the whole netmap of ``--mesh-nodes`` nodes, enrolled first through
  the admin socket) is larger than one TLS record; then idle;
- ``longpoll``: the same, then a long-poll on the cursor it returned, left
  waiting: a node's steady state.

Reports the server's VmRSS before and after, and the difference per
connection. Memory only, and short: the client paces its handshakes, and the
run takes a few seconds of CPU. Connections are measured well within the
server's idle timeout (60 s).

    bench/tls_idle_memory.py --connections 2000 --requests longpoll
    bench/tls_idle_memory.py --server-checkout /tmp/wire-before   # another copy of the code
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from OpenSSL import SSL

BENCH_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BENCH_CHECKOUT not in sys.path:
    sys.path.insert(0, BENCH_CHECKOUT)

from bench.procstat import memory_bytes  # noqa: E402
from tests.ports import free_port_triple  # noqa: E402
from wire.jointoken import decode_join_token  # noqa: E402
from wire.datadir import admin_socket_path  # noqa: E402
from wire.protocol import Registration  # noqa: E402
from wire.twistd import twistd_argv  # noqa: E402

SETTLE_SECONDS = 3.0
LONGPOLL_WAIT = 100  # seconds: longer than the measurement
REQUESTS = ("health", "snapshot", "longpoll")


def client_context() -> SSL.Context:
    # As a node's: pyOpenSSL (its OpenSSL offers post-quantum key shares, so
    # its ClientHello is about 1.5 KB, and the server's receiving buffer
    # grows to fit it). The server's certificate is self-signed and made for
    # this run: what is measured is the server's memory, not who it is.
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return context


class TLSClient:
    """A blocking pyOpenSSL connection with the socket calls this file uses."""

    def __init__(self, sock: socket.socket, context: SSL.Context, timeout: int = 10):
        # pyOpenSSL wants a blocking socket; the kernel bounds each call.
        sock.setblocking(True)
        limit = struct.pack("ll", timeout, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        self._sock = sock
        self._tls = SSL.Connection(context, sock)
        self._tls.set_connect_state()
        self._tls.do_handshake()

    def sendall(self, data: bytes) -> None:
        self._tls.sendall(data)

    def recv(self, size: int) -> bytes:
        try:
            return self._tls.recv(size)
        except (SSL.ZeroReturnError, SSL.SysCallError, SSL.WantReadError):
            return b""  # closed, or (WantReadError) timed out

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def connect(port: int, context: SSL.Context | None):
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    return TLSClient(conn, context) if context is not None else conn


def send(conn: socket.socket, method: str, path: str, body: dict | None = None, credential: str = "",
         host: str = "127.0.0.1") -> None:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    if data:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    if credential:
        head += f"Authorization: Bearer {credential}\r\n"
    conn.sendall(head.encode() + b"\r\n" + data)


def read_answer(conn: socket.socket) -> bytes:
    """One HTTP 200 answer with a Content-Length body (all our API sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's body")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"answer {head[:40]!r}: {body[:200]!r}")
    return body


def open_held(port: int, context: SSL.Context | None, requests: str, credential: str) -> socket.socket:
    """A connection in the state ``requests`` names (see the module docstring)."""
    conn = connect(port, context)
    if requests == "health":
        send(conn, "GET", "/health")
        read_answer(conn)
        return conn
    send(conn, "GET", "/peers?since=0", credential=credential)
    cursor = json.loads(read_answer(conn))["cursor"]
    if requests == "longpoll":
        send(conn, "GET", f"/peers?since={cursor}&wait={LONGPOLL_WAIT}", credential=credential)
    return conn


def run_client(port: int, count: int, batch: int, pause: float, tls: bool, requests: str, credential: str) -> None:
    """The client process: open ``count`` connections, say so, hold them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 100), hard))
    context = client_context() if tls else None
    held = []
    failures = 0
    for i in range(count):
        try:
            held.append(open_held(port, context, requests, credential))
        except (OSError, ConnectionError, ValueError):
            failures += 1
        if (i + 1) % batch == 0:
            time.sleep(pause)  # pace the handshakes: this is a memory bench
    print(json.dumps({"open": len(held), "failed": failures}), flush=True)
    sys.stdin.read()  # hold them until the parent closes our stdin
    for conn in held:
        conn.close()


def enroll_mesh(port: int, data_dir: str, count: int, context: SSL.Context | None) -> str:
    """Enroll ``count`` nodes; returns the last one's credential."""
    admin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    admin.connect(admin_socket_path(data_dir))
    with admin:
        send(admin, "POST", "/keys", {"reusable": True}, host="wire-admin")
        secret = decode_join_token(json.loads(read_answer(admin))["token"]).secret
    credential = ""
    for i in range(count):
        body = Registration(
            node_id=f"memnode{i:05d}",
            node_name=f"mem{i:05d}",
            wg_public_key=base64.b64encode(os.urandom(32)).decode(),
            lan_ip=f"192.168.{i // 250}.{i % 250 + 1}",
        ).enrollment_body(secret)
        with connect(port, context) as conn:
            send(conn, "POST", "/enroll", body)
            credential = json.loads(read_answer(conn))["credential"]
    return credential


def wait_for_health(port: int, proc: subprocess.Popen, context: SSL.Context | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"wire-server exited with {proc.returncode}")
        try:
            open_held(port, context, "health", "").close()
            return
        except (OSError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError("wire-server did not answer /health")


def measure(
    connections: int, server_checkout: str, requests: str = "health", tls: bool = True, mesh_nodes: int = 100,
    batch: int = 100, pause: float = 0.2,
) -> dict:
    data_dir = tempfile.mkdtemp(prefix="wire-tlsmem-")
    port = free_port_triple()
    argv = twistd_argv() + [
        "-n",
        "--pidfile=",
        "wire-server",
        "--interface=127.0.0.1",
        f"--port={port}",
        f"--data-dir={data_dir}",
        "--no-rate-limits",  # the mesh's enrollments come from one address
    ] + ([] if tls else ["--plain-http"])
    env = dict(os.environ, PYTHONPATH=server_checkout)
    log = open(os.path.join(data_dir, "server.log"), "wb")
    server = subprocess.Popen(argv, cwd=server_checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = None
    try:
        context = client_context() if tls else None
        wait_for_health(port, server, context)
        credential = enroll_mesh(port, data_dir, mesh_nodes, context) if requests != "health" else ""
        answer_bytes = None
        if credential:
            with connect(port, context) as conn:
                send(conn, "GET", "/peers?since=0", credential=credential)
                answer_bytes = len(read_answer(conn))
        # Warm up: the first connections allocate what every later one shares.
        for _ in range(20):
            open_held(port, context, "health", "").close()
        time.sleep(SETTLE_SECONDS)
        before = memory_bytes(server.pid)["rss"]
        started = time.monotonic()
        client = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--client", f"--port={port}", f"--connections={connections}",
             f"--batch={batch}", f"--pause={pause}", f"--requests={requests}", f"--credential={credential}"]
            + ([] if tls else ["--plain-http"]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=BENCH_CHECKOUT,
            env=dict(os.environ, PYTHONPATH=BENCH_CHECKOUT),
        )
        opened = json.loads(client.stdout.readline())
        open_seconds = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        if time.monotonic() - started > 50:
            raise RuntimeError("opening took so long that the server's idle timeout may have closed some")
        after = memory_bytes(server.pid)
        established = opened["open"]
        return {
            "server_checkout": server_checkout,
            "tls": tls,
            "requests": requests,
            "answer_bytes": answer_bytes,
            "connections": established,
            "failed": opened["failed"],
            "open_seconds": round(open_seconds, 1),
            "rss_before_mib": round(before / 2**20, 1),
            "rss_after_mib": round(after["rss"] / 2**20, 1),
            "hwm_mib": round(after["hwm"] / 2**20, 1),
            "kib_per_connection": round((after["rss"] - before) / max(1, established) / 1024, 1),
        }
    finally:
        if client is not None:
            client.stdin.close()
            try:
                client.wait(timeout=10)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--requests", choices=REQUESTS, default="health",
                        help="what each connection did before it is held (see the module docstring)")
    parser.add_argument("--mesh-nodes", type=int, default=100, help="nodes in the netmap (snapshot, longpoll)")
    parser.add_argument("--plain-http", action="store_true", help="the server without TLS, for comparison")
    parser.add_argument("--server-checkout", default=BENCH_CHECKOUT, help="run the server from this copy of the repo")
    parser.add_argument("--batch", type=int, default=100, help="connections opened between pauses")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between batches")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--credential", default="", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if not 1 <= options.connections <= 20_000:
        parser.error("--connections must be 1..20000")
    tls = not options.plain_http
    if options.client:
        run_client(options.port, options.connections, options.batch, options.pause, tls, options.requests,
                   options.credential)
        return 0
    result = measure(options.connections, os.path.abspath(options.server_checkout), options.requests, tls,
                     options.mesh_nodes, options.batch, options.pause)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
