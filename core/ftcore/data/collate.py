"""Turning packed rows into padded tensor batches (input_ids, labels, position_ids)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import IGNORE
from .pack import PackedData


def collate_rows(rows: list[dict[str, np.ndarray]], pad_id: int, multiple_of: int = 8, flat: bool = False) -> dict[str, Any]:
    """Pad rows to the longest one (rounded up to ``multiple_of``) and stack them as tensors.

    Padding gets label -100 and its own restarting ``position_ids``, so it forms a separate
    "sample" that attends only to itself; no attention mask is needed, and models whose
    masks follow ``position_ids`` keep every sample's attention inside that sample.

    ``flat=True`` lays the rows end to end as one row instead (padding only up to
    ``multiple_of``) and adds the sample boundaries for variable-length attention
    (``cu_seqlens``, ``max_seqlen``; see :func:`ftcore.models.varlen.attach_boundaries`):
    no compute is spent on padding rows to the longest.
    """
    import torch

    if flat:
        return _collate_flat(rows, pad_id, multiple_of)
    longest = max(len(r["input_ids"]) for r in rows)
    width = -(-longest // multiple_of) * multiple_of
    n = len(rows)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    labels = np.full((n, width), IGNORE, dtype=np.int64)
    position_ids = np.tile(np.arange(width, dtype=np.int64), (n, 1))
    for i, r in enumerate(rows):  # a loop over rows, not tokens
        k = len(r["input_ids"])
        input_ids[i, :k] = r["input_ids"]
        labels[i, :k] = r["labels"]
        position_ids[i, :k] = r["position_ids"]
        position_ids[i, k:] = np.arange(width - k)
    batch: dict[str, Any] = {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(position_ids),
    }
    for key in _extra_keys(rows):
        batch[key] = [r[key] for r in rows]  # per-row lists of per-sample extras (e.g. image paths)
    batch[SAMPLES] = _samples(rows, width)
    return batch


#: the batch key of what objectives may need about the batch's samples (not a model input):
#: ``index`` (per token: its sample's number in the batch, -1 for padding; labels' shape) and each
#: carried per-sample value (e.g. ``side`` of a preference pair), one per sample in batch order
SAMPLES = "samples"


def _extra_keys(rows: list[dict[str, np.ndarray]]) -> list[str]:
    return [k for k in rows[0] if k not in ("input_ids", "labels", "position_ids", "cu_seqlens")]


def _samples(rows: list[dict[str, np.ndarray]], width: int | None) -> dict[str, Any]:
    """Per token, the number of its sample in the batch (rows padded to ``width``, or laid flat)."""
    import torch

    index, first = [], 0
    for r in rows:  # a loop over rows, not tokens
        lengths = np.diff(r["cu_seqlens"])
        row = np.repeat(np.arange(first, first + len(lengths)), lengths)
        first += len(lengths)
        index.append(np.concatenate([row, np.full(width - len(row), -1)]) if width is not None else row)
    flat = np.concatenate(index)
    out: dict[str, Any] = {"index": torch.from_numpy(np.stack(index) if width is not None else flat[None]).long()}
    for key in _extra_keys(rows):
        out[key] = [v for r in rows for v in r[key]]
    return out


def _collate_flat(rows: list[dict[str, np.ndarray]], pad_id: int, multiple_of: int) -> dict[str, Any]:
    import torch

    total = sum(len(r["input_ids"]) for r in rows)
    pad = -total % multiple_of
    input_ids = np.concatenate([r["input_ids"] for r in rows] + [np.full(pad, pad_id)]).astype(np.int64)
    labels = np.concatenate([r["labels"] for r in rows] + [np.full(pad, IGNORE)]).astype(np.int64)
    position_ids = np.concatenate([r["position_ids"] for r in rows] + [np.arange(pad)]).astype(np.int64)
    starts = np.flatnonzero(position_ids == 0)
    cu = torch.from_numpy(np.append(starts, len(position_ids)).astype(np.int32))
    longest = int(np.diff(cu.numpy()).max())
    batch: dict[str, Any] = {
        "input_ids": torch.from_numpy(input_ids)[None],
        "labels": torch.from_numpy(labels)[None],
        "position_ids": torch.from_numpy(position_ids)[None],
        "cu_seqlens": cu,
        "max_seqlen": longest,
    }
    samples = _samples(rows, None)
    samples["index"] = torch.nn.functional.pad(samples["index"], (0, pad), value=-1)
    batch[SAMPLES] = samples
    return batch


class RowDataset:
    """A map-style dataset over the rows of a ``PackedData`` (for torch's DataLoader)."""

    def __init__(self, data: PackedData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.data.row(i)
