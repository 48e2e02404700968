"""The objective registry and the training plan: the loop drives an objective; preparing a model
returns one explicit plan whose per-token losses equal the summed ones, with and without the head."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli


def test_objectives_are_listed_with_their_owner() -> None:
    proc = run_cli("list", "objectives", "--json", check=True)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["sft"]["plugin"].startswith("core") and rows["sft"]["description"]


def test_an_unknown_objective_or_an_option_it_does_not_take_is_a_validation_error(tmp_path) -> None:
    proc = run_cli("run", "--recipe", "quickstart", "objective.name=sfft", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "objective.name" in proc.stderr and "did you mean 'sft'" in proc.stderr
    proc = run_cli("run", "--recipe", "quickstart", "objective.beta=0.1", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "objective.beta: unknown key" in proc.stderr


def test_the_plan_lists_the_transforms_in_their_declared_order(tiny_llama) -> None:
    from ftcore.models.plan import TRANSFORMS
    from helpers import lora_model

    import ftcore.models.plan as plan_module

    seen = []
    original = plan_module.finish_plan
    plan_module.finish_plan = lambda plan, flat=True: seen.append(plan) or original(plan, flat)
    try:
        lora_model(tiny_llama, offload_activations=True, offload_embeddings=True, fused_lora=True)
    finally:
        plan_module.finish_plan = original
    (plan,) = seen
    order = [t.name for t in TRANSFORMS]
    assert plan.applied == [name for name in order if name in plan.applied]
    assert {"chunked loss head", "gradient checkpointing", "activation offload", "adapter", "fused lora", "replay skip", "embedding offload"} <= set(plan.applied)
    assert plan.cpu_inputs == ("input_ids", "labels") and plan.loss_head is not None


@pytest.mark.parametrize("head", ["none", "frozen", "trained"])
def test_per_token_losses_sum_to_the_summed_loss_with_equal_gradients(tiny_llama, head) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.models.loss_head import install_loss_head
    from ftcore.models.plan import TrainingPlan, finish_plan

    ids = torch.randint(3, 200, (2, 20), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(20).expand(2, -1)}
    results = []
    for reduction in ("sum", "none"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
        if head != "none":
            install_loss_head(model, chunk=8)
        model.get_output_embeddings().weight.requires_grad_(head != "frozen")
        plan = finish_plan(TrainingPlan(model))
        value, positions = plan.token_nll(model, batch, reduction)
        if reduction == "none":
            assert value.shape == positions.shape == (2 * 15,)
            assert torch.equal(positions, (labels[:, 1:].reshape(-1) != -100).nonzero().squeeze(1))
            value = value.sum()
        value.backward()
        results.append((float(value), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (summed, grads), (per_token, token_grads) = results
    assert per_token == pytest.approx(summed, rel=1e-6)
    for a, b in zip(grads, token_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
