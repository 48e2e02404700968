"""Distributed strategies on CPU (gloo): DDP and DeepSpeed ZeRO match the single-process run, save PEFT adapters, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import run_cli
from test_train import make_recipe, metrics

pytestmark = pytest.mark.slow
STEPS = 6
NO_DROPOUT = {"kind": "lora", "dropout": 0.0}  # dropout masks differ between 1 and 2 processes


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama, self_cognition_file) -> list[dict]:
    """The single-process run every strategy must reproduce (same global batch of 4 rows)."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe = make_recipe(tmp, tiny_llama, self_cognition_file, adapter=NO_DROPOUT, train={"max_steps": STEPS, "micro_batch": 2, "grad_accum": 2})
    run_cli("run", "--recipe", str(recipe), check=True)
    return metrics(tmp / "wd")


def assert_same_curve(got: list[dict], ref: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in ref]
    for a, b in zip(got, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-4)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6)


def assert_peft_adapter(ckpt: Path, base: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(ckpt))
    saved = load_file(str(ckpt / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())
    assert torch.isfinite(model(torch.tensor([[1, 5, 6]])).logits).all()


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "zero3 keep_base=never"])
def test_single_process_zero_matches_and_saves_a_peft_adapter(strategy, tmp_path, tiny_llama, self_cognition_file, reference) -> None:
    """ZeRO-2, ZeRO-3 keeping the frozen base whole (it fits: auto) and ZeRO-3 sharding it train alike."""
    pytest.importorskip("deepspeed")
    name, *options = strategy.split()
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, adapter=NO_DROPOUT, train={"max_steps": STEPS, "micro_batch": 2, "grad_accum": 2},
                         strategy={"name": name, **dict(o.split("=") for o in options)})
    proc = run_cli("run", "--recipe", str(recipe), check=True)
    if name == "zero3":
        kept = "never" not in strategy
        assert ("stays whole on each device" in proc.stdout) == kept and ("is sharded over 1 process(es)" in proc.stdout) != kept
    assert_same_curve(metrics(tmp_path / "wd"), reference)
    ckpt = tmp_path / "wd" / f"checkpoint-{STEPS}"
    assert (ckpt / "deepspeed").is_dir()
    assert_peft_adapter(ckpt, tiny_llama)


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_two_processes_match_the_single_process_run(strategy, tmp_path, tiny_llama, self_cognition_file, reference) -> None:
    if strategy.startswith("zero"):
        pytest.importorskip("deepspeed")
    # 2 processes x micro_batch 1 x grad_accum 2 = the reference's global batch of 4 rows
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, adapter=NO_DROPOUT, train={"max_steps": STEPS, "micro_batch": 1, "grad_accum": 2}, strategy={"name": strategy})
    proc = run_cli("run", "--recipe", str(recipe), "--nproc-per-node", "2", check=True)
    assert proc.stdout.count("done:") == 1  # only rank 0 reports
    assert_same_curve(metrics(tmp_path / "wd"), reference)
    state = json.loads((tmp_path / "wd" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert_peft_adapter(tmp_path / "wd" / f"checkpoint-{STEPS}", tiny_llama)


def test_single_strategy_recipe_switches_to_ddp_for_several_processes(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file)
    proc = run_cli("run", "--recipe", str(recipe), "--nproc-per-node", "2", "--dry-run", check=True)
    assert "using strategy ddp" in proc.stdout and "strategy  ddp" in proc.stdout and "launch    2 process(es)" in proc.stdout


def test_resume_under_zero2_continues_exactly(tmp_path, tiny_llama, self_cognition_file) -> None:
    pytest.importorskip("deepspeed")
    first = tmp_path / "first"
    first.mkdir()
    recipe = make_recipe(first, tiny_llama, self_cognition_file, strategy={"name": "zero2"})
    run_cli("run", "--recipe", str(recipe), check=True)
    full = metrics(first / "wd")
    second = tmp_path / "second"
    (second / "wd").mkdir(parents=True)
    shutil.copytree(first / "wd" / "checkpoint-3", second / "wd" / "checkpoint-3")
    recipe2 = make_recipe(second, tiny_llama, self_cognition_file, strategy={"name": "zero2"})
    proc = run_cli("run", "--recipe", str(recipe2), "--resume", check=True)
    assert "at step 3/6" in proc.stdout
    assert [m["loss"] for m in metrics(second / "wd")] == [m["loss"] for m in full[3:]]


def test_single_device_recipe_refuses_a_distributed_launch(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, distributed=False)
    proc = run_cli("run", "--recipe", str(recipe), "--nproc-per-node", "2")
    assert proc.returncode == 2 and "runs on one device only" in proc.stderr and "Traceback" not in proc.stderr


def test_qlora_with_zero3_is_refused_with_a_reason(tmp_path, tiny_llama, self_cognition_file) -> None:
    pytest.importorskip("deepspeed")
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, adapter={"kind": "qlora"}, strategy={"name": "zero3"})
    proc = run_cli("run", "--recipe", str(recipe))
    assert proc.returncode == 2 and "cannot be partitioned by ZeRO-3" in proc.stderr and "zero2" in proc.stderr


def test_an_fp8_base_with_zero3_is_refused_with_a_reason(tmp_path, tiny_llama, self_cognition_file) -> None:
    pytest.importorskip("deepspeed")
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, strategy={"name": "zero3"})
    proc = run_cli("run", "--recipe", str(recipe), "model.fp8_base=true")
    assert proc.returncode == 2 and "error: model.fp8_base:" in proc.stderr and "does not partition" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "Loading weights" not in proc.stderr + proc.stdout


