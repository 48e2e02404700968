"""What ``ftcore eval`` shows and writes: progress while it works, rich tables of the results (one
column per model, and the change when base and adapter are compared), ``results.json`` with the
same numbers and ``predictions.jsonl`` with one row per item and model.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence


class Progress:
    """Progress of ``total`` items: a rich bar on a terminal (stderr), else a log line on stderr
    about every tenth of the way and at least every 30 seconds; nothing for ``total`` up to ``quiet_up_to``."""

    def __init__(self, label: str, total: int, quiet_up_to: int = 0) -> None:
        self.label, self.total, self.done = label, total, 0
        self.shown = total > quiet_up_to
        self.bar: Any = None
        self.next_line, self.last = 0, time.monotonic()

    def __enter__(self) -> "Progress":
        if self.shown and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            from ..ui import console

            self.bar = Bar(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                           console=console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total)
        elif self.shown:
            self._line()
        return self

    def _line(self) -> None:
        print(f"{self.label}: {self.done}/{self.total}", file=sys.stderr, flush=True)
        self.next_line = self.done + max(1, self.total // 10)
        self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif self.shown and (self.done >= self.next_line or self.done >= self.total or time.monotonic() - self.last > 30):
            self._line()

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(values: Sequence[float | None], digits: int = 2) -> str:
    if len(values) != 2 or values[0] is None or values[1] is None:
        return "-"
    d = values[1] - values[0]
    color = "green" if d > 0 else "red" if d < 0 else "dim"
    return f"[{color}]{d:+.{digits}f}[/{color}]"


def table(title: str, key_columns: Sequence[str], labels: Sequence[str], rows: Iterable[tuple[Sequence[str], Sequence[float | None]]], digits: int = 2) -> Any:
    """A rich table: the key columns, one value column per model label, and the change from the
    first to the second when there are two (base vs adapter)."""
    from rich.markup import escape
    from rich.table import Table

    out = Table(title=title, title_justify="left", show_edge=False)
    for name in key_columns:
        out.add_column(name)
    for label in labels:
        out.add_column(label, justify="right")
    if len(labels) == 2:
        out.add_column("change", justify="right")
    for keys, values in rows:
        cells = [escape(str(k)) for k in keys] + [_cell(v, digits) for v in values]
        out.add_row(*cells, *([_delta(values, digits)] if len(labels) == 2 else []))
    return out


def _jsonable(value: Any) -> Any:
    """numpy scalars and other odd values in harness samples as JSON."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


class Output:
    """The output folder: ``predictions.jsonl`` (rows added as each evaluation finishes) and ``results.json``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.predictions = self.folder / "predictions.jsonl"
        self.results = self.folder / "results.json"
        self.predictions.write_text("", encoding="utf-8")
        self.results.unlink(missing_ok=True)  # a previous run's results never pass for this one's

    def add_predictions(self, rows: Iterable[dict[str, Any]]) -> None:
        with self.predictions.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")

    def write_results(self, results: dict[str, Any]) -> None:
        """``results.json``, replaced atomically (a reader never sees half a file)."""
        tmp = self.results.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=_jsonable) + "\n", encoding="utf-8")
        os.replace(tmp, self.results)
