"""``ftcore run --dry-run`` does everything but load weights and train: it reads and checks every
data file as ``ftcore data check`` does; ``data check`` never calls lost tokens fine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import run_cli


def recipe_for(tmp_path: Path, model: Path, data: Path | str, **train) -> Path:
    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump({
        "model": {"builder": "hf", "path": str(model)}, "adapter": {"r": 4},
        "data": {"path": str(data), "template": "vicuna", "max_length": 64}, "train": {"max_steps": 1, **train},
        "work_dir": str(tmp_path / "work"),
    }))
    return f


def dry_run(recipe: Path, *overrides: str):
    proc = run_cli("run", "--recipe", str(recipe), "--dry-run", *overrides)
    assert "Traceback" not in proc.stderr
    assert not (recipe.parent / "work").exists()  # a dry run writes nothing
    return proc


def test_dry_run_reads_every_record_and_reports_malformed_ones_with_file_and_line(tmp_path, tiny_llama) -> None:
    data = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n" + json.dumps(good) + "\n")
    proc = dry_run(recipe_for(tmp_path, tiny_llama, data))
    assert proc.returncode == 1
    assert "model     hf from" in proc.stdout  # the plan first
    assert f"{data.name}:2" in proc.stdout and "1 record(s) with problems" in proc.stdout


def test_dry_run_with_good_data_reports_counts_and_succeeds(tmp_path, tiny_llama, self_cognition_file) -> None:
    proc = dry_run(recipe_for(tmp_path, tiny_llama, self_cognition_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "records 64, format openai (detected)" in proc.stdout and "every record is fine" in proc.stdout


@pytest.mark.parametrize("kind,expected", [("pdf", "unsupported data file type '.pdf'"), ("empty folder", "holds no data files")])
def test_dry_run_refuses_data_it_cannot_read(tmp_path, tiny_llama, kind, expected) -> None:
    if kind == "pdf":
        data = tmp_path / "paper.pdf"
        data.write_bytes(b"%PDF-1.4\n")
    else:
        data = tmp_path / "nothing"
        data.mkdir()
    proc = dry_run(recipe_for(tmp_path, tiny_llama, data))
    assert proc.returncode == 1 and expected in proc.stdout


def test_data_check_never_calls_truncated_records_fine(tmp_path, tiny_llama) -> None:
    data = tmp_path / "long.jsonl"
    long = {"messages": [{"role": "user", "content": "tell me " * 80}, {"role": "assistant", "content": "ok " * 40}]}
    data.write_text(json.dumps(long) + "\n")
    proc = run_cli("data", "check", "--recipe", str(recipe_for(tmp_path, tiny_llama, data)))
    assert "every record is fine" not in proc.stdout
    assert "lose tokens past max_length" in proc.stdout and "raise data.max_length" in proc.stdout
