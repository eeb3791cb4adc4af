"""HuJSON: JSON with ``//`` and ``/* */`` comments and trailing commas.

A small recursive-descent reader of our own (the standard ``json`` module
neither skips comments nor reports positions in words an admin can use):
every syntax error names its line and column. Duplicate keys are errors
too: in an access policy the second of two ``"acls"`` silently winning
would open or close access nobody meant to.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

from wire.policy.errors import PolicyError

MAX_DEPTH = 64  # deeper than any policy; keeps hostile input from exhausting the stack

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS = (("true", True), ("false", False), ("null", None))
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def parse_hujson(text: str) -> Any:
    """The JSON value ``text`` holds; PolicyError naming line and column if it is not HuJSON."""
    reader = _Reader(text)
    reader.skip_space()
    if reader.at_end():
        reader.fail("the policy is empty")
    value = reader.value(0)
    reader.skip_space()
    if not reader.at_end():
        reader.fail("unexpected text after the end of the policy")
    return value


class _Reader:
    def __init__(self, text: str):
        self.text = text
        self.pos = 1 if text.startswith("\ufeff") else 0

    def fail(self, problem: str, offset: int | None = None) -> NoReturn:
        line, column = position(self.text, self.pos if offset is None else offset)
        raise PolicyError(f"policy line {line}, column {column}: {problem}")

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def describe_here(self) -> str:
        if self.at_end():
            return "the end of the policy"
        return repr(self.text[self.pos])

    def skip_space(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    self.fail("unterminated /* comment */")
                self.pos = end + 2
            elif char == "/":
                self.fail("a comment starts with // or /*")
            else:
                return

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            self.fail(f"nested deeper than {MAX_DEPTH} levels")
        if self.at_end():
            self.fail("expected a value, found the end of the policy")
        char = self.text[self.pos]
        if char == "{":
            return self.object(depth)
        if char == "[":
            return self.array(depth)
        if char == '"':
            return self.string()
        if char == "-" or char.isdigit():
            return self.number()
        for word, literal in _LITERALS:
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return literal
        self.fail(f"expected a value, found {self.describe_here()}")

    def object(self, depth: int) -> dict[str, Any]:
        self.pos += 1  # the "{"
        result: dict[str, Any] = {}
        while True:
            self.skip_space()
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return result
            if not self.text.startswith('"', self.pos):
                self.fail(f"expected a string key or '}}', found {self.describe_here()}")
            key_at = self.pos
            key = self.string()
            if key in result:
                self.fail(f"duplicate key {key!r}", key_at)
            self.skip_space()
            if not self.text.startswith(":", self.pos):
                self.fail(f"expected ':' after the key, found {self.describe_here()}")
            self.pos += 1
            self.skip_space()
            result[key] = self.value(depth + 1)
            self.skip_space()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif self.text.startswith("}", self.pos):
                self.pos += 1
                return result
            else:
                self.fail(f"expected ',' or '}}', found {self.describe_here()}")

    def array(self, depth: int) -> list[Any]:
        self.pos += 1  # the "["
        result: list[Any] = []
        while True:
            self.skip_space()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return result
            result.append(self.value(depth + 1))
            self.skip_space()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif self.text.startswith("]", self.pos):
                self.pos += 1
                return result
            else:
                self.fail(f"expected ',' or ']', found {self.describe_here()}")

    def number(self) -> int | float:
        start = self.pos
        match = _NUMBER.match(self.text, start)
        if match is None:
            self.fail("invalid number", start)
        self.pos = match.end()
        if self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in ".+-"):
            self.fail("invalid number", start)
        literal = match.group()
        if "." in literal or "e" in literal or "E" in literal:
            return float(literal)
        return int(literal)

    def string(self) -> str:
        start = self.pos
        self.pos += 1  # the opening quote
        text = self.text
        parts: list[str] = []
        while True:
            # Copy the plain run up to the next quote, backslash or control character.
            run_end = self.pos
            while run_end < len(text) and text[run_end] not in '"\\' and text[run_end] >= " ":
                run_end += 1
            parts.append(text[self.pos:run_end])
            self.pos = run_end
            if self.at_end():
                self.fail("unterminated string", start)
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(parts)
            if char != "\\":
                self.fail("control character in a string (write it as an escape such as \\n)")
            escape = text[self.pos + 1:self.pos + 2]
            if escape in _ESCAPES:
                parts.append(_ESCAPES[escape])
                self.pos += 2
            elif escape == "u":
                parts.append(self.unicode_escape())
            elif escape:
                self.fail(f"invalid escape \\{escape}")
            else:
                self.fail("unterminated string", start)

    def unicode_escape(self) -> str:
        code = self.hex4(self.pos + 2)
        self.pos += 6
        if 0xD800 <= code < 0xDC00 and self.text.startswith("\\u", self.pos):
            low = self.hex4(self.pos + 2)
            if 0xDC00 <= low < 0xE000:
                self.pos += 6
                return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
        return chr(code)

    def hex4(self, at: int) -> int:
        if not _HEX4.fullmatch(self.text, at, at + 4):
            self.fail("\\u must be followed by four hex digits", at - 2)
        return int(self.text[at:at + 4], 16)
