"""The run context shared by the loop and training hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunContext:
    """Everything a training hook may look at; fields are filled in as the run is assembled."""

    recipe: Any
    work_dir: Path
    strategy: Any = None
    tokenizer: Any = None
    template: Any = None
    model: Any = None
    #: the run's model builder (configured): its ``chat_model`` answers evaluation prompts
    builder: Any = None
    #: how the model was prepared (:class:`ftcore.models.plan.TrainingPlan`): its loss head, flat batches, ...
    plan: Any = None
    data: Any = None
    data_report: Any = None
    #: held-out data for the eval loss (``data.eval_path`` / ``data.eval_ratio``), or None
    eval_data: Any = None
    step: int = 0
    total_steps: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.strategy is None or self.strategy.is_main

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print on the main process only."""
        if self.is_main:
            from ..ui import console

            console().print(*args, **kwargs)
