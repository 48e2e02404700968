"""A language-model head that can compute the training loss itself, in chunks, on trained tokens only."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data import IGNORE
from .transfer import send_to_device

#: fp32 logits of one chunk stay under this many bytes (with their bf16 copy and gradient, about
#: 2.5x that is live at once): 640 tokens for a 92k vocabulary
CHUNK_BYTES = 256 << 20


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reduction: str = "sum") -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction=reduction)


def softmax_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy (fp32) of ``logits`` and its gradient with respect to them (softmax
    minus one-hot, in the logits' dtype), computed in fp32. Eager, the fp32 logits are made once and
    turned into the gradient in place; compiled (:meth:`LossHead.compile_softmax`), it is two fused passes over
    the logits and no fp32 copy exists."""
    dtype = logits.dtype
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    loss = lse - logits.gather(1, targets[:, None]).squeeze(1)
    grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
    grad[torch.arange(targets.numel(), device=grad.device), targets] -= 1
    return loss, grad.to(dtype)


class _FrozenHeadChunkLoss(torch.autograd.Function):
    """One chunk's per-token cross-entropy through a frozen head, with the gradient of ``hidden``
    computed in forward while the logits exist (``loss_and_grad``: :func:`softmax_grad`, eager or
    compiled; times the weight): the backward only scales its rows, so the logits are never
    recomputed and nothing tokens x vocab is kept."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, loss_and_grad: Any) -> torch.Tensor:
        loss, grad = loss_and_grad(F.linear(hidden, weight, bias), targets)
        ctx.save_for_backward(torch.matmul(grad, weight.to(grad.dtype)).to(hidden.dtype))
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[Any, ...]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype)[:, None], None, None, None, None


def _frozen_chunk_sum(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, loss_and_grad: Any) -> torch.Tensor:
    return _FrozenHeadChunkLoss.apply(hidden, targets, weight, bias, loss_and_grad).sum()


@dataclass
class HeadResult:
    """What the head computed for one forward: the loss (``value``) and, per token, the positions."""

    value: Any = None
    positions: Any = None


class LossHead(nn.Module):
    """Drop-in replacement for a causal LM's output ``nn.Linear``.

    Normally it is that linear layer (generation is unchanged). Inside :meth:`computing` (with
    the batch's labels, on any device) it instead returns the next-token cross-entropy,
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
        self._targets: torch.Tensor | None = None
        self._reduction = "sum"
        self._result: HeadResult | None = None
        self._softmax_grad: Any = softmax_grad  # a frozen head's per-chunk loss and logit gradient

    def compile_softmax(self) -> None:
        """With ``model.compile``: a frozen head's softmax-minus-one-hot becomes two fused passes over
        each chunk's logits (torch.compile); the matrix products stay as they are."""
        self._softmax_grad = torch.compile(softmax_grad, dynamic=True)

    @contextlib.contextmanager
    def computing(self, labels: torch.Tensor, reduction: str = "sum") -> Iterator[HeadResult]:
        """While inside, a forward returns the next-token loss for ``labels`` instead of logits:
        summed (``reduction="sum"``) or per trained token (``"none"``; their positions in the
        flattened shifted labels land in the yielded result's ``positions``)."""
        result = HeadResult()
        self._targets, self._reduction, self._result = labels, reduction, result
        try:
            yield result
        finally:
            self._targets = self._result = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._targets is None:
            return F.linear(hidden, self.weight, self.bias)
        y = self._targets[:, 1:].reshape(-1)
        keep = (y != IGNORE).nonzero().squeeze(1)  # targets in CPU memory (see TrainingPlan.cpu_inputs): no device sync
        y = y.index_select(0, keep)
        if keep.device != hidden.device:
            keep, y = send_to_device(keep, hidden.device), send_to_device(y, hidden.device)
        self._result.positions = keep
        # a sequence-parallel slice's labels run one past its tokens: every position has a target
        h = (hidden if self._targets.shape[1] > hidden.shape[1] else hidden[:, :-1]).reshape(-1, hidden.shape[-1]).index_select(0, keep)
        per_token = self._reduction == "none"
        grad = torch.is_grad_enabled()
        if grad and hidden.requires_grad and not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad):
            frozen: Any = _FrozenHeadChunkLoss.apply if per_token else _frozen_chunk_sum
            chunk_loss: Any = lambda *args: frozen(*args, self._softmax_grad)  # noqa: E731
        elif grad and not hasattr(self.weight, "ds_id"):  # recompute in backward (ZeRO-3 params live only in forward)
            chunk_loss = lambda *args: checkpoint(_chunk_loss, *args, self._reduction, use_reentrant=False)  # noqa: E731
        else:
            chunk_loss = lambda *args: _chunk_loss(*args, self._reduction)  # noqa: E731
        chunks = [chunk_loss(h[s : s + self.chunk], y[s : s + self.chunk], self.weight, self.bias) for s in range(0, y.numel(), self.chunk)]
        if per_token:
            return torch.cat(chunks) if chunks else hidden.new_zeros((0,), dtype=torch.float32)
        total = hidden.new_zeros((), dtype=torch.float32)
        for c in chunks:
            total = total + c
        return total


def install_loss_head(model: Any, chunk: int | None = None) -> bool:
    """Swap the model's output linear layer for a ``LossHead``; False when it has none.

    ``chunk`` is tokens per chunk (default: see :class:`LossHead`). A model that caps its logits
    after the head (Gemma 2's ``final_logit_softcapping``) would cap the loss the head returns as
    if it were logits, so it is refused.
    """
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        from ..errors import FtcoreError

        raise FtcoreError(
            f"model.chunked_loss: {type(model).__name__} caps its logits after the output layer (final_logit_softcapping={cap}), "
            "which the chunked loss head cannot do inside the model",
            where="model.chunked_loss",
            hint="set model.chunked_loss=false (the Gemma 2 recipes do)",
        )
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
