"""Loading raw dataset records, detecting their format, and mapping them to samples.

Owns the first two steps of the data pipeline:

- ``load_records(paths)`` reads ``.json`` (a list), ``.jsonl``, ``.csv``/``.tsv``,
  ``.parquet``, ``.xlsx`` and ``datasets`` ``save_to_disk`` folders into a
  ``RecordList``: plain dicts that each remember where they came from
  (``records.where(i)`` -> ``"train.jsonl:12"``), so every later error can name a
  file and line.
- ``detect_format(records, formats)`` picks the one registered format that fits.
- ``apply_format(records, fmt, on_error=...)`` maps records to samples
  (``{"messages": [...]}`` or ``{"text": ...}``) and reports what it dropped/skipped.

Heavy libraries (``datasets``, ``pyarrow``, ``openpyxl``) are imported only inside the
function that reads that kind of file.
"""

from __future__ import annotations

import csv
import difflib
import glob
import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FtcoreError
from .formats import DatasetFormat, RecordError

#: File suffix -> reader kind.
SUFFIXES: dict[str, str] = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".xlsx": "xlsx",
}
SUPPORTED_TEXT = ".json (a list of objects), .jsonl, .csv, .tsv, .parquet, .xlsx, or a folder written by datasets' save_to_disk"
ON_ERROR = ("raise", "skip")
#: How many problem locations a report or error message shows.
SHOWN = 5

_WS = re.compile(r"[ \t\n\r]*")
_BOM = b"\xef\xbb\xbf"
_GLOB_CHARS = re.compile(r"[*?\[]")


# -- records that know where they came from ---------------------------------------------


