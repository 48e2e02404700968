"""What the replay of a checkpointed layer may leave out: frozen projections whose output only reaches the layer's output."""

from __future__ import annotations

from contextlib import contextmanager
from types import MethodType
from typing import Any, Iterator

import torch

#: decoder layer class -> projections whose output reaches the layer's output only through the
#: residual addition (``out = h + down_proj(...)``). A replay's output is thrown away, so their
#: (frozen) GEMM can be skipped there; their backward still runs. A layer that normalises the
#: projection's output first (Gemma 2/3's post-feedforward norm) needs that output and is not listed.
SKIPPABLE: dict[str, tuple[str, ...]] = {
    "LlamaDecoderLayer": ("mlp.down_proj",),
    "MistralDecoderLayer": ("mlp.down_proj",),
    "Qwen2DecoderLayer": ("mlp.down_proj",),
    "Qwen3DecoderLayer": ("mlp.down_proj",),
}

_replaying = False  # read inside (compiled) layer code: torch.compile guards on it


@contextmanager
def replaying() -> Iterator[None]:
    """Marks a checkpoint's replay, whose outputs are only back-propagated through, never read."""
    global _replaying
    before, _replaying = _replaying, True
    try:
        yield
    finally:
        _replaying = before


class _BackwardOnly(torch.autograd.Function):
    """``x @ W^T`` whose value is never read: the forward allocates the output without computing
    it; the backward is the projection's own (``grad @ W``, a 4-bit ``W`` dequantized)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, out_features: int, dtype: torch.dtype) -> torch.Tensor:
        ctx.weight = weight
        return x.new_empty((*x.shape[:-1], out_features), dtype=dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        weight = ctx.weight
        if hasattr(weight, "quant_state"):  # bitsandbytes 4-bit, as its own MatMul4Bit backward does
            import bitsandbytes.functional as bnbf

            weight = bnbf.dequantize_4bit(weight, weight.quant_state)
        return torch.matmul(grad, weight.to(grad.dtype)), None, None, None


def _skippable_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if not _replaying or args or kwargs or not torch.is_grad_enabled() or getattr(getattr(self, "weight", None), "requires_grad", False):
        return self._ftcore_forward(x, *args, **kwargs)
    if hasattr(self, "backward_only"):  # an FP8 base layer (ftcore.models.fp8)
        return self.backward_only(x)
    if type(self) is torch.nn.Linear and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    else:  # bitsandbytes' 4-bit linear returns the input's dtype; a plain linear without autocast too
        dtype = x.dtype
    return _BackwardOnly.apply(x, self.weight, self.out_features, dtype)


def _base(module: Any) -> Any:
    """The frozen linear layer itself (inside a peft LoRA wrapper, its ``base_layer``)."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def skip_in_replay(model: Any) -> int:
    """Let the replays of ``model``'s checkpointed layers skip the frozen projections listed in
    ``SKIPPABLE``; returns how many projections were given that forward."""
    from .fp8 import Fp8FrozenLinear

    kinds: tuple[type, ...] = (torch.nn.Linear, Fp8FrozenLinear)
    try:
        from bitsandbytes.nn import Linear4bit

        kinds += (Linear4bit,)
    except ImportError:
        pass
    count = 0
    for layer in model.modules():
        for path in SKIPPABLE.get(type(layer).__name__, ()):
            try:
                linear = _base(layer.get_submodule(path))
            except AttributeError:
                continue
            if type(linear) in kinds and not hasattr(linear, "_ftcore_forward"):
                linear._ftcore_forward = linear.forward
                linear.forward = MethodType(_skippable_forward, linear)
                count += 1
    return count
