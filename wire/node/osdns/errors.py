"""The one error the OS-resolver integration raises: a sentence for a user."""

from __future__ import annotations


class OsDnsError(Exception):
    """The machine's resolver could not be configured or restored.

    ``str()`` is a sentence to show in `wire status` and the log; the mesh
    keeps running without it.
    """
