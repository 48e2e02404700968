"""Preference losses against independent float64 references written from the papers' formulas: values, gradients, metrics, edge cases, segment_sum."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from helpers import ROOT

sys.path.insert(0, str(ROOT / "plugins" / "preference"))

from ftcore_preference.losses import dpo_loss, orpo_loss, reward_loss, segment_sum, simpo_loss  # noqa: E402

RTOL = 1e-5
N = 7  # pairs


# -- independent references: plain Python floats, formulas and hand-derived gradients ----


def log_sigmoid(z: float) -> float:
    """log(1 / (1 + exp(-z))), written so that it neither overflows nor loses precision."""
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def ref_dpo(pc, pr, rc, rr, beta, ls):
    """Loss and d loss / d (pc, pr, rc, rr) for DPO with label smoothing (Rafailov 2023 eq. 7; Mitchell 2023)."""
    n = len(pc)
    loss, g = 0.0, {k: [0.0] * n for k in ("pc", "pr", "rc", "rr")}
    for i in range(n):
        z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
        loss += (-(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z)) / n
        dz = (sigmoid(z) - (1 - ls)) / n  # d/dz of the per-pair loss, over n for the mean
        g["pc"][i], g["rc"][i], g["pr"][i], g["rr"][i] = beta * dz, -beta * dz, -beta * dz, beta * dz
    return loss, g


def ref_ipo(pc, pr, rc, rr, lc, lr, beta):
    """IPO (Azar 2023 eq. 17) on per-token average log-probs."""
    n = len(pc)
    loss, g = 0.0, {k: [0.0] * n for k in ("pc", "pr", "rc", "rr")}
    for i in range(n):
        h = (pc[i] / lc[i] - rc[i] / lc[i]) - (pr[i] / lr[i] - rr[i] / lr[i])
        loss += (h - 1 / (2 * beta)) ** 2 / n
        dh = 2 * (h - 1 / (2 * beta)) / n
        g["pc"][i], g["rc"][i], g["pr"][i], g["rr"][i] = dh / lc[i], -dh / lc[i], -dh / lr[i], dh / lr[i]
    return loss, g


def ref_orpo(pc, pr, lc, lr, beta, reduction):
    """ORPO (Hong 2024): L_SFT + lambda * -log sigmoid(log odds(y_w) - log odds(y_l)), odds(y) = P / (1 - P), P = exp(avg log-prob)."""
    n = len(pc)
    or_loss, sft, log_odds_sum = 0.0, 0.0, 0.0
    gc, gr = [0.0] * n, [0.0] * n
    for i in range(n):
        ac, ar = pc[i] / lc[i], pr[i] / lr[i]
        odds_c, odds_r = math.exp(ac) / (1 - math.exp(ac)), math.exp(ar) / (1 - math.exp(ar))
        lo = math.log(odds_c) - math.log(odds_r)
        log_odds_sum += lo
        or_loss += -log_sigmoid(lo) / n
        d_lo = -(1 - sigmoid(lo)) / n  # d(-log sigmoid(lo))/d lo, over n
        # d log odds / d a = 1 / (1 - exp(a))
        gc[i] += beta * d_lo / (1 - math.exp(ac)) / lc[i]
        gr[i] += -beta * d_lo / (1 - math.exp(ar)) / lr[i]
    if reduction == "sample":
        sft = sum(-pc[i] / lc[i] for i in range(n)) / n
        for i in range(n):
            gc[i] += -1 / (n * lc[i])
    else:
        sft = -sum(pc) / sum(lc)
        for i in range(n):
            gc[i] += -1 / sum(lc)
    return sft + beta * or_loss, {"pc": gc, "pr": gr}, sft, or_loss, log_odds_sum / n


def ref_simpo(pc, pr, lc, lr, beta, gamma, ls, sft_weight):
    """SimPO (Meng 2024 eq. 6) with TRL's label smoothing, plus an optional CPO NLL term."""
    n = len(pc)
    loss, gc, gr = 0.0, [0.0] * n, [0.0] * n
    for i in range(n):
        z = beta * (pc[i] / lc[i] - pr[i] / lr[i]) - gamma
        loss += (-(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z)) / n
        dz = (sigmoid(z) - (1 - ls)) / n
        gc[i] = beta * dz / lc[i]
        gr[i] = -beta * dz / lr[i]
        loss += sft_weight * (-pc[i] / lc[i]) / n
        gc[i] += -sft_weight / (n * lc[i])
    return loss, {"pc": gc, "pr": gr}


