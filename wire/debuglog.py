"""Debug events that reach the log only when asked for.

twistd writes every event it is handed to its log file, debug included, so a
routine event (the runner's "running wg show wire0 dump", once per status
poll) would fill a node's log and bury its state changes and failures. A
Logger built by :func:`logger` drops its debug events unless ``WIRE_DEBUG``
is set (to anything but "" or "0") in the process's environment; every other
level always passes.
"""

from __future__ import annotations

import os

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    LogLevel,
    Logger,
    PredicateResult,
    globalLogPublisher,
)
from zope.interface import implementer

DEBUG_VARIABLE = "WIRE_DEBUG"


def debugging() -> bool:
    """Whether debug events are wanted (read at each event: cheap, and a test may set it)."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


@implementer(ILogFilterPredicate)
class _DebugWhenAsked:
    def __call__(self, event: dict) -> PredicateResult:
        if event.get("log_level") is LogLevel.debug and not debugging():
            return PredicateResult.no
        return PredicateResult.yes


_observer = FilteringLogObserver(globalLogPublisher, [_DebugWhenAsked()])


def logger(namespace: str) -> Logger:
    """A Logger for ``namespace`` whose debug events need ``WIRE_DEBUG``."""
    return Logger(namespace=namespace, observer=_observer)
