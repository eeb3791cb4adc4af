"""The node daemon's log file: rotated, with a cap.

twistd's own ``--logfile`` rotates at 1 MB but keeps every rotated file
forever; a daemon that logs a failure every second would fill the disk.
``wire up`` starts the daemon with ``--logger=wire.node.logfile.observer``
and the path in ``WIRE_NODE_LOGFILE``: at most LOG_KEEP rotated files of
LOG_ROTATE_BYTES each, 0600 (the log names peers and addresses).
"""

from __future__ import annotations

import os

from twisted.logger import ILogObserver, textFileLogObserver
from twisted.python.logfile import LogFile

LOG_PATH_VARIABLE = "WIRE_NODE_LOGFILE"
LOG_ROTATE_BYTES = 1_000_000
LOG_KEEP = 5


def open_log(path: str) -> LogFile:
    return LogFile(
        os.path.basename(path), os.path.dirname(path) or ".", rotateLength=LOG_ROTATE_BYTES, maxRotatedFiles=LOG_KEEP, defaultMode=0o600
    )


def observer() -> ILogObserver:
    """The factory twistd's ``--logger`` calls."""
    # A LogFile is the file-like object textFileLogObserver writes to (write and flush).
    return textFileLogObserver(open_log(os.environ[LOG_PATH_VARIABLE]))  # type: ignore[arg-type]
