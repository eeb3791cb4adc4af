"""The benches: each starts what it needs, measures, and reaps everything.

- :func:`coordination` (one mode, one N): registration throughput, steady
  state (server CPU, RSS, bytes per node per minute), propagation, and the
  cost of a full snapshot, against one fresh ``wire-server`` (or a server
  given by URL, which may be any seed-compatible one).
- :func:`stun`: Binding responses per second.
- :func:`apply_netmap`: bench/apply_netmap.py (node side, needs root).
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import resource
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.logger import Logger

from bench import policyload, procstat, profiling, relay
from tests.ports import free_port_triple  # one helper for tests and benches
from bench.httpload import Connector, Counters, client_tls
from bench.nodes import enroll_body, node_identity, probe_source_address, registration_body
from bench.stats import percentile, segment_rates, summary
from bench.processes import BENCH_CHECKOUT, CollectingProcess, ServerProcess, WorkerProcess

log = Logger()

PROBE_INDEX_BASE = 50_000_000
FD_MARGIN = 300


@dataclass
class Settings:
    server_cpus: str = "0"
    load_cpus: str = "1"
    server_checkout: str = BENCH_CHECKOUT
    url: str | None = None  # an already running server: nothing is spawned
    join_key: str | None = None  # with url: the join key secret for an authenticating server
    server_pid: int | None = None  # its pid, for CPU and RSS, when known
    workers: int = 0  # 0: as many as the load CPUs and fd limits need
    heartbeat: float = 30.0
    wait: float = 25.0
    heartbeat_connection: str = "auto"  # keep | fresh | auto
    server_fd_soft_limit: int | None = None  # start the server with this soft open-files limit
    # implicit (the protocol since the server counts authenticated long-polls:
    # POST /register only every 10 minutes) | periodic (every 30 s, as before)
    wire_heartbeat: str = "implicit"
    # How wire nodes read the netmap: stream (the daemon's way: &stream=1,
    # each line as it comes) | longpoll (one answer per request, as before)
    netmap: str = "stream"
    register_concurrency: int = 100
    connect_concurrency: int = 64
    warmup: float = 35.0
    steady_seconds: float = 120.0
    probes: int = 20
    probe_timeout: float = 20.0
    stun_seconds: float = 5.0
    stun_sources: int = 4096
    stun_rates: tuple = (10_000, 20_000, 25_000, 30_000, 35_000, 40_000)
    apply_peers: int = 1000
    keep_data: bool = False
    own_addresses: bool = True  # one loopback source address per simulated node
    quiet_threshold: float = 10.0  # % busy per CPU that counts as quiet
    quiet_timeout: float = 600.0  # how long to wait for quiet before measuring anyway
    profile_dir: str | None = None  # py-spy the server's phases into this directory
    scratch: str = field(default_factory=lambda: tempfile.gettempdir())


async def sleep(reactor, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def cpu_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-")
            out += range(int(low), int(high) + 1)
        elif part:
            out.append(int(part))
    return out


async def wait_quiet(reactor, settings: Settings) -> dict:
    """Wait (bounded) until nothing else keeps the bench's CPUs busy.

    The machine may be shared: another process on the server's core steals
    its cycles and pollutes its caches, and the figures would be the
    neighbours' as much as the server's. Measuring goes ahead after
    ``quiet_timeout`` anyway, and the report shows how busy the CPUs were.
    """
    cpus = sorted(set(cpu_list(settings.server_cpus) + cpu_list(settings.load_cpus)))
    started = time.monotonic()
    busy: dict = {}
    for _ in range(int(settings.quiet_timeout / 3) + 1):
        window = procstat.CoreWindow(cpus)
        window.start()
        await sleep(reactor, 3.0)
        busy = window.read()
        if all(v < settings.quiet_threshold for v in busy.values()):
            return {"quiet": True, "waited_seconds": round(time.monotonic() - started, 1), "cpu_busy_percent": busy}
        if time.monotonic() - started >= settings.quiet_timeout:
            break
    log.warn("CPUs still busy ({busy}) after {t:.0f}s: measuring anyway", busy=busy, t=time.monotonic() - started)
    return {"quiet": False, "waited_seconds": round(time.monotonic() - started, 1), "cpu_busy_percent": busy}


class Background:
    """CPU time on the bench's cores that was not ours (another session's tests...)."""

    def __init__(self, settings: Settings):
        self.server_cpus = cpu_list(settings.server_cpus)
        self.load_cpus = cpu_list(settings.load_cpus)
        self._window = procstat.CoreWindow(sorted(set(self.server_cpus + self.load_cpus)))

    def start(self) -> None:
        self._window.start()

    def read(self, server_percent: float | None, load_percent: float) -> dict:
        busy = self._window.read()
        server_core = sum(busy[c] for c in self.server_cpus)
        load_cores = sum(busy[c] for c in self.load_cpus)
        other_server = max(0.0, server_core - (server_percent or 0.0)) if server_percent is not None else None
        return {
            "server_core_busy_percent": round(server_core, 1),
            "other_on_server_core_percent": round(other_server, 1) if other_server is not None else None,
            "load_cores_busy_percent": round(load_cores, 1),
            # The load processes' own share; the rest is this process and strangers.
            "other_on_load_cores_percent": round(max(0.0, load_cores - load_percent), 1),
        }


# -- the server -------------------------------------------------------------------


SECURITY_ARGS = {
    "tls": [],  # wire's default: join keys, node credentials, HTTPS
    "plain": ["--plain-http"],  # authentication on, plain HTTP (as behind a TLS proxy)
    "open": ["--open"],  # the seed's behaviour: no authentication, plain HTTP
}


class Target:
    """The server under test: one we spawned, or one given by URL."""

    def __init__(
        self, reactor, settings: Settings, security: str = "tls", policy: bool = False, extra_args: tuple[str, ...] = ()
    ):
        """``extra_args``: more wire-server options (a replica's --database...)."""
        if security not in SECURITY_ARGS:
            raise ValueError(f"security must be one of {', '.join(SECURITY_ARGS)}")
        self.reactor = reactor
        self.settings = settings
        self.security = security
        self.process: ServerProcess | None = None
        self.data_dir: str | None = None
        self.join_key: str | None = settings.join_key
        # Under a policy (bench/policyload.py): one reusable key per tag, and the text in force.
        self.policy = policy
        self.extra_args = tuple(extra_args)
        self.tag_keys: list[str] = []
        self.policy_text: str | None = None
        if settings.url:
            url = urlsplit(settings.url)
            self.tls = url.scheme == "https"
            self.host, self.port = url.hostname, url.port or (443 if self.tls else 80)
            self.pid = settings.server_pid
        else:
            self.tls = security == "tls"
            self.host, self.port = "127.0.0.1", free_port_triple()
            self.pid = None
        self._tls_options = client_tls() if self.tls else None
        self.probe_auth = b""  # a joined probe's Authorization line, for authenticated reads

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def authenticating(self) -> bool:
        return self.join_key is not None

    def connector(self, counters: Counters | None = None, concurrency: int = 8) -> Connector:
        return Connector(self.reactor, self.host, self.port, counters or Counters(), concurrency=concurrency, tls=self._tls_options)

    async def start(self) -> None:
        if self.settings.url:
            return
        self.data_dir = tempfile.mkdtemp(prefix="wire-bench-", dir=self.settings.scratch)
        self.process = ServerProcess(
            self.reactor,
            self.settings.server_checkout,
            self.data_dir,
            self.port,
            self.settings.server_cpus,
            extra_args=[*SECURITY_ARGS[self.security], *self.extra_args],
            fd_soft_limit=self.settings.server_fd_soft_limit,
        )
        self.process.spawn()
        self.pid = self.process.pid
        deadline = time.monotonic() + 60
        while True:
            if self.process.ended.called:
                raise RuntimeError(f"wire-server exited ({self.process.exit_code}): {self.log_tail()}")
            if await _health(self):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"wire-server did not answer /health within 60 s: {self.log_tail()}")
            await sleep(self.reactor, 0.1)
        if self.security != "open":
            self.join_key = await self._create_join_key()
        if self.policy:
            if self.security == "open":
                raise ValueError("a policy run needs an authenticating server (tagged join keys)")
            self.tag_keys = [
                await self._create_join_key((f"tag:t{t}",)) for t in range(policyload.TAGS)
            ]
            await self.set_policy(policyload.policy_text())

    async def admin(self, method: bytes, path: bytes, body: dict | None = None) -> dict:
        """One request to the admin API (the UNIX socket in the data dir)."""
        if self.data_dir is None:
            raise RuntimeError("the admin API is only reachable on a server the bench started")
        socket_path = os.path.join(self.data_dir, "admin.sock")
        connector = Connector(self.reactor, "localhost", 0, Counters(), unix_path=socket_path)
        for _ in range(50):
            if os.path.exists(socket_path):
                break
            await sleep(self.reactor, 0.1)
        conn = await connector.connect()
        try:
            response = await conn.request(method, path, None if body is None else json.dumps(body).encode())
        finally:
            conn.abort()
        if response.status != 200:
            raise RuntimeError(f"admin API {path.decode()} refused: {response.status} {response.body[:300]!r}")
        return json.loads(response.body)

    async def _create_join_key(self, tags: tuple[str, ...] = ()) -> str:
        """A reusable join key (its nodes carry ``tags``); its secret."""
        body: dict = {"reusable": True, "note": "wire bench"}
        if tags:
            body["tags"] = list(tags)
        token = (await self.admin(b"POST", b"/keys", body))["token"]
        encoded = token.split(".", 1)[1]
        return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))["k"]

    async def set_policy(self, text: str) -> dict:
        """``wire admin policy set``: answered once it is in force."""
        answer = await self.admin(b"POST", b"/policy", {"action": "set", "text": text})
        self.policy_text = text
        return answer

    async def directory(self) -> list[dict]:
        """Every node as the admin API lists it (node_id, node_name, vpn_ip, tags)."""
        return (await self.admin(b"GET", b"/nodes"))["nodes"]

    def log_tail(self, size: int = 3000) -> str:
        parts = []
        if self.process is not None:
            parts.append(bytes(self.process.stderr[-size:] + self.process.stdout[-size:]).decode(errors="replace"))
            try:
                with open(self.process.log_path, "rb") as f:
                    f.seek(max(0, os.path.getsize(self.process.log_path) - size))
                    parts.append(f.read().decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts)

    def measurable(self) -> bool:
        return self.pid is not None and os.path.exists(f"/proc/{self.pid}")

    def facts(self) -> dict:
        if not self.measurable():
            return {"measured": False}
        return {
            "measured": True,
            "pid": self.pid,
            "affinity": procstat.affinity(self.pid),
            "fd_limit": procstat.fd_limit(self.pid),
            "open_fds": procstat.open_fds(self.pid),
            **{f"{k}_mb": round(v / 2**20, 1) for k, v in procstat.memory_bytes(self.pid).items()},
        }

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.kill(15, grace=10, reactor=self.reactor)
            if not self.settings.keep_data and self.data_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)


