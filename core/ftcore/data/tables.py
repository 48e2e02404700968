"""Readers for table data (.xlsx, .parquet, datasets' save_to_disk folders); each imports its library when called.

Each reader takes a path and returns ``(records, origins)`` with one ``(row, 0)`` origin per record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FtcoreError
from .readers import Read, column_names, header_columns


def _cell(value: Any) -> Any:
    """Excel cells as text: chat data is text, and Excel stores '42' as a number."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _open_workbook(path: Path) -> Any:
    try:
        import openpyxl
    except ImportError:
        raise FtcoreError("reading .xlsx files needs openpyxl", where=str(path), hint="pip install 'ftcore[excel]'") from None
    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile/KeyError/InvalidFileException on damaged files
        raise FtcoreError(f"cannot read the Excel file: {type(exc).__name__}: {exc}", where=str(path), hint="open it in Excel and save it again as .xlsx") from None


def _blank(row: tuple[Any, ...]) -> bool:
    return all(v is None or (isinstance(v, str) and not v.strip()) for v in row)


def _header(sheet: Any) -> list[str]:
    """A sheet's column names: its first row that is not blank (none for an empty sheet)."""
    for row in sheet.iter_rows(values_only=True):
        if not _blank(row):
            return column_names(row)
    return []


def sheet_columns(path: Path) -> list[tuple[str, list[str]]]:
    """Every sheet of the workbook ``path`` with its column names, in the workbook's order."""
    book = _open_workbook(path)
    try:
        return [(sheet.title, _header(sheet)) for sheet in book.worksheets]
    finally:
        book.close()


def describe_sheets(sheets: list[tuple[str, list[str]]]) -> str:
    """``sheet 0 'Notes' (columns: a, b); sheet 1 'QA' (columns: question, answer)`` for ``sheet_columns``' list."""
    return "; ".join(f"sheet {i} {name!r} ({'columns: ' + ', '.join(columns) if columns else 'empty'})" for i, (name, columns) in enumerate(sheets))


def _pick_sheet(book: Any, path: Path, sheet: str | int | None) -> Any:
    """The sheet named ``sheet`` (a name, or an index counted from 0 as a number or digits); the first without one."""
    if sheet is None:
        return book.worksheets[0]
    if isinstance(sheet, str) and sheet in book.sheetnames:
        return book[sheet]
    index = sheet if isinstance(sheet, int) else int(sheet) if isinstance(sheet, str) and sheet.strip().isdigit() else None
    if index is not None and 0 <= index < len(book.worksheets):
        return book.worksheets[index]
    raise FtcoreError(
        f"the workbook has no sheet {sheet!r}",
        where=str(path),
        hint=f"choose one by name or by index from 0 (data.sheet, or --sheet for `ftcore data convert`): {describe_sheets(sheet_columns(path))}",
    )


def read_xlsx(path: Path, sheet: str | int | None = None) -> Read:
    """The rows of one sheet (the first, or ``sheet``: a name or an index from 0) as records, keyed by its header row."""
    book = _open_workbook(path)
    records: list[dict] = []
    origins: list[tuple[int, int]] = []
    try:
        chosen = _pick_sheet(book, path, sheet)
        columns: list[str] | None = None
        for rownum, row in enumerate(chosen.iter_rows(values_only=True), 1):
            if _blank(row):
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
