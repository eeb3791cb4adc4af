"""The node's WireGuard interface: create or adopt it, keep its peers in step.

One IWireGuard drives one interface through an IProcessRunner (argument lists,
never a shell; the private key only ever on stdin):

- LinuxWireGuard: kernel WireGuard when ``ip link add NAME type wireguard``
  works, else ``wireguard-go -f NAME`` started and supervised by the daemon;
- MacWireGuard: ``wireguard-go -f utun`` with the real utunN name learned from
  ``WG_TUN_NAME_FILE``, addressed with ifconfig and routed with route.

An interface that already exists and answers ``wg`` is adopted, never
deleted: a daemon restart must not drop every tunnel.  Peers are applied as a
diff against the last known state, in one ``wg set`` spawn.

Supervision: a wireguard-go we started is our child, and its exit is noticed
at once.  An interface we did not start (kernel, or a wireguard-go adopted
from a daemon that was killed) is checked every ``check_interval`` seconds
with ``wg show NAME listen-port``: one short spawn through the same runner,
so it works inside a network namespace and against the scripted fake (an
in-process probe of the UAPI socket would do neither, and would say nothing
about a kernel interface).  Either way ``on_lost(reason)`` tells the daemon,
which calls up() and apply() again to restore the tunnel.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import DeferredLock, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from wire.install import package_for
from wire.node.ifname import parse_interface_name
from wire.protocol import ProtocolError, parse_wg_public_key
from wire.runner import CommandError, CommandFailed, CommandNotFound, IProcessRunner, IRunningProcess, describe_exit

log = Logger()

# The tunnel MTU. WireGuard's usual 1420 fills a 1500-byte path exactly
# (IPv6 + UDP 48, WireGuard 32); a relayed packet also carries a relay
# frame's 37 bytes, and at 1420 it would be IP-fragmented on the way to and
# from the relay (measured in the lab: every full-size packet, twice), which
# costs every hop and which many NATs and firewalls drop. Like Tailscale
# (1280), one MTU that fits every path: 1500 - 48 - 32 - 37 = 1383, rounded.
MTU = 1380
# wireguard-go keeps its UAPI sockets (and, on macOS, wg-quick's name files) here.
WIREGUARD_RUN_DIR = "/var/run/wireguard"

INSTALL_ADVICE = (
    "install WireGuard's tools: on Debian/Ubuntu `apt-get install wireguard-tools wireguard-go` "
    "(wireguard-go is only needed when the kernel has no WireGuard module), "
    "on Fedora `dnf install wireguard-tools wireguard-go`, "
    "on macOS `brew install wireguard-tools wireguard-go`"
)

_UTUN_NAME = re.compile(r"utun[0-9]{1,5}\Z")
_IPV4_ENDPOINT = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,3}){3}):([0-9]{1,5})\Z")
_IPV6_ENDPOINT = re.compile(r"\[([0-9A-Fa-f:.]{2,45})\]:([0-9]{1,5})\Z")
_NETWORK_TEXT = re.compile(r"[0-9A-Fa-f:./]{1,49}\Z")
_MAX_KEEPALIVE = 65535

# Bytes of argv beyond which one `wg set` is split in several (Linux's limit
# for argv plus environment is a quarter of the stack limit, 2 MiB by
# default); a 1,000-peer netmap is about 110 KB of words, far below.
_MAX_ARGV_BYTES = 1024 * 1024

_WG_TIMEOUT = 30.0

# stderr of `ip` when a device is not there.
_NO_DEVICE = ("does not exist", "Cannot find device")


class WireGuardError(Exception):
    """The interface could not be brought to the state asked for; says why."""


class WireGuardUnavailable(WireGuardError):
    """This machine lacks what WireGuard needs; the message says how to install it."""

    def __init__(self, missing: str) -> None:
        super().__init__(f"WireGuard is not available: {missing}; {INSTALL_ADVICE}")
        self.missing = missing


class InvalidWireGuardConfig(ProtocolError):
    """A key, address, endpoint or network is not acceptable for WireGuard."""


# -- values ------------------------------------------------------------------


@dataclass(frozen=True)
class PeerConfig:
    """
    One peer as the interface should have it.

    Validated and normalised on construction, since it usually comes from
    the network: allowed_ips become sorted, de-duplicated networks with host
    bits cleared (as WireGuard stores them), an IPv6 endpoint is written
    compressed.  endpoint None means "not known": a roamed endpoint is left
    alone.  persistent_keepalive 0 turns keepalives off.
    """

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    persistent_keepalive: int = 25

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_key", _check_public_key(self.public_key, "public_key"))
        object.__setattr__(self, "allowed_ips", parse_allowed_ips(self.allowed_ips))
        if self.endpoint is not None:
            object.__setattr__(self, "endpoint", parse_endpoint(self.endpoint))
        object.__setattr__(self, "persistent_keepalive", _check_keepalive(self.persistent_keepalive))


@dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: float  # unix seconds; 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int  # 0 = off


@dataclass(frozen=True)
class InterfaceStatus:
    name: str  # the device `wg` knows (utunN on macOS)
    public_key: str  # "" while no private key is set
    listen_port: int
    peers: tuple[PeerStatus, ...]
    backend: str


@dataclass(frozen=True)
class _Dump:
    """`wg show NAME dump`, with the private key kept apart from everything shown."""

    private_key: str | None
    status: InterfaceStatus

    def __repr__(self) -> str:  # never show the private key
        return f"_Dump(status={self.status!r})"


# -- validation --------------------------------------------------------------


def _invalid(field: str, problem: str) -> InvalidWireGuardConfig:
    return InvalidWireGuardConfig(field, problem)


def _shown(value: Any, limit: int = 50) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_public_key(value: Any, field: str) -> str:
    try:
        return parse_wg_public_key(value, field=field)
    except ProtocolError as e:
        raise _invalid(field, e.problem) from None


def _check_private_key(value: Any) -> str:
    # Same shape as a public key; the message never quotes the value.
    return _check_public_key(value, "private_key")


def _check_keepalive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_KEEPALIVE:
        raise _invalid("persistent_keepalive", f"{_shown(value)} is not a number of seconds from 0 (off) to 65535")
    return value


def _check_listen_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise _invalid("listen_port", f"{_shown(value)} is not a UDP port (0 for any, or 1-65535)")
    return value


def parse_endpoint(value: Any) -> str:
    """ "ip:port" or "[ipv6]:port", normalised; hostnames and anything odd refused."""
    if not isinstance(value, str):
        raise _invalid("endpoint", f"must be a string, not {type(value).__name__}")
    if match := _IPV4_ENDPOINT.match(value):
        host, port = match.groups()
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(host)
        except ValueError:
            raise _invalid("endpoint", f"{_shown(value)} does not hold a valid IPv4 address") from None
        shown = str(address)
    elif match := _IPV6_ENDPOINT.match(value):
        host, port = match.groups()
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise _invalid("endpoint", f"{_shown(value)} does not hold a valid IPv6 address") from None
        shown = f"[{address.compressed}]"
    else:
        raise _invalid("endpoint", f"{_shown(value)} is not IPV4:PORT or [IPV6]:PORT")
    if not 1 <= int(port) <= 65535:
        raise _invalid("endpoint", f"{_shown(value)} has no valid UDP port (1-65535)")
    return f"{shown}:{int(port)}"


def parse_network(value: Any, field: str = "allowed_ips") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One network ("10.99.0.2/32", "fd00::/64"; a bare address is a host route)."""
    if not isinstance(value, str) or not _NETWORK_TEXT.match(value):
        raise _invalid(field, f"{_shown(value)} is not an IPv4 or IPv6 network")
    try:
        # strict=False: WireGuard clears host bits too ("10.99.0.5/24" is 10.99.0.0/24).
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _invalid(field, f"{_shown(value)} is not an IPv4 or IPv6 network") from None


