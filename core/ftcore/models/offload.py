"""What training keeps in CPU memory instead of on the GPU: checkpointed layer inputs, frozen input embeddings."""

from __future__ import annotations

from types import MethodType
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
        ctx.copied = None
        if hidden.is_cuda:  # copied out on a side stream while the layer computes
            stream = _copy_stream(hidden.device)
            stream.wait_stream(torch.cuda.current_stream(hidden.device))
            with torch.cuda.stream(stream):
                ctx.saved.copy_(hidden, non_blocking=True)
                ctx.copied = torch.cuda.Event()
                ctx.copied.record(stream)
            hidden.record_stream(stream)  # its memory is not reused before the copy is done
        else:
            ctx.saved.copy_(hidden)
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device) if hidden.is_cuda else None
        ctx.autocast = torch.is_autocast_enabled(hidden.device.type), torch.get_autocast_dtype(hidden.device.type)
        with torch.no_grad():
            return run(hidden)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        if ctx.copied is not None:
            torch.cuda.current_stream(ctx.device).wait_event(ctx.copied)
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


_COPY_STREAMS: dict[Any, Any] = {}


def _copy_stream(device: torch.device) -> Any:
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


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


def _cpu_embedding_forward(self: Any, ids: torch.Tensor) -> torch.Tensor:
    """Gather the rows on the CPU; only they travel (pinned, asynchronously) to the GPU."""
    ids = ids.cpu()  # a no-op when the trainer kept input_ids on the CPU (see cpu_inputs)
    device = self._ftcore_device
    rows = torch.empty((ids.numel(), self.weight.shape[1]), dtype=self.weight.dtype, pin_memory=device.type == "cuda")
    torch.index_select(self.weight, 0, ids.reshape(-1), out=rows)
    return rows.view(*ids.shape, -1).to(device, non_blocking=True)


def offload_embeddings(model: Any) -> None:
    """Keep the frozen input embeddings in CPU memory (a 92k x 4096 bf16 table is 0.7 GiB of GPU
    memory); each step gathers its tokens' rows on the CPU and sends only those."""
    from ..errors import FtcoreError

    where, hint = "model.offload_embeddings", "set model.offload_embeddings=false"
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if type(embedding) is not torch.nn.Embedding or embedding.max_norm is not None:
        raise FtcoreError(f"model.offload_embeddings supports plain torch.nn.Embedding input embeddings, not {type(embedding).__name__}", where=where, hint=hint)
    if head is not None and head.weight is embedding.weight:
        raise FtcoreError("model.offload_embeddings: the input embeddings are tied to the LM head, which must stay on the GPU", where=where, hint=hint)
    if embedding.weight.requires_grad:
        raise FtcoreError("model.offload_embeddings keeps frozen embeddings on the CPU, but this run trains them", where=where,
                          hint="train an adapter without the embeddings in adapter.modules_to_save, or set model.offload_embeddings=false")
    embedding._ftcore_device = embedding.weight.device
    embedding.weight.data = embedding.weight.data.to("cpu")
    embedding.forward = MethodType(_cpu_embedding_forward, embedding)
    model.ftcore_cpu_inputs = ("input_ids",)


def cpu_inputs(model: Any) -> tuple[str, ...]:
    """Batch keys the model wants to receive in CPU memory (``input_ids`` when its embeddings are offloaded)."""
    return tuple(getattr(model, "ftcore_cpu_inputs", ()))