def test_deepspeed_config_is_derived_from_the_recipe_and_overridable(tmp_path) -> None:
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager
    from ftcore.recipe import Recipe, validate
    from ftcore_zero.strategy import deepspeed_config

    data = {"model": {"builder": "hf", "path": "m"}, "data": {"path": "d"}, "train": {"micro_batch": 3, "grad_accum": 5, "max_grad_norm": 0.5},
            "strategy": {"name": "zero2", "config": {"zero_optimization": {"reduce_bucket_size": 1000}}}}
    recipe = Recipe(data, "inline")
    validate(recipe, collect_parts(get_plugin_manager()))  # strategy.config is the zero strategies' option
    cfg = deepspeed_config(recipe, 2, True, "bf16", recipe["strategy"]["config"])
    assert cfg["train_micro_batch_size_per_gpu"] == 3 and cfg["gradient_accumulation_steps"] == 5 and cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["zero_optimization"]["reduce_bucket_size"] == 1000
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"gradient_clipping": 2.0}))
    assert deepspeed_config(recipe, 3, False, "fp32", str(path))["gradient_clipping"] == 2.0


def test_dpo_with_an_eval_loss_on_two_processes_matches_one(tmp_path) -> None:
    """Pairs, the DPO reference pass and the eval loss (each process its share, summed) under DDP."""
    args = ("run", "--recipe", "quickstart_dpo", "train.max_steps=4", "data.eval_ratio=0.1", "train.eval_every=2", "adapter.dropout=0.0",
            "hooks=[preference_pairs, quickstart_assets, metrics_log]")
    run_cli(*args, "train.micro_batch=2", "--work-dir", str(tmp_path / "one"), cwd=tmp_path, check=True)
    run_cli(*args, "train.micro_batch=1", "--work-dir", str(tmp_path / "two"), "--nproc-per-node", "2", cwd=tmp_path, check=True)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert_same_curve(two, one)
    for a, b in zip(one, two):
        for key in ("eval_loss", "eval_rewards/accuracy", "rewards/margin"):
            assert (key in a) == (key in b) and (key not in a or a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4)), key


def test_one_machine_runs_take_a_free_port_and_several_machines_agree_on_29500(monkeypatch) -> None:
    """Two single-machine launches side by side (two jobs, or this suite's workers) must not both
    take torchrun's 29500; a multi-machine launch keeps it, as every node must name the same port."""
    import socket

    from ftcore.train.launch import Launch

    for var in ("PORT", "NNODES"):
        monkeypatch.delenv(var, raising=False)
    port = Launch.resolve("2", None, None, None, None).master_port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free when chosen
    assert Launch.resolve("2", 2, 0, None, None).master_port == 29500
    assert Launch.resolve("2", None, None, None, 12345).master_port == 12345
