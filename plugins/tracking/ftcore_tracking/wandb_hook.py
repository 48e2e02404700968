"""The ``wandb`` training hook: a Weights & Biases run with the recipe as config, every step's metrics, and the final checkpoint as a model artifact."""

from __future__ import annotations

from typing import Annotated, Any

from ftcore.api import Option, TrainingHook

from .common import need, numbers, run_id_file


class WandB(TrainingHook):
    """Log to Weights & Biases (``WANDB_MODE=offline`` writes the run under work_dir/wandb for ``wandb sync``)."""

    order = 100  # after the hooks that add metrics

    def __init__(
        self,
        project: Annotated[str, Option("W&B project")] = "ftcore",
        entity: Annotated[str | None, Option("W&B entity (team or user; default: yours)")] = None,
        run_name: Annotated[str | None, Option("run name (default: the recipe's name)")] = None,
        tags: Annotated[list[str], Option("run tags")] = (),
        log_checkpoint: Annotated[bool, Option("upload the final checkpoint as a model artifact")] = True,
    ) -> None:
        self.project, self.entity, self.run_name, self.tags, self.log_checkpoint = project, entity, run_name, list(tags), log_checkpoint
        self.run: Any = None
        self.last: Any = None

    def before_train(self, ctx: Any) -> None:
        if not ctx.is_main:
            return
        wandb = need("wandb", "wandb")
        id_file = run_id_file(ctx.work_dir, "wandb")
        run_id = id_file.read_text().strip() if id_file.is_file() and ctx.step else None  # a resumed run goes on in its W&B run
        self.run = wandb.init(project=self.project, entity=self.entity, name=self.run_name or ctx.recipe.name, tags=self.tags, dir=str(ctx.work_dir),
                              config=ctx.recipe.data, id=run_id, resume="allow" if run_id else None)
        id_file.write_text(self.run.id)

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(numbers(metrics), step=ctx.step)

    def after_save(self, ctx: Any, folder: Any) -> None:
        self.last = folder

    def after_train(self, ctx: Any) -> None:
        if self.run is None:
            return
        if self.log_checkpoint and self.last is not None:
            import wandb

            artifact = wandb.Artifact(f"{self.run.name or 'run'}-checkpoint".replace("/", "-"), type="model", metadata={"step": ctx.step})
            artifact.add_dir(str(self.last))
            self.run.log_artifact(artifact)
        self.run.finish()
        self.run = None
