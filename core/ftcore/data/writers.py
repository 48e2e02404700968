"""Writers for each writable file type: ``write(path, records)`` writes every record to ``path``.

``write_records`` (in ``files.py``) calls them on a temporary file and renames it, so a
writer may fail half way. Tables (.csv, .tsv, .xlsx) get one column per key found in
any record, nested values written as JSON text; libraries are imported when called.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FtcoreError


def _columns(records: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def write_json(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(list(records), fh, ensure_ascii=False, indent=2, default=str)
        fh.write("\n")


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def write_csv(path: Path, records: Sequence[dict[str, Any]], delimiter: str = ",") -> None:
    import csv

    columns = _columns(records)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(columns)
        for record in records:
            writer.writerow(["" if record.get(c) is None else _cell(record.get(c)) for c in columns])


def write_xlsx(path: Path, records: Sequence[dict[str, Any]]) -> None:
    import openpyxl

    columns = _columns(records)
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet()
    sheet.append(columns)
    for record in records:
        sheet.append([_cell(record.get(c)) for c in columns])
    book.save(path)


def write_parquet(path: Path, records: Sequence[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(list(records))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise FtcoreError(f"the records cannot be stored as Parquet: {exc}", hint="write .jsonl instead") from None
    pq.write_table(table, path)
