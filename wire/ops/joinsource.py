"""Where a join token comes from, other than the command line (where ``ps``
and shell history keep it): a file only its owner may read, or stdin."""

from __future__ import annotations

import getpass
import os
import stat
from typing import TextIO

from wire.ops.context import OpError

# A token is a few hundred characters; anything this long is not one.
MAX_TOKEN_CHARS = 16 * 1024


def read_join_file(path: str) -> str:
    """The join token in the file at ``path``, surrounding whitespace stripped.

    Like ssh with a private key, a file others may read or write (mode &
    0o077) is refused: the token is a secret, and whoever could read it
    could join with it first."""
    try:
        # Non-blocking: a FIFO at ``path`` is refused, not waited on.
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise OpError(f"--join-file: cannot open {path}: {e.strerror}")
    try:
        info = os.fstat(fd)  # of the file opened, not of what the path names now
        if not stat.S_ISREG(info.st_mode):
            raise OpError(f"--join-file: {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise OpError(
                f"--join-file: {path} is accessible by others (mode {mode:04o}): "
                f"the join token is a secret; chmod 600 {path} and run again"
            )
        data = os.read(fd, MAX_TOKEN_CHARS + 1)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise OpError(f"--join-file: {path} does not hold a join token (not text)")
    return _token(text, f"--join-file: {path}")


def read_join_stream(stream: TextIO) -> str:
    """The join token given on ``stream`` (``--join -``: stdin), whitespace
    stripped; asked for without echo when it is a terminal."""
    if stream.isatty():
        return _token(getpass.getpass("join token: "), "--join -: the token typed")
    return _token(stream.read(MAX_TOKEN_CHARS + 1), "--join -: stdin")


def _token(text: str, where: str) -> str:
    if len(text) > MAX_TOKEN_CHARS:
        raise OpError(f"{where} holds more than {MAX_TOKEN_CHARS} characters: not a join token")
    token = text.strip()
    if not token:
        raise OpError(f"{where} is empty: it should hold the join token from 'wire admin keys create'")
    return token
