"""The preference objectives: dpo, orpo, simpo (per-answer log-probs from packed pairs) and reward (a score per answer)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal

from ftcore.api import IGNORE, FtcoreError, Objective, Option, TrainingPlan, send_to_device

REFERENCE_FILE = "reference_logps.json"


def answer_logps(plan: TrainingPlan, model: Any, batch: dict[str, Any]) -> tuple[Any, Any, list[int]]:
    """Summed log-probs of every answer in ``batch`` (one per sample, in batch order), its trained
    token counts, and the batch's pair numbers — from one forward over the packed rows."""
    import torch

    from .losses import segment_sum

    samples = batch["samples"]
    nll, _ = plan.token_nll(model, batch, reduction="none")
    labels = batch["labels"][:, 1:].reshape(-1).cpu()  # in CPU memory already when a loss head reads it
    owner = samples["index"][:, 1:].reshape(-1)[labels != IGNORE]  # the same order as the head's trained positions
    n = len(samples["side"])
    # counted in CPU memory and sent through pinned memory: no wait for the device mid-step
    lengths = torch.bincount(owner, minlength=n)
    return segment_sum(-nll, send_to_device(owner, nll.device), n), send_to_device(lengths, nll.device), samples["pair"]


def split_pairs(values: Any, sides: list[int]) -> tuple[Any, Any]:
    """(chosen, rejected) halves of per-sample values laid out chosen, rejected, chosen, ..."""
    if sides[0::2] != [0] * (len(sides) // 2) or sides[1::2] != [1] * (len(sides) // 2):
        raise FtcoreError("a batch does not hold whole preference pairs (chosen then rejected)", hint="this is a bug in ftcore's packing of pairs; please report it")
    return values[0::2], values[1::2]


class PairObjective(Objective):
    """Base of the pair objectives: a micro batch counts its pairs; losses and metrics are summed over them."""

    weight_name = "pairs"
    pairs = True
    shown = ("rewards/accuracy", "rewards/margin")

    def weight(self, batch: dict[str, Any]) -> int:
        return len(batch["samples"]["side"]) // 2

    def loss(self, plan: TrainingPlan, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        logps, lengths, pairs = answer_logps(plan, model, batch)
        sides = batch["samples"]["side"]
        chosen, rejected = split_pairs(logps, sides)
        chosen_len, rejected_len = split_pairs(lengths, sides)
        loss, metrics = self.pair_loss(chosen, rejected, chosen_len, rejected_len, pairs[0::2])
        n = len(chosen)
        return loss * n, {name: value * n for name, value in metrics.items()}  # sums over the pairs

    def pair_loss(self, chosen: Any, rejected: Any, chosen_len: Any, rejected_len: Any, pairs: list[int]) -> tuple[Any, dict[str, Any]]:
        """Mean loss over the batch's pairs and mean metrics, from summed answer log-probs."""
        raise NotImplementedError


class DPO(PairObjective):
    """Direct preference optimisation against the model as it was before training (the reference).

    The reference log-probs of every answer are computed once, before the first step, by the
    same model (for adapters: the base with the adapter as it starts; no second copy in memory),
    and kept in ``work_dir/reference_logps.json`` so a resumed run uses the same ones.
    """

    name = "dpo"

    def __init__(
        self,
        beta: Annotated[float, Option("strength of the KL penalty towards the reference (DPO's beta)", gt=0)] = 0.1,
        label_smoothing: Annotated[float, Option("assumed label noise (conservative DPO)", ge=0, lt=0.5)] = 0.0,
        loss_type: Annotated[Literal["sigmoid", "ipo"], Option("sigmoid (DPO) or ipo (IPO, on per-token averages)")] = "sigmoid",
    ) -> None:
        super().__init__()
        if loss_type == "ipo" and label_smoothing:
            raise FtcoreError("label smoothing does not apply to the IPO loss", where="objective.label_smoothing", hint="set objective.label_smoothing=0 or objective.loss_type=sigmoid")
        self.beta, self.label_smoothing, self.loss_type = beta, label_smoothing, loss_type
        self.reference: dict[int, tuple[float, float]] = {}

    def before_train(self, ctx: Any, plan: TrainingPlan, batches: Callable[[], Iterator[dict[str, Any]]]) -> None:
        path = Path(ctx.work_dir) / REFERENCE_FILE
        key = _data_key(ctx.data)
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("data") == key:
                self.reference = {int(k): tuple(v) for k, v in saved["logps"].items()}
                return
        ctx.print("dpo: computing the reference log-probs of every answer (once; kept in the work dir)")
        reference: dict[int, tuple[float, float]] = {}
        for batch in batches():
            logps, _, pairs = answer_logps(plan, plan.model, batch)
            chosen, rejected = split_pairs(logps.float().cpu().tolist(), batch["samples"]["side"])
            reference.update(zip(pairs[0::2], zip(chosen, rejected)))
        self.reference = reference
        if ctx.is_main:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"data": key, "logps": {str(k): v for k, v in reference.items()}}), encoding="utf-8")
            os.replace(tmp, path)
        ctx.strategy.barrier()

    def pair_loss(self, chosen: Any, rejected: Any, chosen_len: Any, rejected_len: Any, pairs: list[int]) -> tuple[Any, dict[str, Any]]:
        import torch

        from .losses import dpo_loss

        ref = send_to_device(torch.tensor([self.reference[p] for p in pairs], dtype=torch.float32), chosen.device)
        return dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta=self.beta, label_smoothing=self.label_smoothing,
                        loss_type=self.loss_type, chosen_lengths=chosen_len, rejected_lengths=rejected_len)


