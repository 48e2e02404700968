"""The fsdp strategy (FSDP2) on CPU with gloo, through the CLI: QLoRA and full fine-tunes on 2 processes match the
one-process run step for step and write its model files; what FSDP cannot run is refused before loading.
(LoRA under fsdp, its checkpoint, merge and exact resume: tests/test_multinode.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_cli
from test_train import make_recipe, metrics

pytestmark = pytest.mark.slow
STEPS = 6
NO_DROPOUT = {"kind": "lora", "dropout": 0.0}  # dropout masks differ between 1 and 2 processes


def train(tmp_path: Path, model: Path, data: Path, strategy: str, adapter: dict, steps: int = STEPS, **options) -> Path:
    """A run of ``steps`` steps of 4 rows each (one process x 2 rows x 2 micro batches, or two x 1 x 2); its work_dir."""
    processes = 1 if strategy == "single" else 2
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = make_recipe(tmp_path, model, data, adapter=adapter, strategy={"name": strategy, **options},
                         train={"max_steps": steps, "micro_batch": 2 // processes, "grad_accum": 2, "lr": 1e-3 if adapter["kind"] == "full" else 5e-3})
    run_cli("run", "--recipe", str(recipe), *(["--nproc-per-node", "2"] if processes > 1 else []), check=True)
    return tmp_path / "wd"


def assert_same_run(got: Path, ref: Path, weights: str) -> None:
    """Every step's loss, learning rate and gradient norm, and the saved weights (same names, shapes, dtypes)."""
    from safetensors.torch import load_file

    a, b = metrics(got), metrics(ref)
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-6)
    mine, theirs = load_file(str(got / f"checkpoint-{a[-1]['step']}" / weights)), load_file(str(ref / f"checkpoint-{b[-1]['step']}" / weights))
    assert sorted(mine) == sorted(theirs) and len(mine) > 0
    for name, tensor in theirs.items():
        assert mine[name].shape == tensor.shape and mine[name].dtype == tensor.dtype, name
        assert (mine[name] - tensor).abs().max() < 1e-4, name


@pytest.mark.parametrize("kind", ["full", "qlora"])
def test_fsdp_full_and_qlora_match_the_one_process_run(kind, tmp_path, tiny_llama, self_cognition_file) -> None:
    """A full fine-tune shards every weight; QLoRA shards the 4-bit base packed in fp32 (bnb_4bit_quant_storage),
    loaded in CPU memory first as a model larger than one GPU is (strategy.load_in_cpu_memory)."""
    if kind == "qlora":
        pytest.importorskip("bitsandbytes")
    adapter = {"kind": kind, "dropout": 0.0}
    ref = train(tmp_path / "one", tiny_llama, self_cognition_file, "single", adapter, steps=3)
    got = train(tmp_path / "two", tiny_llama, self_cognition_file, "fsdp", adapter, steps=3, **({"load_in_cpu_memory": True} if kind == "qlora" else {}))
    assert_same_run(got, ref, "model.safetensors" if kind == "full" else "adapter_model.safetensors")


def test_fsdp_tells_speed_auto_what_each_device_will_hold_after_sharding(tiny_llama) -> None:
    """speed: auto measures free memory before sharding: the strategy says what sharding will change on each device."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM

    from ftcore_fsdp.strategy import FSDP

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")

    def change(device, world_size=2, offload_params=False, load_in_cpu_memory=False):  # noqa: ANN001, ANN202
        strategy = SimpleNamespace(device=device, world_size=world_size, offload_params=offload_params, load_in_cpu_memory=load_in_cpu_memory)
        return FSDP.memory_change(strategy, model)

    assert change(gpu) == total // 2  # loaded in CPU memory: each GPU gains its half
    assert change(cpu) == total // 2 - total  # loaded whole on the device: sharding frees the other half
    assert change(gpu, offload_params=True) == 0 and change(cpu, offload_params=True) == -total  # the shards stay in CPU memory
    assert FSDP.load_device.fget(SimpleNamespace(device=gpu, load_in_cpu_memory=True)) == cpu
    assert FSDP.load_device.fget(SimpleNamespace(device=gpu, load_in_cpu_memory=False)) == gpu


def test_fsdp_refuses_what_it_cannot_shard_before_loading(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, strategy={"name": "fsdp"})
    proc = run_cli("run", "--recipe", str(recipe), "model.offload_embeddings=true", "strategy.offload_params=true", "model.quantization=int8", "model.fp8_base=true")
    assert proc.returncode == 2 and "strategy fsdp has 4 problems" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    for key in ("model.offload_embeddings", "strategy.offload_params", "model.quantization", "model.fp8_base"):
        assert f"  - {key}: " in proc.stderr, key
    assert "Loading weights" not in proc.stderr + proc.stdout


def test_a_user_error_in_the_launched_processes_ends_the_launch_without_a_traceback(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, strategy={"name": "fsdp"})
    proc = run_cli("run", "--recipe", str(recipe), "model.offload_embeddings=true", "--nproc-per-node", "2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: model.offload_embeddings:" in proc.stderr and "process rank" in proc.stderr and "exited with status 2" in proc.stderr
