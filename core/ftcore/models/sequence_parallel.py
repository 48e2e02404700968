"""Sequence parallelism (DeepSpeed-Ulysses style): one flat row split across N processes, all-to-all over heads around attention.

With ``train.sequence_parallel: N`` each group of N consecutive processes trains the same micro batches
(the data order counts groups, not processes), and each process keeps one contiguous 1/N of the flat row's
tokens (:func:`shard_batch`): embeddings, MLPs, norms and the loss head only ever see that slice. Attention
needs every token of a sample, so around it an all-to-all turns "my tokens, all heads" into "all tokens, my
1/N of the heads" and back (:func:`attention`); the varlen attention then isolates the samples with the whole
row's boundaries, exactly as in one process. The slice's labels run one position past its tokens (the next
slice's first token is its last target), so the targets of the N slices are exactly the row's, and the loop's
token-weighted average and the gradient averaging across processes give the one-process result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..data import IGNORE


@dataclass
class SequenceGroup:
    """This process's sequence-parallel group: ``size`` processes, this one ``index``-th in it."""

    size: int
    index: int
    group: Any = None  # the torch.distributed process group

    @classmethod
    def join(cls, size: int) -> "SequenceGroup":
        """Groups of ``size`` consecutive ranks (every process creates every group, as torch requires)."""
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        mine = None
        for start in range(0, world, size):
            group = dist.new_group(list(range(start, start + size)))
            if start <= rank < start + size:
                mine = group
        return cls(size, rank % size, mine)


def shard_batch(batch: dict[str, Any], sp: SequenceGroup) -> dict[str, Any]:
    """This process's slice of a flat micro batch (length a multiple of ``sp.size``): its tokens and
    positions, its targets (one label past its last token), the whole row's sample boundaries."""
    length = batch["input_ids"].shape[1]
    n = length // sp.size
    a, b = sp.index * n, (sp.index + 1) * n
    labels = torch.cat([batch["labels"], batch["labels"].new_full((1, 1), IGNORE)], dim=1)
    out = dict(batch)
    out["input_ids"], out["position_ids"], out["labels"] = batch["input_ids"][:, a:b], batch["position_ids"][:, a:b], labels[:, a : b + 1]
    out["sequence_length"] = length  # attention rebuilds the whole row from the slices
    out.pop("samples", None)  # per-token sample numbers belong to the whole row
    return out


def mark(position_ids: torch.Tensor, sp: SequenceGroup, length: int) -> None:
    """Tell the attention (which receives ``position_ids``) that this forward runs on a slice of a
    ``length``-token row: a stand-in row carries the whole row's boundaries."""
    row = torch.empty((1, length), dtype=position_ids.dtype, device=position_ids.device)
    varlen = getattr(position_ids, "_ftcore_varlen", None)
    if varlen is not None:
        row._ftcore_varlen = varlen
    position_ids._ftcore_sp = (sp, row)


def _exchange(x: torch.Tensor, sp: SequenceGroup) -> torch.Tensor:
    from torch.distributed.nn.functional import all_to_all_single  # differentiable: backward is the reverse exchange

    x = x.contiguous()  # the collective writes its output buffer as contiguous memory
    return all_to_all_single(torch.empty_like(x), x, group=sp.group)


def _to_heads(x: torch.Tensor, sp: SequenceGroup) -> torch.Tensor:
    """(1, H, n, D) with my n tokens -> (1, H/N, N*n, D) with every token of my heads."""
    _, h, n, d = x.shape
    parts = x[0].reshape(sp.size, h // sp.size, n, d)  # part j goes to process j
    return _exchange(parts, sp).permute(1, 0, 2, 3).reshape(h // sp.size, sp.size * n, d)[None]


def _to_tokens(x: torch.Tensor, sp: SequenceGroup) -> torch.Tensor:
    """(1, N*n, H/N, D) with every token of my heads -> (1, n, H, D) with my tokens."""
    _, length, h, d = x.shape
    n = length // sp.size
    parts = x[0].reshape(sp.size, n, h, d)  # part j: process j's tokens
    return _exchange(parts, sp).permute(1, 0, 2, 3).reshape(n, sp.size * h, d)[None]


def attention(inner: Callable[..., Any], module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``inner`` (a transformers attention function) over the whole row for 1/N of the heads."""
    sp, row = kwargs["position_ids"]._ftcore_sp
    heads = query.shape[1]
    if key.shape[1] % sp.size:  # too few K/V heads to split: give every query head its own
        key, value = key.repeat_interleave(heads // key.shape[1], dim=1), value.repeat_interleave(heads // value.shape[1], dim=1)
    out, weights = inner(module, _to_heads(query, sp), _to_heads(key, sp), _to_heads(value, sp), *args, **{**kwargs, "position_ids": row})
    return _to_tokens(out, sp), weights


def join_for_run(recipe: Any, strategy: Any) -> SequenceGroup | None:
    """The run's group for ``train.sequence_parallel`` (None when it is 1), after checking what it needs."""
    from ..errors import FtcoreError

    size = int(recipe["train"].get("sequence_parallel") or 1)
    if size == 1:
        return None
    where = "train.sequence_parallel"
    if strategy.world_size % size:
        raise FtcoreError(f"{size} processes a row, but the run has {strategy.world_size} process(es), not a multiple of {size}", where=where,
                          hint=f"launch a multiple of {size} processes (--nproc-per-node), or lower train.sequence_parallel")
    if recipe["model"]["attn_implementation"] != "auto":
        raise FtcoreError("sequence parallelism splits flat rows for ftcore's varlen attention", where=where,
                          hint="set model.attn_implementation=auto (drop the override)")
    if recipe["objective"]["name"] != "sft":
        raise FtcoreError(f"sequence parallelism trains the sft objective, not {recipe['objective']['name']!r} (its per-sample sums need whole rows)", where=where,
                          hint="set train.sequence_parallel=1")
    return SequenceGroup.join(size)


def check_model(model: Any, plan: Any, sp: SequenceGroup) -> None:
    """The batches go flat (one row, varlen attention) and every process takes 1/N of the attention heads."""
    from ..errors import FtcoreError

    if not plan.flat:
        raise FtcoreError("sequence parallelism splits flat rows, but this model's batches are padded rows", where="train.sequence_parallel",
                          hint="use a model builder whose attention is ftcore's varlen attention (model.attn_implementation=auto), or set train.sequence_parallel=1")
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    if heads is not None and heads % sp.size:
        raise FtcoreError(f"the model has {heads} attention heads, which {sp.size} processes cannot share evenly", where="train.sequence_parallel",
                          hint=f"use a divisor of {heads}")
