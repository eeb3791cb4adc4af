"""The one error the policy library raises; its text is meant for the admin."""

from __future__ import annotations


class PolicyError(Exception):
    """The policy is refused. ``str()`` names where (line and column, or the
    rule path such as ``acls[3].dst[1]``) and what is wrong; it is safe to
    show as is, so callers print it, never a traceback."""
