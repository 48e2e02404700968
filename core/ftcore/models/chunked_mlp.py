"""Long samples through each decoder layer's MLP a slice of tokens at a time (``model.mlp_chunk_tokens``): its wide intermediates never exist for the whole sample at once."""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from . import replay
from .loading import decoder_layers
from .replay import replaying


@torch.compiler.disable  # compiled layers call it as it is: torch.compile cannot trace a checkpoint of a module's method
def _chunked_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The MLP over ``x`` in slices of ``_ftcore_mlp_chunk`` tokens (the MLP works token by token, so the result
    is the same). With gradients, each slice is checkpointed: backward recomputes one slice's gate/up outputs at
    a time instead of keeping the whole sample's."""
    chunk = self._ftcore_mlp_chunk
    if args or kwargs or x.dim() < 2 or x.shape[-2] <= chunk:
        return self._ftcore_mlp_forward(x, *args, **kwargs)
    parts = x.split(chunk, dim=-2)
    if torch.is_grad_enabled() and replay._replaying:
        outs = _replayed_slices(self._ftcore_mlp_forward, parts)
    elif torch.is_grad_enabled():
        outs = [checkpoint(self._ftcore_mlp_forward, part, use_reentrant=False) for part in parts]
    else:
        outs = [self._ftcore_mlp_forward(part) for part in parts]
    return torch.cat(outs, dim=-2)


def _replayed_slices(forward: Any, parts: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Inside an offloaded layer's replay: each slice's recompute replays too, so it skips the same projections
    as the forward it repeats (:mod:`ftcore.models.replay`)."""
    return [checkpoint(forward, part, use_reentrant=False, context_fn=lambda: (replaying(), replaying())) for part in parts]


def chunk_mlps(model: Any, tokens: int) -> int:
    """Give the ``mlp`` of every decoder layer of ``model`` the sliced forward, ``tokens`` per slice; returns how many."""
    count = 0
    for layer in decoder_layers(model):
        mlp = getattr(layer, "mlp", None)
        if isinstance(mlp, torch.nn.Module) and not hasattr(mlp, "_ftcore_mlp_forward"):
            mlp._ftcore_mlp_forward, mlp._ftcore_mlp_chunk = mlp.forward, tokens
            mlp.forward = MethodType(_chunked_forward, mlp)
            count += 1
    return count
