"""``wire-server --policy FILE``: the access policy kept in a file, loaded at
start and again on SIGHUP, with the same validation as ``wire admin policy
set``. At start a file that fails stops the server (it would otherwise run
with no policy, or an old one, without anyone noticing); on SIGHUP it
leaves the policy in force as it was and says why in the log."""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wire.policy import PolicyError
from wire.server.coordinator import Coordinator
from wire.server.policybook import MAX_POLICY_BYTES
from wire.server.store import StoreError

log = Logger()


class PolicyFileError(Exception):
    """The policy file cannot be put in force; the message says why."""


class PolicyFile:
    def __init__(self, path: str, coordinator: Coordinator):
        self.path = path
        self._coordinator = coordinator

    async def load(self) -> bool:
        """Put the file's policy in force if it changed; True if it did. PolicyFileError if it cannot be."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_POLICY_BYTES + 1)
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyFileError(f"cannot read the policy file {self.path}: {e}") from None
        book = self._coordinator.policy
        if text == book.current.text:
            return False
        try:
            await book.set(text, f"file {self.path}", self._coordinator.audit)
        except PolicyError as e:
            raise PolicyFileError(f"the policy in {self.path} was refused: {e}") from None
        return True

    async def reload(self) -> None:
        """SIGHUP: the file again; a bad one (or a store that fails) keeps the policy in force."""
        try:
            changed = await self.load()
        except (PolicyFileError, StoreError) as e:
            log.error("{problem}; version {version} stays in force", problem=str(e), version=self._coordinator.policy.current.version)
            return
        if not changed:
            log.info("policy file {path} unchanged (version {version})", path=self.path, version=self._coordinator.policy.current.version)

    def reload_on_sighup(self, reactor: Any) -> None:
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(lambda: Deferred.fromCoroutine(self.reload())))
