"""The netmap cursor: ``EPOCH:SERIAL``, where a node stands in the server's change log."""

from __future__ import annotations

from dataclasses import dataclass

from wire.protocol.errors import ProtocolError

MAX_EPOCH = 32
MAX_SERIAL_DIGITS = 18


@dataclass(frozen=True, slots=True)
class Cursor:
    epoch: str
    serial: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.serial}"


def parse_cursor(text: object, current_epoch: str, field: str = "since") -> Cursor:
    """``EPOCH:SERIAL``, or a bare serial (taken to be in ``current_epoch``).

    Nothing else survives: a cursor goes back to the server in a query
    string, so it can carry no ``&``, space or other text.
    """
    if not isinstance(text, str):
        raise ProtocolError(field, "must be a string (EPOCH:SERIAL as returned in 'cursor')")
    epoch, _, serial_text = text.rpartition(":")
    if (
        not (serial_text.isascii() and serial_text.isdigit())
        or len(serial_text) > MAX_SERIAL_DIGITS
        or (epoch and (len(epoch) > MAX_EPOCH or not (epoch.isascii() and epoch.isalnum())))
    ):
        raise ProtocolError(field, f"{text[:40]!r} is not a cursor (EPOCH:SERIAL as returned in 'cursor')")
    return Cursor(epoch or current_epoch, int(serial_text))


def parse_cursor_text(value: object, field: str = "cursor") -> str:
    """A cursor as the server gave it, checked, to be sent back as it is."""
    parse_cursor(value, "", field)
    assert isinstance(value, str)
    return value
