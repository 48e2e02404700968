"""The eval loss during training: held-out data (a file or a fixed share), the same weighting as
training, the best checkpoint kept beside the last ones, across a resume and for any objective."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from helpers import run_cli

pytestmark = pytest.mark.slow


def recipe(tmp_path, model, train_file, **extra):
    f = tmp_path / "recipe.yaml"
    body = {
        "model": {"builder": "hf", "path": str(model)}, "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"path": str(train_file), "template": "vicuna", "max_length": 128},
        "train": {"max_steps": 4, "lr": 5e-3, "grad_accum": 2, "save_every": 2, "save_total_limit": 1, "device": "cpu"},
        "hooks": ["metrics_log"], "work_dir": str(tmp_path / "wd"),
    }
    for section, values in extra.items():
        body[section] = {**body.get(section, {}), **values}
    f.write_text(yaml.safe_dump(body))
    return f


def metrics(work_dir):
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def held_out_file(tmp_path):
    from ftcore.data.self_cognition import self_cognition_records

    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in self_cognition_records("Zed", 6, "en", 7)))
    return path


def test_the_eval_loss_equals_an_independent_computation_on_the_held_out_records(tmp_path, tiny_llama, self_cognition_file) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcore.data.encode import encode_batch
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    held_out = held_out_file(tmp_path)
    run_cli("run", "--recipe", str(recipe(tmp_path, tiny_llama, self_cognition_file, data={"eval_path": str(held_out)}, train={"eval_every": 2})), check=True)
    logged = {m["step"]: m["eval_loss"] for m in metrics(tmp_path / "wd") if "eval_loss" in m}
    assert sorted(logged) == [2, 4]

    parts = collect_parts(get_plugin_manager())
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32), str(tmp_path / "wd" / "checkpoint-4")).eval()
    samples = [parts.formats.get("openai").convert(json.loads(line)) for line in held_out.read_text().splitlines()]
    ids, labels = encode_batch(samples, tokenizer, parts.templates.get("vicuna"), 128).as_lists()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in zip(ids, labels):  # each sample alone, full logits
            logits = model(input_ids=torch.tensor([x])).logits[0, :-1]
            targets = torch.tensor([-100] + y[1:])[1:]
            total += float(torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    assert logged[4] == pytest.approx(total / count, rel=1e-4)


def test_the_best_checkpoint_is_the_lowest_eval_loss_and_survives_rotation(tmp_path, tiny_llama, self_cognition_file) -> None:
    path = recipe(tmp_path, tiny_llama, self_cognition_file, data={"eval_ratio": 0.2}, train={"eval_every": 1, "keep_best": "eval_loss", "max_steps": 5, "save_every": 0})
    proc = run_cli("run", "--recipe", str(path), check=True)
    wd = tmp_path / "wd"
    logged = {m["step"]: m["eval_loss"] for m in metrics(wd)}
    best = json.loads((wd / "best.json").read_text())
    step = min(logged, key=logged.get)
    assert best == {"checkpoint": f"checkpoint-{step}", "eval_loss": pytest.approx(logged[step])}
    kept = sorted(p.name for p in wd.glob("checkpoint-*"))
    assert kept == sorted({f"checkpoint-{step}", "checkpoint-5"}) and "best eval loss" in proc.stdout


def test_rotation_keeps_the_best_checkpoint_beside_the_last_ones(tmp_path) -> None:
    from ftcore.train.checkpoint import begin_checkpoint, finish_checkpoint, mark_best

    for step in (1, 2, 3, 4):
        folder = finish_checkpoint(tmp_path, step, begin_checkpoint(tmp_path, step), {}, keep=2)
        if step == 2:
            mark_best(tmp_path, folder, 0.5)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]


def test_a_resumed_run_keeps_its_eval_schedule_and_best_so_far(tmp_path, tiny_llama, self_cognition_file) -> None:
    path = recipe(tmp_path, tiny_llama, self_cognition_file, data={"eval_ratio": 0.2}, train={"eval_every": 2, "keep_best": "eval_loss", "save_total_limit": 0})
    run_cli("run", "--recipe", str(path), check=True)
    wd, again = tmp_path / "wd", tmp_path / "again"
    shutil.copytree(wd, again, ignore=shutil.ignore_patterns("checkpoint-4"))
    (again / "latest").write_text("checkpoint-2")
    (again / "best.json").write_text(json.dumps({"checkpoint": "checkpoint-2", "eval_loss": metrics(wd)[1]["eval_loss"]}))
    (again / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics(wd)[:2]))
    run_cli("run", "--recipe", str(path), "--work-dir", str(again), "--resume", check=True)
    assert [(m["step"], m.get("eval_loss")) for m in metrics(again)] == [(m["step"], m.get("eval_loss")) for m in metrics(wd)]
    assert json.loads((again / "best.json").read_text()) == json.loads((wd / "best.json").read_text())


def test_the_eval_loss_works_for_preference_objectives(tmp_path) -> None:
    run_cli("run", "--recipe", "quickstart_dpo", "data.eval_ratio=0.1", "train.eval_every=10", "train.max_steps=10",
            "hooks=[preference_pairs, quickstart_assets, metrics_log]", cwd=tmp_path, check=True)
    last = metrics(tmp_path / "work_dirs" / "quickstart_dpo")[-1]
    assert {"eval_loss", "eval_rewards/accuracy", "eval_rewards/margin"} <= last.keys() and last["eval_rewards/accuracy"] >= 0.9


def test_eval_settings_without_held_out_data_are_refused(tmp_path, tiny_llama, self_cognition_file) -> None:
    proc = run_cli("run", "--recipe", str(recipe(tmp_path, tiny_llama, self_cognition_file, train={"keep_best": "eval_loss", "eval_every": 5})), "--dry-run")
    assert proc.returncode == 2 and "train.keep_best: needs held-out data" in proc.stderr and "train.eval_every: needs held-out data" in proc.stderr
    proc = run_cli("run", "--recipe", str(recipe(tmp_path, tiny_llama, self_cognition_file, data={"eval_path": str(self_cognition_file), "eval_ratio": 0.1})), "--dry-run")
    assert proc.returncode == 2 and "not both" in proc.stderr
