"""What goes wrong with a message, and the one shape an error answer has.

Every error answer on the wire (the coordination server's API, the admin
socket, the daemon's control socket) is ``{"error": "..."}``; it is built by
:func:`error_body` and read back by :func:`error_message`, nowhere else.
"""

from __future__ import annotations

from typing import Any


class ProtocolError(ValueError):
    """A message or field is not acceptable. ``str()`` is safe to show a user."""

    def __init__(self, field: str | None, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class BodyTooLarge(ProtocolError):
    """The body exceeds the size limit (HTTP 413, not 400)."""


def error_body(message: str) -> dict[str, str]:
    """An error answer's JSON body."""
    return {"error": message}


def error_message(body: Any, default: str = "no error message") -> str:
    """The message of an error answer (any JSON value: a broken server may send anything)."""
    message = body.get("error") if isinstance(body, dict) else None
    return str(message)[:1000] if message not in (None, "") else default
