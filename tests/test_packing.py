"""Packing: no token lost or duplicated, positions and boundaries, determinism, and attention kept inside samples."""

from __future__ import annotations

import numpy as np
import pytest

from ftcore.data.collate import collate_rows
from ftcore.data.pack import IGNORE, Encoded, pack


def samples(n: int, seed: int = 0, max_len: int = 40):
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for i in range(n):
        length = int(rng.integers(3, max_len))
        x = rng.integers(10, 500, size=length).tolist()
        y = [IGNORE] * (length // 2) + x[length // 2 :]
        ids.append(x)
        labels.append(y)
    return ids, labels


def test_no_token_lost_or_duplicated_and_rows_fit() -> None:
    ids, labels = samples(200)
    packed = pack(Encoded.from_lists(ids, labels), 64, seed=3)
    assert packed.num_samples == 200
    assert (packed.row_lengths() <= 64).all()
    # every sample appears exactly once, intact
    got = sorted(tuple(packed.tokens[a:b].tolist()) for a, b in zip(packed.sample_starts[:-1], packed.sample_starts[1:]))
    assert got == sorted(tuple(x) for x in ids)
    assert len(packed) < 200 and packed.efficiency() > 0.7


def test_positions_restart_and_boundaries_are_right() -> None:
    ids, labels = samples(50, seed=1)
    packed = pack(Encoded.from_lists(ids, labels), 64, seed=0)
    for r in range(len(packed)):
        row = packed.row(r)
        bounds = row["cu_seqlens"]
        assert bounds[0] == 0 and bounds[-1] == len(row["input_ids"])
        for a, b in zip(bounds[:-1], bounds[1:]):
            assert row["position_ids"][a:b].tolist() == list(range(b - a))
            assert row["labels"][a] == IGNORE  # a sample's first token is never a target


def test_labels_follow_their_tokens() -> None:
    ids, labels = samples(30, seed=2)
    packed = pack(Encoded.from_lists(ids, labels), 64, seed=5)
    by_tokens = {tuple(x): y for x, y in zip(ids, labels)}
    for a, b in zip(packed.sample_starts[:-1], packed.sample_starts[1:]):
        expected = list(by_tokens[tuple(packed.tokens[a:b].tolist())])
        expected[0] = IGNORE
        assert packed.labels[a:b].tolist() == expected


def test_deterministic_under_a_seed_and_shuffled_by_it() -> None:
    ids, labels = samples(100)
    a, b, c = pack(Encoded.from_lists(ids, labels), 64, seed=7), pack(Encoded.from_lists(ids, labels), 64, seed=7), pack(Encoded.from_lists(ids, labels), 64, seed=8)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.row_starts, b.row_starts)
    assert not np.array_equal(a.tokens, c.tokens)


def test_unpacked_mode_is_one_sample_per_row() -> None:
    ids, labels = samples(20)
    packed = pack(Encoded.from_lists(ids, labels), 64, packed=False)
    assert len(packed) == 20 and sorted(packed.row_lengths().tolist()) == sorted(len(x) for x in ids)


def test_collate_pads_with_ignored_labels_and_restarting_positions() -> None:
    ids, labels = samples(10)
    packed = pack(Encoded.from_lists(ids, labels), 64)
    batch = collate_rows([packed.row(0), packed.row(1)], pad_id=0)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(packed.row_lengths()[:2])
    for i in range(2):
        k = int(packed.row_lengths()[i])
        assert (batch["labels"][i, k:] == IGNORE).all()
        assert batch["position_ids"][i, k:].tolist() == list(range(width - k))


