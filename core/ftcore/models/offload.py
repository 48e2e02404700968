"""Gradient checkpointing that keeps each checkpointed layer's input in CPU memory instead of on the GPU."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint


class _OffloadedCheckpoint(torch.autograd.Function):
    """Run a layer without keeping its activations; its input waits in (pinned) CPU memory.

    Backward brings the input back, replays the layer with the same random state (dropout
    masks) and autocast settings, and back-propagates through the replay: the gradient of
    the layer's parameters accumulates there, the input's gradient is returned.
    """

    @staticmethod
    def forward(ctx: Any, run: Callable[[torch.Tensor], tuple[Any, ...]], hidden: torch.Tensor) -> tuple[Any, ...]:
        ctx.run, ctx.device = run, hidden.device
        ctx.saved = torch.empty(hidden.shape, dtype=hidden.dtype, device="cpu", pin_memory=hidden.is_cuda)
        ctx.saved.copy_(hidden, non_blocking=True)
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device) if hidden.is_cuda else None
        ctx.autocast = torch.is_autocast_enabled(hidden.device.type), torch.get_autocast_dtype(hidden.device.type)
        with torch.no_grad():
            return run(hidden)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        hidden = ctx.saved.to(ctx.device, non_blocking=True).requires_grad_(True)
        devices = [ctx.device] if ctx.cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            enabled, dtype = ctx.autocast
            with torch.enable_grad(), torch.autocast(ctx.device.type, dtype=dtype, enabled=enabled):
                outs = ctx.run(hidden)
        pairs = [(o, g) for o, g in zip(outs, grads) if isinstance(o, torch.Tensor) and o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return None, hidden.grad


def offloaded_checkpoint(run: Callable[..., Any], *args: Any) -> Any:
    """A ``_gradient_checkpointing_func`` for transformers layers: ``run(hidden_states)`` with the
    input kept in CPU memory; anything other than one hidden-states tensor goes to the usual checkpoint."""
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return checkpoint(run, *args, use_reentrant=False)
    returns_tuple: list[bool] = []

    def run_as_tuple(hidden: torch.Tensor) -> tuple[Any, ...]:
        out = run(hidden)
        returns_tuple[:] = [isinstance(out, tuple)]
        return out if isinstance(out, tuple) else (out,)

    outs = _OffloadedCheckpoint.apply(run_as_tuple, args[0])
    return outs if returns_tuple[0] else outs[0]


def offload_checkpointed_inputs(model: Any) -> int:
    """Make every gradient-checkpointed layer of ``model`` keep its input on the CPU; returns how many.

    The layers' parameters get their gradients through the replay, so the embeddings' output
    must require grad even when the embeddings are frozen (adapters, QLoRA).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    for layer in layers:
        layer._gradient_checkpointing_func = offloaded_checkpoint
    if layers:
        model.enable_input_require_grads()
    return len(layers)
