"""Issue 19's scale benches: replicas of one mesh on a throw-away PostgreSQL.

    python -m bench.replica_scale spread --nodes 1000 --replicas 3 [--netmap stream|longpoll]
    python -m bench.replica_scale failover --nodes 1000 --replicas 3
    python -m bench.replica_scale relay_latency --nodes 1000 [--database sqlite|postgresql] [--server-checkout DIR]

Run as root (tests.pgcluster runs PostgreSQL as an unprivileged user), and
under ``flock /tmp/wire-bench.lock`` on a shared machine. Replicas are real
``twistd -n wire-server`` processes with TLS, join keys and node credentials
as shipped, on one database (``--database``, its password in a 0600 file),
pinned to ``--server-cpus``; the simulated nodes (bench/loadgen.py,
bench/nodes.py: the same fleets as the single-server benches) run on
``--load-cpus``, node i starting at replica i % R, reading the netmap as
``--netmap`` says: ``stream`` (the default, as ``twistd wire-node`` does:
``GET /peers?...&stream=1``, each line taken as it arrives) or
``longpoll`` (one answer per request, the protocol before).

- ``spread``: N nodes over R replicas. After a warm-up, one steady window:
  each replica's CPU, PostgreSQL's (the postmaster, its backends and the
  workers it reaped), the load's; then ``--probes`` registrations at the first
  replica, each timed until every simulated node's long-poll has it.
- ``failover``: the same mesh; kill -9 of the first replica (a third of the
  nodes at 3 replicas). Time until the survivors hold as many waiting
  long-polls as the mesh had (their /metrics), each moved node's first
  long-poll at a survivor (written, and answered), and whether that first
  answer was a full netmap or a delta; then a registration at a survivor
  that every node must see.
- ``relay_latency``: one server, N nodes long-polling and a relayed pair
  (bench/relay_ping.py: frames through the server's relay port and back);
  every node re-registers at once (its NAT mapping moved: a real write),
  and the frames' round trips before, during and after are compared. Give
  ``--server-checkout`` an older commit (``git worktree add``) to measure a
  store that wrote on the reactor thread.

Prints one JSON object (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver  # noqa: E402

from bench import procstat, scenarios  # noqa: E402
from bench.nodes import node_identity  # noqa: E402
from bench.processes import BENCH_CHECKOUT, CollectingProcess, pinned  # noqa: E402
from bench.stats import percentile, summary  # noqa: E402
from bench.scenarios import PROBE_INDEX_BASE, Fleet, Settings, Target, sleep  # noqa: E402
from wire.protocol.relay import RelayGrant, RelayRequest  # noqa: E402

log = Logger()

# Probe numbers (scenarios._probe's k) past those of the propagation phase.
FAILOVER_PROBE = 9_000
RELAY_PAIR = (9_100, 9_101)


# -- what the bench reads ---------------------------------------------------------------


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


def labelled_values(text: str, name: str) -> dict[str, float]:
    """``name{label="x"} v`` samples of Prometheus text, by their one label's value."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            _, _, label = labels.partition('="')
            try:
                out[label.rstrip('"}')] = float(value)
            except ValueError:
                continue
    return out


def percentiles(values, digits: int = 4) -> dict:
    """p50/p95/p99/max (nearest rank) and the count, for the report."""
    if not values:
        return {"count": 0}
    out = {f"p{q}": round(percentile(values, q), digits) for q in (50, 95, 99)}
    return {"count": len(values), **out, "max": round(max(values), digits)}


def split_rounds(rounds: list, burst_from: float, burst_to: float) -> dict:
    """Relay round trips ([sent_at, seconds or None]) before, during and after a burst."""
    phases: dict[str, list] = {"before": [], "during": [], "after": []}
    for sent, took in rounds:
        phase = "before" if sent < burst_from else "during" if sent <= burst_to else "after"
        phases[phase].append(took)
    out = {}
    for phase, values in phases.items():
        answered = [v * 1000 for v in values if v is not None]
        out[phase] = {"sent": len(values), "lost": len(values) - len(answered), "rtt_ms": percentiles(answered, 3)}
    return out