async def _health(target: Target) -> bool:
    try:
        conn = await Connector(target.reactor, target.host, target.port, Counters(), timeout=1, tls=target._tls_options).connect()
    except Exception:
        return False
    try:
        d = conn.request(b"GET", b"/health")
        timer = target.reactor.callLater(2, lambda: d.called or conn.fail_and_abort(TimeoutError("health")))
        response = await d
        if timer.active():
            timer.cancel()
        return response.status == 200
    except Exception:
        return False
    finally:
        conn.abort()


# -- the load processes --------------------------------------------------------------


def _cpu_count(cpus: str) -> int:
    count = 0
    for part in cpus.split(","):
        if "-" in part:
            low, high = part.split("-")
            count += int(high) - int(low) + 1
        elif part:
            count += 1
    return count


def own_fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Fleet:
    """The load processes for one scenario, each simulating a slice of the nodes."""

    def __init__(
        self,
        reactor,
        settings: Settings,
        target: Target,
        mode: str,
        nodes: int,
        run_tag: str,
        heartbeat_connection: str,
        replicas: tuple[Target, ...] = (),
    ):
        """``replicas``: the mesh's other servers; node i starts at server i % (1 + len)."""
        self.reactor = reactor
        self.nodes = nodes
        self.mode = mode
        limit = own_fd_limit()  # workers and the server inherit it
        keep = heartbeat_connection
        if keep == "auto":
            # A wire node keeps two connections (heartbeat + long-poll); the
            # server must hold both for every node.
            keep = "keep" if mode == "seed" or 2 * nodes + FD_MARGIN <= limit else "fresh"
        self.heartbeat_connection = keep if mode == "wire" else "fresh (seed client)"
        per_node_fds = 2 if (mode == "wire" and keep == "keep") else 1
        needed = per_node_fds * nodes + FD_MARGIN
        workers = settings.workers or max(_cpu_count(settings.load_cpus), math.ceil(needed / (limit - FD_MARGIN)))
        workers = max(1, min(workers, nodes))
        self.workers: list[WorkerProcess] = []
        self._watch_waiters: dict[str, tuple[set, Deferred]] = {}
        share, extra = divmod(nodes, workers)
        first = 0
        self.slices: list[range] = []  # the node indices each worker simulates
        for i in range(workers):
            count = share + (1 if i < extra else 0)
            argv = [
                "-m",
                "bench.loadgen",
                *(f"--url={t.url}" for t in (target, *replicas)),
                f"--mode={mode}",
                f"--netmap={settings.netmap}",
                f"--first={first}",
                f"--count={count}",
                f"--run-tag={run_tag}",
                f"--connect-concurrency={settings.connect_concurrency}",
                f"--heartbeat-connection={'keep' if keep == 'keep' else 'fresh'}",
                "--max-seconds=5400",
            ]
            if target.tls:
                argv.append("--tls")
            if not settings.own_addresses:
                argv.append("--no-own-addresses")
            worker = WorkerProcess(reactor, f"load-{i}", argv, settings.load_cpus)
            worker.on_event = self._event
            self.workers.append(worker)
            self.slices.append(range(first, first + count))
            first += count

    def spawn(self) -> None:
        for worker in self.workers:
            worker.spawn()

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    async def call_all(self, cmd: str, timeout: float = 600, per_worker: list[dict] | None = None, **arguments) -> list:
        """``cmd`` to every worker, with ``arguments`` (and ``per_worker[i]`` for worker i)."""
        results = await DeferredList(
            [
                w.call(cmd, timeout=timeout, **arguments, **(per_worker[i] if per_worker else {}))
                for i, w in enumerate(self.workers)
            ],
            consumeErrors=True,
        )
        out = []
        for ok, value in results:
            if not ok:
                raise RuntimeError(f"load process failed on {cmd}: {value.getErrorMessage()}")
            out.append(value)
        return out

    def _event(self, worker: WorkerProcess, message: dict) -> None:
        if message.get("event") == "watch_done":
            waiting = self._watch_waiters.get(message["node_id"])
            if waiting is not None:
                done, d = waiting
                done.add(worker.name)
                if len(done) == len(self.workers) and not d.called:
                    d.callback(None)

    def all_saw(self, node_id: str) -> Deferred:
        d: Deferred = Deferred()
        self._watch_waiters[node_id] = (set(), d)
        return d

    def forget(self, node_id: str) -> None:
        self._watch_waiters.pop(node_id, None)

    async def stop(self) -> None:
        for worker in self.workers:
            if worker.transport is not None and not worker.ended.called:
                try:
                    await worker.call("stop", timeout=10)
                except Exception:
                    pass
        for worker in self.workers:
            await worker.kill(15, grace=5, reactor=self.reactor)


