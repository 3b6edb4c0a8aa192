"""Tables of runs, written twice: Markdown for reading and CSV (raw numbers) for analysis."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from .atomic_write import write_file
from .runs import TARGETS


@dataclass(frozen=True)
class Column:
    """A table column: ``key`` of the row dicts, its Markdown ``title``, its CSV header
    (``csv``, default the key) and how a value reads: ``kind`` "text", "number" (right
    aligned), "percent" (a fraction shown as 98.76%) or "seconds" (one decimal)."""

    key: str
    title: str
    kind: str = "text"
    csv: str | None = None

    def cell(self, value) -> str:
        """The value as the Markdown table shows it; "-" for none (or NaN)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if self.kind == "percent":
            return f"{value:.2%}"
        if self.kind == "seconds":
            return f"{value:.1f}"
        return raw_text(value)


def raw_text(value) -> str:
    """A value as the CSV holds it: flags as on/off, None as empty, numbers unrounded."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def target_columns(key: str = "seconds_to_{}", title: str = "s to {:.0%} test") -> list[Column]:
    """One "seconds" column per accuracy target (rows fill them from :meth:`Run.time_to`)."""
    return [Column(key.format(round(t * 100)), title.format(t), "seconds") for t in TARGETS]


def markdown_table(columns: list[Column], rows: list[dict]) -> str:
    """A Markdown table, numbers right-aligned; '|' inside a cell is escaped."""
    lines = ["| " + " | ".join(c.title for c in columns) + " |",
             "|" + "|".join("---" if c.kind == "text" else "---:" for c in columns) + "|"]
    for row in rows:
        cells = (c.cell(row.get(c.key)).replace("|", "\\|") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(columns: list[Column], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.csv or c.key for c in columns])
    for row in rows:
        writer.writerow([raw_text(row.get(c.key)) for c in columns])
    return buffer.getvalue()


def write_tables(stem: Path, columns: list[Column], rows: list[dict],
                 heading: str | None = None) -> str:
    """Write ``<stem>.md`` (with ``# heading`` above the table when given) and
    ``<stem>.csv``, each atomically; return the Markdown table."""
    table = markdown_table(columns, rows)
    write_file(stem.with_suffix(".md"), (f"# {heading}\n\n" if heading else "") + table + "\n")
    write_file(stem.with_suffix(".csv"), csv_table(columns, rows))
    return table
