"""Run wire's benchmarks and write bench/results/report.json and report.md.

    /tmp/venv/bin/python bench/run_all.py                          # everything (see DEFAULT_PLAN)
    /tmp/venv/bin/python bench/run_all.py --plan wire/tls/1000 --only coordination
    /tmp/venv/bin/python bench/run_all.py --url http://127.0.0.1:8787 --plan seed/open/500 --only coordination

Each coordination bench gets a fresh ``twistd wire-server`` pinned to
``--server-cpus`` (unless ``--url`` aims the load at a server already
running: any seed-compatible one will do). The load processes and this
process run on ``--load-cpus``. See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import twisted  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.logger import LogLevel, LogLevelFilterPredicate, FilteringLogObserver, globalLogBeginner  # noqa: E402
from twisted.logger import Logger, textFileLogObserver  # noqa: E402

from bench import report, scenarios  # noqa: E402
from bench.processes import BENCH_CHECKOUT  # noqa: E402

log = Logger()
BENCHES = ("coordination", "stun", "apply", "relay")
# wire/tls/*: the product as shipped (join keys, node credentials, HTTPS).
# 9,900, not 10,000: a wire node keeps two connections, and a server whose
# open files are capped at 20,000 (this container's hard limit) can hold
# two each for 9,900 nodes, not 10,000. wire/plain/10000 has exactly 10,000
# nodes, each heartbeat on a fresh connection so the server fits (plain HTTP:
# a TLS handshake per heartbeat is not what real nodes pay). seed/open: the
# seed's clients against wire's --open mode.
DEFAULT_PLAN = "wire/tls/1000,wire/tls/9900/keep,wire/plain/10000,seed/open/1000"


def parse_plan(text: str) -> list[tuple[str, str, int, str | None, bool]]:
    """MODE/SECURITY/N[/keep|fresh|auto][/policy] items: (mode, security, n, heartbeat connection, policy)."""
    plan = []
    for item in text.split(","):
        if not item.strip():
            continue
        parts = item.strip().split("/")
        if not 3 <= len(parts) <= 5 or parts[0] not in ("wire", "seed") or parts[1] not in ("tls", "plain", "open"):
            raise ValueError(f"{item!r} is not MODE/SECURITY/N[/keep|fresh|auto][/policy]")
        if parts[0] == "seed" and parts[1] != "open":
            raise ValueError(f"{item!r}: seed clients need an open server (seed/open/N)")
        extras = parts[3:]
        policy = "policy" in extras
        if policy:
            extras.remove("policy")
            if parts[0] != "wire" or parts[1] == "open":
                raise ValueError(f"{item!r}: a policy needs wire nodes and join keys (wire/tls or wire/plain)")
        if len(extras) > 1 or (extras and extras[0] not in ("keep", "fresh", "auto")):
            raise ValueError(f"{item!r}: after N, the heartbeat connection (keep, fresh or auto) and/or policy")
        plan.append((parts[0], parts[1], int(parts[2]), extras[0] if extras else None, policy))
    return plan


def parse_args(argv=None) -> argparse.Namespace:
    cpus = sorted(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {', '.join(BENCHES)}")
    parser.add_argument(
        "--plan",
        default=DEFAULT_PLAN,
        help="coordination runs, comma-separated MODE/SECURITY/N[/keep|fresh][/policy]: MODE wire or seed, "
        "SECURITY tls (wire's default: join keys + HTTPS), plain (join keys, --plain-http) or open "
        "(--open, the seed's behaviour); keep|fresh forces the heartbeat connection; policy runs it under "
        f"bench/policyload.py's access policy (20 tags, 50 rules) and times a policy change [{DEFAULT_PLAN}]",
    )
    parser.add_argument("--server-cpus", default=str(cpus[0]))
    parser.add_argument("--load-cpus", default=",".join(str(c) for c in cpus[1:]) or str(cpus[0]))
    parser.add_argument("--server-checkout", default=BENCH_CHECKOUT, help="run the server from this copy of the repo")
    parser.add_argument("--url", help="aim at this running server instead of spawning one")
    parser.add_argument("--server-pid", type=int, help="with --url: its pid, to read its CPU and RSS")
    parser.add_argument("--join-key", help="with --url: a join key secret, when that server authenticates")
    parser.add_argument("--no-own-addresses", action="store_true",
                        help="simulated nodes connect from the default address, not one 127.x.y.z each")
    parser.add_argument("--server-fd-soft-limit", type=int,
                        help="start the server with this soft open-files limit (1024: systemd's default) instead of the hard limit")
    parser.add_argument("--workers", type=int, default=0, help="load processes per run (0: automatic)")
    parser.add_argument("--heartbeat-connection", choices=("auto", "keep", "fresh"), default="auto")
    parser.add_argument("--wire-heartbeat", choices=("periodic", "implicit"), default="implicit",
                        help="implicit (what wire-node does against an authenticating server): the long-poll is the "
                        "heartbeat, POST /register only every 10 minutes; periodic: POST /register every 30 s "
                        "(the protocol before, and still against an --open server)")
    parser.add_argument("--netmap", choices=("stream", "longpoll"), default="stream",
                        help="how wire nodes read the netmap: stream (what wire-node does: GET /peers?...&stream=1, "
                        "each line as it comes) or longpoll (one answer per request, the protocol before)")
    parser.add_argument("--register-concurrency", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=35.0)
    parser.add_argument("--steady-seconds", type=float, default=120.0)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--stun-seconds", type=float, default=5.0, help="length of each STUN step")
    parser.add_argument("--stun-rates", default="10000,20000,25000,30000,35000,40000", help="offered STUN requests/s, one step each")
    parser.add_argument("--stun-sources", type=int, default=4096)
    parser.add_argument("--apply-peers", type=int, default=1000)
    parser.add_argument("--quiet-threshold", type=float, default=10.0,
                        help="before each bench, wait until every bench CPU is less busy than this (%%)")
    parser.add_argument("--quiet-timeout", type=float, default=600.0, help="...but no longer than this (s)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the server during steady state and propagation (adds overhead: not for the figures)")
    parser.add_argument("--max-minutes", type=float, default=120.0, help="give up (and reap everything) after this")
    parser.add_argument("--keep-data", action="store_true", help="keep each server's data dir (and log)")
    parser.add_argument("--out", default=os.path.join(BENCH_CHECKOUT, "bench", "results"))
    parser.add_argument("--report-name", default="report", help="file name stem of the report")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    options = parser.parse_args(argv)
    options.only = [b for b in options.only.split(",") if b]
    unknown = set(options.only) - set(BENCHES)
    if unknown:
        parser.error(f"--only: unknown bench(es) {', '.join(sorted(unknown))}")
    if not 1 <= options.probes <= 200 or not 10 <= options.steady_seconds <= 3600:
        parser.error("--probes must be 1..200 and --steady-seconds 10..3600")
    try:
        options.plan = parse_plan(options.plan)
    except ValueError as e:
        parser.error(f"--plan: {e}")
    return options


def settings_from(options) -> scenarios.Settings:
    return scenarios.Settings(
        server_cpus=options.server_cpus,
        load_cpus=options.load_cpus,
        server_checkout=os.path.abspath(options.server_checkout),
        url=options.url,
        server_pid=options.server_pid,
        join_key=options.join_key,
        own_addresses=not options.no_own_addresses,
        workers=options.workers,
        heartbeat_connection=options.heartbeat_connection,
        wire_heartbeat=options.wire_heartbeat,
        netmap=options.netmap,
        server_fd_soft_limit=options.server_fd_soft_limit,
        register_concurrency=options.register_concurrency,
        warmup=options.warmup,
        steady_seconds=options.steady_seconds,
        probes=options.probes,
        stun_seconds=options.stun_seconds,
        stun_rates=tuple(int(r) for r in options.stun_rates.split(",") if r),
        stun_sources=options.stun_sources,
        apply_peers=options.apply_peers,
        keep_data=options.keep_data,
        quiet_threshold=options.quiet_threshold,
        quiet_timeout=options.quiet_timeout,
        profile_dir=os.path.join(options.out, f"{options.report_name}-profiles") if options.profile else None,
    )


def raise_fd_limit() -> int:
    """Children (server, load processes) inherit this: as high as we may go."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (max(hard, 65536), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def environment(options) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", options.server_checkout, *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "server_checkout": options.server_checkout,
        "server_git": (git("rev-parse", "--short", "HEAD") or "not a git checkout") + (" + uncommitted changes" if dirty else ""),
        "server_cpus": options.server_cpus if not options.url else "not ours",
        "load_cpus": options.load_cpus,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "argv": sys.argv[1:],
    }


