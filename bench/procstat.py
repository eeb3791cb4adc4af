"""CPU and memory of a process, read from /proc (Linux)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat_fields(int(name))[1]) == pid:
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, of its live children, and of the children it
    has reaped (cutime + cstime): PostgreSQL's postmaster and its backends,
    short-lived workers included. Grandchildren of live children are left out."""
    fields = _stat_fields(pid)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS
    for child in children_of(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            pass  # it ended between the listing and the read (now in cutime, next time)
    return total


def memory_bytes(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak RSS) of ``pid``."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                found[name] = int(value.split()[0]) * 1024
    return {"rss": found.get("VmRSS", 0), "hwm": found.get("VmHWM", 0)}


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def fd_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return -1


def affinity(pid: int) -> list[int]:
    return sorted(os.sched_getaffinity(pid))


@dataclass
class CpuWindow:
    """CPU used by some processes between ``start`` and ``stop``, as % of one core."""

    pids: list[int]
    started_at: float = 0.0
    started_cpu: dict[int, float] = field(default_factory=dict)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.started_cpu = {pid: cpu_seconds(pid) for pid in self.pids}

    def read(self) -> dict:
        elapsed = time.monotonic() - self.started_at
        used = {pid: cpu_seconds(pid) - self.started_cpu[pid] for pid in self.pids}
        total = sum(used.values())
        return {
            "seconds": round(elapsed, 3),
            "cpu_seconds": round(total, 3),
            "percent_of_one_core": round(100 * total / elapsed, 2) if elapsed > 0 else 0.0,
        }


def core_ticks() -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks per CPU since boot, from /proc/stat."""
    ticks = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                numbers = [int(v) for v in values]
                idle = numbers[3] + numbers[4]  # idle + iowait
                ticks[int(name[3:])] = (sum(numbers) - idle, sum(numbers))
    return ticks


@dataclass
class CoreWindow:
    """How busy some CPUs were (by anyone) between ``start`` and ``read``, in %."""

    cpus: list[int]
    started: dict[int, tuple[int, int]] = field(default_factory=dict)

    def start(self) -> None:
        self.started = core_ticks()

    def read(self) -> dict[int, float]:
        now = core_ticks()
        out = {}
        for cpu in self.cpus:
            busy = now[cpu][0] - self.started[cpu][0]
            total = now[cpu][1] - self.started[cpu][1]
            out[cpu] = round(100 * busy / total, 1) if total else 0.0
        return out
