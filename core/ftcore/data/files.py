"""The table of data file types by suffix: how each is read and written, and what messages list as supported.

Reading (``load.py``), writing (``write_records``) and every "supported: ..." message use
``FILE_TYPES``, so a new file type is one row here (its reader in ``readers.py`` or
``tables.py``, its writer, if any, in ``writers.py``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import FtcoreError
from .readers import Read, read_csv, read_json, read_jsonl, read_text
from .tables import read_parquet, read_saved_dataset, read_xlsx
from .writers import write_csv, write_json, write_jsonl, write_parquet, write_xlsx

#: How a record's origin reads in messages (``FileType.locate``).
LOCATE = {
    "line": "{path}:{pos}",
    "item": "{path}:{pos} (item [{item}])",
    "row": "{path}:row {pos}",
}


@dataclass(frozen=True)
class FileType:
    """One kind of data file.

    ``read(path)`` returns ``(records, origins)`` with one ``(line or row, list index)``
    per record; ``write(path, records)`` writes them (None: ftcore reads this type only);
    ``suffixes[0]`` is the suffix written; ``description`` follows the suffixes in lists
    of supported types; ``locate`` is a key of ``LOCATE``; ``header`` is True for tables
    whose first row names the columns. ``options`` names the reading options ``read``
    takes as keyword arguments (``sheet``, ``text_split``: ``load_records`` passes them
    on); ``prose`` marks documents (plain text) that a folder holding data files keeps
    as its notes (a README.md) rather than reads as data.
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], Read]
    write: Callable[[Path, Sequence[dict[str, Any]]], None] | None = None
    description: str = ""
    locate: str = "row"
    header: bool = False
    options: tuple[str, ...] = ()
    prose: bool = False

    def where(self, path: str, pos: int, item: int) -> str:
        """Where a record came from: ``file:12``, ``file:12 (item [3])`` or ``file:row 12``."""
        if item < 0:  # no list index: e.g. a .json file that holds JSON Lines
            return LOCATE["line"].format(path=path, pos=pos)
        return LOCATE[self.locate].format(path=path, pos=pos, item=item)

    def label(self) -> str:
        """How lists of supported types name it, e.g. ``.json (a list of objects)``."""
        names = "/".join(self.suffixes)
        return f"{names} ({self.description})" if names and self.description else names or self.description


FILE_TYPES: tuple[FileType, ...] = (
    FileType("json", (".json",), read_json, write_json, "a list of objects, or JSON Lines", locate="item"),
    FileType("jsonl", (".jsonl", ".ndjson"), read_jsonl, write_jsonl, locate="line"),
    FileType("csv", (".csv",), partial(read_csv, delimiter=","), partial(write_csv, delimiter=","), locate="line", header=True),
    FileType("tsv", (".tsv",), partial(read_csv, delimiter="\t"), partial(write_csv, delimiter="\t"), locate="line", header=True),
    FileType("parquet", (".parquet",), read_parquet, write_parquet),
    FileType("xlsx", (".xlsx",), read_xlsx, write_xlsx, header=True, options=("sheet",)),
    FileType("text", (".txt", ".md"), read_text, None, "plain text for the pretrain format", locate="line", options=("text_split",), prose=True),
)
#: A folder written by ``datasets``' ``save_to_disk``: known by its metadata files, not a suffix.
SAVED_DATASET = FileType("arrow", (), read_saved_dataset, None, "a folder written by datasets' save_to_disk")

BY_SUFFIX: dict[str, FileType] = {suffix: t for t in FILE_TYPES for suffix in t.suffixes}
BY_NAME: dict[str, FileType] = {t.name: t for t in (*FILE_TYPES, SAVED_DATASET)}
#: Every type ftcore reads, for "supported: ..." hints.
SUPPORTED_TEXT = ", ".join(t.label() for t in FILE_TYPES) + f", or {SAVED_DATASET.label()}"
#: Suffixes ``write_records`` can write.
WRITABLE: tuple[str, ...] = tuple(t.suffixes[0] for t in FILE_TYPES if t.write is not None)

#: What to do with a file type ftcore does not read.
UNSUPPORTED_HINTS = {
    ".xls": "open it in Excel or LibreOffice and save it as .xlsx",
    ".markdown": "rename it to .md (plain text for the pretrain format)",
    ".text": "rename it to .txt (plain text for the pretrain format)",
}


def file_type(path: Path) -> FileType:
    """The type of the data file ``path`` by its suffix; an unsupported one raises ``FtcoreError``."""
    suffix = path.suffix.lower()
    found = BY_SUFFIX.get(suffix)
    if found is None:
        hint = f"supported: {SUPPORTED_TEXT}"
        if suffix in UNSUPPORTED_HINTS:
            hint = f"{UNSUPPORTED_HINTS[suffix]}; {hint}"
        raise FtcoreError(f"unsupported data file type {path.suffix or '(no extension)'!r}", where=str(path), hint=hint)
    return found


def writable(*names: str) -> tuple[str, ...]:
    """The suffixes written for the file types ``names`` (every writable type without names)."""
    return tuple(t.suffixes[0] for t in FILE_TYPES if t.write is not None and (not names or t.name in names))


def check_output(path: Path, force: bool, allowed: Sequence[str] = WRITABLE) -> None:
    """Fail early for an output with an unsupported suffix, or one that exists without ``force``."""
    if path.suffix.lower() not in allowed:
        raise FtcoreError(
            f"cannot tell how to write {path.suffix or 'a file without an extension'!r}",
            where=str(path),
            hint=f"name the output with one of: {', '.join(allowed)}",
        )
    if path.is_dir():
        raise FtcoreError("the output is a folder", where=str(path), hint="give a file name")
    if path.exists() and not force:
        raise FtcoreError(f"{path} already exists", hint="pass --force to overwrite it, or choose another name")


def write_records(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path:
    """Write records atomically (a temporary file in the same folder, then a rename), by suffix:
    .json (a list), .jsonl, .csv, .tsv, .parquet or .xlsx (``WRITABLE``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    kind = BY_SUFFIX.get(suffix)
    if kind is None or kind.write is None or suffix != kind.suffixes[0]:
        raise FtcoreError(f"cannot write {suffix or 'files without an extension'!r}", where=str(path), hint=f"use one of {', '.join(WRITABLE)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        open(tmp, "x").close()  # honours the umask, unlike mkstemp's 0600
        kind.write(tmp, records)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, FtcoreError) and not exc.where:
            exc.where = str(path)
        raise
    return path
