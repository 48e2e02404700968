"""``ftcore data``: convert datasets between formats, split them, generate self-cognition data,
and show or check a recipe's data as the model will see it (``show``, ``check``).

Only click is imported at module level; each command imports what it needs, so
``ftcore --help`` stays fast. Every file is written atomically (a temporary file in
the same folder, then a rename), so a failed command leaves no half-written output.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import FtcoreError

#: Suffixes ``write_records`` can write.
WRITABLE = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".xlsx")


# -- writing -----------------------------------------------------------------------------


def _columns(records: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _write(path: Path, tmp: Path, records: Sequence[dict[str, Any]]) -> None:
    suffix = path.suffix.lower()
    if suffix == ".json":
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(list(records), fh, ensure_ascii=False, indent=2, default=str)
            fh.write("\n")
    elif suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    elif suffix in (".csv", ".tsv"):
        import csv

        columns = _columns(records)
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter="," if suffix == ".csv" else "\t")
            writer.writerow(columns)
            for record in records:
                writer.writerow(["" if record.get(c) is None else _cell(record.get(c)) for c in columns])
    elif suffix == ".xlsx":
        import openpyxl

        columns = _columns(records)
        book = openpyxl.Workbook(write_only=True)
        sheet = book.create_sheet()
        sheet.append(columns)
        for record in records:
            sheet.append([_cell(record.get(c)) for c in columns])
        book.save(tmp)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist(list(records))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise FtcoreError(f"the records cannot be stored as Parquet: {exc}", where=str(path), hint="write .jsonl instead") from None
        pq.write_table(table, tmp)
    else:
        raise FtcoreError(f"cannot write {suffix or 'files without an extension'!r}", where=str(path), hint=f"use one of {', '.join(WRITABLE)}")


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
    """Write records atomically as .json (a list), .jsonl, .csv, .tsv, .parquet or .xlsx by suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        open(tmp, "x").close()  # honours the umask, unlike mkstemp's 0600
        _write(path, tmp, records)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# -- canonical samples -> target formats -------------------------------------------------


def _fail(message: str, field: str = "messages") -> None:
    from .formats import RecordError

    raise RecordError(message, field)


def _extras(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sample.items() if k not in ("messages", "text")}


def _messages(sample: dict[str, Any], target: str) -> list[dict[str, Any]]:
    if "messages" not in sample:
        _fail(f"a text-only (pretrain) record has no conversation to write as {target}", "text")
    return sample["messages"]


def _turns(sample: dict[str, Any], target: str) -> list[tuple[str, str, str]]:
    """``(system, user, assistant)`` turns of a conversation that alternates user/assistant."""
    turns: list[tuple[str, str, str]] = []
    system: list[str] = []
    user: str | None = None
    for i, m in enumerate(_messages(sample, target)):
        role, content = m["role"], m["content"]
        if role == "system":
            if user is not None:
                _fail(f"message {i} is a system message between a user message and its reply; {target} cannot hold that")
            system.append(content)
        elif role == "user":
            if user is not None:
                _fail(f"messages {i - 1} and {i} are two user messages in a row; {target} needs user/assistant turns")
            user = content
        else:
            if user is None:
                _fail(f"message {i} is an assistant message with no user message before it; {target} needs user/assistant turns")
            turns.append(("\n".join(system), user, content))
            system, user = [], None
    if user is not None or system:
        _fail(f"the conversation does not end with an assistant message; {target} needs complete turns")
    return turns


def to_openai(sample: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [dict(m) for m in _messages(sample, "openai")], **_extras(sample)}


def to_conversation(sample: dict[str, Any]) -> dict[str, Any]:
    turns = [
        ({"system": s} if s else {}) | {"input": u, "output": a} for s, u, a in _turns(sample, "conversation")
    ]
    return {"conversation": turns, **_extras(sample)}


def to_alpaca(sample: dict[str, Any]) -> dict[str, Any]:
    turns = _turns(sample, "alpaca")
    if any(s for s, _, _ in turns[1:]):
        _fail("a system message after the first turn cannot be written as alpaca")
    system, (_, user, assistant) = turns[0][0], turns[-1]
    out: dict[str, Any] = {"instruction": user, "input": "", "output": assistant}
    if system:
        out["system"] = system
    if len(turns) > 1:
        out["history"] = [[u, a] for _, u, a in turns[:-1]]
    return {**out, **_extras(sample)}


def to_sharegpt(sample: dict[str, Any]) -> dict[str, Any]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    turns = [{"from": names[m["role"]], "value": m["content"]} for m in _messages(sample, "sharegpt")]
    return {"conversations": turns, **_extras(sample)}


