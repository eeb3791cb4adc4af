"""Text from the network, made safe to show on a terminal.

A server (or a node, through the server) chooses names, reasons and error
messages; printed raw, an ESC sequence in one clears the admin's screen,
recolours it, retitles the window or writes their clipboard (OSC 52), and a
``\\r`` or bidi control rewrites what the line appears to say. Every control
character becomes a visible escape (``\\x1b``, ``\\r``, ``\\u202e``); the
rest of the text, any script, is shown as it is. JSON output needs none of
this: JSON escapes control characters itself.
"""

from __future__ import annotations

from typing import Any

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(code: int) -> str:
    char = chr(code)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_CONTROLS = [
    *range(0x00, 0x20),  # C0, ESC among them
    0x7F,  # DEL
    *range(0x80, 0xA0),  # C1: 0x9b is a one-byte CSI, 0x9d a one-byte OSC
    0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A),  # bidi marks, embeddings, isolates
    0x2028, 0x2029,  # line and paragraph separators
]
_TABLE = {code: _escape(code) for code in _CONTROLS}
_TABLE_KEEPING_NEWLINES = {code: text for code, text in _TABLE.items() if code != ord("\n")}
# A log line: a tab forges nothing and lines up columns, a newline would forge a line.
_TABLE_KEEPING_TABS = {code: text for code, text in _TABLE.items() if code != ord("\t")}

# Fields whose text is many lines by nature: a ping's output.
MULTILINE_FIELDS = frozenset({"output"})


def escaped(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every control character shown as an escape (newlines kept, if asked)."""
    return text.translate(_TABLE_KEEPING_NEWLINES if keep_newlines else _TABLE)


def escaped_line(text: str) -> str:
    """``text`` as one line of a log file: :func:`escaped`, tabs kept."""
    return text.translate(_TABLE_KEEPING_TABS)


def escaped_strings(value: Any, keep_newlines_in: frozenset[str] = MULTILINE_FIELDS) -> Any:
    """``value`` (an operation's result) with every string in it :func:`escaped`;
    keys are left as they are (they are ours), newlines kept only in ``keep_newlines_in``."""
    if isinstance(value, str):
        return escaped(value)
    if isinstance(value, dict):
        return {
            key: escaped(item, keep_newlines=True) if isinstance(item, str) and key in keep_newlines_in
            else escaped_strings(item, keep_newlines_in)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [escaped_strings(item, keep_newlines_in) for item in value]
    return value
