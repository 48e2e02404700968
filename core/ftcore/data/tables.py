"""Readers for table data (.xlsx, .parquet, datasets' save_to_disk folders); each imports its library when called.

Each reader takes a path and returns ``(records, origins)`` with one ``(row, 0)`` origin per record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FtcoreError
from .readers import Read, header_columns


def _cell(value: Any) -> Any:
    """Excel cells as text: chat data is text, and Excel stores '42' as a number."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def read_xlsx(path: Path) -> Read:
    try:
        import openpyxl
    except ImportError:
        raise FtcoreError("reading .xlsx files needs openpyxl", where=str(path), hint="pip install 'ftcore[excel]'") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile/KeyError/InvalidFileException on damaged files
        raise FtcoreError(f"cannot read the Excel file: {type(exc).__name__}: {exc}", where=str(path), hint="open it in Excel and save it again as .xlsx") from None
    records: list[dict] = []
    origins: list[tuple[int, int]] = []
    try:
        sheet = book.worksheets[0]
        columns: list[str] | None = None
        for rownum, row in enumerate(sheet.iter_rows(values_only=True), 1):
            if all(v is None or (isinstance(v, str) and not v.strip()) for v in row):
                continue
            if columns is None:
                columns = header_columns(path, row, f"row {rownum}")
                continue
            records.append({c: _cell(row[j]) if j < len(row) else None for j, c in enumerate(columns)})
            origins.append((rownum, 0))
    finally:
        book.close()
    return records, origins


def read_parquet(path: Path) -> Read:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow.ArrowInvalid and friends
        raise FtcoreError(f"cannot read the Parquet file: {exc}", where=str(path)) from None
    return rows, [(i, 0) for i in range(1, len(rows) + 1)]


def read_saved_dataset(path: Path) -> Read:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as exc:
        raise FtcoreError(f"cannot load the saved dataset: {exc}", where=str(path)) from None
    if isinstance(ds, DatasetDict):
        splits = list(ds)
        raise FtcoreError(
            f"the folder holds a DatasetDict with splits {', '.join(splits)}, not one dataset",
            where=str(path),
            hint=f"point data.path at one split, e.g. {path / splits[0]}" if splits else None,
        )
    rows = ds.to_list()
    return rows, [(i, 0) for i in range(1, len(rows) + 1)]