def ref_reward(sc, sr, margin, coef):
    """Bradley-Terry: -log sigmoid(s_c - s_r - m), plus coef * (s_c + s_r)^2 (TRL's centring)."""
    n = len(sc)
    loss, gc, gr = 0.0, [0.0] * n, [0.0] * n
    for i in range(n):
        z = sc[i] - sr[i] - margin[i]
        loss += (-log_sigmoid(z) + coef * (sc[i] + sr[i]) ** 2) / n
        dz = (sigmoid(z) - 1) / n
        gc[i] = dz + 2 * coef * (sc[i] + sr[i]) / n
        gr[i] = -dz + 2 * coef * (sc[i] + sr[i]) / n
    return loss, {"sc": gc, "sr": gr}


# -- comparison helpers -----------------------------------------------------------------


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def floats(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.detach().double()]


def assert_close(actual: torch.Tensor | float, expected: float | list[float], what: str = "") -> None:
    a = torch.as_tensor(actual, dtype=torch.float64).reshape(-1)
    e = torch.as_tensor(expected, dtype=torch.float64).reshape(-1)
    rel = ((a - e).abs().max() / e.abs().max().clamp(min=1e-30)).item()
    assert rel < RTOL, f"{what}: relative difference {rel:.3g} >= {RTOL} (actual {a.tolist()}, expected {e.tolist()})"


def summed_logps(gen: torch.Generator, lengths: torch.Tensor, low: float = -3.0, high: float = -0.05) -> torch.Tensor:
    """Summed answer log-probs: a random per-token average in [low, high] times the length."""
    avg = low + (high - low) * torch.rand(len(lengths), generator=gen)
    return (avg * lengths).float()


def random_lengths(gen: torch.Generator) -> torch.Tensor:
    return torch.randint(1, 60, (N,), generator=gen)


# -- DPO / IPO ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta, ls", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2), (2.0, 0.05)])
def test_dpo_sigmoid_loss_and_gradients_match_the_paper(seed, beta, ls):
    gen = torch.Generator().manual_seed(seed)
    lens = random_lengths(gen)
    pc, pr, rc, rr = (leaf(summed_logps(gen, lens).tolist()) for _ in range(4))
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=ls)
    loss.backward()
    expected, grads = ref_dpo(floats(pc), floats(pr), floats(rc), floats(rr), beta, ls)
    assert_close(loss, expected, "loss")
    for name, t in (("pc", pc), ("pr", pr), ("rc", rc), ("rr", rr)):
        assert_close(t.grad, grads[name], f"d loss / d {name}")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_ipo_loss_and_gradients_match_the_paper_on_token_averages(seed, beta):
    gen = torch.Generator().manual_seed(100 + seed)
    lc, lr = random_lengths(gen), random_lengths(gen)
    pc, rc = leaf(summed_logps(gen, lc).tolist()), leaf(summed_logps(gen, lc).tolist())
    pr, rr = leaf(summed_logps(gen, lr).tolist()), leaf(summed_logps(gen, lr).tolist())
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo", chosen_lengths=lc, rejected_lengths=lr)
    loss.backward()
    expected, grads = ref_ipo(floats(pc), floats(pr), floats(rc), floats(rr), lc.tolist(), lr.tolist(), beta)
    assert_close(loss, expected, "loss")
    for name, t in (("pc", pc), ("pr", pr), ("rc", rc), ("rr", rr)):
        assert_close(t.grad, grads[name], f"d loss / d {name}")
    # rewards are on the token averages the loss used
    chosen = [beta * (a - b) / n for a, b, n in zip(floats(pc), floats(rc), lc.tolist())]
    assert_close(metrics["rewards/chosen"], sum(chosen) / N, "rewards/chosen")


def test_dpo_metrics_equal_hand_computed_values():
    pc, rc = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.5, -1.5, -1.5])
    pr, rr = torch.tensor([-2.0, -1.0, -3.0]), torch.tensor([-2.0, -2.0, -2.0])
    _, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # chosen rewards 0.5 * [0.5, -0.5, -1.5] = [0.25, -0.25, -0.75]; rejected 0.5 * [0, 1, -1] = [0, 0.5, -0.5]
    assert m["rewards/chosen"].item() == pytest.approx(-0.25)
    assert m["rewards/rejected"].item() == pytest.approx(0.0)
    assert m["rewards/accuracy"].item() == pytest.approx(1 / 3)
    assert m["rewards/margin"].item() == pytest.approx(-0.25)
    assert m["logps/chosen"].item() == pytest.approx(-2.0) and m["logps/rejected"].item() == pytest.approx(-2.0)
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())