class ORPO(PairObjective):
    """Odds-ratio preference optimisation: SFT on the chosen answer plus an odds-ratio penalty; no reference."""

    name = "orpo"

    def __init__(self, beta: Annotated[float, Option("weight of the odds-ratio term (ORPO's lambda)", gt=0)] = 0.1) -> None:
        super().__init__()
        self.beta = beta

    def pair_loss(self, chosen: Any, rejected: Any, chosen_len: Any, rejected_len: Any, pairs: list[int]) -> tuple[Any, dict[str, Any]]:
        from .losses import orpo_loss

        return orpo_loss(chosen, rejected, chosen_len, rejected_len, beta=self.beta)


class SimPO(PairObjective):
    """Simple preference optimisation: length-normalised log-probs with a target margin; no reference."""

    name = "simpo"

    def __init__(
        self,
        beta: Annotated[float, Option("scale of the length-normalised reward", gt=0)] = 2.0,
        gamma: Annotated[float, Option("target reward margin", ge=0)] = 1.0,
        label_smoothing: Annotated[float, Option("assumed label noise", ge=0, lt=0.5)] = 0.0,
        sft_weight: Annotated[float, Option("weight of an SFT term on the chosen answer (CPO's alpha)", ge=0)] = 0.0,
    ) -> None:
        super().__init__()
        self.beta, self.gamma, self.label_smoothing, self.sft_weight = beta, gamma, label_smoothing, sft_weight

    def pair_loss(self, chosen: Any, rejected: Any, chosen_len: Any, rejected_len: Any, pairs: list[int]) -> tuple[Any, dict[str, Any]]:
        from .losses import simpo_loss

        return simpo_loss(chosen, rejected, chosen_len, rejected_len, beta=self.beta, gamma=self.gamma,
                          label_smoothing=self.label_smoothing, sft_weight=self.sft_weight)


class Reward(PairObjective):
    """A reward model: one score per answer (a sequence-classification head on its last token),
    trained so the chosen answer scores higher (Bradley-Terry). The checkpoint is a PEFT adapter
    with the score head; it loads in plain transformers as a sequence-classification model."""

    name = "reward"
    head = "sequence_classification"

    def __init__(self, center: Annotated[float, Option("pull the scores' mean towards 0 by this weight (TRL's center_rewards_coefficient)", ge=0)] = 0.0) -> None:
        super().__init__()
        self.center = center

    def next_steps(self, base: str, checkpoint: Any) -> list[str]:
        return [f'ftcore score {checkpoint} --prompt "..." --answer "..." --answer "..."']

    def loss(self, plan: TrainingPlan, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        from .losses import reward_loss

        scores = answer_scores(plan, model, batch)
        chosen, rejected = split_pairs(scores, batch["samples"]["side"])
        loss, metrics = reward_loss(chosen, rejected, center_rewards_coefficient=self.center)
        n = len(chosen)
        return loss * n, {name: value * n for name, value in metrics.items()}


def answer_scores(plan: TrainingPlan, model: Any, batch: dict[str, Any]) -> Any:
    """The score head's output at the last token of every answer in ``batch`` (one per sample, in
    batch order), from one forward over the packed rows (the head's per-token output is taken as it
    is computed; the model's own pooling, which assumes one sample per row, is not used)."""
    import torch

    index = batch["samples"]["index"].reshape(-1)
    n = len(batch["samples"]["side"])
    positions = torch.arange(index.numel())
    last = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, index.clamp(min=0), torch.where(index >= 0, positions, -1), "amax")
    captured: list[Any] = []
    hook = score_module(plan.model).register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        model(**plan.inputs(batch), use_cache=False)
    finally:
        hook.remove()
    return captured[-1].reshape(-1).index_select(0, send_to_device(last, captured[-1].device)).float()


def score_module(model: Any) -> Any:
    """The sequence-classification head (``score``) inside peft's and the strategy's wrappers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    score = getattr(base, "score", None)
    if score is None:
        raise FtcoreError(f"{type(base).__name__} has no score head", hint="the reward objective needs a builder that can load a sequence-classification model")
    return score


def _data_key(data: Any) -> str:
    """What identifies the packed training data (the reference log-probs are for exactly it)."""
    h = hashlib.sha256()
    for array in (data.tokens, data.labels, data.sample_starts):
        h.update(array.tobytes())
    return h.hexdigest()[:24]