@pytest.mark.parametrize(
    "attn,chunked_loss,layout",
    [("sdpa", False, "rows"), ("sdpa", True, "rows"), ("ftcore_varlen", True, "rows"), ("ftcore_varlen", True, "flat"), ("ftcore_varlen", True, "flat+compile")],
)
def test_packed_loss_and_gradients_equal_samples_run_one_by_one(tiny_llama, attn, chunked_loss, layout) -> None:
    """Whatever attention, loss and batch layout training uses (padded rows, or the rows laid end to end
    with their boundaries; eager or torch.compile'd layers), packed rows equal their samples run separately."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.models.loss_head import LossHead, install_loss_head
    from ftcore.train.objective import loss_sum

    from ftcore.models.varlen import register

    register()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), attn_implementation=attn, dtype=torch.float32)
    if chunked_loss:
        assert install_loss_head(model)
        model.get_output_embeddings().chunk = 16  # several chunks even for this small batch
        assert isinstance(model.get_output_embeddings(), LossHead)
    if layout.endswith("compile"):
        from ftcore.models.loading import compile_layers

        assert compile_layers(model) == model.config.num_hidden_layers
    ids, labels = samples(6, seed=4, max_len=30)
    packed = pack(Encoded.from_lists(ids, labels), 64, shuffle=False)
    assert len(packed) >= 2 and packed.num_samples == 6

    model.zero_grad()
    batch = collate_rows([packed.row(r) for r in range(len(packed))], pad_id=0, flat=layout != "rows")
    assert batch["input_ids"].shape[0] == (len(packed) if layout == "rows" else 1)
    packed_loss, packed_n = loss_sum(model, batch)
    packed_loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    total, n_total = 0.0, 0
    for x, y in zip(ids, labels):
        y = [IGNORE] + y[1:]
        single = {"input_ids": torch.tensor([x]), "labels": torch.tensor([y]), "position_ids": torch.arange(len(x))[None]}
        loss, n = loss_sum(model, single)
        loss.backward()
        total += float(loss.detach())
        n_total += int(n)
    assert int(packed_n) == n_total
    assert abs(float(packed_loss) - total) / total < 1e-5
    for name, p in model.named_parameters():
        ref = p.grad
        err = (packed_grads[name] - ref).norm() / ref.norm().clamp_min(1e-12)
        assert err < 1e-5, name


def test_data_pipeline_caches_and_second_run_says_so(tmp_path, tiny_llama, self_cognition_file) -> None:
    from transformers import AutoTokenizer

    from ftcore.data.pipeline import prepare_data
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    parts = collect_parts(get_plugin_manager())
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    cfg = {"path": str(self_cognition_file), "format": "auto", "max_length": 128, "pack": True, "shuffle": True, "max_samples": None,
           "on_error": "raise", "system": None, "cache": True, "cache_dir": str(tmp_path / "cache")}
    logs: list[str] = []
    first, report1 = prepare_data(cfg, parts.formats, tok, parts.templates.get("internlm2_chat"), 0, log=logs.append)
    assert any("detected: openai" in l for l in logs) and not report1.cached
    logs.clear()
    second, report2 = prepare_data(cfg, parts.formats, tok, parts.templates.get("internlm2_chat"), 0, log=logs.append)
    assert report2.cached and any("using cached data" in l for l in logs)
    assert np.array_equal(first.tokens, second.tokens) and np.array_equal(first.labels, second.labels)
    # any change that shapes the result misses the cache
    third, report3 = prepare_data({**cfg, "max_length": 96}, parts.formats, tok, parts.templates.get("internlm2_chat"), 0, log=logs.append)
    assert not report3.cached


def test_loss_head_is_the_plain_linear_layer_outside_training(tiny_llama) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.models.loss_head import install_loss_head

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    chunked = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    install_loss_head(chunked)
    ids = torch.tensor([[1, 7, 9, 11]])
    assert torch.equal(plain(ids).logits, chunked(ids).logits)
    assert torch.equal(plain.generate(ids, max_new_tokens=5, do_sample=False), chunked.generate(ids, max_new_tokens=5, do_sample=False))


def test_best_fit_fills_rows_almost_completely() -> None:
    """Chat-like lengths (lognormal, median 200, up to the row size): best-fit rows are >= 98% full
    (next-fit, the usual greedy packing, leaves about 12% of every row empty on these)."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(200), 0.8, 5000).astype(int), 8, 2048)
    ids = [list(range(1, n + 1)) for n in lengths]
    packed = pack(Encoded.from_lists(ids, ids), 2048, seed=1)
    assert packed.num_samples == 5000 and (packed.row_lengths() <= 2048).all()
    assert packed.efficiency() >= 0.98


