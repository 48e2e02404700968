"""model.fused_lora: LoRA layers add their product into the base output in one GEMM, with peft's loss and gradients."""

from __future__ import annotations

import pytest
from helpers import adapter_step, lora_model


def _train_step(tiny_llama, quantization: str, fused: bool, monkeypatch) -> tuple[float, dict, int]:
    """One forward/backward of a LoRA model (dropout on, every adapter path live); returns the
    loss, the adapter gradients and how many times peft's own forward ran."""
    model = lora_model(tiny_llama, quantization, fused_lora=fused)
    peft_calls = []
    for module in model.modules():
        if hasattr(module, "_ftcore_peft_forward"):
            original = module._ftcore_peft_forward
            module._ftcore_peft_forward = lambda *a, _f=original, **k: peft_calls.append(1) or _f(*a, **k)
    loss, grads = adapter_step(model)
    return loss, grads, len(peft_calls)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_fused_lora_gives_peft_loss_and_gradients(tiny_llama, quantization, monkeypatch) -> None:
    loss, grads, _ = _train_step(tiny_llama, quantization, False, monkeypatch)
    fused_loss, fused_grads, peft_calls = _train_step(tiny_llama, quantization, True, monkeypatch)
    assert peft_calls == 0  # every LoRA layer took the fused path
    assert abs(fused_loss - loss) / abs(loss) < 1e-5
    assert grads.keys() == fused_grads.keys() and any("lora_A" in n for n in grads)
    for name, g in grads.items():
        assert float((fused_grads[name] - g).norm() / g.norm().clamp_min(1e-12)) < 1e-5, name


def test_fused_lora_leaves_inference_to_peft(tiny_llama) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftcore.models.fused_lora import fuse_lora_layers

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    n = fuse_lora_layers(model)
    assert n == sum(1 for m in model.modules() if hasattr(m, "_ftcore_peft_forward")) > 0
    assert fuse_lora_layers(model) == 0  # idempotent
    calls = []
    for module in model.modules():
        if hasattr(module, "_ftcore_peft_forward"):
            original = module._ftcore_peft_forward
            module._ftcore_peft_forward = lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k)
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]))
    assert len(calls) == n  # eval: peft's forward, once per layer
    with model.disable_adapter():  # adapters off while training: peft's forward too
        model.train()
        model(input_ids=torch.tensor([[5, 6, 7]]))
    assert len(calls) == 2 * n
