"""Turning packed rows into padded tensor batches (input_ids, labels, position_ids)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .pack import IGNORE, PackedData


def collate_rows(rows: list[dict[str, np.ndarray]], pad_id: int, multiple_of: int = 8) -> dict[str, Any]:
    """Pad rows to the longest one (rounded up to ``multiple_of``) and stack them as tensors.

    Padding gets label -100 and its own restarting ``position_ids``, so it forms a separate
    "sample" that attends only to itself; no attention mask is needed, and models whose
    masks follow ``position_ids`` keep every sample's attention inside that sample.
    """
    import torch

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
    for key in (k for k in rows[0] if k not in ("input_ids", "labels", "position_ids", "cu_seqlens")):
        batch[key] = [r[key] for r in rows]  # per-row lists of per-sample extras (e.g. image paths)
    return batch


class RowDataset:
    """A map-style dataset over the rows of a ``PackedData`` (for torch's DataLoader)."""

    def __init__(self, data: PackedData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.data.row(i)