async def run(reactor, options) -> dict:
    settings = settings_from(options)
    results: dict = {"environment": environment(options), "notes": list(options.note)}
    if options.url:
        results["notes"].append(f"load aimed at {options.url} (not spawned by the bench)")
    if options.profile:
        results["notes"].append("py-spy was attached to the server: CPU figures include its sampling overhead")
    if "coordination" in options.only:
        results["coordination"] = []
        for mode, security, nodes, heartbeat_connection, policy in options.plan:
            log.info("coordination bench: {mode}/{security}, N={nodes}{p}", mode=mode, security=security, nodes=nodes,
                     p=", under a policy" if policy else "")
            results["coordination"].append(
                await scenarios.coordination(reactor, settings, mode, security, nodes, heartbeat_connection, policy)
            )
            # Written after every bench, so a long run that dies keeps what it measured.
            report.write(_finish(results), options.out, options.report_name)
    if "stun" in options.only and not options.url:
        log.info("STUN bench")
        results["stun"] = await scenarios.stun(reactor, settings)
    if "apply" in options.only:
        log.info("apply-netmap bench")
        results["apply_netmap"] = await scenarios.apply_netmap(reactor, settings)
    if "relay" in options.only:
        log.info("relay bench (bench/relay_throughput.py)")
        results["relay"] = await scenarios.relay_bench(reactor, settings)
    return _finish(results)


def _finish(results: dict) -> dict:
    results["targets"] = report.evaluate(results)
    return results


def main(argv=None) -> None:
    options = parse_args(argv)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.info)])],
        redirectStandardIO=False,
    )
    raise_fd_limit()
    # This process sends the probes and reads /proc: keep it off the server's core.
    try:
        os.sched_setaffinity(0, set(scenarios.cpu_list(options.load_cpus)))
    except (OSError, ValueError):
        pass

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    outcome: dict = {}

    async def go() -> None:
        outcome["results"] = await run(reactor, options)

    d = Deferred.fromCoroutine(go())
    deadline = reactor.callLater(options.max_minutes * 60, d.cancel)

    def done(result):
        if deadline.active():
            deadline.cancel()
        reactor.stop()
        return result

    d.addErrback(lambda f: log.failure("bench failed", f))
    d.addBoth(done)
    reactor.run()
    results = outcome.get("results")
    if results is None:
        sys.exit("bench did not finish; see the log above")
    paths = report.write(results, options.out, options.report_name)
    print(f"wrote {paths[0]} and {paths[1]}")
    print(report.markdown(results))


if __name__ == "__main__":
    main()