# -- coordination benches ----------------------------------------------------------


async def coordination(
    reactor,
    settings: Settings,
    mode: str,
    security: str,
    nodes: int,
    heartbeat_connection: str | None = None,
    policy: bool = False,
) -> dict:
    """Registration, steady state and propagation for ``nodes`` simulated nodes;
    with ``policy``, under bench/policyload.py's policy, then its change's wave."""
    if mode == "seed" and security != "open":
        raise ValueError("seed clients know no join keys: seed mode needs an open server")
    if policy and (mode != "wire" or security == "open" or settings.url):
        raise ValueError("a policy run is wire nodes against a server the bench starts, with authentication (tls or plain)")
    run_tag = secrets.token_hex(3)
    result: dict = {"mode": mode, "security": security, "nodes": nodes, "policy": policy}
    result["quiet_before"] = await wait_quiet(reactor, settings)
    target = Target(reactor, settings, security, policy=policy)
    fleet: Fleet | None = None
    try:
        await target.start()
        fleet = Fleet(reactor, settings, target, mode, nodes, run_tag, heartbeat_connection or settings.heartbeat_connection)
        result.update({
            "server_url": target.url,
            "authenticated": target.authenticating,
            "load_processes": len(fleet.workers),
            "heartbeat_connection": fleet.heartbeat_connection,
            "heartbeat_seconds": settings.heartbeat,
            # implicit: wire nodes send no periodic POST /register while the
            # server counts their long-poll (only one that authenticates can).
            "heartbeat_mode": settings.wire_heartbeat if mode == "wire" and target.authenticating else "periodic",
            "longpoll_wait_seconds": settings.wait if mode == "wire" else None,
            "netmap": settings.netmap if mode == "wire" else None,
        })
        if policy:
            result["policy_setup"] = {
                "tags": policyload.TAGS,
                "groups": policyload.GROUPS,
                "rules": policyload.RULES,
                "policy_bytes": len(target.policy_text or ""),
                "join_keys": len(target.tag_keys),
                "each_node": "one tag: node i enrolls with the key of tag:t<i % 20>",
            }
        fleet.spawn()
        result["server_at_start"] = target.facts()
        result["registration"] = await _registration(reactor, settings, target, fleet)
        cursor = result["registration"].pop("cursor")
        await fleet.call_all(
            "steady",
            cursor=cursor,
            heartbeat=settings.heartbeat,
            wait=settings.wait,
            seed=random.randrange(1 << 30),
            heartbeat_mode=result["heartbeat_mode"],
        )
        result["steady"] = await _steady(reactor, settings, target, fleet)
        expectation = None
        if policy:
            expectation = policyload.Expectation(target.policy_text, await target.directory())
            result["policy_setup"]["visible_peers_per_node"] = summary(
                [len(expectation.viewers_of(n)) for n in expectation.node_ids]
            )
        result["propagation"] = await _propagation(reactor, settings, target, fleet, run_tag, expectation)
        if policy:
            result["policy_change"] = await _policy_change(reactor, settings, target, fleet, run_tag)
        if mode == "wire":
            result["snapshots"] = await _snapshot_costs(reactor, target)
        result["final_counters"] = _merge_counters(await fleet.call_all("counters"))
        result["server_at_end"] = target.facts()
    except Exception as e:
        log.failure("{mode} N={nodes} failed", mode=mode, nodes=nodes)
        result["failed"] = f"{type(e).__name__}: {e}"
        result["server_log_tail"] = target.log_tail(1500)
    finally:
        if fleet is not None:
            await fleet.stop()
        await target.stop()
    return result


