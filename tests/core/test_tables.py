"""circuits.core.tables: the markdown tables of the command line."""

import pytest

from circuits.core.tables import markdown_table, print_table


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |")
    return line[2:-2].split(" | ")


HEADERS = ["name", "count", "score"]
ROWS = [["a", 3, 0.5], ["bb", -1, 1.23456], ["ccc", 0, -2.0]]


def test_markdown_table_rows_and_cells_in_order():
    lines = markdown_table(HEADERS, ROWS).splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert _cells(lines[0]) == HEADERS
    assert lines[1] == "|" + "---|" * len(HEADERS)
    for line, row in zip(lines[2:], ROWS, strict=True):
        expected = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        assert _cells(line) == expected


def test_markdown_table_floats_three_decimals_others_str():
    lines = markdown_table(["x", "y", "z"], [[1.0, 7, None]]).splitlines()
    assert _cells(lines[2]) == ["1.000", "7", "None"]


def test_markdown_table_without_rows():
    lines = markdown_table(["only"], []).splitlines()
    assert lines == ["| only |", "|---|"]


@pytest.mark.parametrize("rows", [ROWS, []])
def test_print_table_prints_markdown_table(capsys, rows):
    print_table(HEADERS, rows)
    out, err = capsys.readouterr()
    assert out == markdown_table(HEADERS, rows) + "\n"
    assert err == ""
