"""The tracking plugin: Weights & Biases and MLflow training hooks (recipe, step metrics, the final checkpoint as an artifact)."""

from __future__ import annotations

from ftcore.api import hookimpl


@hookimpl
def register_training_hooks(register) -> None:
    register("wandb", "ftcore_tracking.wandb_hook:WandB", "recipe, step metrics and the final checkpoint to Weights & Biases (pip install 'ftcore[wandb]')")
    register("mlflow", "ftcore_tracking.mlflow_hook:MLflow", "recipe, step metrics and the final checkpoint to MLflow (pip install 'ftcore[mlflow]')")
