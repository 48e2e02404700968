"""``ftcore data convert|split|self-cognition``: make datasets, and convert them between any registered formats.

Only click is imported at module level; each command imports what it needs, so
``ftcore --help`` stays fast. Every file is written atomically (``write_records``), so
a failed command leaves no half-written output.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from ..errors import FtcoreError
from .cmdutil import app_parts, console, esc, print_report


def parse_map(specs: Iterable[str]) -> dict[str, str]:
    """``("question=instruction,answer=output",)`` -> ``{"question": "instruction", ...}``."""
    mapping: dict[str, str] = {}
    for spec in specs:
        for item in spec.split(","):
            if not item.strip():
                continue
            src, sep, dst = item.partition("=")
            if not sep or not src.strip() or not dst.strip():
                raise FtcoreError(f"--map entry {item!r} is not old=new", hint="e.g. --map question=instruction,answer=output")
            mapping[src.strip()] = dst.strip()
    return mapping


def rename_columns(records: list[dict[str, Any]], mapping: dict[str, str], where: str) -> None:
    """Rename record keys in place; a source column found in no record is an error."""
    if not mapping:
        return
    present = set().union(*(r.keys() for r in records))
    missing = [src for src in mapping if src not in present]
    if missing:
        columns = ", ".join(map(str, records[0])) if records else "none"
        raise FtcoreError(f"--map names column(s) the data does not have: {', '.join(missing)}", where=where, hint=f"columns: {columns}")
    for record in records:
        for src, dst in mapping.items():
            if src in record:
                record[dst] = record.pop(src)


def add_system(samples: list[dict[str, Any]], system: str) -> int:
    """Put ``system`` first in every conversation that has no system message; returns how many had one
    (they keep theirs). Text-only (pretrain) data has no conversation to hold one: an error."""
    kept = 0
    for sample in samples:
        if "messages" not in sample:
            raise FtcoreError("--system puts a system message into conversations, but the data is plain text (pretrain)", hint="drop --system")
        messages = sample["messages"]
        if messages and messages[0].get("role") == "system":
            kept += 1
            continue
        sample["messages"] = [{"role": "system", "content": system}, *messages]
    return kept


def export_format(formats: Any, name: str, option: str = "--to") -> Any:
    """The registered format ``name`` if it can write records (``can_export``); else an error listing those that can."""
    writable = [n for n in formats.names() if formats.get(n).can_export]
    if name in formats and formats.get(name).can_export:
        return formats.get(name)
    if name in formats:
        message = f"{option} {name}: format {name!r} cannot write records (it has no export)"
    else:
        message = f"{option} {name}: {formats.unknown_message(name)}"
    raise FtcoreError(message, hint=f"formats that can be written: {', '.join(writable) or 'none'} (see `ftcore list formats`)")


def export_samples(samples: Any, fmt: Any, report: Any, on_error: str) -> list[dict[str, Any]]:
    """``fmt.export`` of every sample; one it cannot hold stops the command, or is skipped and counted in ``report``."""
    from .apply import SHOWN
    from .records import where_of

    written: list[dict[str, Any]] = []
    for i, sample in enumerate(samples):
        try:
            record = fmt.export(sample)
            if not isinstance(record, dict):
                raise FtcoreError(f"format {fmt.name!r} exported a {type(record).__name__}, not a record (a dict); this is a bug in the plugin that registered it")
        except Exception as exc:  # RecordError, or an export tripping over an odd sample
            message = exc.message if isinstance(exc, FtcoreError) else f"{type(exc).__name__}: {exc}"
            loc = where_of(samples, i)
            if on_error == "raise":
                raise FtcoreError(
                    f"cannot write the record as {fmt.name}: {message}", where=loc, hint="convert to openai instead, or pass --on-error skip"
                ) from None
            report.skipped += 1
            report.kept -= 1
            if len(report.problems) < SHOWN:
                report.problems.append(f"{loc}: {message}")
            continue
        written.append(record)
    return written


@click.command("convert")
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--from", "from_format", default="auto", show_default=True, help="input format (a registered format name), or auto to detect it")
@click.option("--to", "to_format", required=True, metavar="FORMAT", help="output format: a registered format that can write records (openai, conversation, alpaca, sharegpt, pretrain or a plugin's; see `ftcore list formats`)")
@click.option("--map", "maps", multiple=True, metavar="OLD=NEW[,OLD=NEW]", help="rename input columns/fields before converting, e.g. question=instruction,answer=output")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True, help="stop at the first malformed record, or skip malformed records")
@click.option("--system", metavar="TEXT|PRESET", help="a system message for every converted conversation that has none: the text, or a preset's name (`ftcore data --help` lists them)")
@click.option("--sheet", metavar="NAME|INDEX", help="the sheet of an .xlsx workbook to read, by name or index from 0 (default: the first)")
@click.option("--text-split", type=click.Choice(["paragraph", "file"]), default="paragraph", show_default=True, help="plain text (.txt, .md): a record per paragraph (split on blank lines) or per file")
@click.option("--max-samples", type=click.IntRange(min=1), help="convert a random subset of this many records")
@click.option("--seed", type=int, default=42, show_default=True, help="seed for --max-samples")
@click.option("--force", is_flag=True, help="overwrite OUT if it exists")
@click.pass_context
def convert_cmd(
    ctx: click.Context,
    src: Path,
    dst: Path,
    from_format: str,
    to_format: str,
    maps: tuple[str, ...],
    on_error: str,
    system: str | None,
    sheet: str | None,
    text_split: str,
    max_samples: int | None,
    seed: int,
    force: bool,
) -> None:
    """Convert IN (json, jsonl, csv, tsv, parquet, xlsx, txt/md, or a folder of them, or a save_to_disk folder) to OUT (.json or .jsonl).

    \b
    Examples:
      ftcore data convert qa.xlsx train.jsonl --sheet QA --map question=instruction,answer=output --to openai --system medical
      ftcore data convert sharegpt.json xtuner.jsonl --to conversation
      ftcore data convert notes/ corpus.jsonl --to pretrain
    """
    from .apply import apply_format, detect_format
    from .files import check_output, writable, write_records
    from .load import load_records, sheets_explained
    from .systems import system_text

    check_output(dst, force, writable("json", "jsonl"))
    if src.exists() and dst.exists() and src.resolve() == dst.resolve():
        raise FtcoreError("IN and OUT are the same file", where=str(dst), hint="write the converted data to another file")
    mapping = parse_map(maps)
    formats = app_parts(ctx).formats
    if from_format != "auto":
        formats.part(from_format)  # unknown name: "did you mean" before reading any data
    target = export_format(formats, to_format)
    system = system_text(system) if system else None
    records = load_records(src, max_samples=max_samples, seed=seed, options={"sheet": sheet, "text_split": text_split})
    with sheets_explained(records, "--sheet"):
        rename_columns(records, mapping, str(src))
        name = detect_format(records, formats, setting="--from") if from_format == "auto" else from_format
        samples, report = apply_format(records, formats.get(name), on_error, skip_hint="--on-error skip")
    had_system = add_system(samples, system) if system else 0
    written = export_samples(samples, target, report, on_error)
    if not written:
        raise FtcoreError(f"no record could be written as {to_format}", hint="convert to openai, which holds any conversation")
    write_records(dst, written)
    out = console()
    detected = " (detected)" if from_format == "auto" else ""
    out.print(f"[green]converted[/green] {esc(src)} ({name}{detected}, {report.total} records) -> {esc(dst)} ({to_format}): [bold]{len(written)}[/bold] written")
    if mapping:
        out.print("  renamed: " + ", ".join(f"{a} -> {b}" for a, b in mapping.items()), markup=False)
    if system:
        kept = f" ({had_system} kept their own)" if had_system else ""
        out.print(f"  system message added to {len(samples) - had_system} record(s){kept}: {system[:60]}{'...' if len(system) > 60 else ''}", markup=False)
    print_report(out, report)


@click.command("split")
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.option("--test-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True, help="fraction of records for the test split")
@click.option("--seed", type=int, default=42, show_default=True, help="seed for choosing the test records")
@click.option("-o", "--output-dir", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="where to write the splits (default: next to IN)")
@click.option("--force", is_flag=True, help="overwrite existing split files")
def split_cmd(src: Path, test_ratio: float, seed: int, out_dir: Path | None, force: bool) -> None:
    """Split IN into <stem>_train.<ext> and <stem>_test.<ext> (records keep their order).

    A save_to_disk folder (or a folder of files) is written as .jsonl.
    """
    from .files import BY_SUFFIX, check_output, write_records
    from .load import load_records

    kind = BY_SUFFIX.get(src.suffix.lower()) if not src.is_dir() else None
    suffix = kind.suffixes[0] if kind is not None and kind.write is not None else ".jsonl"
    stem = src.stem if not src.is_dir() else src.name
    out_dir = out_dir or src.parent
    train_path, test_path = out_dir / f"{stem}_train{suffix}", out_dir / f"{stem}_test{suffix}"
    for path in (train_path, test_path):
        check_output(path, force)
    records = load_records(src)
    n = len(records)
    if n < 2:
        raise FtcoreError(f"cannot split {n} record into train and test", where=str(src), hint="a split needs at least 2 records")
    n_test = min(max(1, round(n * test_ratio)), n - 1)
    test_idx = set(random.Random(seed).sample(range(n), n_test))
    train = [r for i, r in enumerate(records) if i not in test_idx]
    test = [r for i, r in enumerate(records) if i in test_idx]
    write_records(train_path, train)
    write_records(test_path, test)
    out = console()
    out.print(f"[green]split[/green] {esc(src)} ({n} records, seed {seed}):")
    out.print(f"  train  {len(train):>8}  -> {train_path}", markup=False)
    out.print(f"  test   {len(test):>8}  -> {test_path}", markup=False)


@click.command("self-cognition")
@click.option("--name", help="the assistant's own name: \"I am NAME\" (我是NAME)")
@click.option("--owner", help="whose assistant it is: \"I am OWNER's assistant\" (我是OWNER的小助手), as the XTuner tutorials write it")
@click.option("--origin", help="the model it really is, said after every answer, e.g. \"InternLM (书生·浦语)\"")
@click.option("--author", help="with --name: who built the assistant (mentioned in some answers)")
@click.option("--n", "count", type=click.IntRange(min=1), default=10000, show_default=True, help="number of records")
@click.option("--lang", type=click.Choice(["zh", "en", "both"]), default="both", show_default=True, help="language of questions and answers")
@click.option("--seed", type=int, default=42, show_default=True, help="random seed (same seed, same file)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="output file, .jsonl or .json (openai format)")
@click.option("--force", is_flag=True, help="overwrite the output if it exists")
def self_cognition_cmd(name: str | None, owner: str | None, origin: str | None, author: str | None, count: int, lang: str, seed: int, output: Path, force: bool) -> None:
    """Generate a "who are you?" dataset (openai format) that teaches the model who it is.

    \b
    --name NAME: the assistant's own name ("I am NAME").
    --owner NAME: NAME's assistant ("I am NAME's assistant"); both: "I am NAME, OWNER's assistant".
    --origin TEXT: every answer ends with the model it is built on.

    \b
    Example (the XTuner self-cognition tutorial):
      ftcore data self-cognition --owner Ada --origin "InternLM (书生·浦语)" -o data/assistant.jsonl
    """
    from .files import check_output, writable, write_records
    from .self_cognition import self_cognition_records

    check_output(output, force, writable("json", "jsonl"))
    records = self_cognition_records(name, count, lang, seed, author=author, owner=owner, origin=origin)
    write_records(output, records)
    out = console()
    out.print(f"[green]wrote[/green] {len(records)} self-cognition records ({lang}, seed {seed}) -> {esc(output)}")
    example = records[0]["messages"]
    out.print(f"  e.g. user: {example[0]['content']}  assistant: {example[1]['content']}", markup=False)
    out.print(f"  train on it with data.path={output} data.format=openai", markup=False)