def test_frozen_loss_head_gradients_computed_in_forward_equal_plain_cross_entropy(tiny_llama) -> None:
    """A frozen head (adapter training) takes each chunk's input gradient in forward, without the
    recomputation in backward, eager or with its softmax compiled (model.compile): loss and every
    gradient equal those of the full-logits loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.models import loss_head
    from ftcore.train.objective import loss_sum

    ids, labels = samples(4, seed=5, max_len=40)
    packed = pack(Encoded.from_lists(ids, labels), 64, shuffle=False)
    batch = collate_rows([packed.row(r) for r in range(len(packed))], pad_id=0)
    results = []
    for mode in ("plain", "chunked", "compiled"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
        if mode != "plain":
            assert loss_head.install_loss_head(model, chunk=16)
        if mode == "compiled":
            model.get_output_embeddings().compile_softmax()
            assert model.get_output_embeddings()._softmax_grad is not loss_head.softmax_grad
        model.get_output_embeddings().weight.requires_grad_(False)
        recomputed = []
        original = loss_head._chunk_loss
        loss_head._chunk_loss = lambda *a: recomputed.append(1) or original(*a)
        try:
            loss, n = loss_sum(model, batch)
            loss.backward()
        finally:
            loss_head._chunk_loss = original
        assert not recomputed  # neither the forward nor the backward went through the recomputed chunks
        results.append((float(loss), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}))
    (plain, plain_grads), *others = results
    for chunked_loss, chunked_grads in others:
        assert abs(chunked_loss - plain) / plain < 1e-6
        assert plain_grads.keys() == chunked_grads.keys() and plain_grads
        for k, g in plain_grads.items():
            assert float((chunked_grads[k] - g).norm() / g.norm().clamp_min(1e-12)) < 1e-5, k


def test_samples_of_one_length_take_plain_causal_attention_and_equal_their_runs_one_by_one(tiny_llama, monkeypatch) -> None:
    """Rows cut from a text stream (every sample as long as the longest): the flat batch goes through one
    batched causal attention (cuDNN's on a GPU) instead of the variable-length kernel, with the same result."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.models import varlen
    from ftcore.train.objective import loss_sum

    varlen.register()
    dense = []
    original = varlen._dense
    monkeypatch.setattr(varlen, "_dense", lambda *a: dense.append(a[3:5]) or original(*a))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), attn_implementation="ftcore_varlen", dtype=torch.float32)
    rng = torch.Generator().manual_seed(3)
    ids = [torch.randint(3, 200, (32,), generator=rng).tolist() for _ in range(4)]
    labels = [[IGNORE] + x[1:] for x in ids]
    packed = pack(Encoded.from_lists(ids, labels), 64, shuffle=False)
    batch = collate_rows([packed.row(r) for r in range(len(packed))], pad_id=0, flat=True)
    loss, _ = loss_sum(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert dense and all(call == (4, 32) for call in dense)  # every layer: 4 samples of 32 tokens, batched
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_llama), attn_implementation="sdpa", dtype=torch.float32)  # transformers' own attention
    total = 0.0
    for x, y in zip(ids, labels):
        one, _ = loss_sum(reference, {"input_ids": torch.tensor([x]), "labels": torch.tensor([y]), "position_ids": torch.arange(32)[None]})
        one.backward()
        total += float(one.detach())
    assert abs(float(loss) - total) / total < 1e-5
    for name, p in reference.named_parameters():
        assert (grads[name] - p.grad).norm() / p.grad.norm().clamp_min(1e-12) < 1e-5, name