TARGETS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "openai": to_openai,
    "conversation": to_conversation,
    "alpaca": to_alpaca,
    "sharegpt": to_sharegpt,
}


# -- helpers -----------------------------------------------------------------------------


def _app(ctx: click.Context) -> Any:
    app = ctx.find_root().obj
    if app is None:
        from ..app import App

        app = App()
    return app


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


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _esc(value: Any) -> str:
    from rich.markup import escape

    return escape(str(value))


def _print_report(out: Any, report: Any) -> None:
    if report.dropped:
        more = ", ..." if report.dropped > len(report.dropped_at) else ""
        out.print(f"  dropped {report.dropped} record(s) on purpose (e.g. <nooutput>): {', '.join(report.dropped_at)}{more}", markup=False)
    if report.skipped:
        out.print(f"  [yellow]skipped {report.skipped} malformed record(s):[/yellow]")
        for problem in report.problems:
            out.print(f"    - {problem}", markup=False)
        if report.skipped > len(report.problems):
            out.print(f"    - ... and {report.skipped - len(report.problems)} more")


# -- commands ----------------------------------------------------------------------------


@click.group("data")
def data() -> None:
    """Prepare datasets: convert formats, split train/test, make self-cognition data; show and check a recipe's data."""


@data.command("convert")
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--from", "from_format", default="auto", show_default=True, help="input format (a registered format name), or auto to detect it")
@click.option("--to", "to_format", required=True, type=click.Choice(list(TARGETS)), help="output format")
@click.option("--map", "maps", multiple=True, metavar="OLD=NEW[,OLD=NEW]", help="rename input columns/fields before converting, e.g. question=instruction,answer=output")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True, help="stop at the first malformed record, or skip malformed records")
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
    max_samples: int | None,
    seed: int,
    force: bool,
) -> None:
    """Convert IN (json, jsonl, csv, tsv, parquet, xlsx or a save_to_disk folder) to OUT (.json or .jsonl).

    \b
    Examples:
      ftcore data convert qa.xlsx train.jsonl --map question=instruction,answer=output --to openai
      ftcore data convert sharegpt.json xtuner.jsonl --to conversation
    """
    from .load import apply_format, detect_format, load_records, where_of

    check_output(dst, force, (".json", ".jsonl"))
    if src.exists() and dst.exists() and src.resolve() == dst.resolve():
        raise FtcoreError("IN and OUT are the same file", where=str(dst), hint="write the converted data to another file")
    mapping = parse_map(maps)
    formats = _app(ctx).parts.formats
    if from_format != "auto":
        formats.part(from_format)  # unknown name: "did you mean" before reading any data
    records = load_records(src, max_samples=max_samples, seed=seed)
    rename_columns(records, mapping, str(src))
    name = detect_format(records, formats, setting="--from") if from_format == "auto" else from_format
    samples, report = apply_format(records, formats.get(name), on_error, skip_hint="--on-error skip")
    target = TARGETS[to_format]
    written: list[dict[str, Any]] = []
    for i, sample in enumerate(samples):
        try:
            written.append(target(sample))
        except FtcoreError as exc:
            loc = where_of(samples, i)
            if on_error == "raise":
                raise FtcoreError(
                    f"cannot write the record as {to_format}: {exc.message}", where=loc, hint="convert to openai instead, or pass --on-error skip"
                ) from None
            report.skipped += 1
            report.kept -= 1
            if len(report.problems) < 5:
                report.problems.append(f"{loc}: {exc.message}")
    if not written:
        raise FtcoreError(f"no record could be written as {to_format}", hint="convert to openai, which holds any conversation")
    write_records(dst, written)
    out = _console()
    detected = " (detected)" if from_format == "auto" else ""
    out.print(f"[green]converted[/green] {_esc(src)} ({name}{detected}, {report.total} records) -> {_esc(dst)} ({to_format}): [bold]{len(written)}[/bold] written")
    if mapping:
        out.print("  renamed: " + ", ".join(f"{a} -> {b}" for a, b in mapping.items()), markup=False)
    _print_report(out, report)


