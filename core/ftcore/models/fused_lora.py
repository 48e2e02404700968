"""LoRA layers in training computed with one fused GEMM: the adapter's product is added into the base output in place."""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``base(x) + scale * B(A(dropout(x)))`` as ``base(x).addmm_(A(dropout(x)), B^T, alpha=scale)``.

    peft's forward clones the base output (4-bit layers), scales the adapter's output and adds
    it: three passes over a tokens x out_features tensor per layer, forward and (with gradient
    checkpointing) again in the replay. Here the addition happens inside the second GEMM. The
    dropout module is the same one peft calls, so random masks are drawn exactly as in peft.
    Anything else (eval, several or disabled adapters, DoRA, adapter biases, no autocast with
    mixed dtypes) goes through peft's own forward.
    """
    names = self.active_adapters
    name = names[0] if len(names) == 1 else None
    if (
        args or kwargs or not self.training or self.disable_adapters or self.merged or name not in self.lora_A
        or name in getattr(self, "lora_variant", {}) or self.lora_B[name].bias is not None
    ):
        return self._ftcore_peft_forward(x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    autocast = torch.is_autocast_enabled(x.device.type)
    if not autocast and not (x.dtype == a.dtype == b.dtype):
        return self._ftcore_peft_forward(x, *args, **kwargs)
    result = self.base_layer(x)
    if result._base is not None or not result.is_contiguous():  # write only into a fresh, dense tensor
        result = result.clone(memory_format=torch.contiguous_format)
    dtype = result.dtype
    h = F.linear(self.lora_dropout[name](x), a)
    out = result.view(-1, result.shape[-1])
    out.addmm_(h.reshape(-1, h.shape[-1]).to(dtype), b.to(dtype).t(), alpha=self.scaling[name])
    return result


def fuse_lora_layers(model: Any) -> int:
    """Give every peft LoRA linear layer (plain or bitsandbytes 4-bit base) the fused training
    forward; returns how many. Saving, merging and inference are peft's, unchanged."""
    from peft.tuners.lora.layer import Linear

    kinds: tuple[type, ...] = (Linear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit

        kinds += (Linear4bit,)
    except ImportError:  # peft without bitsandbytes
        pass
    count = 0
    for module in model.modules():
        if type(module) in kinds and not hasattr(module, "_ftcore_peft_forward"):
            module._ftcore_peft_forward = module.forward
            module.forward = MethodType(_fused_forward, module)
            count += 1
    return count
