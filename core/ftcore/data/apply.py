"""Mapping records to samples with a dataset format: ``detect_format`` picks the format, ``apply_format`` applies it and reports what it dropped or skipped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import FtcoreError
from ..registry import Part, Registry
from .formats import DatasetFormat, RecordError
from .records import RecordList, where_of

ON_ERROR = ("raise", "skip")
#: How many problem locations a report or error message shows.
SHOWN = 5


def as_formats(formats: Registry | Mapping[str, DatasetFormat] | Iterable[DatasetFormat | Part]) -> dict[str, DatasetFormat]:
    """``{name: format}`` from a formats ``Registry``, a name -> format mapping, or formats/parts."""
    if isinstance(formats, Registry):
        return {name: formats.get(name) for name in formats.names()}
    if isinstance(formats, Mapping):
        return dict(formats)
    out = {}
    for item in formats:
        fmt = item.load() if isinstance(item, Part) else item
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
    fmts = as_formats(formats)
    head = list(records[:sample])
    if not head:
        raise FtcoreError("cannot detect the format of an empty dataset")
    counts = {name: sum(_detects(f, r) for r in head) for name, f in fmts.items() if f.can_detect}
    best = max(counts.values(), default=0)
    full = sorted(name for name, n in counts.items() if n == best and best)
    if len(full) == 1:
        return full[0]  # records that do not fit are reported, with their field, by apply_format
    where = where_of(records, 0)
    undetectable = sorted(name for name, f in fmts.items() if not f.can_detect)
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
