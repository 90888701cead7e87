"""The one table format of the command line and the text summaries: markdown."""

from __future__ import annotations

from typing import Any


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats are written with 3 decimals (format them yourself for
    another precision), other cells with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Print `markdown_table` to stdout."""
    print(markdown_table(headers, rows))
