"""Training end to end through the CLI: LoRA/QLoRA/full, checkpoints, exact resume, signals, NaN stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import cli_env, run_cli

pytestmark = pytest.mark.slow


def make_recipe(tmp_path: Path, model: Path, data: Path, **sections) -> Path:
    recipe = {
        "model": {"builder": "hf", "path": str(model), "gradient_checkpointing": False},
        "adapter": {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.05},
        "data": {"path": str(data), "format": "openai", "template": "internlm2_chat", "max_length": 128},
        "train": {"max_steps": 6, "lr": 5.0e-3, "micro_batch": 2, "grad_accum": 2, "save_every": 3, "seed": 1},
        "hooks": ["metrics_log"],
        "work_dir": str(tmp_path / "wd"),
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            recipe.setdefault(section, {}).update(values)
        else:
            recipe[section] = values
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def metrics(work_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (work_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def test_lora_run_learns_and_writes_peft_checkpoints(tmp_path, tiny_llama, self_cognition_file) -> None:
    # metrics_log is listed first, yet records what throughput adds to each step's metrics
    hooks = ["metrics_log", {"name": "throughput", "peak_tflops": 100}]
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, train={"max_steps": 12, "save_every": 4, "save_total_limit": 2}, hooks=hooks)
    proc = run_cli("run", "--recipe", str(recipe), check=True)
    wd = tmp_path / "wd"
    losses = [m["loss"] for m in metrics(wd)]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    assert all({"step", "loss", "lr", "tokens_per_s", "tflops", "mfu"} <= set(m) for m in metrics(wd))
    # keep the last save_total_limit checkpoints; latest points at the final one
    assert sorted(p.name for p in wd.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    assert (wd / "latest").read_text().strip() == "checkpoint-12"
    ckpt = wd / "checkpoint-12"
    for name in ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "rng.pt", "recipe.yaml", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    assert not list(wd.glob(".tmp-*"))
    assert f"ftcore chat {tiny_llama} --adapter {ckpt}" in proc.stdout

    # the adapter loads in plain peft, with no conversion, and reproduces the trained weights
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)), str(ckpt))
    saved = load_file(str(ckpt / "adapter_model.safetensors"))
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(state) == len(saved) and len(saved) > 0
    nonzero_b = [v for k, v in saved.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in nonzero_b)  # B starts at zero: it was trained
    assert torch.isfinite(model(torch.tensor([[1, 5, 6]])).logits).all()


def test_resume_continues_exactly(tmp_path, tiny_llama, self_cognition_file) -> None:
    straight = tmp_path / "straight"
    straight.mkdir()
    recipe = make_recipe(straight, tiny_llama, self_cognition_file)
    run_cli("run", "--recipe", str(recipe), check=True)
    full = metrics(straight / "wd")

    # a second process that has only the half-way checkpoint continues from it
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    recipe2 = make_recipe(resumed, tiny_llama, self_cognition_file)
    (resumed / "wd").mkdir()
    shutil.copytree(straight / "wd" / "checkpoint-3", resumed / "wd" / "checkpoint-3")
    (resumed / "wd" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in full[:3]))
    proc = run_cli("run", "--recipe", str(recipe2), "--resume", check=True)
    assert "resumed from" in proc.stdout and "at step 3/6" in proc.stdout
    after = metrics(resumed / "wd")
    assert [m["step"] for m in after] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in after[3:]] == [m["loss"] for m in full[3:]]
    assert [m["lr"] for m in after[3:]] == [m["lr"] for m in full[3:]]


def _start(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ftcore.cli", "run", "--recipe", str(recipe), *extra],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, train={"max_steps": 60, "save_every": 0})
    wd = tmp_path / "wd"
    proc = _start(recipe)
    _wait_for(lambda: (wd / "metrics.jsonl").is_file() and len(metrics(wd)) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    step = int((wd / "latest").read_text().strip().split("-")[1])
    assert 2 <= step < 60 and len(metrics(wd)) == step
    state = json.loads((wd / f"checkpoint-{step}" / "trainer_state.json").read_text())
    assert state["complete"] is True and state["step"] == step
    assert "Resume with" in out and "Traceback" not in err
    resume_cmd = out.split("Resume with:")[1].split()
    assert resume_cmd[:2] == ["ftcore", "run"] and resume_cmd[-1] == "--resume"
    done = run_cli(*resume_cmd[1:], check=True)
    assert f"at step {step}/60" in done.stdout
    assert [m["step"] for m in metrics(wd)] == list(range(1, 61))


def test_sigkill_resumes_from_the_last_complete_checkpoint(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, train={"max_steps": 60, "save_every": 2, "save_total_limit": 0})
    wd = tmp_path / "wd"
    proc = _start(recipe)
    _wait_for(lambda: (wd / "checkpoint-4" / "trainer_state.json").is_file(), proc)
    proc.kill()
    proc.wait()
    # what a kill during a save can leave: a temporary folder, an incomplete checkpoint,
    # and a pointer to it
    (wd / ".tmp-checkpoint-98-1").mkdir()
    bogus = wd / "checkpoint-99"
    bogus.mkdir()
    (bogus / "adapter_model.safetensors").write_bytes(b"half")
    (wd / "latest").write_text("checkpoint-99")
    newest = max(int(p.name.split("-")[1]) for p in wd.glob("checkpoint-*") if (p / "trainer_state.json").is_file())
    done = run_cli("run", "--recipe", str(recipe), "--resume", check=True)
    assert f"checkpoint-{newest} at step {newest}/60" in done.stdout
    assert [m["step"] for m in metrics(wd)] == list(range(1, 61))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, train={"max_steps": 30, "save_every": 1, "lr": 1.0e30, "warmup_ratio": 0.0, "max_grad_norm": 0.0})
    proc = run_cli("run", "--recipe", str(recipe))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the loss became" in proc.stderr and "Traceback" not in proc.stderr
    wd = tmp_path / "wd"
    good = sorted(wd.glob("checkpoint-*"))
    assert good and "last good checkpoint is" in proc.stderr and good[-1].name in proc.stderr


def test_full_fine_tune_saves_an_hf_model(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, adapter={"kind": "full"}, train={"max_steps": 3, "lr": 1.0e-3})
    run_cli("run", "--recipe", str(recipe), check=True)
    ckpt = tmp_path / "wd" / "checkpoint-3"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    changed = [n for (n, a), (_, b) in zip(model.named_parameters(), base.named_parameters()) if not (a == b).all()]
    assert len(changed) > len(list(base.parameters())) // 2


def test_qlora_quantizes_the_base_and_trains(tmp_path, tiny_llama, self_cognition_file) -> None:
    pytest.importorskip("bitsandbytes")
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, adapter={"kind": "qlora"}, train={"max_steps": 8, "save_every": 0})
    proc = run_cli("run", "--recipe", str(recipe), check=True)
    assert "nf4" in proc.stdout
    losses = [m["loss"] for m in metrics(tmp_path / "wd")]
    assert losses[-1] < losses[0]
    cfg = json.loads((tmp_path / "wd" / "checkpoint-8" / "adapter_config.json").read_text())
    assert "lm_head" not in cfg["target_modules"] and {"q_proj", "down_proj"} <= set(cfg["target_modules"])


def test_loss_is_token_weighted_over_the_accumulated_batch(tiny_llama) -> None:
    """Two micro batches with 1 and many trained tokens: the step loss is sum / all tokens, not a mean of means."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.data.collate import collate_rows
    from ftcore.data.pack import Encoded, pack
    from ftcore.recipe import Recipe, validate
    from ftcore.train.context import RunContext
    from ftcore.train.loop import Schedule, Trainer
    from ftcore.train.objective import SFT, loss_sum
    from ftcore.models.plan import TrainingPlan
    from ftcore.train.optim import build_optimizer, build_scheduler
    from ftcore.train.strategy import SingleStrategy

    ids = [list(range(10, 40)), list(range(50, 60))]
    labels = [[-100] * 28 + ids[0][28:], list(ids[1])]  # 2 trained tokens vs 10
    data = pack(Encoded.from_lists(ids, labels), 64, packed=False, shuffle=False)
    recipe = Recipe({"model": {"builder": "hf", "path": "m"}, "data": {"path": "d"}, "train": {"micro_batch": 1, "grad_accum": 2, "lr": 1e-9, "device": "cpu"}}, "inline")
    validate(recipe)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    ctx = RunContext(recipe, Path("unused"), strategy=SingleStrategy(recipe, "fp32"), data=data, model=model)
    opt = build_optimizer(list(model.parameters()), recipe["train"])
    sched = build_scheduler(opt, recipe["train"], 1)
    ctx.strategy.prepare(model, opt, sched)
    schedule = Schedule(len(data), 1, 1, 0, 0, shuffle=False)
    collate = lambda rows: collate_rows([data.row(i) for i in rows], 0)
    with torch.no_grad():
        parts = [loss_sum(model, collate(schedule.rows(g))) for g in range(2)]
    expected = sum(float(l) for l, _ in parts) / sum(int(n) for _, n in parts)
    mean_of_means = sum(float(l) / int(n) for l, n in parts) / 2
    got = Trainer(ctx, TrainingPlan(model), SFT(), opt, sched, schedule, collate, [], lambda: None, "fp32").train_step()["loss"]
    assert got == pytest.approx(expected, rel=1e-5)
    assert abs(got - mean_of_means) > 1e-3


def test_training_runs_in_train_mode(tiny_llama) -> None:
    from ftcore.models.hf import HFBuilder
    from ftcore.models.loading import load_base_model
    from ftcore.models.plan import prepare_for_training
    from ftcore.recipe import Recipe, validate

    recipe = Recipe({"model": {"builder": "hf", "path": str(tiny_llama)}, "data": {"path": "d"}}, "inline")
    validate(recipe)
    import torch

    model = prepare_for_training(load_base_model(recipe["model"], HFBuilder(), torch.device("cpu"), "fp32"), recipe["model"], recipe["adapter"]).model
    assert model.training and all(m.training for m in model.modules())