class RecordList(list):
    """A list of record dicts; ``where(i)`` says which file and line record ``i`` came from.

    Slicing returns a plain list; use ``subset(indices)`` to keep the locations.
    """

    def __init__(
        self,
        records: Iterable[dict[str, Any]] = (),
        origins: Iterable[tuple[int, int, int]] = (),
        files: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(records)
        #: ``(path, kind)`` for every file read.
        self.files: list[tuple[str, str]] = list(files)
        #: per record: ``(file index, line or row, list index for .json files)``.
        self.origins: list[tuple[int, int, int]] = list(origins)

    def where(self, i: int) -> str:
        """``file:line`` (text files), ``file:line (item [k])`` (.json) or ``file:row N`` (tables)."""
        if i >= len(self.origins):
            return f"record {i + 1}"
        f, pos, item = self.origins[i]
        path, kind = self.files[f]
        if kind == "json":
            return f"{path}:{pos} (item [{item}])"
        if kind in ("jsonl", "csv", "tsv"):
            return f"{path}:{pos}"
        return f"{path}:row {pos}"

    def subset(self, indices: Iterable[int]) -> "RecordList":
        """The records at ``indices`` (in that order), keeping their locations."""
        indices = list(indices)
        origins = [self.origins[i] for i in indices] if self.origins else []
        return RecordList((self[i] for i in indices), origins, self.files)


def where_of(records: Sequence[Any], i: int) -> str:
    """Where record ``i`` came from, for any sequence (plain lists say ``record N``)."""
    if isinstance(records, RecordList):
        return records.where(i)
    return f"record {i + 1}"


# -- path handling ----------------------------------------------------------------------


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


def _expand(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[Path, str]]:
    """Every data source as ``(path, kind)``; globs and plain folders are expanded."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise FtcoreError("no data files given", hint="set data.path to a file, a list of files or a folder")
    out: list[tuple[Path, str]] = []
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
                out.append((path, "arrow"))
                continue
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not files:
                raise FtcoreError(
                    "the folder holds no data files and is not a datasets save_to_disk folder",
                    where=str(path),
                    hint=f"supported: {SUPPORTED_TEXT}",
                )
            out += [(p, SUFFIXES[p.suffix.lower()]) for p in files]
            continue
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            hint = f"supported: {SUPPORTED_TEXT}"
            if path.suffix.lower() == ".xls":
                hint = f"open it in Excel or LibreOffice and save it as .xlsx; {hint}"
            elif path.suffix.lower() in (".txt", ".md"):
                hint = f'for plain pre-training text write one {{"text": ...}} object per line to a .jsonl file; {hint}'
            raise FtcoreError(f"unsupported data file type {path.suffix or '(no extension)'!r}", where=str(path), hint=hint)
        out.append((path, kind))
    return out


# -- text decoding errors ---------------------------------------------------------------


def _encoding_error(path: Path, lineno: int, offset: int, raw_line: bytes, start: int) -> FtcoreError:
    guess, encoding = "", "GB18030"
    if raw_line.startswith((b"\xff\xfe", b"\xfe\xff")):
        guess, encoding = "; it looks like UTF-16", "UTF-16"
    else:
        for enc, label in (("gbk", "GBK/GB18030 (Chinese Windows)"), ("cp1252", "Windows-1252/Latin-1")):
            try:
                raw_line.decode(enc)
            except UnicodeDecodeError:
                continue
            guess, encoding = f"; it looks like {label}", enc.upper()
            break
    bad = raw_line[start : start + 1].hex() or "??"
    return FtcoreError(
        f"the file is not valid UTF-8: byte 0x{bad} at line {lineno}, byte offset {offset + start} cannot be decoded{guess}",
        where=f"{path}:{lineno}",
        hint=f"ftcore reads UTF-8 text; convert the file first, e.g. `iconv -f {encoding} -t UTF-8 {path} > {path.stem}.utf8{path.suffix}` "
        "(or open it in an editor and save it as UTF-8)",
    )


def _locate_bad_utf8(path: Path) -> FtcoreError:
    """Scan a file that failed to decode and name the first undecodable line and byte."""
    offset = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return _encoding_error(path, lineno, offset, raw, exc.start)
            offset += len(raw)
    return FtcoreError("the file is not valid UTF-8", where=str(path), hint="re-save it as UTF-8")


def _snippet(line: str, col: int, width: int = 60) -> str:
    """The line around column ``col`` (1-based) with a caret under it."""
    line = line.rstrip("\r\n")
    start = max(0, col - 1 - width // 2)
    end = min(len(line), start + width)
    text = ("..." if start else "") + line[start:end] + ("..." if end < len(line) else "")
    caret = (3 if start else 0) + (col - 1 - start)
    return f"    {text}\n    {' ' * max(caret, 0)}^"


# -- readers ---------------------------------------------------------------------------
# Each reader returns (records, origins) with origins as (line or row, list index).


def _read_jsonl(path: Path) -> tuple[list[dict], list[tuple[int, int]]]:
    records: list[dict] = []
    origins: list[tuple[int, int]] = []
    offset = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            data = raw[3:] if lineno == 1 and raw.startswith(_BOM) else raw
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _encoding_error(path, lineno, offset + len(raw) - len(data), data, exc.start) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                hint = "each line of a .jsonl file must be one complete JSON object"
                if lineno == 1 and line.lstrip().startswith("["):
                    hint = "the file looks like a JSON array: rename it to .json, or write one object per line"
                raise FtcoreError(
                    f"malformed JSON on line {lineno}, column {exc.colno}: {exc.msg}\n{_snippet(line, exc.colno)}",
                    where=f"{path}:{lineno}",
                    hint=hint,
                ) from None
            if not isinstance(obj, dict):
                raise FtcoreError(
                    f"line {lineno} holds a JSON {_json_type(obj)}, but every line must be an object (a record)",
                    where=f"{path}:{lineno}",
                    hint='write one {"field": value, ...} object per line',
                )
            records.append(obj)
            origins.append((lineno, 0))
    return records, origins


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _json_error(path: Path, text: str, exc: json.JSONDecodeError) -> FtcoreError:
    line = text.splitlines()[exc.lineno - 1] if text.splitlines()[exc.lineno - 1 : exc.lineno] else ""
    hint = "fix the JSON syntax at that place"
    if exc.msg.startswith("Extra data") and text.lstrip().startswith("{"):
        hint = "the file looks like JSON Lines (one object per line): rename it to .jsonl"
    return FtcoreError(
        f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}\n{_snippet(line, exc.colno)}",
        where=f"{path}:{exc.lineno}",
        hint=hint,
    )


def _not_a_list(path: Path, data: Any) -> FtcoreError:
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        keys = ", ".join(list(data)[:8])
        first = next(iter(data.values()))
        if first and all(isinstance(x, dict) for x in first):
            k = next(iter(data))
            hint = (
                f"it looks like several splits; extract one as a list, e.g. `jq '.{k}' {path} > {k}.json`, "
                "or list the split files in data.path"
            )
        else:
            hint = "it looks like column-oriented data; write one object per record (a JSON list of objects, or JSONL)"
        return FtcoreError(f"the top level is an object of lists (keys: {keys}), not a list of records", where=str(path), hint=hint)
    if isinstance(data, dict):
        return FtcoreError(
            "the top level is a single object, not a list of records",
            where=str(path),
            hint="wrap the records in a list: [ {...}, {...} ], or write one object per line to a .jsonl file",
        )
    return FtcoreError(f"the top level is a JSON {_json_type(data)}, not a list of records", where=str(path), hint="a .json data file must hold a list of objects")


def _read_json(path: Path) -> tuple[list[dict], list[tuple[int, int]]]:
    raw = path.read_bytes()
    if raw.startswith(_BOM):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _locate_bad_utf8(path) from None
    if not text.strip():
        return [], []
    pos = _WS.match(text, 0).end()
    if text[pos] != "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _json_error(path, text, exc) from None
        raise _not_a_list(path, data)
    # Decode the array element by element to learn the line each record starts on.
    decoder = json.JSONDecoder()
    records: list[dict] = []
    origins: list[tuple[int, int]] = []
    line, last = 1, 0
    pos = _WS.match(text, pos + 1).end()
    try:
        if text.startswith("]", pos):
            pos += 1
        else:
            while True:
                line += text.count("\n", last, pos)
                last = pos
                obj, end = decoder.raw_decode(text, pos)
                if not isinstance(obj, dict):
                    raise FtcoreError(
                        f"item [{len(records)}] is a JSON {_json_type(obj)}, but every item must be an object (a record)",
                        where=f"{path}:{line}",
                        hint='a .json data file must hold a list of objects: [{"field": value, ...}, ...]',
                    )
                origins.append((line, len(records)))
                records.append(obj)
                pos = _WS.match(text, end).end()
                if text.startswith(",", pos):
                    pos = _WS.match(text, pos + 1).end()
                elif text.startswith("]", pos):
                    pos += 1
                    break
                else:
                    raise json.JSONDecodeError("Expecting ',' delimiter or ']'", text, pos)
        pos = _WS.match(text, pos).end()
        if pos < len(text):
            raise json.JSONDecodeError("Extra data after the list", text, pos)
    except json.JSONDecodeError as exc:
        raise _json_error(path, text, exc) from None
    return records, origins


def _read_csv(path: Path, delimiter: str) -> tuple[list[dict], list[tuple[int, int]]]:
    records: list[dict] = []
    origins: list[tuple[int, int]] = []
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # long answers exceed the default 128 KiB per field
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                return [], []
            columns = _columns(path, header, "line 1")
            prev = reader.line_num
            for row in reader:
                start, prev = prev + 1, reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) > len(columns):
                    raise FtcoreError(
                        f"the row has {len(row)} cells but the header has {len(columns)} columns",
                        where=f"{path}:{start}",
                        hint=f"quote cells that contain the delimiter {delimiter!r} or line breaks",
                    )
                records.append({c: (row[j] if j < len(row) and row[j] != "" else None) for j, c in enumerate(columns)})
                origins.append((start, 0))
    except UnicodeDecodeError:
        raise _locate_bad_utf8(path) from None
    except csv.Error as exc:
        raise FtcoreError(f"malformed CSV: {exc}", where=f"{path}:{reader.line_num}") from None
    finally:
        csv.field_size_limit(old_limit)
    return records, origins


def _columns(path: Path, header: Sequence[Any], where: str) -> list[str]:
    columns = [str(h).strip() if h is not None and str(h).strip() else f"column{j + 1}" for j, h in enumerate(header)]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise FtcoreError(f"duplicate column names in the header: {', '.join(dupes)}", where=f"{path}:{where}", hint="give every column a unique name")
    return columns


def _cell(value: Any) -> Any:
    """Excel cells as text: chat data is text, and Excel stores '42' as a number."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _read_xlsx(path: Path) -> tuple[list[dict], list[tuple[int, int]]]:
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
                columns = _columns(path, row, f"row {rownum}")
                continue
            records.append({c: _cell(row[j]) if j < len(row) else None for j, c in enumerate(columns)})
            origins.append((rownum, 0))
    finally:
        book.close()
    return records, origins


def _read_parquet(path: Path) -> tuple[list[dict], list[tuple[int, int]]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow.ArrowInvalid and friends
        raise FtcoreError(f"cannot read the Parquet file: {exc}", where=str(path)) from None
    return rows, [(i, 0) for i in range(1, len(rows) + 1)]


def _read_arrow(path: Path) -> tuple[list[dict], list[tuple[int, int]]]:
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


def _read(path: Path, kind: str) -> tuple[list[dict], list[tuple[int, int]]]:
    if kind == "jsonl":
        return _read_jsonl(path)
    if kind == "json":
        return _read_json(path)
    if kind in ("csv", "tsv"):
        return _read_csv(path, "," if kind == "csv" else "\t")
    if kind == "xlsx":
        return _read_xlsx(path)
    if kind == "parquet":
        return _read_parquet(path)
    return _read_arrow(path)


def load_records(
    paths: str | os.PathLike | Sequence[str | os.PathLike], *, max_samples: int | None = None, seed: int = 42
) -> RecordList:
    """Read every record from ``paths`` (files, folders or glob patterns), concatenated in order.

    ``max_samples`` keeps a random subset of that size, chosen deterministically by
    ``seed`` and kept in file order. Raises ``FtcoreError`` naming the file (and line)
    for a missing file, an unsupported type, malformed JSON, non-UTF-8 text or a file
    with no records.
    """
    if max_samples is not None and max_samples < 1:
        raise FtcoreError(f"max_samples must be at least 1, got {max_samples}", hint="leave it unset to use every record")
    out = RecordList()
    for path, kind in _expand(paths):
        records, origins = _read(path, kind)
        if not records:
            what = "a header but no rows" if kind in ("csv", "tsv", "xlsx") and path.stat().st_size else "no records"
            raise FtcoreError(f"the data file has {what}", where=str(path), hint="check that you passed the right file")
        index = len(out.files)
        out.files.append((str(path), kind))
        out.extend(records)
        out.origins.extend((index, pos, item) for pos, item in origins)
    if max_samples is not None and max_samples < len(out):
        picked = sorted(random.Random(seed).sample(range(len(out)), max_samples))
        out = out.subset(picked)
    return out


# -- formats ---------------------------------------------------------------------------


def _as_formats(formats: Any) -> dict[str, DatasetFormat]:
    """Accept a ``Registry`` of formats, a name -> format mapping, or formats/parts."""
    if hasattr(formats, "names") and hasattr(formats, "get"):
        return {name: formats.get(name) for name in formats.names()}
    if isinstance(formats, Mapping):
        return dict(formats)
    out = {}
    for item in formats:
        fmt = item.load() if hasattr(item, "load") else item
        out[fmt.name] = fmt
    return out


def _detects(fmt: DatasetFormat, record: Any) -> bool:
    try:
        return bool(fmt.detect(record)) if isinstance(record, dict) else False
    except Exception:  # a detect function must not crash detection of the others
        return False


def detect_format(records: Sequence[dict[str, Any]], formats: Any, *, sample: int = 5, setting: str = "data.format") -> str:
    """The name of the one format whose ``detect`` matches most of the first ``sample`` records.

    ``formats`` is a formats ``Registry``, a ``{name: DatasetFormat}`` mapping or a list
    of formats. No match or several matches raise ``FtcoreError`` listing the candidates
    and telling the user to set ``setting`` (the recipe key or CLI option).
    """
    fmts = _as_formats(formats)
    head = list(records[:sample])
    if not head:
        raise FtcoreError("cannot detect the format of an empty dataset")
    counts = {name: sum(_detects(f, r) for r in head) for name, f in fmts.items() if f.detect is not None}
    best = max(counts.values(), default=0)
    full = sorted(name for name, n in counts.items() if n == best and best)
    if len(full) == 1:
        return full[0]  # records that do not fit are reported, with their field, by apply_format
    where = where_of(records, 0)
    undetectable = sorted(name for name, f in fmts.items() if f.detect is None)
    if full:
        raise FtcoreError(
            f"cannot tell the dataset format: the first {len(head)} record(s) fit several formats equally well: {', '.join(full)}",
            where=where,
            hint=f"choose one with {setting}, e.g. {setting}={full[0]}",
        )
    first = head[0]
    keys = ", ".join(map(str, first)) if isinstance(first, dict) else type(first).__name__
    msg = f"cannot tell the dataset format: no registered format matches the first {len(head)} record(s) (first record's fields: {keys})"
    hint = f"set {setting} to one of: {', '.join(sorted(fmts))} (see `ftcore list formats`)"
    if undetectable:
        hint += f"; {', '.join(undetectable)} {'is' if len(undetectable) == 1 else 'are'} never auto-detected"
    hint += ", or rename fields to fit a format (`ftcore data convert --map old=new`)"
    raise FtcoreError(msg, where=where, hint=hint)


@dataclass
class FormatReport:
    """What ``apply_format`` did: records in, samples out, dropped on purpose, skipped as malformed."""

    format: str
    total: int = 0
    kept: int = 0
    #: records the format dropped on purpose (``convert`` returned None, e.g. ``<nooutput>``)
    dropped: int = 0
    #: malformed records skipped under ``on_error="skip"``
    skipped: int = 0
    dropped_at: list[str] = field(default_factory=list)
    #: ``"where: message"`` for the first few skipped records
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.kept} of {self.total} records kept (format {self.format})"
        if self.dropped:
            text += f"; {self.dropped} dropped by the format (e.g. <nooutput>) at {', '.join(self.dropped_at)}" + (
                ", ..." if self.dropped > len(self.dropped_at) else ""
            )
        if self.skipped:
            text += f"; {self.skipped} malformed record(s) skipped:\n" + "\n".join(f"  - {p}" for p in self.problems)
            if self.skipped > len(self.problems):
                text += f"\n  - ... and {self.skipped - len(self.problems)} more"
        return text


def _check_output(out: Any, fmt: DatasetFormat) -> None:
    ok = isinstance(out, dict) and (isinstance(out.get("messages"), list) or isinstance(out.get("text"), str))
    if not ok:
        raise FtcoreError(
            f"format {fmt.name!r} returned {type(out).__name__} for a record; a format must return "
            "a dict with 'messages' (a list) or 'text' (a str), or None to drop the record",
            hint="this is a bug in the plugin that registered the format (see `ftcore list formats`)",
        )


def apply_format(
    records: Sequence[dict[str, Any]],
    fmt: DatasetFormat,
    on_error: str = "raise",
    *,
    skip_hint: str = "data.on_error=skip",
) -> tuple[RecordList, FormatReport]:
    """Map every record through ``fmt.convert``; returns the samples and a ``FormatReport``.

    A record that does not fit raises ``RecordError`` (``.field`` names the field,
    ``.where`` the file:line) with ``on_error="raise"``; with ``"skip"`` it is skipped
    and counted. Records the format drops on purpose (``None``) are counted as dropped.
    No samples left at the end is an error.
    """
    if on_error not in ON_ERROR:
        raise FtcoreError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    report = FormatReport(fmt.name, total=len(records))
    samples: list[dict[str, Any]] = []
    kept: list[int] = []
    for i, record in enumerate(records):
        try:
            out = fmt.convert(record)
        except Exception as exc:  # RecordError, or a format tripping over an odd record
            if isinstance(exc, RecordError):
                message, bad_field = exc.message, exc.field
            else:
                message, bad_field = f"{type(exc).__name__}: {exc}", None
            if on_error == "raise":
                err = RecordError(f"record does not fit the {fmt.name!r} format: {message}", bad_field)
                err.where = where_of(records, i)
                err.hint = f"fix the record, choose the right format, or skip malformed records with {skip_hint}"
                raise err from exc
            report.skipped += 1
            if len(report.problems) < SHOWN:
                report.problems.append(f"{where_of(records, i)}: {message}")
            continue
        if out is None:
            report.dropped += 1
            if len(report.dropped_at) < SHOWN:
                report.dropped_at.append(where_of(records, i))
            continue
        _check_output(out, fmt)
        samples.append(out)
        kept.append(i)
    report.kept = len(samples)
    if not samples:
        detail = f"{report.dropped} dropped by the format, {report.skipped} malformed"
        problems = "".join(f"\n  - {p}" for p in report.problems)
        raise FtcoreError(
            f"no samples left after applying format {fmt.name!r} to {report.total} record(s): {detail}{problems}",
            hint="check that the format matches the data (`ftcore list formats`)",
        )
    origins = [records.origins[i] for i in kept] if isinstance(records, RecordList) and records.origins else []
    files = records.files if isinstance(records, RecordList) else []
    return RecordList(samples, origins, files), report


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
    fmts = formats if hasattr(formats, "names") else _as_formats(formats)
    name = detect_format(records, fmts, setting=setting) if format_name in (None, "auto") else format_name
    fmt = fmts.get(name)  # a Registry raises a "did you mean" error for an unknown name
    if fmt is None:
        raise FtcoreError(f"no format called {name!r}", hint=f"registered: {', '.join(sorted(fmts))}")
    return apply_format(records, fmt, on_error, skip_hint=skip_hint)
