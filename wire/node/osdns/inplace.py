"""Reading and rewriting resolv.conf where it is.

/etc/resolv.conf may be a bind mount (``ip netns exec`` mounts
/etc/netns/NAME/resolv.conf over it; containers do the same) or a symlink
(to /run/resolvconf/resolv.conf, say). A rename would fail on a mount point
and would replace a symlink with a file, so the file is rewritten in place:
opened where the path resolves to, truncated, the whole content given in one
write, fsynced. A crash between truncation and write leaves an empty file,
which the saved original undoes (see :mod:`.savefile`).
"""

from __future__ import annotations

import os

from .errors import OsDnsError

# Larger than any resolv.conf; a bigger file is read only this far.
MAX_RESOLV_CONF = 1 << 16


def resolve_target(path: str) -> str:
    """The file behind ``path``: itself, or where its symlinks end.

    Raises OsDnsError for a symlink whose target is missing: that file
    belongs to another program (resolvconf, systemd-resolved), which wire
    does not create files for.
    """
    target = os.path.realpath(path)
    if os.path.islink(path) and not os.path.exists(target):
        raise OsDnsError(f"{path} is a symlink to {target}, which does not exist; wire does not create it")
    return target


def read_file(path: str) -> bytes | None:
    """The content of ``path``, None when there is no such file."""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_RESOLV_CONF)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise OsDnsError(f"cannot read {path}: {e.strerror}") from None


def write_in_place(path: str, data: bytes) -> None:
    """Make ``data`` the content of the file at ``path``, keeping the file
    (its inode, owner and mode); a missing file is created (mode 0644)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            written = os.write(fd, data)
            while written < len(data):  # short writes are rare on a regular file, not impossible
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise OsDnsError(f"cannot write {path}: {e.strerror}") from None


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise OsDnsError(f"cannot remove {path}: {e.strerror}") from None
