"""The data order: seeded and resumable, every row once per epoch, length-grouped (and by modality) when unpacked."""

from __future__ import annotations

import numpy as np

from ftcore.train.loop import Schedule


def padded_tokens(schedule: Schedule, lengths: np.ndarray) -> int:
    return sum(int(lengths[schedule.rows(g)].max()) * schedule.micro_batch for g in range(schedule.per_epoch))


def test_every_row_once_per_epoch_and_deterministic() -> None:
    lengths = np.random.default_rng(0).integers(5, 500, 400)
    for lens in (None, lengths):
        a = Schedule(400, 4, 1, 0, seed=3, lengths=lens)
        b = Schedule(400, 4, 1, 0, seed=3, lengths=lens)
        seen = [r for g in range(a.per_epoch) for r in a.rows(g)]
        assert sorted(seen) == list(range(400))
        assert seen == [r for g in range(b.per_epoch) for r in b.rows(g)]
        assert a.rows(a.per_epoch) != a.rows(0) or lens is not None  # a new epoch, a new order


def test_ranks_split_each_global_micro_batch() -> None:
    ranks = [Schedule(100, 2, 2, r, seed=1) for r in range(2)]
    for g in range(ranks[0].per_epoch):
        a, b = ranks[0].rows(g), ranks[1].rows(g)
        assert len(a) == len(b) == 2 and not set(a) & set(b)


def test_length_grouping_cuts_padding() -> None:
    lengths = np.random.default_rng(1).lognormal(5, 1, 2000).astype(int) + 1
    plain = Schedule(2000, 8, 1, 0, seed=0)
    grouped = Schedule(2000, 8, 1, 0, seed=0, lengths=lengths)
    assert padded_tokens(grouped, lengths) < 0.6 * padded_tokens(plain, lengths)


def test_images_and_text_are_batched_apart() -> None:
    rng = np.random.default_rng(2)
    lengths = rng.integers(10, 100, 800)
    groups = rng.integers(0, 2, 800)
    s = Schedule(800, 4, 1, 0, seed=0, lengths=lengths, groups=groups)
    mixed = sum(len(set(groups[s.rows(g)].tolist())) > 1 for g in range(s.per_epoch))
    assert mixed <= 800 // (Schedule.GROUP * 4) + 1  # at most one mixed batch per mega-batch
