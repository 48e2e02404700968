"""What training keeps in CPU memory instead of on the GPU: checkpointed layer inputs, frozen input embeddings."""

from __future__ import annotations

import weakref
from types import MethodType
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

from .replay import replaying


class _CpuCopy:
    """One layer input in pinned CPU memory. On a GPU the copies run on a side stream: out while
    the layer computes, and back while the layer after it (in forward order) runs its backward."""

    _last: dict[Any, Any] = {}  # device -> weak reference to the newest copy (the next prefetch target)
    _streams: dict[Any, Any] = {}

    def __init__(self, hidden: torch.Tensor) -> None:
        self.device = hidden.device
        self.cpu = torch.empty(hidden.shape, dtype=hidden.dtype, device="cpu", pin_memory=hidden.is_cuda)
        self.gpu: torch.Tensor | None = None
        self.event: Any = None
        self.before: Any = None
        if not hidden.is_cuda:
            self.cpu.copy_(hidden)
            return
        stream = self._stream()
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.cpu.copy_(hidden, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(stream)
        hidden.record_stream(stream)  # its memory is not reused before the copy is done
        self.before = _CpuCopy._last.get(self.device)
        _CpuCopy._last[self.device] = weakref.ref(self)

    def _stream(self) -> Any:
        if self.device not in _CpuCopy._streams:
            _CpuCopy._streams[self.device] = torch.cuda.Stream(self.device)
        return _CpuCopy._streams[self.device]

    def prefetch(self) -> None:
        if self.event is None or self.gpu is not None or self.cpu is None:  # on the CPU, under way, or taken
            return
        stream = self._stream()
        stream.wait_event(self.event)
        with torch.cuda.stream(stream):
            self.gpu = self.cpu.to(self.device, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(stream)

    def take(self) -> torch.Tensor:
        """The input back on its device (once); starts bringing back the layer before it too."""
        if self.event is None:
            return self.cpu
        self.prefetch()
        current = torch.cuda.current_stream(self.device)
        current.wait_event(self.event)
        hidden, self.gpu, self.cpu = self.gpu, None, None
        hidden.record_stream(current)
        before = self.before() if self.before is not None else None
        if before is not None:
            before.prefetch()
        return hidden


class _OffloadedCheckpoint(torch.autograd.Function):
    """Run a layer without keeping its activations; its input waits in (pinned) CPU memory.

    Backward brings the input back, replays the layer with the same random state (dropout
    masks) and autocast settings, and back-propagates through the replay: the gradient of
    the layer's parameters accumulates there, the input's gradient is returned. The replay's
    output is never read, so projections that only feed it skip their GEMM (see ``replay``).
    """

    @staticmethod
    def forward(ctx: Any, run: Callable[[torch.Tensor], tuple[Any, ...]], hidden: torch.Tensor) -> tuple[Any, ...]:
        ctx.run, ctx.device, ctx.saved = run, hidden.device, _CpuCopy(hidden)
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device) if hidden.is_cuda else None
        ctx.autocast = torch.is_autocast_enabled(hidden.device.type), torch.get_autocast_dtype(hidden.device.type)
        with torch.no_grad():
            return run(hidden)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        hidden = ctx.saved.take().requires_grad_(True)
        ctx.saved = None
        devices = [ctx.device] if ctx.cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            enabled, dtype = ctx.autocast
            with torch.enable_grad(), torch.autocast(ctx.device.type, dtype=dtype, enabled=enabled), replaying():
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


def _cpu_embedding_forward(self: Any, ids: torch.Tensor) -> torch.Tensor:
    """Gather the rows on the CPU; only they travel (pinned, asynchronously) to the GPU."""
    ids = ids.cpu()  # a no-op when the trainer kept input_ids on the CPU (see TrainingPlan.cpu_inputs)
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
