"""Checkpoints work from any directory; a bad --resume is refused before anything loads; a resumed
run of another length keeps its learning rate continuous."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step quickstart run (relative model.path, as the quickstart has) with checkpoints at 2 and 4."""
    root = tmp_path_factory.mktemp("relative-run")
    run_cli("run", "--recipe", "quickstart", "train.max_steps=4", "train.save_every=2", "train.save_total_limit=0",
            "hooks=[quickstart_assets, metrics_log]", cwd=root, check=True)
    return root / "work_dirs" / "quickstart"


def copy_checkpoint(run_dir: Path, dest: Path, model_path: str, base: str) -> Path:
    ckpt = dest / "checkpoint-4"
    shutil.copytree(run_dir / "checkpoint-4", ckpt)
    recipe = yaml.safe_load((ckpt / "recipe.yaml").read_text())
    recipe["model"]["path"] = model_path
    (ckpt / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    config = json.loads((ckpt / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (ckpt / "adapter_config.json").write_text(json.dumps(config))
    return ckpt


def test_a_checkpoint_records_resolved_paths_and_chats_from_any_directory(run_dir, tmp_path) -> None:
    ckpt = run_dir / "checkpoint-4"
    recorded = yaml.safe_load((ckpt / "recipe.yaml").read_text())
    model = run_dir / "tiny-internlm2-chat"
    assert recorded["model"]["path"] == str(model.resolve()) and Path(recorded["data"]["path"]).is_absolute()
    assert json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"] == str(model.resolve())
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["model"]["path"] == str(model.resolve())
    proc = run_cli("chat", str(ckpt.resolve()), "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_an_older_checkpoint_pointing_into_the_conversion_cache_still_chats(run_dir, tmp_path) -> None:
    """Checkpoints written before paths were resolved: a relative model.path and peft's base in
    ftcore's conversion cache, which has no tokenizer (the checkpoint's own is used)."""
    from ftcore_internlm2.builder import llama_folder

    cache = llama_folder(str(run_dir / "tiny-internlm2-chat"))
    assert not (Path(cache) / "tokenizer.json").exists()
    ckpt = copy_checkpoint(run_dir, tmp_path, "./work_dirs/quickstart/tiny-internlm2-chat", str(cache))
    proc = run_cli("chat", str(ckpt), "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_a_moved_base_model_is_named_with_the_flag_to_give(run_dir, tmp_path) -> None:
    ckpt = copy_checkpoint(run_dir, tmp_path, str(tmp_path / "moved-away"), str(tmp_path / "moved-away"))
    proc = run_cli("chat", str(ckpt), "--prompt", "hi", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "moved-away") in proc.stderr and "ftcore chat BASE --adapter ADAPTER" in proc.stderr


def test_a_missing_resume_checkpoint_is_reported_before_the_model_loads(run_dir) -> None:
    proc = run_cli("run", "--recipe", str(run_dir / "recipe.yaml"), "--resume", str(run_dir / "checkpoint-99"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "--resume" in proc.stderr
    assert "model:" not in proc.stdout and "Traceback" not in proc.stderr


def test_resuming_past_max_steps_is_an_error_not_a_nan_run(run_dir) -> None:
    proc = run_cli("run", "--recipe", str(run_dir / "recipe.yaml"), "--resume", "train.max_steps=3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "at step 4" in proc.stderr and "train.max_steps" in proc.stderr and "model:" not in proc.stdout


def test_a_longer_resumed_run_keeps_its_learning_rate_continuous(run_dir, tmp_path) -> None:
    """Resumed from step 2 of 4 into a run of 8 steps: the learning rate goes on from where it was
    and decays to the end of the new schedule, never jumping up."""
    work = tmp_path / "w"
    shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("checkpoint-4"))
    (work / "latest").write_text("checkpoint-2")
    (work / "metrics.jsonl").write_text("".join(line + "\n" for line in (run_dir / "metrics.jsonl").read_text().splitlines()[:2]))
    proc = run_cli("run", "--recipe", str(work / "recipe.yaml"), "--work-dir", str(work), "--resume", "train.max_steps=8")
    assert proc.returncode == 0, proc.stderr
    assert "goes on from where it was" in proc.stdout
    lrs = [json.loads(line)["lr"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    old = [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 8 and lrs[:2] == old[:2]
    assert all(b <= a + 1e-12 for a, b in zip(lrs[1:], lrs[2:])), lrs  # after warmup: never up
    assert lrs[2] == pytest.approx(old[2], rel=0.35) and lrs[-1] < lrs[2]


def test_the_resumed_schedule_is_continuous_and_ends_at_the_minimum() -> None:
    import torch

    from ftcore.train.optim import build_scheduler

    cfg = {"warmup_ratio": 0.1, "schedule": "cosine", "min_lr_ratio": 0.1}
    params = [torch.nn.Parameter(torch.zeros(1))]
    old = build_scheduler(torch.optim.SGD(params, lr=1.0), cfg, 100)
    old_lrs = []
    for _ in range(101):
        old_lrs.append(old.get_last_lr()[0])
        old.optimizer.step()
        old.step()
    new = build_scheduler(torch.optim.SGD(params, lr=1.0), cfg, 200, resumed=(50, 100))
    fn = new.lr_lambdas[0]
    assert [fn(s) for s in range(51)] == pytest.approx(old_lrs[:51])
    assert fn(51) == pytest.approx(old_lrs[50], rel=0.01) and fn(200) == pytest.approx(0.1)
    assert all(fn(s + 1) <= fn(s) + 1e-12 for s in range(50, 200))
    extended = build_scheduler(torch.optim.SGD(params, lr=1.0), cfg, 200, resumed=(100, 100)).lr_lambdas[0]
    assert extended(100) > 0.5  # a finished run that is extended follows the schedule of the new length
