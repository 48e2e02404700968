"""Preference pairs in the pipeline: a pair becomes its two answers as samples that travel together.

A preference format turns a record into ``{"messages": history, "chosen": answer, "rejected":
answer}`` (history ends with a user turn). :func:`expand_pairs` makes each pair two ordinary chat
samples — the history plus one answer, only that answer trained — marked ``side`` 0 (chosen) and
1 (rejected), one after the other. The encoder treats them like any samples; :func:`keep_whole_pairs`
then (:func:`whole_pairs`) drops a pair whose other half was lost (cut to nothing by ``max_length``), and the packer keeps
the two halves of a pair adjacent in one row (``pack(..., group=2)``), so a micro batch always
holds whole pairs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import FtcoreError

#: per-sample keys: which answer of a pair a sample holds (0: chosen, 1: rejected), and which pair
SIDE, PAIR = "side", "pair"
CHOSEN, REJECTED = 0, 1


def is_pair(sample: dict[str, Any]) -> bool:
    return "chosen" in sample and "rejected" in sample


def expand_pairs(samples: Sequence[dict[str, Any]]) -> Any:
    """Every pair as two chat samples (chosen, then rejected), keeping each record's location."""
    from .records import RecordList

    if not all(is_pair(s) for s in samples):
        raise FtcoreError(
            "the data mixes preference pairs (chosen/rejected) with other samples",
            where="data.path",
            hint="train preference objectives on pair data only (`ftcore data check` shows each record's format)",
        )
    out: list[dict[str, Any]] = []
    for k, sample in enumerate(samples):
        history = [{**m, "loss": False} if m.get("role") == "assistant" else m for m in sample["messages"]]
        extras = {k: v for k, v in sample.items() if k not in ("messages", "chosen", "rejected")}
        for side, answer in ((CHOSEN, sample["chosen"]), (REJECTED, sample["rejected"])):
            out.append({**extras, "messages": [*history, {**answer, "role": "assistant"}], SIDE: side, PAIR: k})
    origins = getattr(samples, "origins", None)
    if origins:
        return RecordList(out, [o for o in origins for _ in (0, 1)], samples.files)
    return out


def whole_pairs(pair_of: Sequence[int]) -> np.ndarray:
    """Mask of the kept samples (given each one's pair) whose pair kept both halves."""
    pair = np.asarray(pair_of, dtype=np.int64)
    if not len(pair):
        return np.zeros(0, bool)
    return (np.bincount(pair) == 2)[pair]
