"""The node daemon's log file: rotated, with a cap.

twistd's own ``--logfile`` rotates at 1 MB but keeps every rotated file
forever; a daemon that logs a failure every second would fill the disk.
``wire up`` starts the daemon with ``--logger=wire.node.logfile.observer``
and the path in ``WIRE_NODE_LOGFILE``: at most LOG_KEEP rotated files of
LOG_ROTATE_BYTES each, 0600 (the log names peers and addresses).

The log quotes the network (node names, reasons, the server's errors): each
event's text is escaped (``wire.textsafe.escaped_line``), so a hostile name
can neither forge a line with ``\\r\\n`` nor send ESC or bidi sequences to
whoever reads the log on a terminal.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent, formatEventAsClassicLogText, formatTime, timeFormatRFC3339
from twisted.python.logfile import LogFile

from wire.textsafe import escaped_line

LOG_PATH_VARIABLE = "WIRE_NODE_LOGFILE"
LOG_ROTATE_BYTES = 1_000_000
LOG_KEEP = 5


def open_log(path: str) -> LogFile:
    return LogFile(
        os.path.basename(path), os.path.dirname(path) or ".", rotateLength=LOG_ROTATE_BYTES, maxRotatedFiles=LOG_KEEP, defaultMode=0o600
    )


def format_event(event: LogEvent) -> str | None:
    """Twisted's classic line (time, [system], text), its text escaped.

    The message may quote the network: escaped into one line. A traceback is
    ours and many lines by nature: its lines stay lines, each escaped (the last
    quotes the exception, which may quote the server) and indented by the
    classic format, so none of them reads as an event of its own."""
    lines = [formatEvent(event)]
    failure = event.get("log_failure")
    if failure is not None:
        try:
            lines += failure.getTraceback().rstrip("\n").split("\n")
        except Exception as e:  # as Twisted does: a failure that cannot be told must not lose the event
            lines.append(f"(unable to obtain the traceback: {e!r})")
    # Twisted adds the time, the system and the indent; it gets only our text to show.
    shown = {key: value for key, value in event.items() if key not in ("log_failure", "log_flattened")}
    shown.update(log_format="{log_escaped}", log_escaped="\n".join(escaped_line(line) for line in lines))
    return formatEventAsClassicLogText(shown, formatTime=lambda when: formatTime(when, timeFormatRFC3339))


def log_observer(out: IO[Any]) -> ILogObserver:
    return FileLogObserver(out, format_event)


def observer() -> ILogObserver:
    """The factory twistd's ``--logger`` calls."""
    # A LogFile is the file-like object FileLogObserver writes to (write and flush).
    return log_observer(open_log(os.environ[LOG_PATH_VARIABLE]))  # type: ignore[arg-type]


def stdout_observer() -> ILogObserver:
    """The factory for a daemon in the foreground (under systemd, whose journal reads stdout)."""
    return log_observer(sys.stdout)
