"""Starting and stopping the node daemon in the background.

Where systemd is PID 1 and the node uses the system config dir, ``wire up``
installs and enables a unit, so the node comes back after a reboot.
Otherwise it runs ``twistd`` as a daemon with a pidfile and a log file in
the config dir (and says the node will not start at boot).
"""

from __future__ import annotations

import os
import shlex
import signal

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from wire.fsutil import write_atomically
from wire.node.config import SYSTEM_CONFIG_DIR
from wire.runner import IProcessRunner, ProcessResult
from wire.node.logfile import LOG_PATH_VARIABLE
from wire.twistd import twistd_argv, wire_environment

log = Logger()

PIDFILE = "wire-node.pid"
LOGFILE = "wire-node.log"
UNIT_NAME = "wire-node.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"

UNIT_TEMPLATE = """\
[Unit]
Description=wire mesh VPN node daemon
After=network-online.target
Wants=network-online.target

[Service]
ExecStart={exec_start}
Environment={environment}
Restart=always
RestartSec=2
# Only the daemon: its wireguard-go outlives a restart, and the next daemon
# adopts the interface with its tunnels. "wire down" removes both.
KillMode=process

[Install]
WantedBy=multi-user.target
"""


class LaunchError(Exception):
    pass


def systemd_is_init(comm_path: str = "/proc/1/comm") -> bool:
    try:
        with open(comm_path) as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


def uses_systemd(config_dir: str) -> bool:
    """systemd manages the node where it is PID 1 and the node is the host's
    own (/etc/wire); other config dirs (the lab's) get a plain daemon."""
    return os.path.abspath(config_dir) == SYSTEM_CONFIG_DIR and systemd_is_init()


def node_argv(config_dir: str, foreground: bool) -> list[str]:
    argv = twistd_argv()
    if foreground:
        # systemd's journal reads stdout: the same escaped lines as the log file.
        argv += ["--nodaemon", "--pidfile=", "--logger=wire.node.logfile.stdout_observer"]
    else:
        # A capped, rotated log (wire.node.logfile), not twistd's unbounded one.
        argv += [f"--pidfile={os.path.join(config_dir, PIDFILE)}", "--logger=wire.node.logfile.observer"]
    return argv + ["wire-node", f"--config-dir={config_dir}"]


def unit_text(config_dir: str) -> str:
    # systemd's own quoting is close enough to the shell's for paths and "K=V".
    environment = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(wire_environment().items()))
    return UNIT_TEMPLATE.format(exec_start=shlex.join(node_argv(config_dir, foreground=True)), environment=environment)


async def start_daemon(runner: IProcessRunner, config_dir: str, *, unit_path: str = UNIT_PATH) -> str:
    """Start the daemon; returns how ("systemd" or "twistd")."""
    if uses_systemd(config_dir):
        write_atomically(unit_path, unit_text(config_dir).encode(), mode=0o644)
        await _systemctl(runner, "daemon-reload")
        await _systemctl(runner, "enable", "--now", UNIT_NAME)
        return "systemd"
    # twistd returns once the daemon has started, or failed to.
    environment = {**wire_environment(), LOG_PATH_VARIABLE: os.path.join(config_dir, LOGFILE)}
    result = await runner.run(node_argv(config_dir, foreground=False), env=environment, timeout=30)
    if result.rc != 0:
        raise LaunchError(f"the node daemon did not start: {_output(result) or 'exit code ' + str(result.rc)}")
    return "twistd"


async def _systemctl(runner: IProcessRunner, *args: str) -> None:
    result = await runner.run(["systemctl", *args])
    if result.rc != 0:
        raise LaunchError(f"systemctl {' '.join(args)} failed: {_output(result) or 'exit code ' + str(result.rc)}")


def _output(result: ProcessResult) -> str:
    return (result.stderr or result.stdout).decode(errors="replace").strip()


def daemon_pid(config_dir: str) -> int | None:
    """The running daemon's pid from its pidfile, if that process is alive
    and is a wire node (a stale pidfile's pid may belong to anything now)."""
    try:
        with open(os.path.join(config_dir, PIDFILE)) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if _is_wire_node(pid) else None


def _is_wire_node(pid: int) -> bool:
    """Not a zombie, and running wire-node (where /proc tells; macOS has none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"wire-node" in f.read().split(b"\0")
    except (OSError, IndexError):
        return not os.path.isdir("/proc")


async def wait_for_exit(clock: IReactorTime, config_dir: str, timeout: float = 10.0) -> bool:
    """Wait until the pidfile's process is gone; SIGKILL it after ``timeout``."""
    deadline = clock.seconds() + timeout
    while clock.seconds() < deadline:
        if daemon_pid(config_dir) is None:
            return True
        await deferLater(clock, 0.1, lambda: None)
    pid = daemon_pid(config_dir)
    if pid is not None:
        log.warn("the node daemon (pid {pid}) did not exit within {timeout:g}s; killing it", pid=pid, timeout=timeout)
        _signal(pid, signal.SIGKILL)
    return False


async def stop_daemon(runner: IProcessRunner, clock: IReactorTime, config_dir: str) -> None:
    """Stop the daemon without the leave handshake (it is not answering)."""
    if uses_systemd(config_dir):
        # Fails when there is no unit (it never started): nothing to stop then.
        result = await runner.run(["systemctl", "disable", "--now", UNIT_NAME])
        if result.rc != 0:
            log.warn("systemctl disable --now {unit}: {output}", unit=UNIT_NAME, output=_output(result))
        return
    pid = daemon_pid(config_dir)
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        await wait_for_exit(clock, config_dir)


def _signal(pid: int, signal_number: int) -> None:
    try:
        os.kill(pid, signal_number)
    except ProcessLookupError:
        pass  # it exited by itself meanwhile


def log_tail(config_dir: str, lines: int = 15) -> str:
    try:
        with open(os.path.join(config_dir, LOGFILE), errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
