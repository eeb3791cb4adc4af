"""A load process: one fleet of simulated nodes, driven over stdin/stdout.

    python -m bench.loadgen --url http://127.0.0.1:8787 --mode wire \
        --first 0 --count 5000 --run-tag abc123 [--tls] [--max-seconds 3600] \
        [--netmap stream|longpoll]

``--netmap`` (wire mode): ``stream`` (the default, as ``twistd wire-node``
reads it): ``GET /peers?...&stream=1``, each NDJSON line taken as it
arrives; ``longpoll``: one answer per request, the protocol before.

``--url`` given more than once: the replicas of one mesh; node ``i`` starts
at the ``i % count``-th and fails over to the next (bench/nodes.py).

Commands arrive on stdin as JSON lines ``{"id": 1, "cmd": "...", ...}``; each
gets one answer line ``{"id": 1, "result": {...}}`` (or ``"error"``), and
watch completions come as ``{"event": "watch_done", ...}``. Logs go to
stderr; stdout carries only these lines. The process exits on ``stop``, when
stdin closes, or after ``--max-seconds`` whatever happens.

Commands:
  register {concurrency, join_key, join_keys}  every node joins once (enroll with join_key, or node i
                                     with join_keys[i % len]; else register); timings
  steady {cursor, heartbeat, wait, seed}  start heartbeats (+ netmap streams or long-polls in wire mode)
  counters {}                        traffic and error counters so far (``netmap``: the streams' lines, how
                                     each stream ended)
  watch {node_id, expect}            start timing when each node first sees node_id (expect: only
                                     these node indices may, done when they have)
  end_watch {node_id}                stop; report who saw it and when
  mark_wave {}                       start noting what each node's answers carry (a policy change)
  wave_progress {}                   how many nodes got a new filter, a full answer, so far
  end_wave {}                        stop; per node: when its filter changed (and to what), full answers, bytes
  mark_moves {}                      count long-poll answers (full, delta) and moves between replicas from now
  moves {}                           the moves so far (when, where, the first answer's kind), answers by kind
  open_heartbeats {}                 every node opens its registration connection (handshakes done)
  reregister {at}                    at time.monotonic() ``at``, every node POSTs /register at once (NAT moved)
  stop {}                            stop every node and exit
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import stdio  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from bench.nodes import NETMAP_MODES, Fleet, Watch  # noqa: E402
from wire.stallwatch import StallWatch  # noqa: E402


class LoadStalled(Exception):
    """This load process's reactor ran late."""


log = Logger()


