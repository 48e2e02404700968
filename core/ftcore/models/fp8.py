"""FP8 matrix products for a frozen base (``model.fp8_base``): each frozen linear layer's weight is quantized once
to e4m3 with one scale per output row, and its forward and input-gradient products run through ``torch._scaled_mm``.

torchao's float8 training re-quantizes every weight each step and computes a weight gradient, which a frozen
base never needs; here the weight is quantized once when training starts (bf16 or a dequantized NF4 base, one
byte per weight afterwards), activations and output gradients are quantized per row at each call, and the only
gradient is the input's. The weight's row scales are folded into the output gradient before it is quantized, so
the one fp8 copy serves both products (transposed for the second). Needs a GPU with FP8 tensor cores (compute
capability 8.9 or newer) or the CPU.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import torch

E4M3 = torch.float8_e4m3fn
MAX = torch.finfo(E4M3).max


def quantize_rows(x: torch.Tensor, col_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (rows x columns), times ``col_scale`` (one factor per column) where given, as e4m3 with one fp32
    scale per row: ``q * scale ~= x * col_scale``."""
    x = x.float() if col_scale is None else x.float() * col_scale
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / MAX
    return (x / scale).to(E4M3), scale


def _quantizer(device_type: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``quantize_rows`` as one fused kernel on a GPU (eager it makes five passes over the tensor, slower than
    the product it feeds)."""
    return _compiled_quantizer() if device_type == "cuda" else quantize_rows


@lru_cache(maxsize=None)
def _compiled_quantizer() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    return torch.compile(quantize_rows, dynamic=True)


# The products are custom operators, so compiled layers call them as they are (dynamo does not trace into them).
@torch.library.custom_op("ftcore::fp8_frozen_linear", mutates_args=())
def fp8_frozen_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ W^T`` with W (out x in) held as e4m3 ``weight`` and per-row ``scale`` (out x 1); the gradient
    reaches ``x`` only."""
    q, q_scale = _quantizer(x.device.type)(x.reshape(-1, x.shape[-1]))
    out = torch._scaled_mm(q, weight.t(), scale_a=q_scale, scale_b=scale.t(), out_dtype=x.dtype, use_fast_accum=True)
    return out.view(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("ftcore::fp8_backward_only", mutates_args=())
def fp8_backward_only(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The product's output unread (a checkpoint's replay, :mod:`ftcore.models.replay`): allocated, not
    computed; the backward is the product's own."""
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("ftcore::fp8_input_grad", mutates_args=())
def fp8_input_grad(grad: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``grad @ W`` for W held as e4m3 ``weight`` with per-row ``scale``."""
    # g @ W = (g * scale^T) @ W8: the weight's row scales go into the gradient's columns before quantizing
    q, q_scale = _quantizer(grad.device.type)(grad.reshape(-1, grad.shape[-1]), scale.t())
    ones = torch.ones(1, weight.shape[1], device=weight.device, dtype=torch.float32)
    out = torch._scaled_mm(q, weight.t().contiguous().t(), scale_a=q_scale, scale_b=ones, out_dtype=grad.dtype)
    return out.view(*grad.shape[:-1], weight.shape[1])


@fp8_frozen_linear.register_fake
@fp8_backward_only.register_fake
def _product_shape(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@fp8_input_grad.register_fake
def _input_grad_shape(grad: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return grad.new_empty((*grad.shape[:-1], weight.shape[1]))


def _keep_weight(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[1], inputs[2])


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
    weight, scale = ctx.saved_tensors
    return fp8_input_grad(grad, weight, scale), None, None


fp8_frozen_linear.register_autograd(_backward, setup_context=_keep_weight)
fp8_backward_only.register_autograd(_backward, setup_context=_keep_weight)


class Fp8FrozenLinear(torch.nn.Module):
    """A frozen ``nn.Linear`` whose weight is one e4m3 copy with a scale per output row (buffers, so they
    move with the model and are not trained); the bias, if any, stays in its own dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale = quantize_rows(weight.detach())
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fp8_frozen_linear(x, self.weight_fp8, self.weight_scale)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def backward_only(self, x: torch.Tensor) -> torch.Tensor:
        """The forward's output left uncomputed (a replay whose output is never read); the bias cannot matter there."""
        return fp8_backward_only(x, self.weight_fp8, self.weight_scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, weight=e4m3 row-scaled"


def _dense_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """A frozen linear layer's weight in its compute dtype (a bitsandbytes 4-bit weight dequantized), or None
    where the layer is not one this handles."""
    if type(module) is torch.nn.Linear:
        return None if module.weight.requires_grad else module.weight
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    if isinstance(module, bnb.nn.Linear4bit):
        state = module.weight.quant_state
        return bnb.functional.dequantize_4bit(module.weight.data, state).to(getattr(module, "compute_dtype", None) or state.dtype)
    return None


def convert_frozen_linears(model: torch.nn.Module, skip: tuple[torch.nn.Module, ...] = ()) -> int:
    """Replace every frozen linear layer of ``model`` (plain or bitsandbytes 4-bit, e.g. the base layers under
    peft's LoRA) whose sizes FP8 products allow (multiples of 16) by an :class:`Fp8FrozenLinear`; the modules
    in ``skip`` (the output head) stay. Returns how many were replaced."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if any(child is s for s in skip) or child.__class__ is Fp8FrozenLinear:
                continue
            weight = _dense_weight(child)
            if weight is None or weight.shape[0] % 16 or weight.shape[1] % 16:
                continue
            setattr(parent, name, Fp8FrozenLinear(weight, getattr(child, "bias", None)))
            count += 1
    return count


def check_device(device: torch.device) -> None:
    """Raise an error that says what to do where ``device`` has no FP8 products."""
    from ..errors import FtcoreError

    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise FtcoreError(f"model.fp8_base needs FP8 tensor cores (compute capability 8.9 or newer: Ada, Hopper, Blackwell); {name} has none",
                          where="model.fp8_base", hint="drop model.fp8_base (or set it to false)")
