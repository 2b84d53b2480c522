"""What the commands print, readable in a terminal and in a log file alike.

In a terminal: rich tables (when they fit the window) and progress bars. Without one (a pipe, a file, a
CI log): plain lines, never wrapped and never truncated: a table becomes aligned columns (its headers in
full), a listing too wide for a table becomes one block per row. Machine-readable output (``--json``) is
written by the commands themselves: stdout then holds the JSON alone, messages go to stderr.
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import IO, Sequence

PLAIN_WIDTH = 120  # the widest line written without a terminal (lines of prose are wrapped to it)


def is_terminal(stream: IO | None = None) -> bool:
    """Whether ``stream`` (stdout by default) is an interactive terminal (``TERM=dumb`` is not)."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return bool(tty) and os.environ.get("TERM", "") != "dumb"


def plain_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns of plain text: the title, the headers in full, one line per row. Numbers (cells
    that start with a digit or a sign) are right-aligned, text left-aligned."""
    cells = [list(map(str, columns)), *[list(map(str, row)) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def numeric(text: str) -> bool:
        return bool(text) and (text[0].isdigit() or (text[0] in "+-" and text[1:2].isdigit()))

    def line(row: list[str]) -> str:
        parts = [cell.rjust(w) if numeric(cell) else cell.ljust(w) for cell, w in zip(row, widths)]
        return "  ".join(parts).rstrip()

    out = [wrapped(title, "  ")] if title else []
    out += [line(cells[0]), *(line(row) for row in cells[1:])]
    return "\n".join(out)


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]],
                file: IO | None = None) -> None:
    """A table on ``file`` (stdout): rich's box table in a terminal wide enough for every cell in full;
    :func:`plain_table` otherwise (no truncated header, no wrapped cell)."""
    file = sys.stdout if file is None else file
    if is_terminal(file):
        from rich.console import Console
        from rich.table import Table

        console = Console(file=file)
        widths = [max(len(str(c)) for c in column) for column in zip(columns, *rows)]
        if sum(widths) + 3 * len(widths) + 1 <= console.width:  # every cell in full, borders and padding
            table = Table(title=title)
            for name in columns:
                table.add_column(str(name), no_wrap=True)
            for row in rows:
                table.add_row(*map(str, row))
            console.print(table)
            return
    print(plain_table(title, columns, rows), file=file, flush=True)


def wrapped(text: str, indent: str = "", width: int = PLAIN_WIDTH) -> str:
    """``text`` wrapped to ``width`` columns, every line after the first indented by ``indent``."""
    return textwrap.fill(text, width=width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)
