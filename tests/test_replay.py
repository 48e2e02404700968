"""Replays of offloaded checkpoints skip the frozen projection whose output only feeds the layer's output, with the same gradients."""

from __future__ import annotations

import pytest
from helpers import adapter_step, lora_model


def _step(tiny_llama, quantization: str, skip: bool, fused: bool = False, compile: bool = False, dropout: float = 0.3) -> tuple[float, dict, dict]:
    """One forward/backward with offloaded checkpoints (every adapter live); returns the loss, the
    adapter gradients and how often each layer's down/gate projection really computed."""
    model = lora_model(tiny_llama, quantization, dropout, offload_activations=True, fused_lora=fused, compile=compile)
    calls = {"down_proj": 0, "gate_proj": 0}
    for name, module in model.named_modules():
        kind = name.split(".")[-2] if name.endswith("base_layer") else None
        if kind in calls:
            forward = getattr(module, "_ftcore_forward", module.forward)
            counted = lambda *a, _f=forward, _k=kind, **k: calls.__setitem__(_k, calls[_k] + 1) or _f(*a, **k)
            if hasattr(module, "_ftcore_forward"):
                module._ftcore_forward = counted
                if not skip:  # the forward without the skip, as before it was installed
                    module.forward = counted
            else:
                module.forward = counted
    loss, grads = adapter_step(model)
    return loss, grads, calls


@pytest.mark.parametrize("quantization,fused", [("none", False), ("none", True), ("nf4", False), ("nf4", True)])
def test_replay_skips_the_down_projection_with_the_same_gradients(tiny_llama, quantization, fused) -> None:
    loss, grads, calls = _step(tiny_llama, quantization, skip=False, fused=fused)
    skip_loss, skip_grads, skip_calls = _step(tiny_llama, quantization, skip=True, fused=fused)
    layers = 2
    assert calls == {"down_proj": 2 * layers, "gate_proj": 2 * layers}  # forward, then the replay
    assert skip_calls == {"down_proj": layers, "gate_proj": 2 * layers}  # the replay skipped down_proj only
    assert skip_loss == loss
    assert grads.keys() == skip_grads.keys() and any("down_proj.lora_A" in n for n in grads)
    for name, g in grads.items():
        assert float((skip_grads[name] - g).norm() / g.norm().clamp_min(1e-12)) < 1e-6, name


def test_replay_skip_under_compiled_layers(tiny_llama) -> None:
    # no dropout: compiled layers draw their masks from another generator than eager ones
    loss, grads, _ = _step(tiny_llama, "none", skip=False, dropout=0.0)
    compiled_loss, compiled_grads, _ = _step(tiny_llama, "none", skip=True, compile=True, dropout=0.0)
    assert abs(compiled_loss - loss) / abs(loss) < 1e-5
    for name, g in grads.items():
        assert float((compiled_grads[name] - g).norm() / g.norm().clamp_min(1e-12)) < 1e-5, name


def test_only_listed_frozen_projections_are_skipped(tiny_llama) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.models.replay import replaying, skip_in_replay

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    assert skip_in_replay(model) == model.config.num_hidden_layers  # one down_proj per decoder layer
    assert skip_in_replay(model) == 0  # idempotent
    down = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, down.in_features, requires_grad=True)
    with replaying():
        trained = down(x)  # a full fine-tune trains the weight: its GEMM runs
        assert torch.allclose(trained, x @ down.weight.t() + (down.bias if down.bias is not None else 0))
        down.weight.requires_grad_(False)
        skipped = down(x)
        g = torch.randn_like(skipped)
        skipped.backward(g)
    assert torch.allclose(x.grad, g @ down.weight)
    assert torch.allclose(down(x), trained)  # outside a replay, the usual forward
