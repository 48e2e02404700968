"""Incremental pre-training on raw text through the real CLI: a .txt and a folder of .md are read as
documents, long ones cut into chunks of max_length with no token lost, and the model learns the text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from helpers import run_cli

pytestmark = pytest.mark.slow

SENTENCE = "The lighthouse keeper climbs the stairs at dusk and lights the lamp for the ships."
LONG = " ".join([SENTENCE] * 6)  # one paragraph of several hundred tokens: longer than max_length


def corpus(root: Path) -> tuple[Path, Path, list[str]]:
    """A .txt of paragraphs (one long) and a folder of .md files; returns both and every document."""
    txt = root / "book.txt"
    paragraphs = [SENTENCE, LONG, "Ships pass the rocks safely when the lamp is lit."]
    txt.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    notes = root / "notes"
    notes.mkdir()
    (notes / "a.md").write_text(f"# Lamps\n\n{SENTENCE}\n", encoding="utf-8")
    (notes / "b.md").write_text(f"{LONG}\n", encoding="utf-8")
    return txt, notes, paragraphs + ["# Lamps", SENTENCE, LONG]


def recipe(root: Path, model: Path, data: list[str], **train) -> Path:
    path = root / "pretrain.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"builder": "hf", "path": str(model), "gradient_checkpointing": False},
        "adapter": {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
        "data": {"path": data, "format": "auto", "template": None, "max_length": 64},
        "train": {"max_steps": 16, "lr": 5.0e-3, "micro_batch": 2, "grad_accum": 1, "warmup_ratio": 0.0, "save_every": 0, "seed": 3, **train},
        "hooks": ["dataset_info", "metrics_log"],
        "work_dir": str(root / "wd"),
    }))
    return path


def test_raw_text_is_chunked_with_no_token_lost(tmp_path, tiny_llama) -> None:
    from transformers import AutoTokenizer

    txt, notes, documents = corpus(tmp_path)
    r = recipe(tmp_path, tiny_llama, [str(txt), str(notes)])
    proc = run_cli("data", "check", "-r", str(r), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    lengths = [len(tok(d, add_special_tokens=False)["input_ids"]) + 2 for d in documents]  # BOS + text + EOS
    long_ones = [n for n in lengths if n > 64]
    chunks = sum(-(-n // 64) for n in long_ones)
    assert len(long_ones) == 2 and f"{len(long_ones)} long text(s) split into {chunks} chunks" in out
    assert f"records {len(documents)}, format pretrain (detected)" in out
    assert f"samples {len(documents) - len(long_ones) + chunks}, tokens {sum(lengths)} (" in out  # every token of every document
    assert "truncated to max_length 64: 0" in out and "✓ every record is fine" in out
    # one document per file: the two .md files are two records
    proc = run_cli("data", "check", "-r", str(r), f"data.path={notes}", "data.text_split=file", cwd=tmp_path)
    assert proc.returncode == 0 and "records 2, format pretrain" in proc.stdout


def test_raw_text_trains_and_logs_timed_lines(tmp_path, tiny_llama) -> None:
    txt, notes, _ = corpus(tmp_path)
    proc = run_cli("run", "--recipe", str(recipe(tmp_path, tiny_llama, [str(txt), str(notes)])), cwd=tmp_path, check=True)
    assert "long text(s) split into" in proc.stdout and "format detected: pretrain" in proc.stdout
    losses = [json.loads(line)["loss"] for line in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 16 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    # not a terminal: a line with the time of day, the step, a smoothed tokens/s, elapsed time and time left
    lines = [line for line in proc.stdout.splitlines() if re.search(r" step \d+/16 ", line)]
    assert lines and all(
        re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step \d+/16 epoch [\d.]+ loss [\d.]+ lr \S+ \d+ tok/s elapsed \d+:\d\d:\d\d eta \d+:\d\d:\d\d", line)
        for line in lines
    ), lines
    assert lines[-1].endswith("eta 0:00:00")