def test_dpo_accuracy_counts_ties_as_wrong():
    z = torch.zeros(4)
    _, m = dpo_loss(z, z, z, z)
    assert m["rewards/accuracy"].item() == 0.0
    assert m["rewards/margin"].item() == 0.0


def test_dpo_at_zero_margin_is_log_2():
    z = torch.zeros(3)
    loss, _ = dpo_loss(z, z, z, z, beta=0.3, label_smoothing=0.1)
    assert loss.item() == pytest.approx(math.log(2))


def test_dpo_half_precision_inputs_are_computed_in_float32():
    gen = torch.Generator().manual_seed(5)
    vals = [summed_logps(gen, random_lengths(gen)).to(torch.bfloat16) for _ in range(4)]
    loss, m = dpo_loss(*vals)
    assert loss.dtype == torch.float32 and m["rewards/margin"].dtype == torch.float32


def test_dpo_refuses_bad_options():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(z, z, z, z, loss_type="hinge")
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(z, z, z, z, loss_type="ipo")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(z, z, z, z, loss_type="ipo", label_smoothing=0.1, chosen_lengths=torch.ones(2), rejected_lengths=torch.ones(2))
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(z, torch.zeros(3), z, z)


# -- ORPO --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.1, 0.25, 1.0])
@pytest.mark.parametrize("reduction", ["sample", "token"])
def test_orpo_loss_and_gradients_match_the_paper(seed, beta, reduction):
    gen = torch.Generator().manual_seed(200 + seed)
    lc, lr = random_lengths(gen), random_lengths(gen)
    pc, pr = leaf(summed_logps(gen, lc, high=-1e-3).tolist()), leaf(summed_logps(gen, lr, high=-1e-3).tolist())
    loss, m = orpo_loss(pc, pr, lc, lr, beta=beta, sft_reduction=reduction)
    loss.backward()
    expected, grads, sft, or_loss, mean_log_odds = ref_orpo(floats(pc), floats(pr), lc.tolist(), lr.tolist(), beta, reduction)
    assert_close(loss, expected, "loss")
    assert_close(pc.grad, grads["pc"], "d loss / d chosen")
    assert_close(pr.grad, grads["pr"], "d loss / d rejected")
    assert_close(m["sft_loss"], sft, "sft_loss")
    assert_close(m["odds_ratio_loss"], or_loss, "odds_ratio_loss")
    assert_close(m["log_odds_ratio"], mean_log_odds, "log_odds_ratio")


def test_orpo_is_accurate_for_average_log_probs_near_zero():
    """log(1 - exp(a)) for a -> 0-: the naive float32 log1p(-exp(a)) loses digits here; ours must not."""
    lc = lr = torch.ones(4, dtype=torch.long)
    pc, pr = leaf([-1e-3, -1e-4, -1e-5, -2e-6]), leaf([-0.7, -5e-5, -1.0, -3e-6])
    loss, _ = orpo_loss(pc, pr, lc, lr, beta=0.2)
    loss.backward()
    expected, grads, *_ = ref_orpo(floats(pc), floats(pr), [1] * 4, [1] * 4, 0.2, "sample")
    assert_close(loss, expected, "loss")
    assert_close(pc.grad, grads["pc"], "d loss / d chosen")
    assert_close(pr.grad, grads["pr"], "d loss / d rejected")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_orpo_is_nan_free_at_the_extremes(dtype):
    """Average log-probs of exactly 0, a hair below 0, and very negative: finite loss, metrics and gradients."""
    extremes = [0.0, -0.0, -1e-12, -1e-30, -80.0, -1e4, -3e4, -1e-7]
    pc = torch.tensor(extremes, dtype=dtype, requires_grad=True)
    pr = torch.tensor(list(reversed(extremes)), dtype=dtype, requires_grad=True)
    ones = torch.ones(len(extremes), dtype=torch.long)
    loss, m = orpo_loss(pc, pr, ones, ones, beta=0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in m.values())
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