def postmaster_pid(data_dir: str) -> int:
    with open(os.path.join(data_dir, "postmaster.pid")) as f:
        return int(f.readline())


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


class CpuMeter:
    """CPU of named processes over one window, % of one core; ``tree`` ones
    with their children (PostgreSQL's backends)."""

    def __init__(self, pids: dict[str, int], trees: dict[str, int]):
        self.pids, self.trees = pids, trees

    def _read(self) -> dict[str, float]:
        out = {name: procstat.cpu_seconds(pid) for name, pid in self.pids.items()}
        out.update({name: procstat.tree_cpu_seconds(pid) for name, pid in self.trees.items()})
        return out

    def start(self) -> None:
        self.started, self.at = self._read(), time.monotonic()

    def read(self) -> dict[str, float]:
        now, elapsed = self._read(), time.monotonic() - self.at
        return {name: round(100 * (now[name] - self.started[name]) / elapsed, 2) for name in now}


# -- the mesh ---------------------------------------------------------------------------


class Mesh:
    """R replicas on one throw-away PostgreSQL database (or one server on SQLite)."""

    def __init__(self, reactor, settings: Settings, replicas: int, database: str = "postgresql", server_args: tuple[str, ...] = ()):
        self.reactor, self.settings, self.count, self.engine = reactor, settings, replicas, database
        self.server_args = server_args
        self.pg = None
        self.database = None
        self.secret_dir = tempfile.mkdtemp(prefix="wire-bench-secret-")
        self.targets: list[Target] = []

    async def start(self) -> None:
        extra: tuple[str, ...] = ()
        if self.engine == "postgresql":
            from tests import pgcluster

            reason = pgcluster.skip_reason()
            if reason:
                raise SystemExit(f"bench.replica_scale: {reason}")
            self.pg = pgcluster.cluster()
            self.database = self.pg.create_database()
            password_file = os.path.join(self.secret_dir, "db-password")
            # 0600 from the start, and never on a command line.
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pgcluster.PASSWORD + "\n")
            extra = (f"--database={self.pg.url(self.database, password=False)}", f"--database-password-file={password_file}")
        elif self.count != 1:
            raise ValueError("replicas need PostgreSQL")
        self.targets = [Target(self.reactor, self.settings, "tls") for _ in range(self.count)]
        for i, target in enumerate(self.targets):
            others = self.targets[i:] + self.targets[:i]  # its own URL first
            urls = tuple(f"--public-url={t.url}" for t in others) if self.count > 1 else ()
            target.extra_args = ((*extra, f"--replica-name=r{i}", *urls) if self.pg else ()) + self.server_args
            await target.start()  # one after another: the first stores the shared certificate

    def database_counters(self) -> dict | None:
        """PostgreSQL's own counts for the mesh's database: commits, rows
        written, and rows appended to ``changes`` (each change a replica
        commits is one, and its transaction NOTIFYs the others)."""
        if self.pg is None:
            return None
        row = self.pg.psql(
            "SELECT d.xact_commit, d.tup_inserted, d.tup_updated, d.tup_deleted, "
            "coalesce((SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'changes'), 0), "
            "coalesce((SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'nodes'), 0) "
            f"FROM pg_stat_database d WHERE d.datname = '{self.database}'",
            self.database,
        ).strip()
        names = ("commits", "rows_inserted", "rows_updated", "rows_deleted", "changes_appended", "node_rows_updated")
        return dict(zip(names, (int(v) for v in row.split("|"))))

    @property
    def postgres_pid(self) -> int | None:
        return postmaster_pid(self.pg.data) if self.pg else None

    def meter(self, load_pids: list[int]) -> CpuMeter:
        pids = {f"replica_r{i}": t.pid for i, t in enumerate(self.targets) if t.measurable()}
        pids.update({f"load_{i}": pid for i, pid in enumerate(load_pids)})
        trees = {"postgresql": self.postgres_pid} if self.pg else {}
        return CpuMeter(pids, trees)

    async def stop(self) -> None:
        for target in self.targets:
            await target.stop()
        if self.pg is not None and self.database:
            self.pg.drop_database(self.database)
        shutil.rmtree(self.secret_dir, ignore_errors=True)


