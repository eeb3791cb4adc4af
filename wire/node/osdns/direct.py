"""The "resolv.conf" mode: wire writes /etc/resolv.conf itself, in place.

Used where no systemd-resolved stands between the C library and the
network. The file then names the mesh resolver alone, with the mesh domain
first in the search list and the original's search domains and options
after it; the original's nameservers become the mesh resolver's upstreams.

The original is saved (:mod:`.savefile`) before the file is touched.
Another program may rewrite the file while wire is up (a DHCP client,
resolvconf): ``status`` tells, and the next ``apply`` or ``check``
re-asserts wire's content, taking the newcomer as the new original (its
nameservers are the machine's current ones, and `wire down` gives it back).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger
from zope.interface import implementer

from .checks import NOTHING_WANTED, Wanted, check_interface, wanted
from .errors import OsDnsError
from .inplace import read_file, resolve_target, write_in_place
from .interface import DEFAULT_DOMAIN, IOsDns, OsDnsPaths
from .resolvconf import is_managed, managed_resolv_conf, parse_resolv_conf
from .restore import holds_wire_content, keep_superseded, restore_original
from .savefile import SavedOriginal, digest, read_saved, write_saved

log = Logger()


@implementer(IOsDns)
class ResolvConfDns:
    mode = "resolv.conf"

    def __init__(self, interface: str, paths: OsDnsPaths, reason: str = "") -> None:
        self.interface = check_interface(interface)
        self.paths = paths
        self.reason = reason
        self.recovery: str | None = None  # what choose() found left over from a crash
        self._lock = DeferredLock()
        self._written: bytes | None = None  # the content wire last wrote, while applied
        self._given: Wanted | None = None
        self._problem: str | None = None
        self._done: str | None = None  # the last thing restore did
        self.upstreams: tuple[str, ...] = _upstreams_before(paths.resolv_conf)

    async def apply(
        self,
        vpn_address: str,
        domain: str = DEFAULT_DOMAIN,
        search: Sequence[str] | None = None,
        networks: Sequence[str] = (),
    ) -> None:
        # Every query goes to the mesh resolver here, reverse ones included:
        # the networks need no line of their own.
        await self._apply(wanted(vpn_address, domain, search, networks))

    async def _apply(self, given: Wanted) -> None:
        async with self._lock:
            try:
                self._write(given)
            except OsDnsError as e:
                self._problem = str(e)
                raise
            self._given, self._problem = given, None

    async def restore(self) -> None:
        async with self._lock:
            self._given = self._written = None
            try:
                self._done = restore_original(self.paths)
            except OsDnsError as e:
                self._problem = str(e)
                raise
            self._problem = None

    async def check(self) -> bool:
        if self._given is None or not self._drifted():
            return False
        log.warn("resolv.conf: {path} was rewritten by another program; wire writes its own again", path=self.paths.resolv_conf)
        await self._apply(self._given)
        return True

    def status(self) -> dict[str, object]:
        problem = self._problem
        if problem is None and self._given is not None:
            if self._drifted():
                problem = f"{self.paths.resolv_conf} was rewritten by another program; wire re-asserts it on the next check"
            elif not self.upstreams:
                problem = "the original resolv.conf named no nameserver: the mesh resolver has no upstream for other names"
        return {
            "mode": self.mode,
            "reason": self.reason,
            "interface": self.interface,
            "file": self.paths.resolv_conf,
            "applied": self._given is not None,
            **(self._given.shown() if self._given else NOTHING_WANTED),
            "upstreams": list(self.upstreams),
            "restored": self._done,
            "recovery": self.recovery,
            "problem": problem,
        }

    def _drifted(self) -> bool:
        try:
            return read_file(resolve_target(self.paths.resolv_conf)) != self._written
        except OsDnsError:
            return True

    def _write(self, given: Wanted) -> None:
        vpn_address = given.nameserver
        path = self.paths.resolv_conf
        target = resolve_target(path)
        current = read_file(target)
        saved = read_saved(self.paths.save_file)  # a corrupt one stops here, before any change
        if saved is not None and saved.target == target and holds_wire_content(current, saved):
            original = saved.original  # wire's own content is in place: keep the original it hides
        elif saved is None and current is not None and is_managed(current):
            raise OsDnsError(
                f"{path} holds wire's content but no saved original is in {self.paths.state_dir}; "
                "wire leaves it: put the machine's resolv.conf back by hand"
            )
        else:
            if saved is not None:
                kept = keep_superseded(self.paths, f"{path} was rewritten since wire wrote it; its new content is the original now")
                log.warn("resolv.conf: {kept}", kept=kept)
            original = current
        conf = parse_resolv_conf(original or b"")
        managed = managed_resolv_conf(
            vpn_address,
            _unique(given.search + conf.search),
            conf.options,
            saved_at=self.paths.save_file,
        )
        self.upstreams = tuple(ns for ns in conf.nameservers if ns != vpn_address)
        if current != managed or saved is None or saved.original != original:
            # The original is on disk before the file changes, so a crash can be undone.
            write_saved(self.paths.save_file, SavedOriginal(path, target, original, digest(managed)))
            write_in_place(target, managed)
            log.info(
                "resolv.conf: {path} names the mesh resolver {address} ({count} upstreams kept)",
                path=path,
                address=vpn_address,
                count=len(self.upstreams),
            )
        self._written = managed
        self._done = None


def _upstreams_before(path: str) -> tuple[str, ...]:
    """The nameservers resolv.conf names before apply (none when it is wire's)."""
    try:
        data = read_file(path)
    except OsDnsError:
        return ()
    return () if data is None or is_managed(data) else parse_resolv_conf(data).nameservers


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
