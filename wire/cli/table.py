"""Text tables for ``wire``: a header row and columns as wide as their widest cell."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from wire.textsafe import escaped


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> list[str]:
    """The header and each row as lines, cells left-aligned, two spaces apart;
    a cell's control characters escaped (so a cell is one line, as wide as it looks)."""
    cells = [list(headers), *([escaped(str(cell)) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [(indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths))).rstrip() for row in cells]
