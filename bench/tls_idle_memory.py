#!/usr/bin/env python3
"""What an idle TLS connection costs the server in memory.

Starts a real ``twistd -n wire-server`` (TLS, as shipped) in a temporary
data dir, then a separate client process that opens ``--connections`` TLS
connections, each sending one ``GET /health`` with keep-alive and then
staying idle, as a node's kept connection does between requests. Reports
the server's VmRSS before and after, and the difference per connection.

Memory only, and short: the client paces its handshakes, and the whole run
takes a few seconds of CPU. The connections must be measured within the
server's idle timeout (60 s), after which it closes them.

    bench/tls_idle_memory.py --connections 2000
    bench/tls_idle_memory.py --server-checkout /tmp/wire-before   # another copy of the code
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

BENCH_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BENCH_CHECKOUT not in sys.path:
    sys.path.insert(0, BENCH_CHECKOUT)

from bench.procstat import memory_bytes  # noqa: E402
from tests.serverproc import free_port_triple  # noqa: E402
from wire.twistd import twistd_argv  # noqa: E402

REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
SETTLE_SECONDS = 3.0


def client_context() -> ssl.SSLContext:
    # The server's certificate is self-signed and made for this run: what is
    # measured is the server's memory, not who it is.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def read_answer(conn: socket.socket) -> bytes:
    """One HTTP answer with a Content-Length body (what /health sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
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
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the answer's body")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"answer {head[:40]!r}")
    return body


def open_idle(port: int, context: ssl.SSLContext | None) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    if context is not None:
        conn = context.wrap_socket(conn)
    conn.sendall(REQUEST)
    read_answer(conn)
    return conn


def run_client(port: int, count: int, batch: int, pause: float, tls: bool) -> None:
    """The client process: open ``count`` idle connections, say so, hold them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 100), hard))
    context = client_context() if tls else None
    held = []
    failures = 0
    for i in range(count):
        try:
            held.append(open_idle(port, context))
        except (OSError, ConnectionError):
            failures += 1
        if (i + 1) % batch == 0:
            time.sleep(pause)  # pace the handshakes: this is a memory bench
    print(json.dumps({"open": len(held), "failed": failures}), flush=True)
    sys.stdin.read()  # hold them until the parent closes our stdin
    for conn in held:
        conn.close()


def wait_for_health(port: int, proc: subprocess.Popen, context: ssl.SSLContext | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"wire-server exited with {proc.returncode}")
        try:
            open_idle(port, context).close()
            return
        except (OSError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError("wire-server did not answer /health")


def measure(connections: int, server_checkout: str, batch: int, pause: float, tls: bool = True) -> dict:
    data_dir = tempfile.mkdtemp(prefix="wire-tlsmem-")
    port = free_port_triple()
    argv = twistd_argv() + [
        "-n",
        "--pidfile=",
        "wire-server",
        "--interface=127.0.0.1",
        f"--port={port}",
        f"--data-dir={data_dir}",
    ] + ([] if tls else ["--plain-http"])
    env = dict(os.environ, PYTHONPATH=server_checkout)
    log = open(os.path.join(data_dir, "server.log"), "wb")
    server = subprocess.Popen(argv, cwd=server_checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = None
    try:
        context = client_context() if tls else None
        wait_for_health(port, server, context)
        # Warm up: the first connections allocate what every later one shares.
        for _ in range(20):
            open_idle(port, context).close()
        time.sleep(SETTLE_SECONDS)
        before = memory_bytes(server.pid)["rss"]
        started = time.monotonic()
        client = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--client", f"--port={port}", f"--connections={connections}",
             f"--batch={batch}", f"--pause={pause}"] + ([] if tls else ["--plain-http"]),
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
    parser.add_argument("--server-checkout", default=BENCH_CHECKOUT, help="run the server from this copy of the repo")
    parser.add_argument("--batch", type=int, default=100, help="connections opened between pauses")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between batches")
    parser.add_argument("--plain-http", action="store_true", help="the server without TLS, for comparison")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if not 1 <= options.connections <= 20_000:
        parser.error("--connections must be 1..20000")
    if options.client:
        run_client(options.port, options.connections, options.batch, options.pause, not options.plain_http)
        return 0
    result = measure(
        options.connections, os.path.abspath(options.server_checkout), options.batch, options.pause, not options.plain_http
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