def raise_fd_limit(wanted: int = 65536) -> int:
    """Every simulated wire node holds two connections; the default 1024 fds run out at 500 nodes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, soft), max(wanted, hard)))
    except (ValueError, OSError):
        # Not root: as far as the hard limit allows.
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Commands(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024  # a policy change's expected views can be large

    def __init__(self, reactor, fleet: Fleet, done: Deferred):
        self.reactor = reactor
        self.fleet = fleet
        self.done = done

    def send(self, message: dict) -> None:
        self.transport.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            handler = getattr(self, "cmd_" + message["cmd"])
        except Exception as e:
            self.send({"id": None, "error": f"bad command {line[:100]!r}: {e}"})
            return
        d = Deferred.fromCoroutine(_call(handler, message))
        d.addCallbacks(
            lambda result: self.send({"id": message.get("id"), "result": result}),
            lambda failure: self.send({"id": message.get("id"), "error": failure.getErrorMessage()}),
        )

    def connectionLost(self, reason=None) -> None:
        if not self.done.called:
            self.done.callback(None)

    # -- commands --------------------------------------------------------------------

    async def cmd_register(self, message: dict) -> dict:
        result = await self.fleet.register_all(
            int(message.get("concurrency", 100)), message.get("join_key"), message.get("join_keys")
        )
        result["error_samples"] = self.fleet.error_samples[:5]
        return result

    async def cmd_steady(self, message: dict) -> dict:
        self.fleet.start_steady(
            message.get("cursor") or "0",
            float(message.get("heartbeat", 30)),
            float(message.get("wait", 25)),
            int(message.get("seed", 0)),
            implicit_heartbeat=message.get("heartbeat_mode") == "implicit",
        )
        # The heap after setup lives as long as the run: keep the cyclic GC
        # from walking it on every collection (pauses would count as latency).
        gc.collect()
        gc.freeze()
        return {"nodes": len(self.fleet.nodes)}

    async def cmd_counters(self, message: dict) -> dict:
        snapshot = self.fleet.counters.snapshot()
        snapshot["at"] = time.monotonic()
        snapshot["error_samples"] = self.fleet.error_samples[-10:]
        return snapshot

    async def cmd_watch(self, message: dict) -> dict:
        expect = message.get("expect")
        self.fleet.watch(str(message["node_id"]), None if expect is None else [int(i) for i in expect])
        return {"watching": message["node_id"]}

    async def cmd_end_watch(self, message: dict) -> dict:
        watch = self.fleet.end_watch(str(message["node_id"]))
        report = _watch_report(watch, len(self.fleet.nodes))
        if watch is not None and len(self.fleet.connectors) > 1:
            # Replicas: when the nodes at each one saw it (the replica each is at now).
            first = self.fleet.indices.start
            by_server: dict[str, list[float]] = {}
            for i, t in watch.seen.items():
                by_server.setdefault(str(self.fleet.nodes[i - first].server), []).append(round(t, 6))
            report["by_server"] = by_server
        return report

    async def cmd_mark_wave(self, message: dict) -> dict:
        self.fleet.mark_wave(message.get("expect_views"))
        return {"marked": True}

    async def cmd_wave_progress(self, message: dict) -> dict:
        return self.fleet.wave_progress()

    async def cmd_end_wave(self, message: dict) -> dict:
        return self.fleet.end_wave()

    async def cmd_mark_moves(self, message: dict) -> dict:
        self.fleet.mark_moves()
        return {"marked": True}

    async def cmd_moves(self, message: dict) -> dict:
        return self.fleet.moves_report()

    async def cmd_open_heartbeats(self, message: dict) -> dict:
        return await self.fleet.open_heartbeat_connections()

    async def cmd_reregister(self, message: dict) -> dict:
        return await self.fleet.reregister_all(float(message["at"]))

    async def cmd_stop(self, message: dict) -> dict:
        self.fleet.stop()
        self.reactor.callLater(0.2, lambda: self.done.called or self.done.callback(None))
        return {"stopped": True}

    def watch_done(self, watch: Watch, _unused: int) -> None:
        self.send({"event": "watch_done", "node_id": watch.node_id, "seen": len(watch.seen)})


def _watch_report(watch: Watch | None, nodes: int) -> dict:
    if watch is None:
        return {"nodes": nodes, "seen": 0, "times": []}
    if watch.expect is None:
        return {"nodes": nodes, "seen": len(watch.seen), "times": [round(t, 6) for t in watch.seen.values()]}
    # Under a policy: the times of those that may see it; those that may not but did, apart.
    allowed = {i: t for i, t in watch.seen.items() if i in watch.expect}
    return {
        "nodes": nodes,
        "allowed": len(watch.expect),
        "seen": len(allowed),
        "times": [round(t, 6) for t in allowed.values()],
        "seen_not_allowed": len(watch.seen) - len(allowed),
    }


async def _call(handler, message):
    return await handler(message)


def main() -> None:
    parser = argparse.ArgumentParser(description="wire bench load process")
    parser.add_argument("--url", required=True, action="append", help="a server; again for each replica of the mesh")
    parser.add_argument("--mode", choices=("wire", "seed"), required=True)
    parser.add_argument("--netmap", choices=NETMAP_MODES, default="stream",
                        help="wire mode: read the netmap as a stream (the daemon's way) or one long-poll answer per request")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--run-tag", required=True)
    parser.add_argument("--connect-concurrency", type=int, default=64)
    parser.add_argument("--heartbeat-connection", choices=("keep", "fresh"), default="keep")
    parser.add_argument("--tls", action="store_true", help="the server speaks HTTPS")
    parser.add_argument("--no-own-addresses", action="store_true",
                        help="connect from the default address instead of one loopback address per node")
    parser.add_argument("--max-seconds", type=float, default=3600)
    options = parser.parse_args()

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    limit = raise_fd_limit()
    if limit < 2 * options.count + 100:
        log.warn("fd limit {limit} is low for {count} nodes", limit=limit, count=options.count)
    urls = [urlsplit(u) for u in options.url]
    for url in urls:
        if url.scheme not in ("http", "https") or not url.hostname:
            sys.exit(f"--url must be http(s)://HOST:PORT, not {url.geturl()!r}")
    if len({u.scheme for u in urls}) > 1:
        sys.exit("--url: one mesh's replicas all speak HTTPS or all plain HTTP")
    url = urls[0]

    def port_of(u) -> int:
        return u.port or (443 if u.scheme == "https" else 80)

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    done: Deferred = Deferred()
    fleet = Fleet(
        reactor,
        url.hostname,
        port_of(url),
        options.mode,
        options.run_tag,
        range(options.first, options.first + options.count),
        connect_concurrency=options.connect_concurrency,
        keep_heartbeat_connection=options.heartbeat_connection == "keep",
        tls=options.tls or url.scheme == "https",
        own_addresses=not options.no_own_addresses,
        replicas=[(u.hostname, port_of(u)) for u in urls[1:]],
        netmap=options.netmap,
    )
    commands = Commands(reactor, fleet, done)
    fleet._on_watch_done = commands.watch_done
    # The load's own stalls, counted as errors: a timeout here may be this
    # process reading late, not the server answering late.
    StallWatch(reactor, on_stall=lambda late: fleet.error("load reactor", LoadStalled(f"ran a timer {late:.2f} s late"))).startService()
    stdio.StandardIO(commands, reactor=reactor)
    # Bounded in time whatever the orchestrator does.
    deadline = reactor.callLater(options.max_seconds, lambda: done.called or done.callback(None))

    def finish(_):
        if deadline.active():
            deadline.cancel()
        fleet.stop()
        reactor.callLater(0.1, reactor.stop)

    done.addBoth(finish)
    reactor.run()


if __name__ == "__main__":
    main()