async def get(
    target: Target, path: bytes, auth: bytes = b"", body: dict | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    conn = await target.connector().connect()
    try:
        method = b"GET" if body is None else b"POST"
        d = conn.request(method, path, None if body is None else json.dumps(body).encode(), headers=auth)
        timer = target.reactor.callLater(timeout, lambda: d.called or conn.fail_and_abort(TimeoutError(path.decode())))
        response = await d
        if timer.active():
            timer.cancel()
        return response.status, response.body
    finally:
        conn.abort()


async def open_longpolls(target: Target) -> float | None:
    try:
        status, body = await get(target, b"/metrics")
    except Exception:
        return None
    return metric_value(body.decode(errors="replace"), "wire_longpolls_open") if status == 200 else None


async def datagram_outcomes(target: Target) -> dict[str, float]:
    """The relay port's outcomes so far, and how long /metrics took to answer
    (a stalled reactor answers late: that is a figure too)."""
    asked = time.monotonic()
    try:
        status, body = await get(target, b"/metrics", timeout=120)
    except Exception:
        return {"metrics_answer_seconds": round(time.monotonic() - asked, 2)}
    out = labelled_values(body.decode(errors="replace"), "wire_stun_datagrams_total") if status == 200 else {}
    out["metrics_answer_seconds"] = round(time.monotonic() - asked, 2)
    return out


async def settled_cursor(reactor, mesh: Mesh, cursor: str, timeout: float = 60.0) -> tuple[str, float]:
    """The mesh's cursor once every replica has read the change stream to its
    end (no lag, one serial), and how long that took to come. A replica's
    answers carry its serial as of then, a few hundred changes behind the
    cluster's while 200 nodes a second join: started from the join answers'
    cursor, all 10,000 simulated nodes would ask for those changes at the same
    moment (a herd real nodes, each polling as it joins, do not make)."""
    epoch = cursor.rpartition(":")[0]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        serials, lags = [], []
        for target in mesh.targets:
            try:
                status, body = await get(target, b"/metrics")
            except Exception:
                status, body = 0, b""
            text = body.decode(errors="replace") if status == 200 else ""
            serials.append(metric_value(text, "wire_netmap_serial"))
            lags.append(metric_value(text, "wire_cluster_lag"))
        if None not in serials and len(set(serials)) == 1 and all(lag == 0 for lag in lags):
            return f"{epoch}:{int(serials[0])}", round(time.monotonic() - started, 2)
        await sleep(reactor, 0.5)
    return cursor, round(time.monotonic() - started, 2)  # not settled: the joins' own


async def joined_fleet(reactor, settings: Settings, mesh: Mesh, nodes: int, run_tag: str) -> tuple[Fleet, dict]:
    """The simulated nodes joined (each at its first replica) and long-polling
    from the mesh's settled cursor."""
    first, *others = mesh.targets
    fleet = Fleet(reactor, settings, first, "wire", nodes, run_tag, settings.heartbeat_connection, replicas=tuple(others))
    fleet.spawn()
    registration = await scenarios._registration(reactor, settings, first, fleet)
    joined_cursor = registration.pop("cursor")
    cursor, registration["settled_after_seconds"] = await settled_cursor(reactor, mesh, joined_cursor)
    registration["cursor_behind_by"] = int(cursor.rpartition(":")[2]) - int(joined_cursor.rpartition(":")[2] or 0)
    await fleet.call_all("steady", cursor=cursor, heartbeat=settings.heartbeat, wait=settings.wait, seed=1, heartbeat_mode="implicit")
    registration.pop("server", None)
    return fleet, registration


async def steady_window(reactor, settings: Settings, mesh: Mesh, fleet: Fleet) -> dict:
    joined = scenarios._merge_counters(await fleet.call_all("counters"))
    await sleep(reactor, settings.warmup)
    before = scenarios._merge_counters(await fleet.call_all("counters"))
    warmup = scenarios._diff_counters(joined, before)
    meter = mesh.meter(fleet.pids)
    background = scenarios.Background(settings)
    database_before = mesh.database_counters()
    meter.start()
    background.start()
    await sleep(reactor, settings.steady_seconds)
    cpu = meter.read()
    database_after = mesh.database_counters()
    after = scenarios._merge_counters(await fleet.call_all("counters"))
    diff = scenarios._diff_counters(before, after)
    load = sum(v for k, v in cpu.items() if k.startswith("load_"))
    servers = sum(v for k, v in cpu.items() if k.startswith("replica_"))
    return {
        "window_seconds": settings.steady_seconds,
        "cpu_percent_of_one_core": cpu,
        "load_total_percent": round(load, 2),
        "cores_busy_percent": background.read(servers, load),
        "requests_per_second": {k: round(v / settings.steady_seconds, 1) for k, v in diff["requests"].items()},
        "errors": diff["errors"],
        # The warm-up's, before the window: the fleet's first polls and heartbeats.
        "warmup_errors": warmup["errors"],
        "warmup_netmap_streams": warmup["netmap"],
        # Stream mode: the lines, and how each stream ended (after a full or held key, at its wait, early).
        "netmap_streams": diff["netmap"],
        "open_longpolls": [await open_longpolls(t) for t in mesh.targets],
        "database_per_minute": per_minute(database_before, database_after, settings.steady_seconds, fleet.nodes),
    }


def per_minute(before: dict | None, after: dict | None, seconds: float, nodes: int) -> dict | None:
    """Counter growth per minute, for the mesh and per node (PostgreSQL's
    statistics lag up to a second behind: a window of a minute or more)."""
    if before is None or after is None:
        return None
    minutes = seconds / 60
    out = {}
    for name in before:
        grown = after[name] - before[name]
        out[name] = round(grown / minutes, 1)
        out[f"{name}_per_node"] = round(grown / minutes / nodes, 4)
    return out


async def propagation(reactor, settings: Settings, mesh: Mesh, fleet: Fleet, run_tag: str) -> dict:
    """scenarios._propagation (registrations at the first replica), with p95
    added, and what the replicas and PostgreSQL spent on it."""
    meter = mesh.meter(fleet.pids)
    database_before = mesh.database_counters()
    counted = scenarios._merge_counters(await fleet.call_all("counters"))
    started = time.monotonic()
    meter.start()
    result = await scenarios._propagation(reactor, settings, mesh.targets[0], fleet, run_tag)
    cpu = meter.read()
    traffic = scenarios._diff_counters(counted, scenarios._merge_counters(await fleet.call_all("counters")))
    seconds = time.monotonic() - started
    database_after = mesh.database_counters()
    to_all = [p["time_to_all_seconds"] for p in result["per_probe"]]
    done = [t for t in to_all if t is not None]
    by_server: dict[str, list[float]] = {}
    for p in result["per_probe"]:
        for server, times in p.get("latencies_by_server", {}).items():
            by_server.setdefault(f"r{server}", []).extend(times)
    return {
        "probes": result["probes"],
        "probes_not_seen_by_all": result["probes_not_seen_by_all"],
        "time_to_all_seconds": percentiles(done),
        "per_node_seconds": result["per_node_seconds"],
        # Registered at r0: its own nodes, and those that learn it through PostgreSQL.
        "per_node_seconds_by_replica": {s: percentiles(v) for s, v in sorted(by_server.items())},
        "registration_answered_seconds": result["registration_answered_seconds"],
        "window_seconds": round(seconds, 2),
        "cpu_percent_of_one_core": cpu,
        "database_per_minute": per_minute(database_before, database_after, seconds, fleet.nodes),
        "load_cpu_percent": result["load_cpu_percent"],
        "background": result["background"],
        "requests": traffic["requests"],
        "errors": traffic["errors"],
        "netmap_streams": traffic["netmap"],
    }


async def failover(reactor, settings: Settings, mesh: Mesh, fleet: Fleet, run_tag: str) -> dict:
    """kill -9 of the first replica; its nodes onto the survivors."""
    victim, survivors = mesh.targets[0], mesh.targets[1:]
    health = {}
    for i, t in enumerate(mesh.targets):
        status, body = await get(t, b"/health")
        health[f"r{i}"] = json.loads(body).get("cluster") if status == 200 else status
    polls_before = [await open_longpolls(t) for t in mesh.targets]
    baseline = sum(p or 0 for p in polls_before)
    await fleet.call_all("mark_moves")
    killed_at = time.monotonic()
    await victim.process.kill(signal.SIGKILL)
    reaped = time.monotonic() - killed_at
    samples = []
    all_polling = None
    for _ in range(300):  # every 0.1 s, 30 s at most
        await sleep(reactor, 0.1)
        counts = [await open_longpolls(t) for t in survivors]
        at = time.monotonic() - killed_at
        samples.append([round(at, 2), counts])
        if sum(c or 0 for c in counts) >= baseline:
            all_polling = at
            break
    await sleep(reactor, 1.0)
    before_probe = await fleet.call_all("moves")
    # A change at a survivor: every node must see it, as a delta.
    probe = await scenarios._probe(reactor, settings, survivors[0], fleet, run_tag, FAILOVER_PROBE, settings.probe_timeout)
    probe.pop("latencies")
    after_probe = await fleet.call_all("moves")
    moves = [m for r in after_probe for m in r["moves"]]
    moving = [m for r in after_probe for m in r["moving"]]
    return {
        "health_before": health,
        "open_longpolls_before": polls_before,
        "victim": "r0",
        "nodes_at_victim": sum(1 for s in fleet.slices for i in s if i % len(mesh.targets) == 0),
        "kill_reaped_seconds": round(reaped, 3),
        "survivors_hold_all_longpolls_seconds": None if all_polling is None else round(all_polling, 2),
        "survivor_longpoll_samples": samples[:: max(1, len(samples) // 40)],
        "moved": len(moves),
        "still_moving": len(moving),
        "moved_to": {f"r{i}": sum(1 for m in moves if m["to"] == i) for i in range(len(mesh.targets))},
        "polling_at_survivor_after_kill_seconds": percentiles([m["polling_at"] - killed_at for m in moves]),
        "first_answer_at_survivor_after_kill_seconds": percentiles([m["answered_at"] - killed_at for m in moves]),
        "tries": summary([m["tries"] for m in moves]),
        "first_answers_full": sum(1 for m in moves if m["first_full"]),
        "first_answers_delta": sum(1 for m in moves if m["first_full"] is False),
        "answers_since_kill_before_probe": _sum_answers(before_probe),
        "answers_since_kill": _sum_answers(after_probe),
        "probe_at_survivor": probe,
        "servers_in_use_after": [sum(r["servers"][i] for r in after_probe) for i in range(len(mesh.targets))],
    }


def _sum_answers(reports: list[dict]) -> dict:
    return {k: sum(r["answers"][k] for r in reports) for k in ("full", "delta")}


# -- the relay under a registration burst ---------------------------------------------------------


async def relay_pair(reactor, target: Target, run_tag: str) -> tuple[RelayGrant, RelayGrant]:
    """Two new nodes with one relay session between them: each side's grant."""
    joined = []
    for k in RELAY_PAIR:
        node_id, _, _, auth = await scenarios._register_probe(reactor, target, run_tag, k)
        joined.append((node_id, node_identity(run_tag, PROBE_INDEX_BASE + k)[2], auth))
    grants = []
    for (node_id, key, auth), (peer, _, _) in ((joined[0], joined[1]), (joined[1], joined[0])):
        status, body = await get(target, b"/relay", auth, RelayRequest(node_id, key, peer).to_json())
        if status != 200:
            raise RuntimeError(f"POST /relay answered {status}: {body[:200]!r}")
        grants.append(RelayGrant.from_json(json.loads(body)))
    return grants[0], grants[1]


def grant_text(grant: RelayGrant) -> str:
    """A side's grant as bench/relay_ping.py reads it (stdin, never argv)."""
    return f"{grant.token.hex()}:{base64.b64encode(grant.key).decode()}"


async def relay_latency(reactor, settings: Settings, mesh: Mesh, fleet: Fleet, run_tag: str, seconds: float, rate: float) -> dict:
    target = mesh.targets[0]
    await sleep(reactor, settings.warmup)
    status, health = await get(target, b"/health")
    a, b = await relay_pair(reactor, target, run_tag)
    opened = await fleet.call_all("open_heartbeats", timeout=300)
    pinger = CollectingProcess()
    argv = pinned(settings.load_cpus, [sys.executable, "-m", "bench.relay_ping", f"--relay={target.host}:{a.relay_port or target.port + 1}",
                                       f"--seconds={seconds:g}", f"--rate={rate:g}"])
    reactor.spawnProcess(pinger, shutil.which(argv[0]) or argv[0], argv, env=dict(os.environ, PYTHONPATH=BENCH_CHECKOUT), path=BENCH_CHECKOUT)
    pinger.transport.write(json.dumps({"a": grant_text(a), "b": grant_text(b)}).encode() + b"\n")
    pinger.transport.closeStdin()
    meter = mesh.meter(fleet.pids)
    meter.start()
    datagrams_before = await datagram_outcomes(target)
    counted = scenarios._merge_counters(await fleet.call_all("counters"))
    burst_at = time.monotonic() + seconds / 3
    results = await fleet.call_all("reregister", timeout=300, at=burst_at)
    cpu = meter.read()
    during = scenarios._diff_counters(counted, scenarios._merge_counters(await fleet.call_all("counters")))
    code = await pinger.ended
    if code != 0:
        raise RuntimeError(f"relay_ping exited {code}: {pinger.stderr[-1500:].decode(errors='replace')}")
    rounds = json.loads(bytes(pinger.stdout))["rounds"]
    until_end = scenarios._diff_counters(counted, scenarios._merge_counters(await fleet.call_all("counters")))
    datagrams_after = await datagram_outcomes(target)
    waited = datagrams_after.pop("metrics_answer_seconds", None)
    datagrams_before.pop("metrics_answer_seconds", None)
    datagrams = {k: v - datagrams_before.get(k, 0) for k, v in datagrams_after.items() if v - datagrams_before.get(k, 0)}
    datagrams["metrics_answer_seconds_after_pinger"] = waited
    burst_end = max(r["ended"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    return {
        "server_health": json.loads(health) if status == 200 else status,  # which wire answered (an older one has no "cluster")
        "relay_rate_per_second": rate,
        "heartbeat_connections": {"opened": sum(r["nodes"] - r["failed"] for r in opened), "failed": sum(r["failed"] for r in opened)},
        "reregistered": sum(r["ok"] for r in results),
        "reregister_failed": sum(r["failed"] for r in results),
        "reregister_error_samples": [s for r in results for s in r["error_samples"]][:5],
        "burst_seconds": round(burst_end - burst_at, 3),
        "register_latency_seconds": percentiles(latencies),
        "relay_round_trip": split_rounds(rounds, burst_at, burst_end),
        "cpu_percent_of_one_core_over_run": cpu,
        # What the nodes sent and got (HTTP bytes, before TLS) from just before the burst
        # to its last answer, and to the pinger's end (the long-poll answers it set off).
        "traffic_to_burst_end": {k: during[k] for k in ("requests", "bytes_in", "errors")},
        "traffic_to_pinger_end": {k: until_end[k] for k in ("requests", "bytes_in", "errors")},
        # The server's own count of what it did with the relay port's datagrams over the pinger's run.
        "server_datagram_outcomes": datagrams,
    }


# -- the command ------------------------------------------------------------------------------------


async def run(reactor, options) -> dict:
    settings = Settings(
        server_cpus=options.server_cpus,
        load_cpus=options.load_cpus,
        server_checkout=options.server_checkout,
        warmup=options.warmup,
        steady_seconds=options.steady_seconds,
        probes=options.probes,
        quiet_timeout=options.quiet_timeout,
        heartbeat_connection="keep",
        keep_data=options.keep_data,
        netmap=options.netmap,
    )
    replicas = 1 if options.scenario == "relay_latency" else options.replicas
    result: dict = {
        "scenario": options.scenario,
        "nodes": options.nodes,
        "replicas": replicas,
        "database": options.database,
        "netmap": options.netmap,
        "server_checkout": os.path.abspath(options.server_checkout),
        "server_commit": _commit(options.server_checkout),
        "server_cpus": options.server_cpus,
        "load_cpus": options.load_cpus,
        "loadavg_before": loadavg(),
        "quiet_before": await scenarios.wait_quiet(reactor, settings),
    }
    server_args = (f"--offline-after={options.offline_after:g}",) if options.offline_after else ()
    result["server_args"] = list(server_args)
    mesh = Mesh(reactor, settings, replicas, options.database, server_args)
    fleet = None
    run_tag = secrets.token_hex(3)
    try:
        await mesh.start()
        fleet, result["registration"] = await joined_fleet(reactor, settings, mesh, options.nodes, run_tag)
        result["load_processes"] = len(fleet.workers)
        if options.scenario == "spread":
            result["steady"] = await steady_window(reactor, settings, mesh, fleet)
            result["propagation"] = await propagation(reactor, settings, mesh, fleet, run_tag)
        elif options.scenario == "failover":
            await sleep(reactor, settings.warmup)
            result["failover"] = await failover(reactor, settings, mesh, fleet, run_tag)
        else:
            result["relay_latency"] = await relay_latency(
                reactor, settings, mesh, fleet, run_tag, options.relay_seconds, options.relay_rate
            )
        final = await fleet.call_all("counters")
        result["final_errors"] = scenarios._merge_counters(final)["errors"]
        result["final_netmap_streams"] = scenarios._merge_counters(final)["netmap"]
        result["final_error_samples"] = [x for c in final for x in c.get("error_samples", [])][:30]
    except Exception as e:
        log.failure("replica_scale {scenario} failed", scenario=options.scenario)
        result["failed"] = f"{type(e).__name__}: {e}"
        result["server_log_tails"] = [t.log_tail(1200) for t in mesh.targets]
    finally:
        if fleet is not None:
            await fleet.stop()
        await mesh.stop()
    result["loadavg_after"] = loadavg()
    return result


def _commit(checkout: str) -> str:
    head = os.path.join(checkout, ".git")
    try:
        import subprocess

        return subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return f"unknown ({head})"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=("spread", "failover", "relay_latency"))
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--netmap", choices=("stream", "longpoll"), default="stream",
                        help="how the simulated nodes read the netmap: a stream per wait (wire-node's way) or one "
                        "long-poll answer per request [stream]")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql",
                        help="relay_latency only: the one server's store [postgresql]")
    parser.add_argument("--server-checkout", default=BENCH_CHECKOUT, help="the wire the servers run [this checkout]")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--warmup", type=float, default=35.0)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--quiet-timeout", type=float, default=60.0)
    parser.add_argument("--relay-seconds", type=float, default=30.0)
    parser.add_argument("--relay-rate", type=float, default=200.0)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--keep-data", action="store_true", help="leave the servers' data dirs (and logs) behind")
    parser.add_argument(
        "--offline-after", type=float, default=None,
        help="the servers' --offline-after: the simulated nodes long-poll only once all have joined, so a join "
        "slower than the default 90 s would see the first ones swept offline [the server's default]",
    )
    options = parser.parse_args(argv)
    if options.scenario != "relay_latency" and options.database != "postgresql":
        parser.error("replicas share one PostgreSQL database: --database sqlite is for relay_latency")
    if options.scenario != "relay_latency" and options.replicas < 2:
        parser.error("--replicas: at least 2")
    return options


def main(argv=None) -> None:
    options = parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    from bench.run_all import raise_fd_limit

    raise_fd_limit()

    async def go(reactor) -> None:
        result = await run(reactor, options)
        text = json.dumps(result, indent=1)
        print(text)
        if options.out:
            with open(options.out, "w") as f:
                f.write(text + "\n")

    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
