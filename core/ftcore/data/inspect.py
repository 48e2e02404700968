"""``ftcore data show|check``: a recipe's data as the model will see it, and every record's problems (also ``run --dry-run``'s data check)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from ..errors import FtcoreError
from .cmdutil import app_parts, console


def _recipe(ctx: click.Context, recipe_ref: str, overrides: Sequence[str]) -> tuple[Any, Any]:
    """The validated recipe (model folder and data files must exist) and the app's parts."""
    from ..recipe import load_recipe

    parts = app_parts(ctx)
    return load_recipe(recipe_ref, parts, overrides, check_paths=True), parts


def _tokenizer_and_template(recipe: Any, parts: Any) -> tuple[Any, Any, str]:
    """The tokenizer (loaded as `run` loads it), the chat template and the data cache's extra key."""
    from ..models.loading import builder_and_tokenizer

    builder, tokenizer = builder_and_tokenizer(recipe["model"], parts)
    data_cfg = recipe["data"]
    template = parts.templates.get(data_cfg["template"]) if data_cfg["template"] else None
    return tokenizer, template, builder.data_key()


def _data_line(recipe: Any) -> str:
    d = recipe["data"]
    paths = d["path"] if isinstance(d["path"], list) else [d["path"]]
    pack = "on" if d["pack"] else "off"
    return f"{', '.join(map(str, paths))} (format {d['format']}, template {d['template']}, max_length {d['max_length']}, packing {pack})"


@click.command("show")
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

    from . import IGNORE
    from .pipeline import prepare_data
    from .render import fmt_num, histogram, legend, length_stats, render_segments, token_segments

    recipe, parts = _recipe(ctx, recipe_ref, overrides)
    tokenizer, template, extra_key = _tokenizer_and_template(recipe, parts)
    out = console()
    log = lambda message: out.print(message, style="dim", markup=False)  # noqa: E731
    packed, report = prepare_data(recipe["data"], parts.formats, tokenizer, template, recipe["train"]["seed"], log=log, extra_key=extra_key)
    out.print(f"data: {_data_line(recipe)}", markup=False)
    starts = packed.sample_starts
    lengths = np.diff(starts)
    sides = packed.extras.get("side")  # preference pairs: show both answers of each of `count` pairs
    shown = min(count * (2 if sides else 1), packed.num_samples)
    if shown:
        text, markup = legend(out)
        out.print(text, markup=markup)
    for k in range(shown):
        lo, hi = int(starts[k]), int(starts[k + 1])
        trained = packed.labels[lo:hi] != IGNORE
        which = f"pair {k // 2 + 1} of {packed.num_samples // 2}, {'chosen' if sides[k] == 0 else 'rejected'} answer" if sides else f"sample {k + 1} of {packed.num_samples}"
        out.print()
        out.rule(f"{which}: {hi - lo} tokens, {int(trained.sum())} trained", style="dim")
        out.print(render_segments(out, token_segments(tokenizer, packed.tokens[lo:hi].tolist(), trained.tolist())))
    if shown:
        out.rule(style="dim")
    out.print()
    stats = length_stats(lengths)
    out.print("sample length (tokens, after truncation): " + "  ".join(f"{k} {fmt_num(v)}" for k, v in stats.items()), markup=False)
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
    if report.chunked:
        out.print(report.chunk_text(), markup=False)
    rows = f"{report.rows} rows of up to {packed.max_length} tokens" if recipe["data"]["pack"] else f"{report.rows} rows (one sample each, padded to the longest in a batch)"
    out.print(f"packing efficiency {report.efficiency:.1%} ({rows})" + (" [cached]" if report.cached else ""), markup=False)


@click.command("check")
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
    if not check_recipe_data(recipe, parts, console()):
        sys.exit(1)  # not ctx.exit: the CLI runs click with standalone_mode=False, which swallows its code


