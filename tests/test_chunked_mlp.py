"""model.mlp_chunk_tokens: each MLP runs over slices of tokens, each slice checkpointed: the same loss and
gradients, fewer bytes kept for backward, composed with checkpointing, offload and compile."""

from __future__ import annotations

import pytest
import torch
from helpers import adapter_step, lora_model


def _grads_close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for name, g in b.items():
        assert float((a[name] - g).norm() / g.norm().clamp_min(1e-12)) < tol, name


@pytest.mark.parametrize("levers", [{"gradient_checkpointing": False}, {"gradient_checkpointing": True},
                                    {"gradient_checkpointing": True, "offload_activations": True}])
def test_sliced_mlps_give_the_same_loss_and_gradients(tiny_llama, levers) -> None:
    loss, grads = adapter_step(lora_model(tiny_llama, dropout=0.0, **levers))
    model = lora_model(tiny_llama, dropout=0.0, mlp_chunk_tokens=16, **levers)
    assert sum(hasattr(m, "_ftcore_mlp_chunk") for m in model.modules()) == model.config.num_hidden_layers
    sliced_loss, sliced_grads = adapter_step(model)  # 64 tokens: 4 slices
    assert sliced_loss == pytest.approx(loss, rel=1e-6)
    _grads_close(sliced_grads, grads, 1e-5)


def test_sliced_mlps_keep_only_their_inputs_for_backward(tiny_llama) -> None:
    def saved(**levers) -> int:
        model = lora_model(tiny_llama, dropout=0.0, gradient_checkpointing=False, **levers)
        ids = torch.randint(3, 200, (1, 256), generator=torch.Generator().manual_seed(1))
        kept: dict[int, int] = {}
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.__setitem__(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) or t, lambda t: t):
            model(input_ids=ids, labels=ids).loss.backward()
        return sum(kept.values())

    whole, sliced = saved(), saved(mlp_chunk_tokens=32)
    # each layer's gate, up and product (3 x 256 tokens x 128 wide, fp32) are no longer kept
    assert whole - sliced >= 0.9 * 2 * 3 * 256 * 128 * 4, (whole, sliced)


def test_compiled_layers_with_sliced_mlps_give_the_eager_results(tiny_llama) -> None:
    loss, grads = adapter_step(lora_model(tiny_llama, dropout=0.0, gradient_checkpointing=False, mlp_chunk_tokens=16))
    torch._dynamo.reset()
    compiled_loss, compiled_grads = adapter_step(lora_model(tiny_llama, dropout=0.0, gradient_checkpointing=False, mlp_chunk_tokens=16, compile=True))
    assert compiled_loss == pytest.approx(loss, rel=1e-5)
    _grads_close(compiled_grads, grads, 1e-4)
