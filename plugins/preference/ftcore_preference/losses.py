"""Preference losses (DPO/IPO, ORPO, SimPO, Bradley-Terry reward) on per-sample log-probs, and the packed-row segment sum.

Every loss takes per-sample tensors of shape ``(pairs,)`` and returns ``(loss, metrics)``:
``loss`` is the 0-d mean over pairs, ``metrics`` maps names to detached 0-d tensors:
``rewards/chosen``, ``rewards/rejected`` (means over pairs), ``rewards/accuracy`` (fraction
of pairs whose chosen reward is strictly greater), ``rewards/margin`` (mean chosen minus
rejected reward), plus loss-specific terms. Log-probs are the *summed* log-probs of each
answer's tokens; the losses that need per-token averages (IPO, ORPO, SimPO) take the answer
token counts and divide themselves, so one forward feeds every objective. Half-precision
inputs are computed in float32. Answer lengths are clamped to at least 1 token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]

DPO_LOSS_TYPES = ("sigmoid", "ipo")
SFT_REDUCTIONS = ("sample", "token")

_LN2 = math.log(2.0)


def segment_sum(values: Tensor, segment_ids: Tensor, n: int) -> Tensor:
    """``out[k] = sum(values[segment_ids == k])`` for ``k < n``: per-token values summed per sample.

    ``values`` and ``segment_ids`` have the same shape (e.g. a packed batch ``(rows, tokens)``);
    ids are global sample indices, and a negative id (prompt, padding, a row's tail) skips its
    token. One ``index_add`` (differentiable, no sync with the device); half-precision values
    are accumulated and returned in float32. On CUDA ``index_add`` accumulates with atomics:
    bitwise-reproducible sums need ``torch.use_deterministic_algorithms(True)``.
    """
    if values.shape != segment_ids.shape:
        raise ValueError(f"values {tuple(values.shape)} and segment_ids {tuple(segment_ids.shape)} must have the same shape")
    dtype = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else values.dtype
    out = torch.zeros(n, dtype=dtype, device=values.device)
    if n == 0:
        return out
    ids = segment_ids.reshape(-1).long()
    keep = ids >= 0
    flat = torch.where(keep, values.reshape(-1).to(dtype), torch.zeros((), dtype=dtype, device=values.device))
    return out.index_add(0, ids.clamp(min=0), flat)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023) on policy and reference log-probs.

    ``h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)``.

    - ``sigmoid``: ``-(1 - ls) * logsigmoid(beta * h) - ls * logsigmoid(-beta * h)``, with
      ``ls = label_smoothing`` (conservative DPO, Mitchell 2023; ``ls = 0`` is plain DPO).
    - ``ipo``: ``(h - 1 / (2 * beta)) ** 2`` where, as TRL does, all four log-probs are first
      averaged over their answer's tokens (``chosen_lengths`` / ``rejected_lengths`` are
      required); label smoothing does not apply to IPO and is refused.

    Rewards are ``beta * (policy - reference)`` of the log-probs the loss used (per-token
    averages for IPO). Extra metrics: ``logps/chosen`` and ``logps/rejected``, the policy's
    summed log-probs averaged over pairs.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}")
    pc, pr, rc, rr = (_f32(t) for t in (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps))
    _same_shape(pc, pr, rc, rr)
    logps_metrics = _logps_metrics(pc, pr)
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("the ipo loss averages log-probs per token: pass chosen_lengths and rejected_lengths")
        if label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid DPO loss only, not to ipo")
        lc, lr = _lengths(chosen_lengths, pc), _lengths(rejected_lengths, pr)
        pc, rc, pr, rr = pc / lc, rc / lc, pr / lr, rr / lr
    h = (pc - rc) - (pr - rr)
    if loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = _smoothed_logsigmoid_loss(beta * h, label_smoothing)
    metrics = _reward_metrics(beta * (pc - rc), beta * (pr - rr))
    metrics.update(logps_metrics)
    return losses.mean(), metrics


def orpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 0.1,
    sft_reduction: str = "sample",
) -> tuple[Tensor, Metrics]:
    """ORPO (Hong et al. 2024): ``sft_loss - beta * mean(logsigmoid(log_odds))``, no reference model.

    With ``a = log-prob / tokens`` (per-token average) for each answer,
    ``log_odds = (a_c - a_r) - (log(1 - exp(a_c)) - log(1 - exp(a_r)))``; ``beta`` is the
    paper's lambda (TRL's name). ``log(1 - exp(a))`` is computed stably (``expm1`` near 0,
    ``log1p`` below ``-ln 2``) with ``a`` clamped to ``<= -eps`` of its dtype inside that term
    only, so an average log-prob of exactly 0 or of -1e4 stays finite, gradients included.

    ``sft_loss`` is the chosen answers' token NLL: ``"sample"`` (default, the paper's
    per-response mean, averaged over pairs) or ``"token"`` (total NLL over total chosen tokens,
    what TRL's cross-entropy over the batch computes).

    Rewards are ``beta * a`` (TRL). Extra metrics: ``sft_loss``, ``odds_ratio_loss``
    (``-mean(logsigmoid(log_odds))``), ``log_odds_ratio`` (``mean(log_odds)``), ``logps/*``.
    """
    pc, pr = _f32(chosen_logps), _f32(rejected_logps)
    _same_shape(pc, pr)
    lc, lr = _lengths(chosen_lengths, pc), _lengths(rejected_lengths, pr)
    ac, ar = pc / lc, pr / lr
    log_odds = (ac - ar) - (_log1mexp(ac) - _log1mexp(ar))
    odds_ratio_loss = -F.logsigmoid(log_odds).mean()
    sft = _chosen_nll(pc, lc, sft_reduction)
    loss = sft + beta * odds_ratio_loss
    metrics = _reward_metrics(beta * ac, beta * ar)
    metrics.update(_logps_metrics(pc, pr))
    metrics["sft_loss"] = sft.detach()
    metrics["odds_ratio_loss"] = odds_ratio_loss.detach()
    metrics["log_odds_ratio"] = log_odds.detach().mean()
    return loss, metrics


def simpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
    sft_reduction: str = "sample",
) -> tuple[Tensor, Metrics]:
    """SimPO (Meng et al. 2024): ``-logsigmoid(beta * (a_c - a_r) - gamma)``, no reference model.

    ``a`` is each answer's per-token average log-prob; ``gamma`` is the target reward margin
    itself (TRL's ``simpo_gamma``; the SimPO repository's ``gamma_beta_ratio`` is
    ``gamma / beta``). Label smoothing as TRL's CPO trainer:
    ``-(1 - ls) * logsigmoid(z) - ls * logsigmoid(-z)`` with ``z = beta * (a_c - a_r) - gamma``.
    ``sft_weight > 0`` adds ``sft_weight`` times the chosen answers' NLL (CPO-SimPO, TRL's
    ``cpo_alpha``; reduced as ``sft_reduction``, see ``orpo_loss``) and reports ``sft_loss``.

    Rewards are ``beta * a`` (TRL). Extra metrics: ``logps/*``.
    """
    pc, pr = _f32(chosen_logps), _f32(rejected_logps)
    _same_shape(pc, pr)
    lc, lr = _lengths(chosen_lengths, pc), _lengths(rejected_lengths, pr)
    ac, ar = pc / lc, pr / lr
    loss = _smoothed_logsigmoid_loss(beta * (ac - ar) - gamma, label_smoothing).mean()
    metrics = _reward_metrics(beta * ac, beta * ar)
    metrics.update(_logps_metrics(pc, pr))
    if sft_weight:
        sft = _chosen_nll(pc, lc, sft_reduction)
        loss = loss + sft_weight * sft
        metrics["sft_loss"] = sft.detach()
    return loss, metrics


def reward_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    *,
    margin: Tensor | float | None = None,
    center_rewards_coefficient: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Bradley-Terry reward-model loss: ``-mean(logsigmoid(s_c - s_r - margin))``.

    ``margin`` (a per-pair tensor or a number, as in Llama 2 / TRL's ``margin`` column) asks
    for a gap of at least that much; ``center_rewards_coefficient`` adds
    ``coef * mean((s_c + s_r) ** 2)`` (TRL's option, keeps scores centred on 0). Rewards are
    the scores themselves; ``rewards/accuracy`` is ``mean(s_c > s_r)``.
    """
    sc, sr = _f32(chosen_scores), _f32(rejected_scores)
    _same_shape(sc, sr)
    z = sc - sr
    if margin is not None:
        z = z - (margin.to(z) if isinstance(margin, Tensor) else margin)
    loss = -F.logsigmoid(z).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((sc + sr) ** 2).mean()
    return loss, _reward_metrics(sc, sr)


# -- helpers ----------------------------------------------------------------------------


def _f32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _same_shape(*tensors: Tensor) -> None:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"per-pair inputs must have one shape, got {sorted(shapes)}")


def _lengths(lengths: Tensor, like: Tensor) -> Tensor:
    if lengths.shape != like.shape:
        raise ValueError(f"lengths {tuple(lengths.shape)} must have the log-probs' shape {tuple(like.shape)}")
    return lengths.to(like.dtype).clamp(min=1)


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate everywhere and finite (with finite gradients)."""
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    near_zero = torch.log(-torch.expm1(x.clamp(min=-_LN2)))
    far = torch.log1p(-torch.exp(x.clamp(max=-_LN2)))
    return torch.where(x > -_LN2, near_zero, far)


def _smoothed_logsigmoid_loss(z: Tensor, label_smoothing: float) -> Tensor:
    losses = -F.logsigmoid(z)
    if label_smoothing:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-z)
    return losses


def _chosen_nll(chosen_logps: Tensor, chosen_lengths: Tensor, reduction: str) -> Tensor:
    if reduction == "sample":
        return (-chosen_logps / chosen_lengths).mean()
    if reduction == "token":
        return -chosen_logps.sum() / chosen_lengths.sum()
    raise ValueError(f"unknown sft_reduction {reduction!r}; expected one of {', '.join(SFT_REDUCTIONS)}")


def _reward_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Metrics:
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/accuracy": (c > r).to(c.dtype).mean(),
        "rewards/margin": (c - r).mean(),
    }


def _logps_metrics(chosen_logps: Tensor, rejected_logps: Tensor) -> Metrics:
    return {"logps/chosen": chosen_logps.detach().mean(), "logps/rejected": rejected_logps.detach().mean()}
