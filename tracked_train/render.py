"""How the read-side commands show things: a rich table (plain when piped), CSV, and the cells' formats."""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .console import fmt_duration


def print_table(headers: list[str], rows: Sequence[list[str] | str], right: set[str] = frozenset(),
                 caption: str | None = None, fold: set[str] = frozenset()) -> None:
    """A rich table; a str row starts a titled section. Piped output is never wrapped (grep-friendly).

    In a narrow terminal only the ``fold`` columns wrap: a wrapped number or status is hard to read.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False, emoji=False)
    if not console.is_terminal:
        console = Console(highlight=False, emoji=False, width=1000, no_color=True)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, caption=caption,
                  caption_justify="left")
    for h in headers:
        table.add_column(h, justify="right" if h in right else "left", overflow="fold", no_wrap=h not in fold,
                         min_width=8 if h in fold else None)
    for row in rows:
        if isinstance(row, str):
            table.add_section()
            table.add_row(Text(row, style="bold"), *([""] * (len(headers) - 1)))
        else:
            table.add_row(*(Text(c) for c in row))  # Text: no markup parsing of run names
    console.print(table)


def csv_text(rows: Sequence[Sequence[Any]], lineterminator: str = "\n") -> str:
    """Rows (the first one the header) as CSV; None is an empty cell."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator=lineterminator).writerows([["" if c is None else c for c in row] for row in rows])
    return buf.getvalue()


def write_csv(rows: Sequence[Sequence[Any]]) -> None:
    sys.stdout.write(csv_text(rows))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table (MLflow renders one in a run's note)."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(row) + " |" for row in rows)]


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned plain-text table (a log or a console that is not a terminal)."""
    cells = [list(headers), *map(list, rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def fmt_int(value: float | None) -> str:
    return "—" if value is None else f"{int(value):,}"


def fmt_span(seconds: float | None) -> str:
    return "—" if seconds is None else fmt_duration(round(seconds))  # as the progress line shows it: 4:45


def fmt_time(epoch_s: float | None) -> str:
    return "—" if epoch_s is None else datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M")


def iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s).astimezone().isoformat(timespec="seconds")
