"""The node daemon's loggers: routine lines (each long-poll answer, each
reconcile that changes nothing) are debug, and debug stays out of the log.

twistd writes every event at every level to its log file, so without a
filter a debug line every few seconds would fill the log (and the tail
``wire up`` shows). The daemon's loggers publish through one level filter,
at info unless :func:`show_debug` says otherwise.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer: ILogObserver = FilteringLogObserver(globalLogPublisher, [_levels])


def node_logger(namespace: str | None = None) -> Logger:
    """A Logger whose debug lines are kept unless :func:`show_debug`."""
    return Logger(namespace=namespace, observer=_observer)


def show_debug(enabled: bool = True) -> None:
    """Let the node's debug lines through (``True``) or keep them out."""
    _levels.setLogLevelForNamespace("", LogLevel.debug if enabled else LogLevel.info)
