"""speed: auto: the levers chosen from synthetic memory figures, kept where the recipe sets them, recorded
in checkpoints, and the one fallback after an out-of-memory step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import run_cli

GIB = 2**30
SHAPE_18B = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, intermediate_size=8192, vocab_size=92544)
SHAPE_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=92544)


def shape(config: dict, run_tokens: int = 50_000_000, max_length: int = 2048, trains_base: bool = False, optimizer: str = "adamw_8bit"):
    from transformers import LlamaConfig

    from ftcore.models.speed import Shape

    return Shape.of(LlamaConfig(**config), max_length, trains_base, 64, 0, optimizer, run_tokens)


def choose(shape, free_gib: float, model: dict | None = None, train: dict | None = None, cuda: bool = True):
    from ftcore.models.speed import choose

    return choose(shape, int(free_gib * GIB), model or {}, {"micro_batch": None, "grad_accum": 16, **(train or {})}, cuda)


def test_a_large_gpu_trains_without_checkpointing_at_the_largest_micro_batch_and_compiles_a_long_run() -> None:
    choice = choose(shape(SHAPE_18B), 130)  # an H200 with a 1.8B model loaded
    assert choice.levers == {"gradient_checkpointing": False, "offload_activations": False, "offload_embeddings": False, "fused_lora": True, "compile": True,
                             "fp8_base": False, "compile_memory_budget": 1.0, "mlp_chunk_tokens": 0}  # FP8 changes the numbers: only on the recipe's say-so
    assert (choice.micro_batch, choice.grad_accum) == (8, 2)  # 16 rows a step as the recipe has them; 16k tokens a micro batch
    assert choice.can_fall_back
    assert "16 rows an optimizer step" in choice.summary() and "compile on" in choice.summary()


def test_adapters_get_the_fused_lora_forward_unless_the_recipe_says_otherwise() -> None:
    assert "fused lora on" in choose(shape(SHAPE_18B), 130).summary()
    assert choose(shape(SHAPE_18B), 130, model={"fused_lora": False}).levers["fused_lora"] is False
    assert choose(shape(SHAPE_18B, trains_base=True), 130).levers["fused_lora"] is False  # a full fine-tune has no LoRA layers


def test_a_lower_compile_memory_budget_is_chosen_where_it_saves_checkpointing_or_a_smaller_batch() -> None:
    fits = choose(shape(SHAPE_18B), 34)  # 1.8B no-checkpointing micro batch 8: ~33 GiB keeping everything, ~25 GiB at budget 0.9
    assert not fits.levers["gradient_checkpointing"] and fits.micro_batch == 8 and fits.levers["compile_memory_budget"] == 0.9
    assert "compile memory budget 0.9" in fits.summary()
    assert choose(shape(SHAPE_18B), 134).levers["compile_memory_budget"] == 1.0  # room enough: nothing recomputed
    kept = choose(shape(SHAPE_18B), 34, model={"compile_memory_budget": 1.0})
    assert kept.levers["compile_memory_budget"] == 1.0 and kept.micro_batch == 4  # the recipe's budget holds; the batch gives way
    uncompiled = choose(shape(SHAPE_18B, run_tokens=1_000_000), 34)
    assert not uncompiled.levers["compile"] and uncompiled.levers["compile_memory_budget"] == 1.0  # a budget only means something compiled


def test_compiled_layers_keep_fewer_bytes_under_a_lower_memory_budget(tiny_llama) -> None:
    import torch
    from helpers import lora_model

    from ftcore.train.objective import loss_sum

    def saved_bytes(budget: float) -> int:
        torch._dynamo.reset()
        model = lora_model(tiny_llama, dropout=0.0, gradient_checkpointing=False, compile=True, compile_memory_budget=budget)
        ids = torch.randint(3, 200, (1, 128), generator=torch.Generator().manual_seed(1))
        batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(128)[None]}
        kept: dict[int, int] = {}
        for _ in range(2):  # compile, then count
            kept.clear()
            with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.__setitem__(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) or t, lambda t: t):
                loss, _ = loss_sum(model, batch)
            loss.backward()
        return sum(kept.values())

    try:
        full, low = saved_bytes(1.0), saved_bytes(0.9)
    finally:
        import torch._functorch.config as functorch_config

        functorch_config.activation_memory_budget = 1.0
    assert low < 0.95 * full, (low, full)


def test_a_sample_too_long_even_with_offload_gets_sliced_mlps() -> None:
    from ftcore.models.speed import MLP_CHUNK

    long = choose(shape(SHAPE_7B, max_length=262144), 40)  # 7B QLoRA, one 256k-token sample, a 48 GiB card
    assert long.levers["offload_activations"] and long.levers["mlp_chunk_tokens"] == MLP_CHUNK
    assert "each MLP runs over 8192 tokens at a time" in long.summary()
    assert choose(shape(SHAPE_7B), 130).levers["mlp_chunk_tokens"] == 0  # room enough: the MLP runs whole


def test_less_memory_turns_checkpointing_on_before_shrinking_the_micro_batch_below_speed() -> None:
    tight = choose(shape(SHAPE_7B), 12)  # 7B QLoRA on a 16 GiB card: no room without recomputing layers
    assert tight.levers["gradient_checkpointing"] and not tight.levers["offload_activations"]
    assert tight.micro_batch >= 2 and tight.micro_batch * tight.grad_accum == 16
    assert not tight.can_fall_back  # checkpointing is already on: nothing left to fall back to
    roomy = choose(shape(SHAPE_7B), 130)
    assert not roomy.levers["gradient_checkpointing"] and roomy.micro_batch == 8


def test_when_nothing_fits_the_layer_inputs_and_embeddings_go_to_cpu_memory() -> None:
    choice = choose(shape(SHAPE_7B, max_length=65536), 6)
    assert choice.levers["gradient_checkpointing"] and choice.levers["offload_activations"] and choice.levers["offload_embeddings"]
    assert choice.micro_batch == 1 and "tight memory" in choice.summary()


def test_a_per_process_memory_cap_is_what_auto_has_to_fit_in(monkeypatch) -> None:
    import torch

    from ftcore.models.speed import free_memory

    cap = {"fraction": 1.0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (130 * GIB, 140 * GIB))  # an H200 with a model loaded
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: cap["fraction"], raising=False)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 4 * GIB)
    assert free_memory(0) == 130 * GIB  # no cap: what the device has free
    cap["fraction"] = 24 / 140  # capped at 24 GiB, as on a consumer card, with 4 GiB of it held already
    assert free_memory(0) == 20 * GIB
    capped = choose(shape(SHAPE_18B), free_memory(0) / GIB)
    uncapped = choose(shape(SHAPE_18B), 130)
    assert not uncapped.levers["gradient_checkpointing"] and uncapped.micro_batch == 8
    assert capped.levers["gradient_checkpointing"] or capped.micro_batch < 8  # the cap costs recomputation or batch size
    assert "of the 20.0 GiB free" in capped.summary()
    cap["fraction"] = 0.01
    assert free_memory(0) == 0  # the cap is spent already


def test_levers_the_recipe_sets_are_kept() -> None:
    choice = choose(shape(SHAPE_18B), 130, model={"gradient_checkpointing": True, "compile": False}, train={"micro_batch": 2, "grad_accum": 4})
    assert choice.levers["gradient_checkpointing"] is True and choice.levers["compile"] is False
    assert (choice.micro_batch, choice.grad_accum) == (2, 4)
    assert not choice.can_fall_back  # the user asked for checkpointing: auto changes nothing at run time


def test_a_short_run_does_not_compile() -> None:
    choice = choose(shape(SHAPE_18B, run_tokens=300_000), 130)
    assert choice.levers["compile"] is False and "too few" in choice.summary()


def test_a_cpu_run_takes_the_manual_levers() -> None:
    from ftcore.models.speed import MANUAL

    choice = choose(shape(SHAPE_18B), 0, cuda=False)
    assert choice.levers == MANUAL and (choice.micro_batch, choice.grad_accum) == (1, 16)


def test_the_memory_estimate_matches_the_measured_peak() -> None:
    """1.8B LoRA, 8 x 2048 tokens, no checkpointing, compiled, 8-bit AdamW: 35.7 GiB peak on an H200
    (benchmarks/RESULTS.md, 2026-12-03), of which the bf16 weights are 3.5 GiB."""
    need = shape(SHAPE_18B).need(8 * 2048, {"gradient_checkpointing": False, "compile": True})
    assert need / GIB == pytest.approx(35.7 - 3.5, rel=0.15)


def test_speed_manual_means_the_plain_defaults(tmp_path: Path) -> None:
    from ftcore.models.speed import MANUAL
    from ftcore.recipe import Recipe, validate

    auto = Recipe({"model": {"builder": "hf", "path": "m"}, "data": {"path": "d"}}, "inline")
    validate(auto)
    assert all(auto["model"][k] is None for k in MANUAL) and auto["train"]["micro_batch"] is None
    manual = Recipe({"speed": "manual", "model": {"builder": "hf", "path": "m", "compile": True}, "data": {"path": "d"}}, "inline")
    validate(manual)
    assert {k: manual["model"][k] for k in MANUAL} == {**MANUAL, "compile": True} and manual["train"]["micro_batch"] == 1


def test_a_run_says_what_auto_chose_and_its_checkpoints_record_it(tmp_path: Path, tiny_llama: Path, self_cognition_file: Path) -> None:
    recipe = {
        "model": {"builder": "hf", "path": str(tiny_llama)},
        "adapter": {"kind": "lora", "r": 8},
        "data": {"path": str(self_cognition_file), "format": "openai", "template": "internlm2_chat", "max_length": 128},
        "train": {"max_steps": 2, "grad_accum": 2, "device": "cpu"},
        "work_dir": str(tmp_path / "wd"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    dry = run_cli("run", "--recipe", str(tmp_path / "r.yaml"), "--dry-run", check=True)
    assert "auto: gradient_checkpointing" in dry.stdout and "micro_batch auto" in dry.stdout
    proc = run_cli("run", "--recipe", str(tmp_path / "r.yaml"), check=True)
    assert "speed auto: micro batch 1 x grad_accum 2" in proc.stdout and "a CPU run" in proc.stdout
    saved = yaml.safe_load((tmp_path / "wd" / "checkpoint-2" / "recipe.yaml").read_text())
    assert saved["model"]["gradient_checkpointing"] is True and saved["model"]["compile"] is False
    assert saved["train"]["micro_batch"] == 1 and saved["train"]["grad_accum"] == 2


def test_an_out_of_memory_step_falls_back_once_to_checkpointing_and_trains(tiny_llama: Path) -> None:
    import torch

    from ftcore.data.collate import collate_rows
    from ftcore.data.pack import Encoded, pack
    from ftcore.models.plan import prepare_for_training
    from ftcore.models.speed import fall_back
    from ftcore.recipe import Recipe, validate
    from ftcore.train.context import RunContext
    from ftcore.train.loop import Schedule, Trainer
    from ftcore.train.objective import SFT
    from ftcore.train.optim import build_optimizer, build_scheduler
    from ftcore.train.strategy import SingleStrategy
    from ftcore.models.hf import HFBuilder
    from ftcore.models.loading import load_base_model

    ids = [list(range(10, 40)), list(range(50, 80))]
    data = pack(Encoded.from_lists(ids, [list(i) for i in ids]), 64, packed=False, shuffle=False)
    recipe = Recipe({"model": {"builder": "hf", "path": str(tiny_llama), "gradient_checkpointing": False, "dtype": "fp32"},
                     "data": {"path": "d"}, "train": {"micro_batch": 1, "grad_accum": 2, "device": "cpu"}}, "inline")
    validate(recipe)
    model = load_base_model(recipe["model"], HFBuilder(), torch.device("cpu"), "fp32")
    plan = prepare_for_training(model, recipe["model"], recipe["adapter"])
    plan.fallback = fall_back
    printed: list[str] = []
    ctx = RunContext(recipe, Path("unused"), strategy=SingleStrategy(recipe, "fp32"), data=data, model=plan.model)
    ctx.print = printed.append
    params = [p for p in plan.model.parameters() if p.requires_grad]
    opt = build_optimizer(params, recipe["train"])
    sched = build_scheduler(opt, recipe["train"], 2)
    ctx.strategy.prepare(plan.model, opt, sched)
    failed = []

    def out_of_memory_once(module, args):
        if not failed:
            failed.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    plan.model.get_base_model().model.layers[1].register_forward_pre_hook(out_of_memory_once)
    trainer = Trainer(ctx, plan, SFT(), opt, sched, Schedule(len(data), 1, 1, 0, 0, shuffle=False),
                      lambda rows: collate_rows([data.row(i) for i in rows], 0), [], lambda: None, "fp32")
    assert not plan.model.is_gradient_checkpointing
    out = trainer.guarded_step()
    assert failed and plan.model.is_gradient_checkpointing and plan.fallback is None
    assert out["loss"] > 0 and out["grad_norm"] > 0
    assert any("turned it on and retrying" in line for line in printed)
    failed.clear()  # a second out-of-memory step is the user's to fix: it is raised
    with pytest.raises(torch.OutOfMemoryError):
        trainer.guarded_step()
