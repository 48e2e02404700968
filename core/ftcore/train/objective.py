"""Objectives: what a training step optimises — each micro batch's weight, its loss, the metrics it reports."""

from __future__ import annotations

from typing import Any

from ..data import IGNORE
from ..models.plan import TrainingPlan, finish_plan


class Objective:
    """Base class of a registered objective (``objective.name`` in a recipe). Its options are its
    constructor's typed keyword arguments with real defaults, e.g.
    ``def __init__(self, beta: Annotated[float, Option("KL weight", gt=0)] = 0.1)``; a recipe
    gives them as the other keys of the ``objective`` section, checked before the run starts.

    Per optimizer step the loop asks every micro batch for its :meth:`weight` (counted on the
    CPU before any forward: trained tokens, pairs, ...), adds them up over the step and all
    processes, and minimises the sum of :meth:`loss` over the step divided by that total. The
    metrics :meth:`loss` returns are sums too, divided by the same total for the log.
    """

    name = ""
    #: what :meth:`weight` counts: the step's total is logged under this name
    weight_name = "trained_tokens"

    def weight(self, batch: dict[str, Any]) -> int:
        """How much ``batch`` counts in the step's average (its labels are still in CPU memory)."""
        raise NotImplementedError

    def loss(self, plan: TrainingPlan, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The summed loss of ``batch`` (a 0-d tensor to backpropagate) and summed metrics
        (0-d tensors or floats, by name); ``model`` is the strategy's wrapped model."""
        raise NotImplementedError


class SFT(Objective):
    """Next-token cross-entropy on the trained tokens (supervised fine-tuning, pre-training)."""

    name = "sft"

    def weight(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss(self, plan: TrainingPlan, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        nll, _ = plan.token_nll(model, batch)
        return nll, {}


def loss_sum(model: Any, batch: dict[str, Any], plan: TrainingPlan | None = None) -> tuple[Any, Any]:
    """The summed next-token NLL of ``batch`` and how many tokens were trained (a 0-d tensor), for
    a model used outside a run (tests, benchmarks); its plan is worked out from the model."""
    plan = plan or finish_plan(TrainingPlan(model))
    nll, _ = plan.token_nll(model, batch)
    return nll, (batch["labels"][:, 1:] != IGNORE).sum()
