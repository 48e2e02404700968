"""Packing encoded samples into rows (or one sample per row), stored as flat numpy arrays."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from . import IGNORE


@dataclass
class PackedData:
    """Encoded samples laid end to end, grouped into rows.

    ``tokens``/``labels``: every sample's ids, concatenated in row order.
    ``sample_starts``: offset of each sample in ``tokens`` (plus a final end offset).
    ``row_starts``: index of each row's first sample in ``sample_starts`` (plus the end).
    A row is at most ``max_length`` tokens; samples never straddle rows, and
    ``position_ids`` restart at 0 for every sample, so attention can stay inside it.
    """

    tokens: np.ndarray
    labels: np.ndarray
    sample_starts: np.ndarray
    row_starts: np.ndarray
    max_length: int
    #: per-sample values carried into batches (e.g. ``image`` paths), in packed sample order
    extras: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.row_starts) - 1

    @property
    def num_samples(self) -> int:
        return len(self.sample_starts) - 1

    def row_lengths(self) -> np.ndarray:
        return self.sample_starts[self.row_starts[1:]] - self.sample_starts[self.row_starts[:-1]]

    def row(self, i: int) -> dict[str, np.ndarray]:
        """One row: ``input_ids``, ``labels``, ``position_ids`` and ``cu_seqlens`` (sample bounds)."""
        s0, s1 = self.row_starts[i], self.row_starts[i + 1]
        bounds = self.sample_starts[s0 : s1 + 1]
        lo, hi = bounds[0], bounds[-1]
        lengths = np.diff(bounds)
        positions = np.arange(hi - lo) - np.repeat(bounds[:-1] - lo, lengths)
        row = {
            "input_ids": self.tokens[lo:hi],
            "labels": self.labels[lo:hi],
            "position_ids": positions,
            "cu_seqlens": bounds - lo,
        }
        for key, values in self.extras.items():
            row[key] = values[s0:s1]
        return row

    def efficiency(self) -> float:
        """Real tokens / row capacity (1.0 = no padding at all)."""
        return float(len(self.tokens)) / max(1, len(self) * self.max_length)

    def trained_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokens", "labels", "sample_starts", "row_starts"):
            np.save(folder / f"{name}.npy", getattr(self, name))
        (folder / "max_length").write_text(str(self.max_length))
        (folder / "extras.json").write_text(json.dumps(self.extras))

    @classmethod
    def load(cls, folder: Path) -> "PackedData":
        arrays = {n: np.load(folder / f"{n}.npy") for n in ("tokens", "labels", "sample_starts", "row_starts")}
        extras = json.loads((folder / "extras.json").read_text()) if (folder / "extras.json").is_file() else {}
        return cls(**arrays, max_length=int((folder / "max_length").read_text()), extras=extras)


def offsets(lengths: np.ndarray) -> np.ndarray:
    """Where each of the items (``lengths`` long, end to end) starts, and after them the total."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


@dataclass
class Encoded:
    """Encoded samples end to end: ``tokens`` and ``labels`` (int32) and each sample's length."""

    tokens: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_lists(cls, input_ids: list[list[int]], labels: list[list[int]]) -> "Encoded":
        lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=len(input_ids))
        total = int(lengths.sum())
        return cls(
            np.fromiter(chain.from_iterable(input_ids), dtype=np.int32, count=total),
            np.fromiter(chain.from_iterable(labels), dtype=np.int32, count=total),
            lengths,
        )

    @classmethod
    def concat(cls, parts: list["Encoded"]) -> "Encoded":
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64))
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("tokens", "labels", "lengths")))

    def subset(self, keep: np.ndarray) -> "Encoded":
        """The samples where the boolean mask ``keep`` is true, in order."""
        tokens = np.repeat(keep, self.lengths)
        return Encoded(self.tokens[tokens], self.labels[tokens], self.lengths[keep])

    def as_lists(self) -> tuple[list[list[int]], list[list[int]]]:
        """Every sample's ids and labels as Python lists (for inspection and tests)."""
        if not len(self):
            return [], []
        cuts = np.cumsum(self.lengths)[:-1]
        return [a.tolist() for a in np.split(self.tokens, cuts)], [a.tolist() for a in np.split(self.labels, cuts)]


def _best_fit(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """The row of each item (in the given order): the open row with the least room that still fits it.

    A loop over samples (not tokens) with a sorted list of open rows' free space: about 0.7 s
    per million samples.
    """
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    row_of = np.empty(len(lengths), dtype=np.int64)
    rows = 0
    for i, length in enumerate(lengths.tolist()):
        j = bisect.bisect_left(free, (length, -1))
        if j < len(free):
            room, row = free.pop(j)
        else:
            room, row = capacity, rows
            rows += 1
        row_of[i] = row
        if room > length:
            bisect.insort(free, (room - length, row))
    return row_of


def pack(
    samples: Encoded,
    max_length: int,
    *,
    packed: bool = True,
    shuffle: bool = True,
    seed: int = 42,
    extras: dict[str, list] | None = None,
    group: int = 1,
) -> PackedData:
    """Shuffle (seeded) then pack samples into rows of at most ``max_length`` tokens.

    With ``packed=False`` each sample is its own row. Packing is best-fit over the shuffled
    order (each sample goes to the open row it fills most tightly): rows come out about 99%
    full where next-fit leaves 10% empty; deterministic under a seed, and no token is lost
    or duplicated. ``extras`` are per-sample values (aligned with ``samples``) that follow
    their sample. ``group=k``: every k consecutive samples (e.g. the two answers of a
    preference pair) are one unit, shuffled, packed and kept together in one row, in order.
    """
    n = len(samples) // group
    units = samples.lengths.reshape(n, group).sum(axis=1)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    if (units > max_length).any():
        raise ValueError("samples must be truncated to max_length before packing")
    if packed:
        row_of = _best_fit(units[order], max_length)
        order = order[np.argsort(row_of, kind="stable")]
        rows = offsets(np.unique(row_of, return_counts=True)[1]) * group
    else:
        rows = np.arange(n + 1, dtype=np.int64) * group
    order = (order[:, None] * group + np.arange(group)).reshape(-1)  # units -> their samples, in order
    lengths = samples.lengths[order]
    starts = offsets(lengths)
    # token indices that lay the samples out in the new order
    picks = np.repeat(offsets(samples.lengths)[order] - starts[:-1], lengths) + np.arange(starts[-1], dtype=np.int64)
    tokens, labs = samples.tokens[picks].astype(np.int32), samples.labels[picks].astype(np.int32)
    # A sample's first token is never predicted from inside the sample; masking it keeps
    # the shifted loss from crossing into the previous sample of a packed row.
    labs[starts[:-1][lengths > 0]] = IGNORE
    carried = {key: [values[i] for i in order.tolist()] for key, values in (extras or {}).items()}
    return PackedData(tokens, labs, starts, rows, max_length, carried)
