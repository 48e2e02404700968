"""A language-model head that can compute the training loss itself, in chunks, on trained tokens only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE = -100

#: fp32 logits of one chunk stay under this many bytes (with their bf16 copy and gradient, about
#: 2.5x that is live at once): 640 tokens for a 92k vocabulary
CHUNK_BYTES = 256 << 20


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction="sum")


class _FrozenHeadChunkLoss(torch.autograd.Function):
    """One chunk's summed cross-entropy through a frozen head, with the gradient of ``hidden``
    computed in forward while the logits exist (softmax minus one-hot, times the weight): the
    backward only scales it, so the logits are never recomputed and nothing tokens x vocab is kept."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        logits = F.linear(hidden, weight, bias)
        dtype = logits.dtype
        logits = logits.float()
        lse = torch.logsumexp(logits, dim=-1)
        loss = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
        grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
        grad[torch.arange(targets.numel(), device=grad.device), targets] -= 1
        ctx.save_for_backward(torch.matmul(grad.to(dtype), weight.to(dtype)).to(hidden.dtype))
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[Any, ...]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None


class LossHead(nn.Module):
    """Drop-in replacement for a causal LM's output ``nn.Linear``.

    Normally it is that linear layer (generation is unchanged). While ``targets`` holds the
    batch's labels (on any device) it instead returns the summed next-token cross-entropy,
    computed only at trained positions and ``chunk`` tokens at a time, so the full
    ``tokens x vocab`` logits (and their fp32 copy) never exist at once. A frozen head
    (adapters) computes each chunk's input gradient in forward; a trained one recomputes the
    chunk in backward. It runs inside the model's forward, so DDP and ZeRO-3 see the weight
    used as usual.
    """

    def __init__(self, linear: nn.Linear, chunk: int | None = None) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # by default a chunk's fp32 logits stay under CHUNK_BYTES (640 tokens for a 92k vocabulary)
        self.chunk = chunk if chunk is not None else max(128, CHUNK_BYTES // (4 * linear.out_features) // 128 * 128)
        self.targets: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.targets is None:
            return F.linear(hidden, self.weight, self.bias)
        y = self.targets[:, 1:].reshape(-1)
        keep = (y != IGNORE).nonzero().squeeze(1)  # targets in CPU memory (see cpu_inputs): no device sync
        y = y.index_select(0, keep)
        if keep.device != hidden.device:
            pin = hidden.device.type == "cuda"
            keep, y = ((t.pin_memory() if pin else t).to(hidden.device, non_blocking=pin) for t in (keep, y))
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, keep)
        grad = torch.is_grad_enabled()
        if grad and hidden.requires_grad and not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad):
            chunk_loss: Any = _FrozenHeadChunkLoss.apply
        elif grad and not hasattr(self.weight, "ds_id"):  # recompute in backward (ZeRO-3 params live only in forward)
            chunk_loss = lambda *args: checkpoint(_chunk_loss, *args, use_reentrant=False)  # noqa: E731
        else:
            chunk_loss = _chunk_loss
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, y.numel(), self.chunk):
            total = total + chunk_loss(h[s : s + self.chunk], y[s : s + self.chunk], self.weight, self.bias)
        return total


def install_loss_head(model: Any, chunk: int | None = None) -> bool:
    """Swap the model's output linear layer for a ``LossHead``; False when it has none.

    ``chunk`` is tokens per chunk (default: see :class:`LossHead`).
    """
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return False
    model.set_output_embeddings(LossHead(head, chunk))
    return True


def find_loss_head(model: Any) -> LossHead | None:
    """The ``LossHead`` inside wrappers (DDP, DeepSpeed engine, PEFT), if one was installed."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get else None
    return head if isinstance(head, LossHead) else None
