"""Objectives: what a training step optimises — each micro batch's weight, its loss, the metrics it reports."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from ..data import IGNORE
from ..errors import FtcoreError
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
    #: whether it trains on preference pairs (``chosen``/``rejected``) rather than single samples
    pairs = False
    #: metrics shown in the progress line beside the loss
    shown: tuple[str, ...] = ()
    #: the model's head (``ftcore.api.HEADS``): ``causal_lm``, or ``sequence_classification`` (a reward model)
    head = "causal_lm"

    def before_train(self, ctx: Any, plan: TrainingPlan, batches: Callable[[], Iterator[dict[str, Any]]]) -> None:
        """Once before the first step (also when resuming): e.g. reference log-probs of every sample.
        ``batches()`` goes once over the whole training data, each batch ready on the device, with
        the model in eval mode, gradients off and the run's autocast on."""

    def next_steps(self, base: str, checkpoint: Any) -> list[str] | None:
        """The commands the run's summary suggests after training (None: chat with it, merge it)."""
        return None

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


def check_data_kind(objective: Any, pairs: bool) -> None:
    """Pair data needs a pair objective and the reverse (an SFT run on pairs would train the rejected answers too)."""
    if pairs and not objective.pairs:
        raise FtcoreError(
            f"the data holds preference pairs (chosen/rejected), which objective {objective.name!r} does not train on",
            where="objective.name", hint="use a preference objective: dpo, orpo or simpo (`ftcore list objectives`)",
        )
    if objective.pairs and not pairs:
        raise FtcoreError(
            f"objective {objective.name!r} trains on preference pairs, but the data has none",
            where="data.path", hint="give pair data ({prompt, chosen, rejected} or another preference format; `ftcore data check` shows the format), or objective.name=sft",
        )


def loss_sum(model: Any, batch: dict[str, Any], plan: TrainingPlan | None = None) -> tuple[Any, Any]:
    """The summed next-token NLL of ``batch`` and how many tokens were trained (a 0-d tensor), for
    a model used outside a run (tests, benchmarks); its plan is worked out from the model."""
    plan = plan or finish_plan(TrainingPlan(model))
    nll, _ = plan.token_nll(model, batch)
    return nll, (batch["labels"][:, 1:] != IGNORE).sum()
