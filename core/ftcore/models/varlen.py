"""Sample-isolated ("varlen") attention for packed rows, registered with transformers as ``ftcore_varlen``.

A packed row holds several samples whose ``position_ids`` restart at 0. Instead of a
``tokens x tokens`` block-diagonal mask (which forces slow masked kernels), the samples'
boundaries become ``cu_seqlens`` and each sample attends causally to itself only: FlashAttention's
variable-length kernel on CUDA, one causal SDPA call per sample elsewhere (same result); when every
sample has the same length (rows cut from a text stream), one batched causal SDPA call. A flat
batch (:func:`ftcore.data.collate.collate_rows` with ``flat=True``) brings its boundaries along
(:func:`attach_boundaries`), so nothing is computed from ``position_ids`` on the device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "ftcore_varlen"


def attach_boundaries(inputs: dict[str, Any]) -> dict[str, Any]:
    """Move a flat batch's sample boundaries (``cu_seqlens``, ``max_seqlen``, from
    :func:`ftcore.data.collate.collate_rows`) onto its ``position_ids`` tensor, where the
    attention finds them. Passed as model arguments instead, they would reach every
    torch.compile'd layer as inputs and make it recompile whenever their sizes change.
    """
    cu, longest = inputs.pop("cu_seqlens", None), inputs.pop("max_seqlen", None)
    position_ids = inputs.get("position_ids")
    if cu is not None and longest is not None and position_ids is not None and position_ids.shape[0] == 1:
        position_ids._ftcore_varlen = (cu.to(position_ids.device, non_blocking=True), int(longest), None)
    return inputs


def _boundaries(position_ids: torch.Tensor, batch: int) -> tuple[torch.Tensor, int, list[int] | None]:
    """``cu_seqlens`` (int32, on device), the longest sample, and the boundaries as ints.

    Computed once per forward and remembered on the ``position_ids`` tensor itself (every
    layer, and checkpoint recomputation, receives that same tensor).
    """
    cached = getattr(position_ids, "_ftcore_varlen", None)
    if cached is not None:
        return cached
    flat = (position_ids.expand(batch, -1) if position_ids.shape[0] != batch else position_ids).reshape(-1)
    starts = (flat == 0).nonzero().squeeze(1)
    total = flat.numel()
    cu = torch.cat([starts, starts.new_tensor([total])]).to(torch.int32)
    bounds = cu.tolist()
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    result = (cu, longest, bounds)
    position_ids._ftcore_varlen = result
    return result


class _FlashVarlen(torch.autograd.Function):
    """FlashAttention-2 variable-length forward/backward through PyTorch's own kernels."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int, scale: float) -> torch.Tensor:
        out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, True, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, cu, rng, unused)
        ctx.longest, ctx.scale = longest, scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, out, lse, cu, rng, unused = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad.contiguous(), q, k, v, out, lse, cu, cu, ctx.longest, ctx.longest, 0.0, True, rng, unused, scale=ctx.scale
        )
        return dq, dk, dv, None, None, None


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, samples: int, length: int, scale: float) -> torch.Tensor:
    """Every sample exactly ``length`` tokens long (rows cut from a text stream, or samples that fill their
    row): plain causal attention over ``(samples, length)``, (tokens, H, D) in and out. On a GPU cuDNN's
    kernel goes first: on an H200 it runs forward+backward 1.6x faster than FlashAttention-2's
    (``benchmarks/attention_kernels.py``)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.view(samples, length, t.shape[1], t.shape[2]).transpose(1, 2)

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        out = F.scaled_dot_product_attention(rows(q), rows(k), rows(v), is_causal=True, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(1, 2).reshape(samples * length, q.shape[1], q.shape[2])


def _capped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, softcap: float | None, window: int | None) -> torch.Tensor:
    """One sample's causal attention with Gemma 2's score capping (``softcap * tanh(s / softcap)``)
    and a sliding window (a token sees itself and the ``window - 1`` before it), as transformers'
    eager attention computes them; (H, L, D) in and out."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    i = torch.arange(q.shape[-2], device=q.device)
    allowed = i[None, :] <= i[:, None]
    if window:
        allowed &= i[None, :] > i[:, None] - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)


def _segments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int], scale: float, softcap: float | None = None, window: int | None = None) -> torch.Tensor:
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):  # a loop over samples, not tokens
        qs, ks, vs = q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)
        if softcap or (window and b - a > window):
            outs.append(_capped(qs, ks, vs, scale, softcap, window).transpose(0, 1))
        else:
            outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(outs)


@torch.compiler.disable  # under model.compile the layer compiles around it: the kernel call stays eager
def varlen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: (B, H, L, D) in, (B, L, H, D) out."""
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and hasattr(position_ids, "_ftcore_sp"):  # a slice of a row split across processes
        from .sequence_parallel import attention

        return attention(varlen_attention, module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    b, h, length, d = query.shape
    if attention_mask is not None or position_ids is None or key.shape[2] != length:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if kwargs.get("softcap"):  # SDPA cannot cap scores: the model's own eager attention can (generation, padded batches)
            import sys

            eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            if eager is not None:
                return eager(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else d**-0.5
    q = query.transpose(1, 2).reshape(b * length, h, d)
    k = key.transpose(1, 2).reshape(b * length, -1, d)
    v = value.transpose(1, 2).reshape(b * length, -1, d)
    cu, longest, bounds = _boundaries(position_ids, b)
    # Gemma 2 caps attention scores, and sliding-window layers (Gemma 2/3, Mistral v0.1) look back only
    # so far: the flash kernel here does neither, so those samples take the exact per-sample path
    softcap, window = kwargs.get("softcap"), kwargs.get("sliding_window")
    exact = bool(softcap) or bool(window and longest > window)
    half = q.dtype in (torch.float16, torch.bfloat16)
    if q.is_cuda and not half and torch.is_autocast_enabled("cuda"):
        # fp32 norms (k-bit preparation) make q/k/v fp32 after RoPE; autocast would run
        # attention in half precision anyway, so the flash kernel computes the same thing.
        dtype = torch.get_autocast_dtype("cuda")
        q, k, v, half = q.to(dtype), k.to(dtype), v.to(dtype), True
    samples = cu.numel() - 1  # known without reading cu: every sample is `longest` long exactly when they add up to the row
    if not exact and samples * longest == b * length:
        out = _dense(q, k, v, samples, longest, scale).to(query.dtype)
    elif q.is_cuda and half and d <= 256 and not exact:  # grouped K/V heads go in as they are: the kernel shares them
        out = _FlashVarlen.apply(q.contiguous(), k.contiguous(), v.contiguous(), cu, longest, scale).to(query.dtype)
    else:
        groups = h // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = _segments(q, k, v, bounds if bounds is not None else cu.tolist(), scale, softcap, window)
    return out.reshape(b, length, h, d), None


def varlen_mask(*args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """No mask for training (boundaries come from position_ids); the SDPA mask otherwise."""
    if attention_mask is None and kwargs.get("q_length", args[1] if len(args) > 1 else None) == kwargs.get("kv_length", args[2] if len(args) > 2 else None):
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make ``attn_implementation="ftcore_varlen"`` available to transformers models."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME
