"""What a newcomer meets around a run, through the real CLI: `list -p` shows only what matches, a warning
when one step covers several epochs, exit statuses 130/143 for Ctrl-C/SIGTERM, a resumed run's
first evaluate_chat sample labelled as such."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ftcore.data.self_cognition import self_cognition_records
from helpers import cli_env, run_cli


def make_recipe(root: Path, model: Path, data: Path, max_length: int = 128, **train) -> Path:
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"builder": "hf", "path": str(model), "gradient_checkpointing": False},
        "adapter": {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"path": str(data), "format": "openai", "template": "internlm2_chat", "max_length": max_length},
        "train": {"max_steps": 4, "lr": 1.0e-3, "micro_batch": 1, "grad_accum": 1, "save_every": 0, "seed": 0, **train},
        "hooks": ["metrics_log"],
        "work_dir": str(root / "wd"),
    }))
    return path


def samples(root: Path, n: int) -> Path:
    path = root / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in self_cognition_records("Zed", n, "en", 0)))
    return path


def test_list_pattern_prints_only_the_categories_with_a_match() -> None:
    out = run_cli("list", "-p", "alpaca", check=True).stdout
    assert "formats" in out and "alpaca" in out
    assert "strategies" not in out and "optimizers" not in out and "hooks" not in out  # no empty tables
    none = run_cli("list", "-p", "no-such-part-xyz", check=True).stdout
    assert "nothing matches 'no-such-part-xyz'" in none and "formats" not in none
    assert "nothing matches 'zzz' (in the names and descriptions of schedules)" in run_cli("list", "schedules", "-p", "zzz", check=True).stdout


@pytest.mark.slow
def test_a_step_that_covers_several_epochs_is_warned_about(tmp_path, tiny_llama) -> None:
    data = samples(tmp_path, 10)  # ten short samples pack into one row: one micro batch is an epoch
    proc = run_cli("run", "--recipe", str(make_recipe(tmp_path, tiny_llama, data, 1024, grad_accum=8, max_steps=1)), check=True)
    assert "one step covers 8 epochs of 10 sample(s)" in proc.stdout
    assert "lower train.grad_accum/micro_batch, or add data" in proc.stdout
    proc = run_cli("run", "--recipe", str(make_recipe(tmp_path, tiny_llama, data, 1024, max_steps=1)), "--work-dir", str(tmp_path / "wd2"), check=True)
    assert "one step covers" not in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_with_the_shells_status(tmp_path, tiny_llama, sig, status) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, samples(tmp_path, 64), max_steps=200)
    proc = subprocess.Popen([sys.executable, "-m", "ftcore.cli", "run", "--recipe", str(recipe)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.time() + 180
        while not any(" step 1/200 " in line for line in seen):
            assert time.time() < deadline and proc.poll() is None, "".join(seen)
            if sel.select(timeout=1):
                seen.append(proc.stdout.readline())
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "Resume with" in out and "Traceback" not in err
    assert (tmp_path / "wd" / "latest").is_file()


@pytest.mark.slow
def test_a_resumed_run_does_not_call_its_first_sample_before_training(tmp_path, tiny_llama) -> None:
    data = samples(tmp_path, 16)
    hooks = {"hooks": ["metrics_log", {"name": "evaluate_chat", "prompts": ["Who are you?"], "max_new_tokens": 4}]}
    recipe = make_recipe(tmp_path, tiny_llama, data, max_steps=2)
    spec = yaml.safe_load(recipe.read_text()) | hooks
    recipe.write_text(yaml.safe_dump(spec))
    first = run_cli("run", "--recipe", str(recipe), check=True).stdout
    assert "eval (before training)" in first
    resumed = run_cli("run", "--recipe", str(recipe), "--resume", "train.max_steps=3", check=True).stdout
    assert "eval (resumed at step 2)" in resumed and "before training" not in resumed
    assert json.loads((tmp_path / "wd" / "eval" / "step-2.json").read_text())["label"] == "resumed at step 2"