def check_recipe_data(recipe: Any, parts: Any, out: Any, encode: bool = True) -> bool:
    """Read, format, template and encode every record of ``recipe``'s data, printing what was found
    (``ftcore data check``, ``ftcore run --dry-run``); False when a record has a problem. Without
    ``encode`` (no tokenizer yet) the records are read and formatted only."""
    from .apply import detect_format
    from .load import load_records, read_options, sheets_explained
    from .pipeline import DataReport, RecordProblem, data_paths, encode_and_pack, find_format_problems

    data_cfg, seed = recipe["data"], recipe["train"]["seed"]
    out.print(f"checking {_data_line(recipe)}", markup=False)
    try:
        records = load_records([str(p) for p in data_paths(data_cfg)], max_samples=data_cfg["max_samples"], seed=seed, options=read_options(data_cfg))
    except FtcoreError as exc:  # a file that cannot be read as records stops at its first bad line
        out.print("[red]✗ cannot read the data[/red] (reading stops at the first unreadable line of a file):")
        out.print(f"  {exc}", markup=False)
        return False
    name = data_cfg["format"]
    if encode:  # configuring the builder first tells a format what it needs (the llava builder: where images are)
        tokenizer, template, _ = _tokenizer_and_template(recipe, parts)  # after reading: a broken file fails fast
    with sheets_explained(records):
        if name == "auto":
            name = detect_format(records, parts.formats)
        samples, fmt_report, problems = find_format_problems(records, parts.formats.get(name))
    if not encode:
        out.print(f"records {len(records)}, format {name}; not encoded: the model and its tokenizer are created when the run starts", markup=False)
        for problem in problems:
            out.print(f"  - {problem}", markup=False)
        _print_sheets(out, records, problems)
        return not problems
    if any("messages" in s for s in samples) and template is None:
        raise FtcoreError("chat data needs a template", where="data.template", hint="name one from `ftcore list templates`, e.g. internlm2_chat")
    report = DataReport(records=len(records), format=name, dropped_by_format=fmt_report.dropped)
    encode_problems: list[RecordProblem] = []
    from ..train.objective import check_data_kind
    from .pairs import is_pair

    if len(samples):
        check_data_kind(parts.objectives.get(recipe["objective"]["name"]), is_pair(samples[0]))
    packed = encode_and_pack(samples, tokenizer, template, data_cfg, report, seed, problems=encode_problems)
    problems = sorted(problems + encode_problems, key=lambda p: p.origin)  # in file order
    report.skipped = len(problems)
    detected = " (detected)" if data_cfg["format"] == "auto" else ""
    out.print(f"records {report.records}, format {name}{detected}")
    if report.dropped_by_format:
        more = ", ..." if report.dropped_by_format > len(fmt_report.dropped_at) else ""
        out.print(f"  dropped by the format on purpose (e.g. <nooutput>): {report.dropped_by_format} ({', '.join(fmt_report.dropped_at)}{more})", markup=False)
    out.print(f"samples {report.samples}, tokens {report.tokens} ({report.trained_tokens} trained)", markup=False)
    out.print(f"  truncated to max_length {data_cfg['max_length']}: {report.truncated}; dropped with no trained token: {report.dropped_empty}", markup=False)
    if report.chunked:
        out.print(f"  {report.chunk_text()}", markup=False)
    if packed is not None:
        out.print(f"  {report.rows} row(s), packing efficiency {report.efficiency:.1%}", markup=False)
    if problems:
        out.print(f"[red]✗ {len(problems)} record(s) with problems:[/red]")
        for problem in problems:
            out.print(f"  - {problem}", markup=False)
        hint = "fix them, or set data.on_error=skip to train without them" if not encode_problems else "fix them (records the template cannot encode stop a run even with data.on_error=skip)"
        out.print(f"  {hint}", markup=False)
        _print_sheets(out, records, problems)
        return False
    if report.truncated or report.dropped_empty:
        out.print(f"[yellow]! every record is well-formed, but {report.truncated} sample(s) lose tokens past max_length and {report.dropped_empty} are dropped with no trained token[/yellow]")
        out.print("  raise data.max_length, or shorten those records, to train on all of them", markup=False)
    else:
        out.print("[green]✓ every record is fine[/green]")
    return True


def _print_sheets(out: Any, records: Any, problems: Sequence[Any]) -> None:
    """With problems, the sheets and columns of each workbook of several sheets the records came from."""
    from .load import sheets_note

    note = sheets_note(records) if problems else None
    if note:
        out.print(f"  {note}", markup=False)