def test_orpo_metrics_equal_hand_computed_values():
    pc, pr = torch.tensor([-2.0, -9.0]), torch.tensor([-4.0, -3.0])
    lc, lr = torch.tensor([2, 3]), torch.tensor([4, 1])
    _, m = orpo_loss(pc, pr, lc, lr, beta=0.5)
    # averages: chosen [-1, -3], rejected [-1, -3] -> rewards 0.5 * avg: equal in both pairs
    assert m["rewards/chosen"].item() == pytest.approx(-1.0)
    assert m["rewards/rejected"].item() == pytest.approx(-1.0)
    assert m["rewards/accuracy"].item() == 0.0 and m["rewards/margin"].item() == pytest.approx(0.0)
    assert m["log_odds_ratio"].item() == pytest.approx(0.0, abs=1e-6)
    assert m["odds_ratio_loss"].item() == pytest.approx(math.log(2))
    assert m["sft_loss"].item() == pytest.approx(2.0)  # mean of 1 and 3


def test_orpo_refuses_an_unknown_sft_reduction():
    z = torch.full((2,), -1.0)
    with pytest.raises(ValueError, match="sft_reduction"):
        orpo_loss(z, z, torch.ones(2), torch.ones(2), sft_reduction="batch")


# -- SimPO -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta, gamma, ls, sft_weight", [(2.0, 1.0, 0.0, 0.0), (2.5, 1.4, 0.0, 0.0), (2.0, 0.5, 0.1, 0.0), (0.1, 0.05, 0.0, 1.0)])
def test_simpo_loss_and_gradients_match_the_paper(seed, beta, gamma, ls, sft_weight):
    gen = torch.Generator().manual_seed(300 + seed)
    lc, lr = random_lengths(gen), random_lengths(gen)
    pc, pr = leaf(summed_logps(gen, lc).tolist()), leaf(summed_logps(gen, lr).tolist())
    loss, m = simpo_loss(pc, pr, lc, lr, beta=beta, gamma=gamma, label_smoothing=ls, sft_weight=sft_weight)
    loss.backward()
    expected, grads = ref_simpo(floats(pc), floats(pr), lc.tolist(), lr.tolist(), beta, gamma, ls, sft_weight)
    assert_close(loss, expected, "loss")
    assert_close(pc.grad, grads["pc"], "d loss / d chosen")
    assert_close(pr.grad, grads["pr"], "d loss / d rejected")
    assert ("sft_loss" in m) == bool(sft_weight)


def test_simpo_metrics_equal_hand_computed_values():
    pc, pr = torch.tensor([-2.0, -6.0, -1.0]), torch.tensor([-3.0, -2.0, -8.0])
    lc, lr = torch.tensor([4, 2, 1]), torch.tensor([1, 4, 2])
    _, m = simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=1.0)
    # averages: chosen [-0.5, -3, -1], rejected [-3, -0.5, -4]; rewards = 2 * avg
    assert m["rewards/chosen"].item() == pytest.approx(2 * (-4.5 / 3))
    assert m["rewards/rejected"].item() == pytest.approx(2 * (-7.5 / 3))
    assert m["rewards/accuracy"].item() == pytest.approx(2 / 3)
    assert m["rewards/margin"].item() == pytest.approx(2 * (2.5 - 2.5 + 3) / 3)


# -- reward model ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_margin, coef", [(False, 0.0), (True, 0.0), (True, 0.01)])
def test_reward_loss_and_gradients_match_bradley_terry(seed, use_margin, coef):
    gen = torch.Generator().manual_seed(400 + seed)
    sc, sr = leaf((3 * torch.randn(N, generator=gen)).tolist()), leaf((3 * torch.randn(N, generator=gen)).tolist())
    margin = torch.rand(N, generator=gen) if use_margin else None
    loss, _ = reward_loss(sc, sr, margin=margin, center_rewards_coefficient=coef)
    loss.backward()
    margins = margin.tolist() if use_margin else [0.0] * N
    expected, grads = ref_reward(floats(sc), floats(sr), margins, coef)
    assert_close(loss, expected, "loss")
    assert_close(sc.grad, grads["sc"], "d loss / d chosen score")
    assert_close(sr.grad, grads["sr"], "d loss / d rejected score")


def test_reward_scalar_margin_and_metrics():
    sc, sr = torch.tensor([1.0, 0.0, 2.0, -1.0]), torch.tensor([0.0, 0.5, 2.0, -3.0])
    loss, m = reward_loss(sc, sr, margin=1.0)
    expected = sum(-log_sigmoid(c - r - 1.0) for c, r in zip(sc.tolist(), sr.tolist())) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["rewards/accuracy"].item() == pytest.approx(0.5)  # 1>0 and -1>-3; 0<0.5 and the tie are wrong
    assert m["rewards/margin"].item() == pytest.approx((1 - 0.5 + 0 + 2) / 4)
    assert m["rewards/chosen"].item() == pytest.approx(0.5) and m["rewards/rejected"].item() == pytest.approx(-0.125)


