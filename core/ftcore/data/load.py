"""Records from paths: ``load_records`` reads files, folders and glob patterns (by ``files.FILE_TYPES``) into a
``RecordList``; ``load_samples`` adds format detection and application; ``sheets_explained`` adds a
workbook's sheets and their columns to an error about the records read from it.

Every record remembers where it came from (``records.where(i)`` -> ``"train.jsonl:12"``),
so every later error can name a file and line. Heavy libraries (``datasets``,
``pyarrow``, ``openpyxl``) are imported only by the reader of that kind of file.
"""

from __future__ import annotations

import difflib
import glob
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import FtcoreError
from ..registry import Registry
from .apply import FormatReport, apply_format, as_formats, detect_format
from .files import BY_NAME, BY_SUFFIX, SAVED_DATASET, SUPPORTED_TEXT, FileType, file_type
from .records import RecordList

_GLOB_CHARS = re.compile(r"[*?\[]")


def _missing(path: Path) -> FtcoreError:
    hint = f"relative paths start from the current directory, {os.getcwd()}"
    parent = path.parent
    if parent.is_dir():
        siblings = [p.name for p in parent.iterdir()]
        close = difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.75)
        if close:
            hint = f"did you mean {', '.join(str(parent / c) for c in close)}? {hint}"
    else:
        hint = f"the folder {parent} does not exist either; {hint}"
    return FtcoreError("data file not found", where=str(path), hint=hint)


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("state.json", "dataset_info.json", "dataset_dict.json"))


def _expand(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[Path, FileType]]:
    """Every data source as ``(path, file type)``; globs and plain folders are expanded."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise FtcoreError("no data files given", hint="set data.path to a file, a list of files or a folder")
    out: list[tuple[Path, FileType]] = []
    for item in items:
        path = Path(os.path.expanduser(str(item)))
        if not path.exists() and _GLOB_CHARS.search(str(item)):
            matches = sorted(glob.glob(os.path.expanduser(str(item))))
            if not matches:
                raise FtcoreError("the pattern matches no files", where=str(item), hint=f"current directory: {os.getcwd()}")
            out += _expand(matches)
            continue
        if not path.exists():
            raise _missing(path)
        if path.is_dir():
            if _is_saved_dataset(path):
                out.append((path, SAVED_DATASET))
                continue
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in BY_SUFFIX)
            if any(not BY_SUFFIX[p.suffix.lower()].prose for p in files):  # data files, and notes (a README.md) beside them
                files = [p for p in files if not BY_SUFFIX[p.suffix.lower()].prose]
            if not files:
                raise FtcoreError(
                    "the folder holds no data files and is not a datasets save_to_disk folder",
                    where=str(path),
                    hint=f"supported: {SUPPORTED_TEXT}",
                )
            out += [(p, BY_SUFFIX[p.suffix.lower()]) for p in files]
            continue
        out.append((path, file_type(path)))
    return out


#: The reading options (``FileType.options``) as recipe keys: ``data.sheet``, ``data.text_split``.
READ_OPTIONS = ("sheet", "text_split")


def read_options(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The reading options a recipe's data section sets (``data.sheet``, ``data.text_split``)."""
    return {key: data_cfg[key] for key in READ_OPTIONS if data_cfg.get(key) is not None}


def load_records(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    max_samples: int | None = None,
    seed: int = 42,
    options: Mapping[str, Any] | None = None,
) -> RecordList:
    """Read every record from ``paths`` (files, folders or glob patterns), concatenated in order.

    ``max_samples`` keeps a random subset of that size, chosen deterministically by
    ``seed`` and kept in file order. ``options`` go to the readers that take them
    (``FileType.options``): ``sheet`` (a workbook's sheet, by name or index from 0) and
    ``text_split`` (``paragraph`` or ``file``, for plain text). Raises ``FtcoreError`` naming
    the file (and line) for a missing file, an unsupported type, malformed JSON, non-UTF-8
    text or a file with no records, and for a sheet chosen when no file is a workbook.
    """
    if max_samples is not None and max_samples < 1:
        raise FtcoreError(f"max_samples must be at least 1, got {max_samples}", hint="leave it unset to use every record")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    sources = _expand(paths)
    if "sheet" in options and not any("sheet" in kind.options for _, kind in sources):
        raise FtcoreError(
            f"a sheet ({options['sheet']!r}) is chosen, but no data file is an .xlsx workbook",
            where=", ".join(str(path) for path, _ in sources),
            hint="drop data.sheet (or --sheet): it picks the sheet of an .xlsx file",
        )
    out = RecordList()
    for path, kind in sources:
        records, origins = kind.read(path, **{k: options[k] for k in kind.options if k in options})
        if not records:
            what = "a header but no rows" if kind.header and path.stat().st_size else "no records"
            raise FtcoreError(f"the data file has {what}", where=str(path), hint="check that you passed the right file")
        index = len(out.files)
        out.files.append((str(path), kind.name))
        out.extend(records)
        out.origins.extend((index, pos, item) for pos, item in origins)
    if max_samples is not None and max_samples < len(out):
        picked = sorted(random.Random(seed).sample(range(len(out)), max_samples))
        out = out.subset(picked)
    return out


def load_samples(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    format_name: str,
    formats: Any,
    *,
    max_samples: int | None = None,
    seed: int = 42,
    on_error: str = "raise",
    setting: str = "data.format",
    skip_hint: str = "data.on_error=skip",
) -> tuple[RecordList, FormatReport]:
    """``load_records`` + ``detect_format`` (when ``format_name`` is ``"auto"``) + ``apply_format``.

    ``formats`` is the formats ``Registry`` (``app.parts.formats``) or a name -> format mapping.
    """
    records = load_records(paths, max_samples=max_samples, seed=seed)
    fmts = formats if isinstance(formats, Registry) else as_formats(formats)
    with sheets_explained(records):
        name = detect_format(records, fmts, setting=setting) if format_name in (None, "auto") else format_name
        fmt = fmts.get(name)  # a Registry raises a "did you mean" error for an unknown name
        if fmt is None:
            raise FtcoreError(f"no format called {name!r}", hint=f"registered: {', '.join(sorted(fmts))}")
        return apply_format(records, fmt, on_error, skip_hint=skip_hint)


def sheets_note(records: Any, setting: str = "data.sheet") -> str | None:
    """For each workbook of several sheets that ``records`` were read from: its sheets and their
    columns, and how to choose another (None when there is no such workbook)."""
    from .tables import describe_sheets, sheet_columns

    notes = []
    for path, kind in getattr(records, "files", []):
        sheets = sheet_columns(Path(path)) if "sheet" in BY_NAME[kind].options else []
        if len(sheets) > 1:
            notes.append(f"{path} has {len(sheets)} sheets: {describe_sheets(sheets)}")
    return "; ".join(notes) + f"; choose another with {setting}=NAME|INDEX (from 0)" if notes else None


@contextmanager
def sheets_explained(records: Any, setting: str = "data.sheet") -> Iterator[None]:
    """An ``FtcoreError`` raised inside (a missing column, a format that does not fit) gains the
    ``sheets_note`` of ``records`` in its hint."""
    try:
        yield
    except FtcoreError as exc:
        note = sheets_note(records, setting)
        if note:
            exc.hint = f"{exc.hint}; {note}" if exc.hint else note
        raise
