"""Starting and stopping the node daemon in the background.

Where systemd is PID 1 and the node uses the system config dir, ``wire up``
installs and enables a unit, so the node comes back after a reboot.
Otherwise it runs ``twistd`` as a daemon with a pidfile and a log file in
the config dir (and says the node will not start at boot).
"""

from __future__ import annotations

import os
import signal

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from wire.fsutil import write_atomically
from wire.node.config import SYSTEM_CONFIG_DIR
from wire.runner import IProcessRunner
from wire.twistd import twistd_argv, wire_environment

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
Restart=always
RestartSec=2
# The daemon keeps the WireGuard interface across restarts; "wire down" removes it.
KillMode=mixed

[Install]
WantedBy=multi-user.target
"""


class LaunchError(Exception):
    pass


def systemd_is_init() -> bool:
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


def uses_systemd(config_dir: str) -> bool:
    return systemd_is_init() and os.path.abspath(config_dir) == SYSTEM_CONFIG_DIR


def node_argv(config_dir: str, foreground: bool) -> list[str]:
    argv = twistd_argv()
    if foreground:
        argv += ["--nodaemon", "--pidfile="]
    else:
        argv += [f"--pidfile={os.path.join(config_dir, PIDFILE)}", f"--logfile={os.path.join(config_dir, LOGFILE)}"]
    return argv + ["wire-node", f"--config-dir={config_dir}"]


def unit_text(config_dir: str) -> str:
    import shlex

    return UNIT_TEMPLATE.format(exec_start=shlex.join(node_argv(config_dir, foreground=True)))


async def start_daemon(runner: IProcessRunner, config_dir: str) -> str:
    """Start the daemon; returns how ("systemd" or "twistd")."""
    if uses_systemd(config_dir):
        write_atomically(UNIT_PATH, unit_text(config_dir).encode(), mode=0o644)
        (await runner.run(["systemctl", "daemon-reload"])).check()
        (await runner.run(["systemctl", "enable", "--now", UNIT_NAME])).check()
        return "systemd"
    result = await runner.run(node_argv(config_dir, foreground=False), env=wire_environment(), timeout=30)
    if result.rc != 0:
        output = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise LaunchError(f"the node daemon did not start: {output or 'exit code ' + str(result.rc)}")
    return "twistd"


def daemon_pid(config_dir: str) -> int | None:
    """The running daemon's pid from its pidfile, if that process is alive."""
    try:
        with open(os.path.join(config_dir, PIDFILE)) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if not _is_zombie(pid) else None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


async def wait_for_exit(clock: IReactorTime, config_dir: str, timeout: float = 10.0) -> bool:
    """Wait until the pidfile's process is gone; SIGKILL it after ``timeout``."""
    waited = 0.0
    while waited < timeout:
        if daemon_pid(config_dir) is None:
            return True
        await deferLater(clock, 0.1, lambda: None)
        waited += 0.1
    pid = daemon_pid(config_dir)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return False


async def stop_daemon(runner: IProcessRunner, clock: IReactorTime, config_dir: str) -> None:
    """Stop the daemon without the leave handshake (it is not answering)."""
    if uses_systemd(config_dir):
        await runner.run(["systemctl", "disable", "--now", UNIT_NAME])
        return
    pid = daemon_pid(config_dir)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        await wait_for_exit(clock, config_dir)


def log_tail(config_dir: str, lines: int = 15) -> str:
    try:
        with open(os.path.join(config_dir, LOGFILE), errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
