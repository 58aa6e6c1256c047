"""The stages' CSV files: whole tables, replaced atomically, and append-only logs.

A row is a sequence of cells in header order or a mapping keyed by column name (a missing
column is left empty, other keys are ignored). Cells are written as `str` gives them: a
caller that wants a fixed number format passes the formatted string.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tinypolicy.ondevice.artefact import atomic_write

Row = Sequence[Any] | Mapping[str, Any]


def _cells(header: Sequence[str], row: Row) -> Sequence[Any]:
    return [row.get(name, "") for name in header] if isinstance(row, Mapping) else row


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Row]) -> None:
    """Atomically write a table: `header`, then `rows`."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(_cells(header, row) for row in rows)

    atomic_write(path, write)


class CsvLog:
    """An append-only log with a `step` column (a run's metrics.csv).

    Each `write` appends one row and closes the file, so a killed run keeps every row it
    logged. A run resumed from `resume_step` keeps the rows up to that step and drops those
    past it (logged after the checkpoint it resumes from); `resume_step` 0 starts afresh."""

    def __init__(self, path: str | Path, header: Sequence[str], resume_step: int = 0):
        self.path, self.header = Path(path), list(header)
        rows = []
        if resume_step and self.path.exists():
            with self.path.open(newline="") as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        write_csv(self.path, self.header, rows)

    def write(self, row: Row) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(_cells(self.header, row))
