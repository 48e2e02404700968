"""Every out-of-range value of every recipe key (core schema and every registered part's options)
is reported at validation, all at once, with its key path and a hint."""

from __future__ import annotations

import math
import re
from typing import Any, Iterator

import pytest

from ftcore.errors import ValidationError
from ftcore.parts import collect_parts
from ftcore.plugins import get_plugin_manager
from ftcore.recipe import PART_OPTIONS, SCHEMA, Field, load_recipe
from helpers import FIXTURE_PLUGINS, cli_env, run_cli

BASE = {"model": {"builder": "hf", "path": "m"}, "data": {"path": "d.jsonl", "template": "default"}}


@pytest.fixture(scope="module")
def parts():
    """Every installed plugin's parts, and the example plugin's (a part of every kind, with options)."""
    import sys

    sys.path.insert(0, str(FIXTURE_PLUGINS / "ftcore_example"))
    try:
        import ftcore_example

        yield collect_parts(get_plugin_manager(extra=[("example", ftcore_example)]))
    finally:
        sys.path.remove(str(FIXTURE_PLUGINS / "ftcore_example"))


def numeric(spec: Field) -> bool:
    return any(t in (int, float) for t in spec.types) and bool not in spec.types


def bad_values(spec: Field) -> Iterator[Any]:
    """Values of an accepted type that ``spec`` must refuse, derived from what it declares."""
    step = 1 if float not in spec.types else 0.5
    if spec.ge is not None:
        yield spec.ge - step
    if spec.gt is not None:
        yield spec.gt
    if spec.le is not None:
        yield spec.le + step
    if spec.lt is not None:
        yield spec.lt
    if spec.multiple_of:
        yield (spec.ge or spec.gt or 0) + spec.multiple_of + 1
    if numeric(spec) and float in spec.types:
        yield math.nan
        yield math.inf
    if spec.choices:
        yield "__not_a_choice__"
    if spec.registry:  # a part name: every registered kind (builders, adapter kinds, optimizers, ...)
        yield "__no_such_part__"
    if spec.pattern:
        yield next(v for v in ("", " ", "__ftcore_invalid__") if not re.fullmatch(spec.pattern, v))
    if spec.items is not None:
        for item in bad_values(spec.items):
            yield [item] * max(spec.min_len or 1, 1)
    if spec.min_len:
        yield []
    if spec.max_len is not None:
        yield list(spec.default) + list(spec.default)[:1] * (spec.max_len + 1 - len(spec.default))
    if spec.keys:
        for key, sub in spec.keys.items():
            for value in bad_values(sub):
                yield {key: value}


def schema_cases(parts) -> Iterator[tuple[str, dict[str, Any], str, Field]]:
    """(case id, recipe data, key path, field) for every key of the core schema and every part's options."""
    for section, fields in SCHEMA.items():
        if isinstance(fields, dict):
            for key, spec in fields.items():
                yield f"{section}.{key}", BASE, f"{section}.{key}", spec
    for section, (kind, key_of_part) in PART_OPTIONS.items():
        for part in parts.kind(kind):
            for key, spec in part.options.items():
                base = {**BASE, section: {**BASE.get(section, {}), key_of_part: part.name}}
                if part.name == "llava":
                    base["model"] = {**base["model"], "visual_encoder": "clip"}
                yield f"{part.name}:{section}.{key}", base, f"{section}.{key}", spec
    for part in parts.hooks:
        for key, spec in part.options.items():
            yield f"hook {part.name}.{key}", {**BASE, "hooks": [{"name": part.name}]}, f"hooks[0].{key}", spec


def put(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(data)
    node: Any = out
    pieces = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    for piece in pieces[:-1]:
        node = node[int(piece[1:-1])] if piece.startswith("[") else node.setdefault(piece, {})
    node[pieces[-1]] = value
    return out


def problems_of(tmp_path, data: dict[str, Any], parts) -> list:
    import yaml

    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(data))
    try:
        load_recipe(str(f), parts)
    except ValidationError as exc:
        return exc.problems
    return []


def test_every_numeric_key_declares_its_valid_range(parts) -> None:
    unbounded = [case for case, _, _, spec in schema_cases(parts) if numeric(spec) and not spec.choices
                 and all(b is None for b in (spec.ge, spec.gt, spec.le, spec.lt))]
    assert not unbounded, f"numeric keys without a valid range: {unbounded}"


def test_every_bad_value_of_every_key_is_reported_with_its_key(parts, tmp_path) -> None:
    checked = missed = 0
    misses = []
    for case, base, path, spec in schema_cases(parts):
        for value in bad_values(spec):
            problems = problems_of(tmp_path, put(base, path, value), parts)
            checked += 1
            if not any(p.path == path or p.path.startswith(path + ".") or p.path.startswith(path + "[") for p in problems):
                missed += 1
                misses.append(f"{case}={value!r}: {[str(p) for p in problems]}")
    assert not misses, "\n".join(misses)
    assert checked > 60  # the walk really covered the schema
    covered = {case.split(":")[0] for case, *_ in schema_cases(parts)} | {case.split(".")[0] for case, *_ in schema_cases(parts)}
    assert {"example_hf", "example_rslora", "example_single", "example_focal", "hook example_progress"} <= covered  # every part kind's options


def test_all_bad_values_are_reported_at_once(parts, tmp_path) -> None:
    data, paths = BASE, []
    for _, base, path, spec in schema_cases(parts):
        if base is BASE and path.split(".")[0] in ("adapter", "train", "data"):
            value = next(bad_values(spec), None)
            if value is not None:
                data = put(data, path, value)
                paths.append(path)
    reported = {p.path.split("[")[0] for p in problems_of(tmp_path, data, parts)}
    assert set(paths) <= reported, sorted(set(paths) - reported)
    assert len(paths) >= 15


@pytest.mark.parametrize("override,key", [
    ("adapter.r=0", "adapter.r"), ("adapter.dropout=1.5", "adapter.dropout"), ("train.device=tpu", "train.device"),
    ("train.betas=[2,3]", "train.betas[0]"), ("train.save_every=-3", "train.save_every"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio"), ("train.weight_decay=-1", "train.weight_decay"),
])
def test_dry_run_refuses_the_reported_bad_values_before_loading(override, key, tmp_path) -> None:
    proc = run_cli("run", "--recipe", "quickstart", override, "--dry-run", "--work-dir", str(tmp_path / "w"), cwd=tmp_path, env=cli_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()