def parse_allowed_ips(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, frozenset, set)):
        raise _invalid("allowed_ips", f"must be a sequence of networks, not {type(value).__name__}")
    networks = {parse_network(item) for item in value}
    ordered = sorted(networks, key=lambda n: (n.version, n.network_address, n.prefixlen))
    return tuple(str(n) for n in ordered)


def _check_interface_name(value: Any) -> str:
    try:
        return parse_interface_name(value)
    except ProtocolError as e:
        raise _invalid("interface", e.problem) from None


def _check_address(address: Any, prefixlen: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if not isinstance(address, str) or not _NETWORK_TEXT.match(address) or "/" in address:
        raise _invalid("address", f"{_shown(address)} is not an IP address")
    if isinstance(prefixlen, bool) or not isinstance(prefixlen, int):
        raise _invalid("prefixlen", f"{_shown(prefixlen)} is not a prefix length")
    try:
        return ipaddress.ip_interface(f"{address}/{prefixlen}")
    except ValueError:
        raise _invalid("address", f"{_shown(address)}/{_shown(prefixlen)} is not an address with a prefix length") from None


# -- `wg show dump` ----------------------------------------------------------


def _none(field: str) -> str | None:
    return None if field == "(none)" else field


def _off(field: str) -> int:
    return 0 if field == "off" else int(field)


def parse_dump(output: bytes | str, *, backend: str = "", name: str = "") -> InterfaceStatus:
    """The status in `wg show NAME dump` output (the private key is dropped)."""
    return _parse_dump(output, backend=backend, name=name).status


def _parse_dump(output: bytes | str, *, backend: str, name: str) -> _Dump:
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        raise WireGuardError(f"`wg show {name} dump` printed nothing")
    # Interface: private-key public-key listen-port fwmark.  Error messages
    # never quote this line: it holds the private key.
    head = lines[0].split("\t")
    if len(head) < 4:
        raise WireGuardError(f"`wg show {name} dump`: the interface line has {len(head)} fields, expected 4")
    try:
        listen_port = int(head[2])
    except ValueError:
        raise WireGuardError(f"`wg show {name} dump`: the listen port is not a number") from None
    peers = []
    for number, line in enumerate(lines[1:], start=2):
        # Peer: public-key preshared-key endpoint allowed-ips latest-handshake
        # transfer-rx transfer-tx persistent-keepalive (a 9th field would be
        # new; ignore it).  Only the fields shown are quoted in errors.
        fields = line.split("\t")
        if len(fields) < 8:
            raise WireGuardError(f"`wg show {name} dump` line {number}: {len(fields)} fields, expected 8")
        key, _preshared, endpoint, allowed, handshake, rx, tx, keepalive = fields[:8]
        try:
            peers.append(
                PeerStatus(
                    public_key=key,
                    endpoint=_none(endpoint),
                    allowed_ips=tuple(a for a in allowed.split(",") if a) if _none(allowed) else (),
                    latest_handshake=float(int(handshake)),
                    rx_bytes=int(rx),
                    tx_bytes=int(tx),
                    persistent_keepalive=_off(keepalive),
                )
            )
        except ValueError:
            raise WireGuardError(f"`wg show {name} dump` line {number}: a number field is not a number") from None
    status = InterfaceStatus(
        name=name,
        public_key=_none(head[1]) or "",
        listen_port=listen_port,
        peers=tuple(peers),
        backend=backend,
    )
    return _Dump(private_key=_none(head[0]), status=status)


def _config_from_status(peer: PeerStatus) -> PeerConfig | None:
    """What a peer found on the interface amounts to; None if it is not valid for us."""
    try:
        return PeerConfig(peer.public_key, peer.allowed_ips, peer.endpoint, peer.persistent_keepalive)
    except InvalidWireGuardConfig:
        return None  # e.g. a scoped IPv6 endpoint someone set by hand: re-send it in full


# -- the diff ----------------------------------------------------------------


def peer_arguments(desired: PeerConfig, current: PeerConfig | None, *, known: bool = True) -> list[str]:
    """
    `wg set` words for one peer: only what differs from current (None: a new
    peer, or with known=False one whose settings we cannot tell, so all of
    them are sent); [] when nothing differs.
    """
    if not known:
        current = None
    words: list[str] = []
    if desired.endpoint is not None and (current is None or current.endpoint != desired.endpoint):
        words += ["endpoint", desired.endpoint]
    if current is None or current.allowed_ips != desired.allowed_ips:
        # An empty argument clears the list; wg replaces allowed-ips, never adds.
        words += ["allowed-ips", ",".join(desired.allowed_ips)]
    # A new peer starts with keepalives off.
    if desired.persistent_keepalive != (current.persistent_keepalive if current else 0) or not known:
        words += ["persistent-keepalive", str(desired.persistent_keepalive)]
    if current is not None and not words:
        return []
    return ["peer", desired.public_key, *words]


def diff_peers(
    current: Mapping[str, PeerConfig | None], desired: Mapping[str, PeerConfig]
) -> tuple[list[list[str]], int, int, int]:
    """
    Per-peer `wg set` words turning current into desired, and how many peers
    are (added, changed, removed).  A None in current is a peer present with
    settings we cannot tell.
    """
    groups: list[list[str]] = []
    added = changed = 0
    for key, config in desired.items():
        present = key in current
        words = peer_arguments(config, current.get(key), known=not present or current[key] is not None)
        if words:
            groups.append(words)
            if present:
                changed += 1
            else:
                added += 1
    removed = [key for key in current if key not in desired]
    groups += [["peer", key, "remove"] for key in removed]
    return groups, added, changed, len(removed)


def _check_desired(desired: Mapping[str, PeerConfig]) -> dict[str, PeerConfig]:
    checked = {}
    for key, config in desired.items():
        if not isinstance(config, PeerConfig):
            raise _invalid("peers", f"the peer under {_shown(key)} is a {type(config).__name__}, not a PeerConfig")
        if key != config.public_key:
            raise _invalid("peers", f"peer {config.public_key} is listed under another key, {_shown(key)}")
        checked[key] = config
    return checked


def _batches(prefix: list[str], groups: list[list[str]], limit: int = _MAX_ARGV_BYTES) -> list[list[str]]:
    """Pack peer groups into as few argvs as fit (one, short of a huge netmap)."""
    def size(words: list[str]) -> int:
        return sum(len(w) + 1 + 8 for w in words)  # the string, its NUL, its pointer

    batches: list[list[str]] = []
    current, current_size = list(prefix), size(prefix)
    for group in groups:
        if len(current) > len(prefix) and current_size + size(group) > limit:
            batches.append(current)
            current, current_size = list(prefix), size(prefix)
        current += group
        current_size += size(group)
    if len(current) > len(prefix):
        batches.append(current)
    return batches


# -- the interface ------------------------------------------------------------


class IWireGuard(Interface):
    """One WireGuard interface, kept as the daemon wants it."""

    name = Attribute("str: the interface name the node is configured with")
    device = Attribute("str: the OS device `wg` knows (utunN on macOS, else name); '' before up()")
    backend = Attribute('str: "kernel", "wireguard-go" or "adopted"; "" before up()')
    on_lost = Attribute(
        "Callable[[str], object] | None: called with one argument, the reason, when the interface "
        "dies (wireguard-go exited, or a check failed); it may return a Deferred (failures are "
        "logged).  up() and apply() restore the interface"
    )

    async def up(private_key: str, listen_port: int, address: str, prefixlen: int) -> None:
        """
        Create the interface, or adopt one of that name that answers `wg`
        (never deleting it), and give it the key, port, address and MTU.
        Idempotent.  Raises WireGuardUnavailable, WireGuardError,
        InvalidWireGuardConfig.
        """

    async def apply(desired: Mapping[str, PeerConfig]) -> int:
        """
        Make the peers exactly ``desired`` (keyed by public key) in one `wg set`;
        return how many peers were added, changed or removed (0: nothing ran).
        """

    async def status() -> InterfaceStatus:
        """The interface as `wg show NAME dump` reports it."""

    async def down() -> None:
        """Remove the interface (and stop its wireguard-go); idempotent."""

    def is_alive() -> bool:
        """True while up and, as far as is known, working."""

    async def check() -> bool:
        """Ask `wg` now; a dead interface is reported to on_lost.  True if alive."""

    def detach() -> None:
        """
        Stop supervising, leaving the interface (and its wireguard-go) running:
        for a daemon that stops without `wire down`, so the next one adopts it.
        """


class _WireGuardBase:
    """What every real platform shares: peers, status, supervision."""

    def __init__(
        self,
        runner: IProcessRunner,
        name: str,
        *,
        clock: IReactorTime,
        on_lost: Callable[[str], object] | None = None,
        ready_timeout: float = 5.0,
        poll_interval: float = 0.1,
        check_interval: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.name = _check_interface_name(name)
        self.device = ""
        self.backend = ""
        self.on_lost = on_lost
        self._runner = runner
        self._clock = clock
        self._ready_timeout = ready_timeout
        self._poll_interval = poll_interval
        self._check_interval = check_interval
        self._stop_timeout = stop_timeout
        self._lock = DeferredLock()
        self._up = False
        self._applied: dict[str, PeerConfig | None] | None = None
        self._process: IRunningProcess | None = None
        self._checks: LoopingCall | None = None
        # Bumped by up(), down() and a loss, so late news of an old life is ignored.
        self._generation = 0

    # -- the IWireGuard operations shared by every platform -------------------

    async def apply(self, desired: Mapping[str, PeerConfig]) -> int:
        checked = _check_desired(desired)
        async with self._lock:
            if not self._up or self._applied is None:
                raise WireGuardError(f"WireGuard interface {self.name} is not up; call up() first")
            current = self._applied
            groups, added, changed, removed = diff_peers(current, checked)
            if not groups:
                return 0
            argvs = _batches(["wg", "set", self.device], groups)
            try:
                for argv in argvs:
                    await self._wg(argv)
            except BaseException:
                # Part of it may have been applied: learn what the interface holds now.
                await self._resync()
                raise
            self._applied = {key: config for key, config in checked.items()}
            log.info(
                "{device}: {count} peer change(s) applied ({added} added, {changed} changed, "
                "{removed} removed) in {spawns} wg spawn(s); {total} peers",
                device=self.device,
                count=added + changed + removed,
                added=added,
                changed=changed,
                removed=removed,
                spawns=len(argvs),
                total=len(checked),
            )
            return added + changed + removed

    async def status(self) -> InterfaceStatus:
        if not self.device:
            raise WireGuardError(f"WireGuard interface {self.name} is not up")
        return (await self._dump(self.device)).status

    def is_alive(self) -> bool:
        if not self._up:
            return False
        return self._process is None or self._process.running

    async def check(self) -> bool:
        if not self._up:
            return False
        generation = self._generation
        if self._process is not None and not self._process.running:
            return False  # its exit has been (or is being) reported
        try:
            result = await self._runner.run(["wg", "show", self.device, "listen-port"], timeout=_WG_TIMEOUT)
            problem = None if result.rc == 0 else CommandFailed(result)
        except CommandError as e:
            problem = e
        if problem is None:
            return True
        if generation == self._generation:
            self._lose(f"`wg show {self.device}` no longer answers: {problem}")
        return False

    def detach(self) -> None:
        self._pause()
        self._process = None  # it outlives us; the next daemon adopts its interface
        log.info("{device}: no longer supervised; left running", device=self.device or self.name)

    # -- shared machinery -------------------------------------------------------

    async def _wg(self, argv: list[str], stdin: bytes | None = None) -> None:
        try:
            result = await self._runner.run(argv, stdin=stdin, timeout=_WG_TIMEOUT)
        except CommandNotFound as e:
            raise WireGuardUnavailable(_missing(e)) from None
        except CommandError as e:
            raise WireGuardError(str(e)) from e
        if result.rc != 0:
            raise WireGuardError(str(CommandFailed(result)))

    async def _dump(self, device: str) -> _Dump:
        dump = await self._try_dump(device)
        if isinstance(dump, str):
            raise WireGuardError(dump)
        return dump

    async def _try_dump(self, device: str) -> _Dump | str:
        """The interface's dump, or why `wg` could not give it (a message)."""
        try:
            result = await self._runner.run(["wg", "show", device, "dump"], timeout=_WG_TIMEOUT)
        except CommandNotFound as e:
            raise WireGuardUnavailable(_missing(e)) from None
        except CommandError as e:
            return str(e)
        if result.rc != 0:
            return str(CommandFailed(result))
        return _parse_dump(result.stdout, backend=self.backend, name=device)

    async def _resync(self) -> None:
        try:
            dump = await self._dump(self.device)
        except WireGuardError as e:
            log.warn("{device}: cannot re-read peers after a failed apply: {error}", device=self.device, error=e)
            self._applied = {}  # unknown: the next apply sends everything it wants
            return
        self._applied = _peers_of(dump)

    async def _set_key_and_port(self, device: str, private_key: str, listen_port: int, dump: _Dump) -> None:
        """`wg set` the key (on stdin) and port, if they are not already so."""
        argv = ["wg", "set", device]
        if dump.private_key != private_key:
            argv += ["private-key", "/dev/stdin"]
        # Port 0 asks for any port: whatever the interface has will do.
        if listen_port and dump.status.listen_port != listen_port:
            argv += ["listen-port", str(listen_port)]
        if len(argv) > 3:
            await self._wg(argv, stdin=(private_key + "\n").encode())

    async def _run_checked(self, argv: list[str], *, what: str) -> None:
        try:
            result = await self._runner.run(argv, timeout=_WG_TIMEOUT)
        except CommandNotFound as e:
            raise WireGuardUnavailable(_missing(e)) from None
        except CommandError as e:
            raise WireGuardError(f"cannot {what}: {e}") from e
        if result.rc != 0:
            raise WireGuardError(f"cannot {what}: {CommandFailed(result)}")

    def _established(self, backend: str, device: str, dump: _Dump) -> None:
        """Record a working interface and supervise it."""
        if backend == "wireguard-go" and self._process is None:
            raise WireGuardError(f"wireguard-go for {self.name} exited while its interface was being configured")
        self.backend = backend
        self.device = device
        self._applied = _peers_of(dump)
        self._up = True
        if self._process is None:  # not our child: nothing tells us when it dies, so ask
            self._checks = LoopingCall(self._periodic_check)
            self._checks.clock = self._clock
            self._checks.start(self._check_interval, now=False)

    def _own(self, process: IRunningProcess) -> None:
        """Take a started, ready wireguard-go as ours: its exit is a loss."""
        self._process = process
        process.when_exited().addCallback(self._process_exited, process)

    async def _stop_own(self) -> None:
        process, self._process = self._process, None  # an exit we asked for is no loss
        if process is not None and process.running:
            await process.stop(self._stop_timeout)

    async def _periodic_check(self) -> None:
        try:
            await self.check()
        except Exception:
            # A loop body that raises would stop supervision for good.
            log.failure("{device}: supervision check failed", device=self.device)

    def _stop_checks(self) -> None:
        if self._checks is not None and self._checks.running:
            self._checks.stop()
        self._checks = None

    def _process_exited(self, rc: int, process: IRunningProcess) -> None:
        if process is self._process:
            self._process = None
            self._lose(f"wireguard-go (pid {process.pid}) {describe_exit(rc)}; last output: {_tail(process)}")

    def _lose(self, reason: str) -> None:
        if not self._up:
            return  # not established (up() is at work, or down() was called): nothing to report
        self._pause()
        log.warn("WireGuard interface {device} lost: {reason}", device=self.device, reason=reason)
        if self.on_lost is not None:
            # The daemon's restore may be async: its failure is logged, never left unhandled.
            maybeDeferred(self.on_lost, reason).addErrback(
                lambda failure: log.failure("on_lost for {device} failed", failure, device=self.device)
            )

    def _pause(self) -> None:
        """End this life's supervision and state (a child process stays ours)."""
        self._generation += 1
        self._stop_checks()
        self._up = False
        self._applied = None

    async def _wait_ready(self, process: IRunningProcess, device_name: Callable[[], str | None]) -> tuple[str, _Dump]:
        """Poll until wireguard-go's interface answers `wg`; stop it on failure."""
        deadline = self._clock.seconds() + self._ready_timeout
        problem = "it has not created its interface yet"
        while True:
            if not process.running:
                raise WireGuardError(
                    f"wireguard-go for {self.name} {describe_exit(process.rc or 0)} before its interface "
                    f"was ready; last output: {_tail(process)}"
                )
            device = device_name()
            if device is not None:
                try:
                    dump = await self._try_dump(device)
                except WireGuardUnavailable:
                    await process.stop(self._stop_timeout)
                    raise
                if isinstance(dump, _Dump):
                    return device, dump
                problem = dump
            if self._clock.seconds() >= deadline:
                await process.stop(self._stop_timeout)
                raise WireGuardError(
                    f"wireguard-go for {self.name} was not ready after {self._ready_timeout:g}s "
                    f"({problem}); stopped it; last output: {_tail(process)}"
                )
            await deferLater(self._clock, self._poll_interval)

    def _start_wireguard_go(self, argv: list[str], env: Mapping[str, str] | None = None) -> IRunningProcess:
        try:
            return self._runner.start(argv, env=env, log_prefix=f"wireguard-go[{self.name}]")
        except CommandNotFound as e:
            raise WireGuardUnavailable(_missing(e)) from None


def _peers_of(dump: _Dump) -> dict[str, PeerConfig | None]:
    return {peer.public_key: _config_from_status(peer) for peer in dump.status.peers}


def _tail(process: IRunningProcess) -> list[str]:
    """Its last output, without the boxed banner wireguard-go prints on a kernel with WireGuard."""
    return [line for line in process.tail if line[:1] not in ("┌", "│", "└")]


def _missing(error: CommandNotFound) -> str:
    package = package_for(error.program)
    return f"the {error.program!r} program is missing" + (f" (package {package})" if package else "")


def _is_missing_device(stderr: bytes) -> bool:
    text = stderr.decode("utf-8", "replace")
    return any(marker in text for marker in _NO_DEVICE)


@implementer(IWireGuard)
class LinuxWireGuard(_WireGuardBase):
    """
    Kernel WireGuard when the kernel has it, else a supervised wireguard-go.

    Pass use_kernel=False to go straight to wireguard-go.
    """

    def __init__(
        self, runner: IProcessRunner, name: str, *, clock: IReactorTime, use_kernel: bool = True, **options: Any
    ) -> None:
        super().__init__(runner, name, clock=clock, **options)
        self._use_kernel = use_kernel

    async def up(self, private_key: str, listen_port: int, address: str, prefixlen: int) -> None:
        private_key = _check_private_key(private_key)
        listen_port = _check_listen_port(listen_port)
        interface = _check_address(address, prefixlen)
        async with self._lock:
            kept = self.backend if self._up and self.backend == "kernel" else "adopted"
            self._pause()
            dump = await self._existing()
            created = dump is None
            if dump is None:
                await self._stop_own()  # whatever it served is gone: start afresh
                backend, dump = await self._create()
            else:
                backend = "wireguard-go" if self._process is not None else kept
            try:
                await self._set_key_and_port(self.name, private_key, listen_port, dump)
                await self._set_address(interface, fresh=created)
                await self._run_checked(
                    ["ip", "link", "set", "dev", self.name, "mtu", str(MTU), "up"], what=f"bring {self.name} up"
                )
                self._established(backend, self.name, dump)
            except BaseException:
                if created:  # never undo an adopted interface: it may carry live tunnels
                    await self._remove()
                raise
        log.info(
            "WireGuard interface {device} up ({backend}): {address}, port {port}, {peers} peers",
            device=self.name,
            backend=backend,
            address=str(interface),
            port=listen_port or dump.status.listen_port,
            peers=len(dump.status.peers),
        )

    async def down(self) -> None:
        async with self._lock:
            self._pause()
            await self._stop_own()  # wireguard-go removes its interface as it exits
            await self._delete_link()
            self.backend = ""
            self.device = ""
        log.info("WireGuard interface {device} removed", device=self.name)

    async def _existing(self) -> _Dump | None:
        """The dump of an existing interface of our name, None if there is none."""
        deadline = self._clock.seconds() + self._ready_timeout
        while True:
            try:
                result = await self._runner.run(["ip", "link", "show", "dev", self.name])
            except CommandNotFound as e:
                raise WireGuardUnavailable(_missing(e)) from None
            if result.rc != 0:
                if _is_missing_device(result.stderr):
                    return None
                raise WireGuardError(f"cannot look for interface {self.name}: {CommandFailed(result)}")
            dump = await self._try_dump(self.name)
            if isinstance(dump, _Dump):
                log.info("found WireGuard interface {device}; adopting it", device=self.name)
                return dump
            if self._clock.seconds() >= deadline:
                # Something else by that name, or a hung wireguard-go: not ours to delete.
                raise WireGuardError(
                    f"interface {self.name} exists but does not answer `wg` ({dump}); it is not a "
                    f"WireGuard interface or its wireguard-go has hung: remove it (`ip link delete "
                    f"{self.name}`) or configure another interface name"
                )
            # A wireguard-go that has just died leaves its interface behind for a moment.
            await deferLater(self._clock, self._poll_interval)

    async def _create(self) -> tuple[str, _Dump]:
        """Create the interface: its backend and its dump."""
        if self._use_kernel:
            try:
                result = await self._runner.run(["ip", "link", "add", "dev", self.name, "type", "wireguard"])
            except CommandNotFound as e:
                raise WireGuardUnavailable(_missing(e)) from None
            if result.rc == 0:
                try:
                    dump = await self._dump(self.name)
                except BaseException:
                    await self._remove()
                    raise
                return "kernel", dump
            reason = " | ".join(line.strip() for line in result.stderr.decode("utf-8", "replace").splitlines())
            log.info(
                "no kernel WireGuard for {device} ({reason}); starting wireguard-go",
                device=self.name,
                reason=reason or describe_exit(result.rc),
            )
        try:
            process = self._start_wireguard_go(["wireguard-go", "-f", self.name])
        except WireGuardUnavailable as e:
            if self._use_kernel:
                raise WireGuardUnavailable(f"{e.missing}, and the kernel has no WireGuard module") from None
            raise
        _, dump = await self._wait_ready(process, lambda: self.name)
        self._own(process)
        return "wireguard-go", dump

    async def _set_address(self, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface, *, fresh: bool) -> None:
        """Give the interface exactly this address (an adopted one may hold an old one)."""
        present: list[str] = []
        if not fresh:
            present = await self._addresses()
        wanted = str(interface)
        for stale in present:
            if stale != wanted:
                await self._run_checked(
                    ["ip", "address", "del", stale, "dev", self.name], what=f"remove old address {stale}"
                )
        if wanted not in present:
            await self._run_checked(
                ["ip", "address", "replace", wanted, "dev", self.name], what=f"set address {wanted}"
            )

    async def _addresses(self) -> list[str]:
        """Global addresses of the interface, as "addr/prefixlen" (link-local ones left out)."""
        try:
            result = await self._runner.run(["ip", "-j", "address", "show", "dev", self.name])
        except CommandNotFound as e:
            raise WireGuardUnavailable(_missing(e)) from None
        if result.rc != 0:
            raise WireGuardError(f"cannot list the addresses of {self.name}: {CommandFailed(result)}")
        try:
            links = json.loads(result.stdout or b"[]")
            found = []
            for link in links:
                for info in link.get("addr_info", []):
                    address = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
                    if not address.ip.is_link_local:
                        found.append(str(address))
            return found
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise WireGuardError(f"cannot read the addresses of {self.name} from `ip -j address`: {e}") from None

    async def _remove(self) -> None:
        """Undo a creation that failed halfway (never used on an adopted interface)."""
        try:
            await self._stop_own()
            await self._delete_link()
        except Exception as e:
            log.warn("{device}: cleaning up after a failed up(): {error}", device=self.name, error=e)
        self.backend = ""

    async def _delete_link(self) -> None:
        try:
            result = await self._runner.run(["ip", "link", "delete", "dev", self.name])
        except CommandNotFound as e:
            raise WireGuardUnavailable(_missing(e)) from None
        if result.rc != 0 and not _is_missing_device(result.stderr):
            raise WireGuardError(f"cannot remove interface {self.name}: {CommandFailed(result)}")


@implementer(IWireGuard)
class MacWireGuard(_WireGuardBase):
    """
    macOS: ``wireguard-go -f utun`` names its own utunN and writes the name to
    ``WG_TUN_NAME_FILE``; we keep that file where wg-quick does
    (/var/run/wireguard/NAME.name), so a restarted daemon finds and adopts
    the utun of a wireguard-go that outlived it.  -f keeps wireguard-go in
    the foreground, as our supervised child, instead of daemonising.
    """

    def __init__(
        self, runner: IProcessRunner, name: str, *, clock: IReactorTime, run_dir: str = WIREGUARD_RUN_DIR, **options: Any
    ) -> None:
        super().__init__(runner, name, clock=clock, **options)
        self._run_dir = run_dir
        self._route: tuple[str, str] | None = None  # (family flag, subnet)

    @property
    def name_file(self) -> str:
        return os.path.join(self._run_dir, f"{self.name}.name")

    async def up(self, private_key: str, listen_port: int, address: str, prefixlen: int) -> None:
        private_key = _check_private_key(private_key)
        listen_port = _check_listen_port(listen_port)
        interface = _check_address(address, prefixlen)
        async with self._lock:
            self._pause()
            device = self._read_name_file()
            found = await self._try_dump(device) if device else None
            created = not isinstance(found, _Dump)
            if isinstance(found, _Dump):
                assert device is not None
                dump = found
                backend = "wireguard-go" if self._process is not None else "adopted"
                if backend == "adopted":
                    log.info("adopting {device}, the WireGuard interface of {name}", device=device, name=self.name)
            else:
                await self._stop_own()
                self._remove_file(self.name_file)  # stale: its wireguard-go is gone
                os.makedirs(self._run_dir, exist_ok=True)
                process = self._start_wireguard_go(
                    ["wireguard-go", "-f", "utun"], env={"WG_TUN_NAME_FILE": self.name_file}
                )
                device, dump = await self._wait_ready(process, self._read_name_file)
                self._own(process)
                backend = "wireguard-go"
            try:
                await self._set_key_and_port(device, private_key, listen_port, dump)
                await self._configure_address(device, interface)
                self._established(backend, device, dump)
            except BaseException:
                if created:
                    await self._stop_own()
                    self._remove_file(self.name_file)
                    self.backend = ""
                raise
        log.info(
            "WireGuard interface {name} up as {device} ({backend}): {address}",
            name=self.name,
            device=device,
            backend=backend,
            address=str(interface),
        )

    async def down(self) -> None:
        async with self._lock:
            self._pause()
            device = self.device or self._read_name_file()
            if self._route is not None and device:
                family, subnet = self._route
                await self._best_effort(["route", "-q", "-n", "delete", family, subnet, "-interface", device])
            if self._process is not None:
                await self._stop_own()  # wireguard-go takes its utun with it
            elif device:
                # Not our child: wireguard-go exits when its UAPI socket is removed (wg-quick's way).
                self._remove_file(os.path.join(self._run_dir, f"{device}.sock"))
            self._remove_file(self.name_file)
            self._route = None
            self.backend = ""
            self.device = ""
        log.info("WireGuard interface {name} removed", name=self.name)

    async def _configure_address(
        self, device: str, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> None:
        address = str(interface.ip)
        if interface.version == 4:
            argv = ["ifconfig", device, "inet", address, address, "netmask", str(interface.netmask), "up"]
            family = "-inet"
        else:
            argv = ["ifconfig", device, "inet6", address, "prefixlen", str(interface.network.prefixlen), "alias", "up"]
            family = "-inet6"
        await self._run_checked(argv, what=f"set address {interface} on {device}")
        await self._run_checked(["ifconfig", device, "mtu", str(MTU)], what=f"set the MTU of {device}")
        subnet = str(interface.network)
        try:
            result = await self._runner.run(["route", "-q", "-n", "add", family, subnet, "-interface", device])
        except CommandNotFound as e:
            raise WireGuardUnavailable(_missing(e)) from None
        if result.rc != 0 and b"File exists" not in result.stderr:  # already routed: adopted
            raise WireGuardError(f"cannot route {subnet} to {device}: {CommandFailed(result)}")
        self._route = (family, subnet)

    def _read_name_file(self) -> str | None:
        try:
            with open(self.name_file) as f:
                device = f.read().strip()
        except OSError:
            return None
        if not _UTUN_NAME.match(device):
            log.warn("{path} holds no utun name; ignoring it", path=self.name_file)
            return None
        return device

    def _remove_file(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warn("cannot remove {path}: {error}", path=path, error=e)

    async def _best_effort(self, argv: list[str]) -> None:
        try:
            result = await self._runner.run(argv, timeout=_WG_TIMEOUT)
        except CommandError as e:
            log.warn("{command} failed: {error}", command=" ".join(argv), error=e)
            return
        if result.rc != 0:
            log.info("{error} (the route goes with the interface anyway)", error=CommandFailed(result))


def make_wireguard(
    runner: IProcessRunner, name: str, clock: IReactorTime, platform: str = sys.platform, **options: Any
) -> IWireGuard:
    """The IWireGuard for this platform."""
    if platform.startswith("linux"):
        return LinuxWireGuard(runner, name, clock=clock, **options)
    if platform == "darwin":
        return MacWireGuard(runner, name, clock=clock, **options)
    raise WireGuardUnavailable(f"wire drives WireGuard on Linux and macOS, not on {platform!r}")


__all__ = [
    "IWireGuard",
    "InterfaceStatus",
    "InvalidWireGuardConfig",
    "LinuxWireGuard",
    "MacWireGuard",
    "PeerConfig",
    "PeerStatus",
    "WireGuardError",
    "WireGuardUnavailable",
    "make_wireguard",
    "parse_dump",
    "parse_endpoint",
]
