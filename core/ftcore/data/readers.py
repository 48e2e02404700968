"""Readers for text data files (.json, .jsonl, .csv, .tsv, .txt/.md): records with the line each starts on, and errors that show the bad line and byte.

Each reader takes a path and returns ``(records, origins)``, one ``(line, list index)``
origin per record (the list index is the item's position in a .json array, else 0; -1
for a .json file that holds JSON Lines, whose records have no list index).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FtcoreError

#: What every reader returns: records, and per record ``(line or row, list index)``.
Read = tuple[list[dict], list[tuple[int, int]]]

_WS = re.compile(r"[ \t\n\r]*")
_BOM = b"\xef\xbb\xbf"


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


def read_jsonl(path: Path, item: int = 0) -> Read:
    """One object per line; ``item`` is the list index every origin gets (-1: none)."""
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
                hint = "each line of a JSON Lines file must be one complete JSON object"
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
            origins.append((lineno, item))
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


def read_json(path: Path) -> Read:
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
            if exc.msg.startswith("Extra data") and text[pos] == "{":
                # One object, then more: JSON Lines in a .json file (as many published datasets
                # are); read line by line, so errors still name their line.
                return read_jsonl(path, item=-1)
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


def read_csv(path: Path, delimiter: str) -> Read:
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
            columns = header_columns(path, header, "line 1")
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


def column_names(header: Sequence[Any]) -> list[str]:
    """A header row's cells as column names (``columnN`` for a blank one)."""
    return [str(h).strip() if h is not None and str(h).strip() else f"column{j + 1}" for j, h in enumerate(header)]


def header_columns(path: Path, header: Sequence[Any], where: str) -> list[str]:
    columns = column_names(header)
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise FtcoreError(f"duplicate column names in the header: {', '.join(dupes)}", where=f"{path}:{where}", hint="give every column a unique name")
    return columns


#: What separates documents in plain text: a line with nothing but white space.
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
TEXT_SPLITS = ("paragraph", "file")


def read_text(path: Path, text_split: str | None = "paragraph") -> Read:
    """Plain text (.txt, .md) as pretrain records ``{"text": ...}``: one per paragraph (documents
    separated by blank lines, each with the line it starts on) or, with ``text_split="file"``,
    one for the whole file. White space around a document is dropped; empty ones are skipped."""
    text_split = text_split or "paragraph"
    if text_split not in TEXT_SPLITS:
        raise FtcoreError(f"text_split must be one of {', '.join(TEXT_SPLITS)}, got {text_split!r}", where=str(path))
    raw = path.read_bytes()
    if raw.startswith(_BOM):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise _locate_bad_utf8(path) from None
    if text_split == "file":
        return ([{"text": text.strip()}], [(1 + text[: len(text) - len(text.lstrip())].count("\n"), 0)]) if text.strip() else ([], [])
    records: list[dict] = []
    origins: list[tuple[int, int]] = []
    start, line = 0, 1
    for gap in [*_BLANK_LINE.finditer(text), None]:
        end = gap.start() if gap is not None else len(text)
        document = text[start:end]
        if document.strip():
            lead = document[: len(document) - len(document.lstrip())]
            records.append({"text": document.strip()})
            origins.append((line + lead.count("\n"), 0))
        if gap is not None:
            line += text.count("\n", start, gap.end())
            start = gap.end()
    return records, origins
