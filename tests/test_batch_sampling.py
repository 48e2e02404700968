"""The serve batcher's sampling step: greedy rows take the argmax, rows with a seed repeat their
draws whatever else is in the batch, the other sampled rows stay within their top-k."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ftcore.chat.batching import Batcher
from ftcore.chat.generate import Sampling


class _Forward(torch.nn.Module):
    """The batcher only reads the forward's signature when sampling is all that runs."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, logits_to_keep=0):  # noqa: ANN001, ANN201
        raise AssertionError("not called")


def _row(sampling: Sampling) -> SimpleNamespace:
    generator = None
    if sampling.temperature > 0 and sampling.seed is not None:
        generator = torch.Generator().manual_seed(sampling.seed)
    return SimpleNamespace(generation=SimpleNamespace(sampling=sampling), generator=generator)


def test_seeded_rows_repeat_in_any_batch_others_sample_within_top_k_greedy_rows_take_the_argmax() -> None:
    batcher = Batcher(_Forward())
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).expand(5, -1).clone()
    seeded = Sampling(temperature=1.0, seed=7)
    rows = [_row(Sampling()), _row(seeded), _row(Sampling(temperature=1.0, top_k=3)), _row(seeded), _row(Sampling(temperature=0.7, top_k=3))]
    alone = [_row(seeded)]
    top3 = set(logits[0].topk(3).indices.tolist())
    draws, alone_draws, free = [], [], set()
    for _ in range(40):
        tokens = batcher._sample(logits, rows).tolist()
        assert tokens[0] == int(logits[0].argmax())
        assert tokens[2] in top3 and tokens[4] in top3
        free.update((tokens[2], tokens[4]))
        draws.append((tokens[1], tokens[3]))
        alone_draws.append(batcher._sample(logits[:1], alone).item())
    assert [a for a, b in draws] == [b for a, b in draws] == alone_draws  # the same seed, the same answer, batched or alone
    assert len(set(alone_draws)) > 1  # and it is sampled, not greedy
    assert len(free) > 1


def test_rows_all_sampled_without_seeds_draw_once_within_their_top_p() -> None:
    batcher = Batcher(_Forward())
    logits = torch.zeros(3, 20)
    for i in range(3):
        logits[i, 5 + i] = 4.0  # about 0.74 of each row's mass on token 5 + i
    rows = [_row(Sampling(temperature=1.0, top_p=0.5)) for _ in range(3)]
    for _ in range(20):
        assert batcher._sample(logits, rows).tolist() == [5, 6, 7]
    free = [_row(Sampling(temperature=1.0)) for _ in range(3)]
    assert len({tuple(batcher._sample(logits, free).tolist()) for _ in range(40)}) > 1


def test_pieces_that_queued_up_reach_the_client_as_one_event() -> None:
    """A stream that fell behind the model (the event loop busy with other clients) sends what has
    arrived in one event instead of one per token: the same text, fewer writes."""
    import asyncio
    import threading
    from collections import deque

    batcher = Batcher(_Forward())
    job = SimpleNamespace(pieces=deque([("piece", "Hel"), ("piece", "lo"), ("piece", ", world"), ("end", None)]), arrived=asyncio.Event(),
                          joined=True, generation=SimpleNamespace(cancel=threading.Event()), stop=lambda reason=None: None)

    async def read() -> list[str]:
        loop = asyncio.get_running_loop()
        return [piece async for piece in batcher.stream(job, loop.time() + 5)]

    assert asyncio.run(read()) == ["Hello, world"]
