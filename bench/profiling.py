"""Sampling the server with py-spy during a bench phase (``run_all.py --profile``).

py-spy attaches to the running server (no restart, no code change) and
writes folded stacks; :func:`summarize` turns them into the top functions by
own and by cumulative share of the busy samples (time in ``epoll.poll`` is
the reactor waiting, not work, and is left out).
"""

from __future__ import annotations

import collections
import os
import shutil
import sys

from twisted.internet.defer import Deferred

from bench.processes import _Process

IDLE_FRAMES = ("EPollReactor.doPoll (twisted/internet/epollreactor.py:227)",)
# Frames every busy sample passes through (reactor, logging context, twistd):
# left out of the cumulative view so that it shows where the work is.
_SKELETON = tuple(
    f"({path})"
    for path in (
        "twisted/internet/base.py", "twisted/internet/epollreactor.py", "twisted/internet/posixbase.py",
        "twisted/python/log.py", "twisted/python/context.py", "twisted/application/app.py",
        "twisted/scripts/twistd.py", "twisted/scripts/_twistd_unix.py", "twistd", "twisted/internet/tcp.py",
    )
)


def py_spy_path() -> str | None:
    local = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return local if os.path.exists(local) else shutil.which("py-spy")


def record(reactor, pid: int, seconds: float, out_path: str, rate: int = 200) -> Deferred:
    """Start py-spy on ``pid`` for ``seconds``; fires with its exit code."""
    program = py_spy_path()
    if program is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    process = _Process()
    argv = [program, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
            "--rate", str(rate), "--format", "raw", "--output", out_path, "--nonblocking"]
    reactor.spawnProcess(process, program, argv, env=dict(os.environ))
    return process.ended


def summarize(raw_path: str, top: int = 15) -> dict:
    """Own and cumulative shares of the busy samples, per function (lines folded)."""
    own: collections.Counter = collections.Counter()
    cumulative: collections.Counter = collections.Counter()
    busy = idle = 0
    try:
        with open(raw_path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack:
                    continue
                n = int(count)
                frames = stack.split(";")
                if frames[-1] in IDLE_FRAMES:
                    idle += n
                    continue
                busy += n
                names = [_function(frame) for frame in frames]
                own[names[-1]] += n
                for name in set(names):
                    if not name.endswith(_SKELETON):
                        cumulative[name] += n
    except OSError as e:
        return {"error": str(e)}

    def shares(counter):
        return [{"function": name, "percent": round(100 * n / busy, 1)} for name, n in counter.most_common(top)]

    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "own": shares(own),
        "cumulative": shares(cumulative),
        "raw": raw_path,
    }


def _function(frame: str) -> str:
    """``Class.method (path/file.py:123)`` → ``Class.method (path/file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name
