"""LoRA layers in training computed as one GEMM: the adapter's product enters the base layer's matmul as its addend."""

from __future__ import annotations

from types import MethodType
from typing import Any, Callable

import torch
import torch.nn.functional as F


class _Nf4Addmm(torch.autograd.Function):
    """``c + x @ W^T`` for a bitsandbytes 4-bit ``W``: dequantized for the product, and again in
    backward for the input's gradient (the bf16 copy is never kept)."""

    @staticmethod
    def forward(ctx: Any, c: torch.Tensor, x: torch.Tensor, weight: Any) -> torch.Tensor:
        ctx.weight = weight
        return torch.addmm(c, x, _dequantize(weight, x.dtype).t())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grad_x = grad @ _dequantize(ctx.weight, grad.dtype) if ctx.needs_input_grad[1] else None
        return grad, grad_x, None


def _dequantize(weight: Any, dtype: torch.dtype) -> torch.Tensor:
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(weight.data, weight.quant_state).to(dtype)


def _linear_addmm(base: Any, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.addmm(c, x, base.weight.t())


def _nf4_addmm(base: Any, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _Nf4Addmm.apply(c, x, base.weight)


def base_addmm() -> dict[type, Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Base layer type (exact) -> how to compute ``c + x @ W^T`` with its weight format."""
    kinds: dict[type, Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]] = {torch.nn.Linear: _linear_addmm}
    try:
        from bitsandbytes.nn import Linear4bit

        kinds[Linear4bit] = _nf4_addmm
    except ImportError:
        pass
    return kinds


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``base(x) + scale * B(A(dropout(x)))`` as one GEMM with an addend: ``addmm(B(scale * A(dropout(x))), x, W^T)``.

    peft's forward clones the base output (4-bit layers), scales the adapter's output and adds
    it: passes over a tokens x out_features tensor that the GEMM's epilogue does for free. The
    dropout module is the one peft calls, so random masks are drawn exactly as in peft.
    Anything else (eval, several or disabled adapters, DoRA, biases, other base layers, mixed
    dtypes without autocast) goes through peft's own forward.
    """
    names = self.active_adapters
    name = names[0] if len(names) == 1 else None
    base = self.base_layer
    addmm = self._ftcore_addmm
    if (
        args or kwargs or not self.training or self.disable_adapters or self.merged or name not in self.lora_A
        or name in getattr(self, "lora_variant", {}) or self.lora_B[name].bias is not None or base.bias is not None
        or getattr(getattr(base.weight, "quant_state", None), "packing_format_for_cpu", False)  # bitsandbytes' CPU inference layout
    ):
        return self._ftcore_peft_forward(x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    dtype = getattr(base, "compute_dtype", None) or base.weight.dtype
    if not torch.is_autocast_enabled(x.device.type) and not (x.dtype == a.dtype == b.dtype == dtype):
        return self._ftcore_peft_forward(x, *args, **kwargs)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    h = F.linear(self.lora_dropout[name](x), a) * self.scaling[name]  # tokens x r: scaling here is cheap
    c = F.linear(h.to(dtype), b.to(dtype))
    out = addmm(base, c.reshape(-1, c.shape[-1]), x.reshape(-1, x.shape[-1]).to(dtype))
    return out.view(*x.shape[:-1], out.shape[-1]).to(x.dtype)


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
    bases = base_addmm()
    count = 0
    for module in model.modules():
        if type(module) in kinds and type(module.base_layer) in bases and not hasattr(module, "_ftcore_peft_forward"):
            module._ftcore_addmm = bases[type(module.base_layer)]
            module._ftcore_peft_forward = module.forward
            module.forward = MethodType(_fused_forward, module)
            count += 1
    return count
