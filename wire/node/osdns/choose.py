"""Which way to wire the OS resolver on this machine, decided on `wire up`.

systemd-resolved is used when /etc/resolv.conf names its stub 127.0.0.53
and nothing else (the C library's lookups really go through resolved),
resolved's run dir exists and ``resolvectl status`` reaches the daemon.
All three matter: a file that names the stub is left behind when resolved
is stopped; resolved may run while resolv.conf bypasses it (a symlink to its
non-stub file, or a network namespace whose own resolv.conf ``ip netns
exec`` mounts over /etc/resolv.conf, where per-link settings of the host's
resolved would reach nobody). Every other machine gets resolv.conf written
in place. `--accept-dns=false` chooses "none" before anything is looked at,
and so does any other OS than Linux.

Whatever the mode, a resolv.conf left by a crashed run is restored first.
"""

from __future__ import annotations

import os
import sys

from twisted.logger import Logger

from wire.runner import CommandError, CommandNotFound, IProcessRunner

from .checks import check_interface
from .direct import ResolvConfDns
from .errors import OsDnsError
from .inplace import read_file
from .interface import RESOLVED_STUB, IOsDns, OsDnsPaths
from .none import NoOsDns
from .resolvconf import parse_resolv_conf
from .resolved import RESOLVECTL_TIMEOUT, ResolvedDns
from .restore import restore_original

log = Logger()

RESOLVED = "systemd-resolved"
RESOLV_CONF = "resolv.conf"


async def detect(runner: IProcessRunner, paths: OsDnsPaths, *, timeout: float = RESOLVECTL_TIMEOUT) -> tuple[str, str]:
    """The mode for this machine and why, as (mode, sentence)."""
    path = paths.resolv_conf
    try:
        data = read_file(path)
    except OsDnsError as e:
        return RESOLV_CONF, str(e)
    if data is None:
        return RESOLV_CONF, f"{path} is missing"
    servers = parse_resolv_conf(data).nameservers
    if servers != (RESOLVED_STUB,):
        named = ", ".join(servers) or "no nameserver"
        return RESOLV_CONF, f"{path} names {named}, not systemd-resolved's stub {RESOLVED_STUB} alone"
    if not os.path.isdir(paths.resolved_run_dir):
        return RESOLV_CONF, f"{path} names {RESOLVED_STUB} but systemd-resolved is not running ({paths.resolved_run_dir} is missing)"
    try:
        result = await runner.run(["resolvectl", "status"], timeout=timeout)
    except CommandNotFound:
        return RESOLV_CONF, f"{path} names {RESOLVED_STUB} but the 'resolvectl' program is missing"
    except CommandError as e:
        return RESOLV_CONF, f"{path} names {RESOLVED_STUB} but resolvectl could not be run: {e}"
    if result.rc != 0:
        return RESOLV_CONF, f"{path} names {RESOLVED_STUB} but `resolvectl status` exited with code {result.rc}"
    return RESOLVED, f"{path} names systemd-resolved's stub {RESOLVED_STUB} and resolvectl reaches the daemon"


def recover_after_crash(state_dir: str, resolv_conf: str = "/etc/resolv.conf") -> str | None:
    """Put back a resolv.conf that a crashed run left managed; a sentence
    saying what was done, None when nothing was left. Raises OsDnsError
    (the save file and resolv.conf are then left as they are)."""
    return restore_original(OsDnsPaths(state_dir=state_dir, resolv_conf=resolv_conf))


async def choose(
    runner: IProcessRunner,
    interface: str,
    paths: OsDnsPaths,
    *,
    accept_dns: bool = True,
    timeout: float = RESOLVECTL_TIMEOUT,
    platform: str = sys.platform,
) -> IOsDns:
    """The OsDns for this machine, after undoing what a crashed run left.

    Raises OsDnsError only for a bad interface name; every other trouble is
    in the result's status (and its apply's error).
    """
    check_interface(interface)
    try:
        recovery = restore_original(paths)
    except OsDnsError as e:
        recovery = f"could not restore what a previous run left: {e}"
        log.error("resolv.conf: {recovery}", recovery=recovery)
    os_dns: NoOsDns | ResolvConfDns | ResolvedDns
    if not accept_dns:
        os_dns = NoOsDns(interface, paths)
    elif not platform.startswith("linux"):
        # macOS reads /etc/resolver/, not resolv.conf: not wired yet.
        os_dns = NoOsDns(interface, paths, f"the OS resolver is wired on Linux only, not on {platform}")
    else:
        mode, reason = await detect(runner, paths, timeout=timeout)
        if mode == RESOLVED:
            os_dns = ResolvedDns(runner, interface, paths, reason, timeout=timeout)
        else:
            os_dns = ResolvConfDns(interface, paths, reason)
    os_dns.recovery = recovery
    log.info("OS resolver: {mode} ({reason})", mode=os_dns.mode, reason=os_dns.reason)
    return os_dns