async def _registration(reactor, settings: Settings, target: Target, fleet: Fleet) -> dict:
    cpu = procstat.CpuWindow([target.pid]) if target.measurable() else None
    if cpu:
        cpu.start()
    results = await fleet.call_all(
        "register",
        timeout=1800,
        concurrency=max(1, settings.register_concurrency // len(fleet.workers)),
        join_key=target.join_key,
        join_keys=target.tag_keys or None,
    )
    server_cpu = cpu.read() if cpu else None
    started = min(r["started"] for r in results)
    ended = max(r["ended"] for r in results)
    ok = sum(r["ok"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    completions = [x for r in results for x in r["completions"]]
    cursors = [r["cursor"] for r in results if r["cursor"]]
    seconds = ended - started
    return {
        "registered": ok,
        "failed": sum(r["failed"] for r in results),
        # Joins answered 503 and tried again (replicas racing for one address).
        "retried": sum(r.get("retried", 0) for r in results),
        "seconds": round(seconds, 3),
        "per_second": round(ok / seconds, 1) if seconds > 0 else None,
        "concurrency": settings.register_concurrency,
        "request": "POST /enroll (join key)" if target.authenticating else "POST /register",
        "latency_seconds": summary(latencies),
        "per_second_by_thousand": segment_rates(completions, started, 1000) if ok >= 2000 else [],
        "server_cpu": server_cpu,
        "server": target.facts(),
        "error_samples": [s for r in results for s in r.get("error_samples", [])][:5],
        "cursor": max(cursors, key=lambda c: int(c.rpartition(":")[2] or 0)) if cursors else "0",
    }


def _merge_counters(snapshots: list[dict]) -> dict:
    merged: dict = {"bytes_in": 0, "bytes_out": 0, "connects": 0, "connect_failures": 0, "requests": {}, "statuses": {}, "errors": {}, "netmap": {}}
    for s in snapshots:
        for key in ("bytes_in", "bytes_out", "connects", "connect_failures"):
            merged[key] += s[key]
        for table in ("requests", "statuses", "errors", "netmap"):
            for k, v in s.get(table, {}).items():
                merged[table][k] = merged[table].get(k, 0) + v
    merged["error_samples"] = [x for s in snapshots for x in s.get("error_samples", [])][:5]
    return merged


def _diff_counters(before: dict, after: dict) -> dict:
    diff = {k: after[k] - before[k] for k in ("bytes_in", "bytes_out", "connects", "connect_failures")}
    for table in ("requests", "statuses", "errors", "netmap"):
        was, now = before.get(table, {}), after.get(table, {})
        diff[table] = {k: now.get(k, 0) - was.get(k, 0) for k in sorted(set(was) | set(now))}
        diff[table] = {k: v for k, v in diff[table].items() if v}
    return diff


async def _steady(reactor, settings: Settings, target: Target, fleet: Fleet) -> dict:
    """After a warm-up (every loop started, first long-poll cycle over), one window."""
    await sleep(reactor, settings.warmup)
    measurable = target.measurable()
    before = _merge_counters(await fleet.call_all("counters"))
    cpu = procstat.CpuWindow([target.pid]) if measurable else None
    load_cpu = procstat.CpuWindow(fleet.pids)
    background = Background(settings)
    profile = _start_profile(reactor, settings, target, f"{fleet.mode}-{fleet.nodes}-steady", settings.steady_seconds)
    if cpu:
        cpu.start()
    load_cpu.start()
    background.start()
    rss_samples = []
    per_interval = []
    interval = 5.0
    started = time.monotonic()
    last_cpu = procstat.cpu_seconds(target.pid) if measurable else 0.0
    last_t = started
    # Bounded: one sample a second for the window's length.
    for _ in range(int(settings.steady_seconds) + 1):
        remaining = settings.steady_seconds - (time.monotonic() - started)
        if remaining <= 0:
            break
        await sleep(reactor, min(1.0, remaining))
        if measurable:
            rss_samples.append(procstat.memory_bytes(target.pid)["rss"])
            now = time.monotonic()
            if now - last_t >= interval:
                used = procstat.cpu_seconds(target.pid)
                per_interval.append(round(100 * (used - last_cpu) / (now - last_t), 1))
                last_cpu, last_t = used, now
    server_cpu = cpu.read() if cpu else None
    load = load_cpu.read()
    seconds = time.monotonic() - started
    after = _merge_counters(await fleet.call_all("counters"))
    diff = _diff_counters(before, after)
    minutes = seconds / 60
    nodes = fleet.nodes
    result = {
        "warmup_seconds": settings.warmup,
        "window_seconds": round(seconds, 2),
        "server_cpu_percent": server_cpu["percent_of_one_core"] if server_cpu else None,
        "server_cpu_percent_per_5s": {"min": min(per_interval), "max": max(per_interval)} if per_interval else None,
        "server_rss_mb": {
            "max": round(max(rss_samples) / 2**20, 1),
            "end": round(rss_samples[-1] / 2**20, 1),
        }
        if rss_samples
        else None,
        "server": target.facts(),
        "background": background.read(server_cpu["percent_of_one_core"] if server_cpu else None, load["percent_of_one_core"]),
        "load_cpu_percent": load["percent_of_one_core"],
        "server_bytes_sent_per_node_per_minute": round(diff["bytes_in"] / nodes / minutes, 1),
        "server_bytes_received_per_node_per_minute": round(diff["bytes_out"] / nodes / minutes, 1),
        "requests_per_second": {k: round(v / seconds, 1) for k, v in diff["requests"].items()},
        "connects_per_second": round(diff["connects"] / seconds, 1),
        "statuses": diff["statuses"],
        "errors": diff["errors"],
        "error_samples": after.get("error_samples", []),
        "netmap_streams": diff["netmap"],
    }
    if profile is not None:
        result["profile"] = await _finish_profile(*profile)
    return result


def _start_profile(reactor, settings: Settings, target: Target, name: str, seconds: float):
    if not settings.profile_dir or not target.measurable():
        return None
    os.makedirs(settings.profile_dir, exist_ok=True)
    path = os.path.join(settings.profile_dir, f"profile-{name}.txt")
    return profiling.record(reactor, target.pid, seconds, path), path


async def _finish_profile(d: Deferred, path: str) -> dict:
    await d
    return profiling.summarize(path)


async def _register_probe(reactor, target: Target, run_tag: str, k: int) -> tuple[str, float, float, bytes]:
    """A new node joins: (node_id, sent, answered, its Authorization header line).
    Under a policy probe ``k`` carries tag:t<k % TAGS>."""
    index = PROBE_INDEX_BASE + k
    node_id = node_identity(run_tag, index)[0]
    source = probe_source_address(k) if target.settings.own_addresses else None
    # A real node retries a connect that timed out (a full accept queue
    # drops handshakes); the clock only starts once it is connected.
    for attempt in range(3):
        try:
            conn = await target.connector().connect(source)
            break
        except Exception:
            if attempt == 2:
                raise
    try:
        # Handshakes first (TCP, TLS): the clock starts when the join request
        # is written, as the server's propagation is what is measured.
        await conn.request(b"GET", b"/health")
        body = registration_body(run_tag, index)
        path = b"/register"
        if target.authenticating:
            key = target.tag_keys[k % len(target.tag_keys)] if target.tag_keys else target.join_key
            body, path = enroll_body(run_tag, index, key), b"/enroll"
        sent = time.monotonic()
        response = await conn.request(b"POST", path, body)
        if response.status != 200:
            raise RuntimeError(f"probe {path.decode()} answered {response.status}: {response.body[:200]!r}")
        credential = json.loads(response.body).get("credential")
        auth = b"Authorization: Bearer " + credential.encode() + b"\r\n" if credential else b""
        return node_id, sent, response.done_at, auth
    finally:
        conn.abort()


async def _probe(
    reactor, settings: Settings, target: Target, fleet: Fleet, run_tag: str, k: int, timeout: float, expectation=None
) -> dict:
    node_id, name, _ = node_identity(run_tag, PROBE_INDEX_BASE + k)
    allowed = None
    if expectation is not None:
        # Who may see it follows from its tag alone (bench/policyload.py): its address is a stand-in.
        viewers = expectation.viewers_of_newcomer(node_id, name, policyload.tag_of(k), k)
        allowed = [[i for i in indices if node_identity(run_tag, i)[0] in viewers] for indices in fleet.slices]
        await fleet.call_all("watch", node_id=node_id, per_worker=[{"expect": a} for a in allowed])
    else:
        await fleet.call_all("watch", node_id=node_id)
    all_saw = fleet.all_saw(node_id)
    _, sent, acked, auth = await _register_probe(reactor, target, run_tag, k)
    target.probe_auth = target.probe_auth or auth
    timer = reactor.callLater(timeout, lambda: all_saw.called or all_saw.callback(None))
    await all_saw
    if timer.active():
        timer.cancel()
    fleet.forget(node_id)
    reports = await fleet.call_all("end_watch", node_id=node_id)
    latencies = [t - sent for r in reports for t in r["times"]]
    by_server: dict[str, list[float]] = {}
    for r in reports:
        for server, times in r.get("by_server", {}).items():
            by_server.setdefault(server, []).extend(t - sent for t in times)
    seen = sum(r["seen"] for r in reports)
    should = fleet.nodes if allowed is None else sum(len(a) for a in allowed)
    out = {
        "probe": k,
        "registration_answered_seconds": round(acked - sent, 4),
        "seen_by": seen,
        "missing": should - seen,
        # Under a policy: "all" is every node allowed to see it.
        "time_to_all_seconds": round(max(latencies), 4) if seen == should and latencies else (0.0 if should == 0 else None),
        "latencies": latencies,
    }
    if by_server:
        out["latencies_by_server"] = by_server
    if allowed is not None:
        out["tag"] = policyload.tag_of(k)
        out["allowed"] = should
        out["seen_not_allowed"] = sum(r.get("seen_not_allowed", 0) for r in reports)
    return out


async def _propagation(reactor, settings: Settings, target: Target, fleet: Fleet, run_tag: str, expectation=None) -> dict:
    """Register new nodes one at a time; time until every simulated node has
    each (under a policy: every node allowed to see it; and no other)."""
    probes = []
    measurable = target.measurable()
    cpu = procstat.CpuWindow([target.pid]) if measurable else None
    load_cpu = procstat.CpuWindow(fleet.pids)
    background = Background(settings)
    budget = settings.probes * (2.5 if fleet.mode == "wire" else 3.0) + (0 if fleet.mode == "wire" else settings.heartbeat)
    profile = _start_profile(reactor, settings, target, f"{fleet.mode}-{fleet.nodes}-propagation", budget)
    if cpu:
        cpu.start()
    load_cpu.start()
    background.start()
    if fleet.mode == "wire":
        timeout = settings.probe_timeout
        for k in range(settings.probes):
            probes.append(await _probe(reactor, settings, target, fleet, run_tag, k, timeout, expectation))
            await sleep(reactor, random.uniform(0.5, 1.5))
    else:
        # Seed nodes poll every heartbeat: overlap the probes (3 s apart), each
        # waits a full poll interval and some.
        timeout = settings.heartbeat + 15
        running = []
        for k in range(settings.probes):
            running.append(Deferred.fromCoroutine(_probe(reactor, settings, target, fleet, run_tag, k, timeout)))
            await sleep(reactor, 3.0)
        for d in running:
            probes.append(await d)
    server_percent = cpu.read()["percent_of_one_core"] if cpu else None
    load_percent = load_cpu.read()["percent_of_one_core"]
    per_node = [x for p in probes for x in p.pop("latencies")]
    to_all = [p["time_to_all_seconds"] for p in probes]
    complete = [t for t in to_all if t is not None]
    incomplete = len(to_all) - len(complete)
    # A probe some node never saw counts as infinitely slow in the percentiles.
    padded = complete + [math.inf] * incomplete
    policy_figures = {}
    if expectation is not None:
        policy_figures = {
            "allowed_viewers_per_probe": summary([p["allowed"] for p in probes]),
            "seen_by_nodes_not_allowed": sum(p["seen_not_allowed"] for p in probes),
        }
    return {
        "probes": len(probes),
        **policy_figures,
        "probes_not_seen_by_all": incomplete,
        "time_to_all_seconds": {
            "p50": _finite(percentile(padded, 50)),
            "p99": _finite(percentile(padded, 99)),
            "max": _finite(max(padded)) if padded else None,
        },
        "per_node_seconds": summary(per_node),
        "registration_answered_seconds": summary([p["registration_answered_seconds"] for p in probes]),
        "per_probe": probes,
        "server": target.facts(),
        "server_cpu_percent": server_percent,
        "load_cpu_percent": load_percent,
        "background": background.read(server_percent, load_percent),
        **({"profile": await _finish_profile(*profile)} if profile is not None else {}),
    }


async def _policy_change(reactor, settings: Settings, target: Target, fleet: Fleet, run_tag: str) -> dict:
    """Set the policy with one rule added, under the steady load: time from
    the set call's answer until each node whose filter changes has its new
    one in a long-poll answer; the bytes of the wave (every long-poll wakes,
    and each node's next answer is its whole view, once)."""
    old_text = target.policy_text
    new_text = policyload.changed_policy_text()
    directory = await target.directory()
    expected_before = policyload.Expectation(old_text, directory)
    expected_after = policyload.Expectation(new_text, directory)
    before, after = expected_before.digests(), expected_after.digests()
    id_of = {i: node_identity(run_tag, i)[0] for i in range(fleet.nodes)}
    affected = {i for i, node_id in id_of.items() if before.get(node_id) != after.get(node_id)}
    expect_views = policyload.view_changes(expected_before, expected_after, id_of)
    view_affected = {int(i) for i in expect_views["nodes"]}
    measurable = target.measurable()
    cpu = procstat.CpuWindow([target.pid]) if measurable else None
    load_cpu = procstat.CpuWindow(fleet.pids)
    background = Background(settings)
    counters_before = _merge_counters(await fleet.call_all("counters"))
    await fleet.call_all("mark_wave", expect_views=expect_views)
    if cpu:
        cpu.start()
    load_cpu.start()
    background.start()
    rss = [procstat.memory_bytes(target.pid)["rss"]] if measurable else []
    sent = time.monotonic()
    answer = await target.set_policy(new_text)
    returned = time.monotonic()
    # Bounded: until every affected node has its new filter and every node a
    # full answer, or a minute (more at large N: every node's whole view).
    budget = max(60.0, fleet.nodes / 100)
    while time.monotonic() - returned < budget:
        progress = await fleet.call_all("wave_progress")
        if measurable:
            rss.append(procstat.memory_bytes(target.pid)["rss"])
        if sum(p["new_filters"] for p in progress) >= len(affected) and sum(p["views"] for p in progress) >= len(view_affected):
            break
        await sleep(reactor, 0.25)
    settled = time.monotonic()
    server_percent = cpu.read()["percent_of_one_core"] if cpu else None
    load_percent = load_cpu.read()["percent_of_one_core"]
    reports = await fleet.call_all("end_wave")
    counters_after = _merge_counters(await fleet.call_all("counters"))
    diff = _diff_counters(counters_before, counters_after)
    new_filter = {int(i): v for r in reports for i, v in r.get("new_filter", {}).items()}
    right = [i for i in affected if i in new_filter and new_filter[i][1] == after[id_of[i]]]
    wrong = [i for i in new_filter if new_filter[i][1] != after[id_of[i]]]
    per_node = [new_filter[i][0] - returned for i in right]
    view_at = {int(i): t for r in reports for i, t in r.get("view_at", {}).items()}
    view_times = [view_at[i] - returned for i in view_affected if i in view_at]
    view_padded = view_times + [math.inf] * (len(view_affected) - len(view_times))
    # Reached: a node whose filter or view changed has all of it.
    reached = []
    for i in affected | view_affected:
        parts = ([new_filter[i][0] if i in right else math.inf] if i in affected else []) + (
            [view_at.get(i, math.inf)] if i in view_affected else []
        )
        reached.append(max(parts) - returned)
    full_times = [t - returned for r in reports for t in r.get("full_at", [])]
    missing = len(affected) - len(right)
    padded = per_node + [math.inf] * missing
    return {
        "added_rule": policyload.ADDED_RULE,
        "set_call_seconds": round(returned - sent, 4),
        "set_answer": {k: answer.get(k) for k in ("version", "rules") if k in answer},
        "affected_nodes": len(affected),
        "affected_with_new_filter": len(right),
        "new_filter_unexpected_or_wrong": len(wrong),
        # From the set call's answer (the server wakes long-polls as it puts
        # the policy in force: an answer may come before the call's own).
        "new_filter_seconds": {
            "p50": _finite(percentile(padded, 50)),
            "p99": _finite(percentile(padded, 99)),
            "max": _finite(max(padded)) if padded else None,
            "min": round(min(per_node), 4) if per_node else None,
        },
        "view_changed_nodes": len(view_affected),
        "view_changed_told": len(view_times),
        "view_change_seconds": {
            "p50": _finite(percentile(view_padded, 50)),
            "p99": _finite(percentile(view_padded, 99)),
            "max": _finite(max(view_padded)) if view_padded else None,
        },
        "peers_gained_per_changed_view_p50": expect_views["gained_p50"],
        "reached_nodes": len(reached),
        "reached_seconds": {
            "p50": _finite(percentile(reached, 50)),
            "p99": _finite(percentile(reached, 99)),
            "max": _finite(max(reached)) if reached else None,
        },
        "full_answer_seconds": summary(full_times),
        "nodes_with_full_answer": len(full_times),
        "window_seconds": round(settled - sent, 2),
        "answers": sum(r.get("answers", 0) for r in reports),
        "answer_body_bytes_per_node": round(sum(r.get("body_bytes", 0) for r in reports) / fleet.nodes, 1),
        "answer_body_bytes_max": max((r.get("body_bytes_max", 0) for r in reports), default=0),
        # HTTP bytes as the nodes count them (headers too, before TLS), over the window.
        "server_bytes_sent_per_node": round(diff["bytes_in"] / fleet.nodes, 1),
        "server_bytes_received_per_node": round(diff["bytes_out"] / fleet.nodes, 1),
        "server_cpu_percent": server_percent,
        "server_rss_mb": {"before": round(rss[0] / 2**20, 1), "max": round(max(rss) / 2**20, 1)} if rss else None,
        "load_cpu_percent": load_percent,
        "budget_seconds": budget,
        "background": background.read(server_percent, load_percent),
        "errors": diff["errors"],
    }


def _finite(x):
    if x is None:
        return None
    return round(x, 4) if math.isfinite(x) else "never (some node missed it)"


async def _snapshot_costs(reactor, target: Target) -> dict:
    """What a node joining cold (cursor 0) and a seed client's /peers cost at this N."""
    out = {}
    for name, path in (("full_snapshot", b"/peers?since=0&wait=0"), ("seed_peers_list", b"/peers")):
        times, sizes = [], []
        for _ in range(3):
            conn = await target.connector().connect()
            try:
                await conn.request(b"GET", b"/health")  # handshakes out of the timing
                sent = time.monotonic()
                response = await conn.request(b"GET", path, headers=target.probe_auth)
                if response.status != 200:
                    raise RuntimeError(f"{path.decode()} answered {response.status}: {response.body[:200]!r}")
                times.append(response.done_at - sent)
                sizes.append(len(response.body))
            finally:
                conn.abort()
        out[name] = {"seconds": summary(times), "bytes": max(sizes)}
    return out


# -- STUN --------------------------------------------------------------------------------


async def stun(reactor, settings: Settings) -> dict:
    """Binding responses/s at stepped offered rates; the capacity is the best
    answered rate with under 1 % lost."""
    quiet = await wait_quiet(reactor, settings)
    target = Target(reactor, settings, "tls")
    worker = None
    try:
        await target.start()
        worker = WorkerProcess(
            reactor,
            "stun-load",
            [
                "-m",
                "bench.stunload",
                f"--host={target.host}",
                f"--ports={target.port + 1},{target.port + 2}",
                f"--sources={settings.stun_sources}",
                f"--rates={','.join(str(r) for r in settings.stun_rates)}",
                f"--step-seconds={settings.stun_seconds}",
            ],
            settings.load_cpus,
        )
        done: Deferred = Deferred()
        steps_server: list[dict] = []
        window: dict = {}

        def on_event(_, message):
            event = message["event"]
            if event == "step_start":
                window["cpu"] = procstat.CpuWindow([target.pid]) if target.measurable() else None
                window["background"] = Background(settings)
                window["background"].start()
                if window["cpu"]:
                    window["cpu"].start()
            elif event == "step":
                server = window["cpu"].read()["percent_of_one_core"] if window.get("cpu") else None
                steps_server.append(
                    {"server_cpu_percent": server, "background": window["background"].read(server, message["load_cpu_percent"])}
                )
            elif event == "result" and not done.called:
                done.callback(message)

        worker.on_event = on_event
        worker.spawn()
        budget = len(settings.stun_rates) * (settings.stun_seconds + 2) + 60
        timer = reactor.callLater(budget, lambda: done.called or done.errback(RuntimeError("stun load hung")))
        result = await done
        if timer.active():
            timer.cancel()
        result.pop("event")
        for step, server in zip(result["steps"], steps_server):
            step.update(server)
        good = [
            st for st in result["steps"] if st["lost_percent"] is not None and st["lost_percent"] < 1 and st["load_cpu_percent"] < 95
        ]
        best = max(good, key=lambda st: st["answered_per_second"]) if good else None
        result["responses_per_second"] = best["answered_per_second"] if best else None
        result["at_step"] = best
        result["client_bound"] = any(st["load_cpu_percent"] >= 95 for st in result["steps"])
        result["quiet_before"] = quiet
        result["server"] = target.facts()
        return result
    except Exception as e:
        return {"failed": f"{type(e).__name__}: {e}", "stderr": (worker.stderr[-1500:].decode(errors="replace") if worker else "")}
    finally:
        if worker is not None:
            await worker.kill(15, grace=5, reactor=reactor)
        await target.stop()


# -- node side -------------------------------------------------------------------------------


async def apply_netmap(reactor, settings: Settings) -> dict:
    """bench/apply_netmap.py: a 1,000-peer netmap onto a real wireguard-go interface."""
    if os.geteuid() != 0:
        return {"skipped": "needs root (a network namespace and a WireGuard interface)"}
    missing = [p for p in ("ip", "wg", "wireguard-go") if shutil.which(p) is None]
    if missing:
        return {"skipped": f"missing programs: {', '.join(missing)}"}
    process = CollectingProcess()
    argv = [sys.executable, os.path.join(BENCH_CHECKOUT, "bench", "apply_netmap.py"), f"--peers={settings.apply_peers}"]
    reactor.spawnProcess(process, argv[0], argv, env=dict(os.environ, PYTHONPATH=BENCH_CHECKOUT), path=BENCH_CHECKOUT)
    timer = reactor.callLater(600, lambda: process.ended.called or process.transport.signalProcess("KILL"))
    code = await process.ended
    if timer.active():
        timer.cancel()
    if code != 0:
        return {"failed": f"exit {code}", "stderr": process.stderr[-2000:].decode(errors="replace")}
    try:
        return json.loads(process.stdout)
    except ValueError:
        return {"failed": "no JSON on stdout", "stdout": process.stdout[-2000:].decode(errors="replace")}


async def relay_bench(reactor, settings: Settings) -> dict:
    return await relay.run(reactor)