# -- segment_sum ---------------------------------------------------------------------------


def packed_layout(gen: torch.Generator, rows: int = 3, width: int = 40):
    """Packed rows of [prompt | chosen answer][prompt | rejected answer]... with a padded tail; -1 marks untrained tokens."""
    ids = torch.full((rows, width), -1, dtype=torch.long)
    sample = 0
    for row in range(rows):
        pos = 0
        while True:
            prompt, answer = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 8, (1,), generator=gen))
            if pos + prompt + answer > width - 2:
                break
            ids[row, pos + prompt : pos + prompt + answer] = sample
            pos += prompt + answer
            sample += 1
    return ids, sample


def test_segment_sum_equals_a_loop_over_a_packed_layout():
    gen = torch.Generator().manual_seed(7)
    ids, n = packed_layout(gen)
    values = torch.randn(ids.shape, generator=gen, dtype=torch.float64)
    expected = [0.0] * n
    for v, k in zip(values.reshape(-1).tolist(), ids.reshape(-1).tolist()):
        if k >= 0:
            expected[k] += v
    assert_close(segment_sum(values, ids, n), expected, "segment sums")
    assert_close(segment_sum(torch.ones(ids.shape), ids, n), [float((ids == k).sum()) for k in range(n)], "token counts")


def test_segment_sum_skips_non_finite_values_at_untrained_tokens_and_routes_gradients():
    ids = torch.tensor([-1, 0, 0, -1, 1, 1, 1, -1])
    values = torch.tensor([float("-inf"), 1.0, 2.0, float("nan"), 3.0, 4.0, 5.0, float("-inf")], requires_grad=True)
    out = segment_sum(values, ids, 2)
    assert out.tolist() == [3.0, 12.0]
    (out * torch.tensor([10.0, 100.0])).sum().backward()
    assert values.grad.tolist() == [0.0, 10.0, 10.0, 0.0, 100.0, 100.0, 100.0, 0.0]


def test_segment_sum_edge_cases():
    assert segment_sum(torch.zeros(3), torch.full((3,), -1), 0).shape == (0,)
    assert segment_sum(torch.ones(2, dtype=torch.bfloat16), torch.tensor([0, 0]), 1).dtype == torch.float32
    assert segment_sum(torch.ones(3), torch.tensor([0, 2, 2]), 4).tolist() == [1.0, 0.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="same shape"):
        segment_sum(torch.ones(3), torch.zeros(2, dtype=torch.long), 1)


def test_dpo_from_packed_token_log_probs_equals_the_per_pair_reference():
    """Per-token log-probs of a packed batch -> segment_sum -> dpo_loss equals the reference on per-pair sums, gradients per token included."""
    gen = torch.Generator().manual_seed(11)
    ids, n = packed_layout(gen, rows=4, width=48)
    n -= n % 2  # samples 2k (chosen) and 2k+1 (rejected) form pair k
    ids = torch.where(ids < n, ids, torch.full_like(ids, -1))
    policy = (-3 * torch.rand(ids.shape, generator=gen)).requires_grad_(True)
    reference = -3 * torch.rand(ids.shape, generator=gen)
    sums, ref_sums = segment_sum(policy, ids, n), segment_sum(reference, ids, n)
    loss, _ = dpo_loss(sums[0::2], sums[1::2], ref_sums[0::2], ref_sums[1::2], beta=0.2)
    loss.backward()

    pol_py, ref_py = [0.0] * n, [0.0] * n
    for p, r, k in zip(policy.detach().reshape(-1).tolist(), reference.reshape(-1).tolist(), ids.reshape(-1).tolist()):
        if k >= 0:
            pol_py[k] += p
            ref_py[k] += r
    expected, grads = ref_dpo(pol_py[0::2], pol_py[1::2], ref_py[0::2], ref_py[1::2], 0.2, 0.0)
    assert_close(loss, expected, "loss")
    per_sample = [0.0] * n
    per_sample[0::2], per_sample[1::2] = grads["pc"], grads["pr"]
    token_grads = [per_sample[k] if k >= 0 else 0.0 for k in ids.reshape(-1).tolist()]
    assert_close(policy.grad.reshape(-1), token_grads, "d loss / d token log-prob")
