"""Debug events that reach the log only when asked for.

twistd writes every event it is handed to its log file, debug included, so a
routine event (the runner's "running wg show wire0 dump", once per status
poll) would fill a node's log and bury its state changes and failures. A
Logger built by :func:`logger` drops its debug events unless ``WIRE_DEBUG``
is set (to anything but "" or "0") in the process's environment, or
:func:`show_debug` was called; every other level always passes. The runner,
the node daemon, its relay shim and its LAN lookup all log through it.
"""

from __future__ import annotations

import os
import sys

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


_shown = False


def debugging() -> bool:
    """Whether debug events are wanted (read at each event: cheap, and a test may set it)."""
    return _shown or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def show_debug(enabled: bool = True) -> None:
    """Let debug events through (``True``) whatever the environment says, or stop doing so."""
    global _shown
    _shown = enabled


@implementer(ILogFilterPredicate)
class _DebugWhenAsked:
    def __call__(self, event: dict) -> PredicateResult:
        if event.get("log_level") is LogLevel.debug and not debugging():
            return PredicateResult.no
        return PredicateResult.yes


_observer = FilteringLogObserver(globalLogPublisher, [_DebugWhenAsked()])


def logger(namespace: str | None = None) -> Logger:
    """A Logger for ``namespace`` (default: the calling module) whose debug
    events need ``WIRE_DEBUG`` or :func:`show_debug`. As a class attribute it
    takes the class's name, as any Logger does."""
    if namespace is None:
        namespace = sys._getframe(1).f_globals.get("__name__", "wire")
    return Logger(namespace=namespace, observer=_observer)