@data.command("split")
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.option("--test-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True, help="fraction of records for the test split")
@click.option("--seed", type=int, default=42, show_default=True, help="seed for choosing the test records")
@click.option("-o", "--output-dir", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="where to write the splits (default: next to IN)")
@click.option("--force", is_flag=True, help="overwrite existing split files")
def split_cmd(src: Path, test_ratio: float, seed: int, out_dir: Path | None, force: bool) -> None:
    """Split IN into <stem>_train.<ext> and <stem>_test.<ext> (records keep their order).

    A save_to_disk folder (or a folder of files) is written as .jsonl.
    """
    from .load import SUFFIXES, load_records

    suffix = src.suffix.lower() if src.suffix.lower() in SUFFIXES and not src.is_dir() else ".jsonl"
    suffix = ".jsonl" if suffix == ".ndjson" else suffix
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
    out = _console()
    out.print(f"[green]split[/green] {_esc(src)} ({n} records, seed {seed}):")
    out.print(f"  train  {len(train):>8}  -> {train_path}", markup=False)
    out.print(f"  test   {len(test):>8}  -> {test_path}", markup=False)


@data.command("self-cognition")
@click.option("--name", required=True, help="the assistant's name, used in every answer")
@click.option("--author", help="who built the assistant (mentioned in some answers)")
@click.option("--n", "count", type=click.IntRange(min=1), default=10000, show_default=True, help="number of records")
@click.option("--lang", type=click.Choice(["zh", "en", "both"]), default="both", show_default=True, help="language of questions and answers")
@click.option("--seed", type=int, default=42, show_default=True, help="random seed (same seed, same file)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="output file, .jsonl or .json (openai format)")
@click.option("--force", is_flag=True, help="overwrite the output if it exists")
def self_cognition_cmd(name: str, author: str | None, count: int, lang: str, seed: int, output: Path, force: bool) -> None:
    """Generate a "who are you?" dataset that teaches the model its NAME (openai format)."""
    from .self_cognition import self_cognition_records

    check_output(output, force, (".json", ".jsonl"))
    records = self_cognition_records(name, count, lang, seed, author=author)
    write_records(output, records)
    out = _console()
    out.print(f"[green]wrote[/green] {len(records)} self-cognition records ({lang}, seed {seed}) -> {_esc(output)}")
    example = records[0]["messages"]
    out.print(f"  e.g. user: {example[0]['content']}  assistant: {example[1]['content']}", markup=False)
    out.print(f"  train on it with data.path={output} data.format=openai", markup=False)


# -- show / check: a recipe's data as the model will see it ------------------------------------


def _recipe(ctx: click.Context, recipe_ref: str, overrides: Sequence[str]) -> tuple[Any, Any]:
    """The validated recipe (model folder and data files must exist) and the app's parts."""
    from ..recipe import load_recipe

    parts = _app(ctx).parts
    return load_recipe(recipe_ref, parts, overrides, check_paths=True), parts


def _tokenizer_and_template(recipe: Any, parts: Any) -> tuple[Any, Any, str]:
    """The tokenizer (loaded as `run` loads it), the chat template and the data cache's extra key."""
    from ..models.loading import builder_and_tokenizer, data_key

    builder, tokenizer = builder_and_tokenizer(recipe["model"], parts)
    data_cfg = recipe["data"]
    template = parts.templates.get(data_cfg["template"]) if data_cfg["template"] else None
    return tokenizer, template, data_key(builder)


def _data_line(recipe: Any) -> str:
    d = recipe["data"]
    paths = d["path"] if isinstance(d["path"], list) else [d["path"]]
    pack = "on" if d["pack"] else "off"
    return f"{', '.join(map(str, paths))} (format {d['format']}, template {d['template']}, max_length {d['max_length']}, packing {pack})"


def token_segments(tokenizer: Any, ids: Sequence[int], trained: Sequence[bool]) -> list[tuple[str, bool]]:
    """A sample's tokens as ``(text, trained)`` runs, decoded with special tokens shown.

    Each run is the decoded prefix up to its end minus the decoded prefix before it, so a
    character split over two runs and a decoder that treats the first token specially
    still read right.
    """
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or trained[k] != trained[start]:
            runs.append((start, k, bool(trained[start])))
            start = k

    def decode(part: Sequence[int]) -> str:
        return tokenizer.decode(list(part), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    out: list[tuple[str, bool]] = []
    before = ""
    for lo, hi, is_trained in runs:
        upto = decode(ids[:hi])
        text = upto[len(before) :] if upto.startswith(before) else decode(ids[lo:hi])
        out.append((text, is_trained))
        before = upto
    return out


def _plain(out: Any) -> bool:
    """True when the console shows no colours (not a terminal, or NO_COLOR)."""
    return out.color_system is None or out.no_color


#: Marks trained text when the output has no colours (piped to a file or another program).
MARKS = ("⟦", "⟧")


def _render(out: Any, segments: Sequence[tuple[str, bool]]) -> Any:
    from rich.text import Text

    text = Text()
    plain = _plain(out)
    for piece, is_trained in segments:
        if plain and is_trained:
            text.append(f"{MARKS[0]}{piece}{MARKS[1]}")
        else:
            text.append(piece, style="green" if is_trained else "dim")  # Text: never parsed as markup
    return text


def histogram(values: Sequence[int], bins: int = 10, width: int = 40) -> list[str]:
    """Lines of a text histogram with unicode bars: ``  lo -   hi │████▌ count``."""
    import numpy as np

    values = np.asarray(values)
    if not len(values):
        return []
    lo, hi = int(values.min()), int(values.max())
    bins = max(1, min(bins, hi - lo + 1))
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi + 1))
    top = max(1, int(counts.max()))
    partial = " ▏▎▍▌▋▊▉"
    digits = len(str(hi))
    lines = []
    for count, left, right in zip(counts.tolist(), edges[:-1], edges[1:]):
        eighths = round(count / top * width * 8)
        bar = "█" * (eighths // 8) + (partial[eighths % 8] if eighths % 8 else "")
        if count and not bar:
            bar = "▏"
        a, b = int(np.ceil(left)), int(np.ceil(right)) - 1
        lines.append(f"  {a:>{digits}} - {b:>{digits}} │{bar:<{width}} {count}")
    return lines


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    import numpy as np

    values = np.asarray(lengths)
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "p95": float(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def _fmt_num(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


@data.command("show")
@click.option("--recipe", "-r", "recipe_ref", required=True, help="a registered recipe name or a YAML file")
@click.argument("overrides", nargs=-1)
@click.option("-n", "count", type=click.IntRange(min=0), default=3, show_default=True, help="samples to print")
@click.pass_context
def show_cmd(ctx: click.Context, recipe_ref: str, overrides: tuple[str, ...], count: int) -> None:
    """Print samples as the model is trained on them, and length statistics.

    Runs the recipe's data pipeline (load, format, template, encode, pack; cached as for
    `ftcore run`). Trained tokens are green, masked ones dim; when the output is not a
    terminal, trained text is written between ⟦ and ⟧. Samples are shown in training
    order (after the seeded shuffle). OVERRIDES are key=value pairs, e.g. data.max_length=512.
    """
    import numpy as np

    from .pack import IGNORE
    from .pipeline import prepare_data

    recipe, parts = _recipe(ctx, recipe_ref, overrides)
    tokenizer, template, extra_key = _tokenizer_and_template(recipe, parts)
    out = _console()
    log = lambda message: out.print(message, style="dim", markup=False)  # noqa: E731
    packed, report = prepare_data(recipe["data"], parts.formats, tokenizer, template, recipe["train"]["seed"], log=log, extra_key=extra_key)
    out.print(f"data: {_data_line(recipe)}", markup=False)
    starts = packed.sample_starts
    lengths = np.diff(starts)
    shown = min(count, packed.num_samples)
    if shown:
        if _plain(out):
            out.print(f"legend: {MARKS[0]}trained{MARKS[1]}, everything else is masked (labels -100)", markup=False)
        else:
            out.print("legend: [green]trained[/green] [dim]masked (labels -100)[/dim]")
    for k in range(shown):
        lo, hi = int(starts[k]), int(starts[k + 1])
        trained = packed.labels[lo:hi] != IGNORE
        out.print()
        out.rule(f"sample {k + 1} of {packed.num_samples}: {hi - lo} tokens, {int(trained.sum())} trained", style="dim")
        out.print(_render(out, token_segments(tokenizer, packed.tokens[lo:hi].tolist(), trained.tolist())))
    if shown:
        out.rule(style="dim")
    out.print()
    stats = length_stats(lengths)
    out.print("sample length (tokens, after truncation): " + "  ".join(f"{k} {_fmt_num(v)}" for k, v in stats.items()), markup=False)
    for line in histogram(lengths.tolist()):
        out.print(line, markup=False)
    out.print(
        f"samples {report.samples} from {report.records} records; {report.tokens} tokens ({report.trained_tokens} trained)",
        markup=False,
    )
    out.print(
        f"truncated to max_length {recipe['data']['max_length']}: {report.truncated}; dropped with no trained token: {report.dropped_empty}; "
        f"dropped by the format: {report.dropped_by_format}; malformed records skipped: {report.skipped}",
        markup=False,
    )
    rows = f"{report.rows} rows of up to {packed.max_length} tokens" if recipe["data"]["pack"] else f"{report.rows} rows (one sample each, padded to the longest in a batch)"
    out.print(f"packing efficiency {report.efficiency:.1%} ({rows})" + (" [cached]" if report.cached else ""), markup=False)


@data.command("check")
@click.option("--recipe", "-r", "recipe_ref", required=True, help="a registered recipe name or a YAML file")
@click.argument("overrides", nargs=-1)
@click.pass_context
def check_cmd(ctx: click.Context, recipe_ref: str, overrides: tuple[str, ...]) -> None:
    """Check every record of a recipe's data; exit 1 if any record has a problem.

    Loads and formats every record, reporting every malformed one (file:line and field),
    not only the first; then encodes the rest with the recipe's tokenizer and template and
    prints the counts. Use it to gate a long run: `ftcore data check -r R && ftcore run -r R`.
    """
    recipe, parts = _recipe(ctx, recipe_ref, overrides)
    if not check_recipe_data(recipe, parts, _console()):
        sys.exit(1)  # not ctx.exit: the CLI runs click with standalone_mode=False, which swallows its code


def check_recipe_data(recipe: Any, parts: Any, out: Any, encode: bool = True) -> bool:
    """Read, format, template and encode every record of ``recipe``'s data, printing what was found
    (``ftcore data check``, ``ftcore run --dry-run``); False when a record has a problem. Without
    ``encode`` (no tokenizer yet) the records are read and formatted only."""
    from .load import detect_format, load_records
    from .pack import pack
    from .pipeline import DataReport, RecordProblem, data_paths, encode_all, fill_counts, find_format_problems

    data_cfg, seed = recipe["data"], recipe["train"]["seed"]
    out.print(f"checking {_data_line(recipe)}", markup=False)
    try:
        records = load_records([str(p) for p in data_paths(data_cfg)], max_samples=data_cfg["max_samples"], seed=seed)
    except FtcoreError as exc:  # a file that cannot be read as records stops at its first bad line
        out.print("[red]✗ cannot read the data[/red] (reading stops at the first unreadable line of a file):")
        out.print(f"  {exc}", markup=False)
        return False
    name = data_cfg["format"]
    if name == "auto":
        name = detect_format(records, parts.formats)
    samples, fmt_report, problems = find_format_problems(records, parts.formats.get(name))
    if not encode:
        out.print(f"records {len(records)}, format {name}; not encoded: the model and its tokenizer are created when the run starts", markup=False)
        for problem in problems:
            out.print(f"  - {problem}", markup=False)
        return not problems
    tokenizer, template, _ = _tokenizer_and_template(recipe, parts)  # after reading: a broken file fails fast
    if any("messages" in s for s in samples) and template is None:
        raise FtcoreError("chat data needs a template", where="data.template", hint="name one from `ftcore list templates`, e.g. internlm2_chat")
    report = DataReport(records=len(records), format=name, dropped_by_format=fmt_report.dropped)
    encode_problems: list[RecordProblem] = []
    encoded, extras = encode_all(samples, tokenizer, template, data_cfg, report, problems=encode_problems)
    problems = sorted(problems + encode_problems, key=lambda p: p.origin)  # in file order
    report.skipped = len(problems)
    if len(encoded):
        fill_counts(report, pack(encoded, data_cfg["max_length"], packed=data_cfg["pack"], shuffle=data_cfg["shuffle"], seed=seed, extras=extras))
    detected = " (detected)" if data_cfg["format"] == "auto" else ""
    out.print(f"records {report.records}, format {name}{detected}")
    if report.dropped_by_format:
        more = ", ..." if report.dropped_by_format > len(fmt_report.dropped_at) else ""
        out.print(f"  dropped by the format on purpose (e.g. <nooutput>): {report.dropped_by_format} ({', '.join(fmt_report.dropped_at)}{more})", markup=False)
    out.print(f"samples {report.samples}, tokens {report.tokens} ({report.trained_tokens} trained)", markup=False)
    out.print(f"  truncated to max_length {data_cfg['max_length']}: {report.truncated}; dropped with no trained token: {report.dropped_empty}", markup=False)
    if len(encoded):
        out.print(f"  {report.rows} row(s), packing efficiency {report.efficiency:.1%}", markup=False)
    if problems:
        out.print(f"[red]✗ {len(problems)} record(s) with problems:[/red]")
        for problem in problems:
            out.print(f"  - {problem}", markup=False)
        hint = "fix them, or set data.on_error=skip to train without them" if not encode_problems else "fix them (records the template cannot encode stop a run even with data.on_error=skip)"
        out.print(f"  {hint}", markup=False)
        return False
    if report.truncated or report.dropped_empty:
        out.print(f"[yellow]! every record is well-formed, but {report.truncated} sample(s) lose tokens past max_length and {report.dropped_empty} are dropped with no trained token[/yellow]")
        out.print("  raise data.max_length, or shorten those records, to train on all of them", markup=False)
    else:
        out.print("[green]✓ every record is fine[/green]")
    return True
