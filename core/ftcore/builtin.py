"""The core's own plugin: chat templates from templates/, core recipes, the hf builder, adapter kinds, strategies, hooks, the sft objective, optimizers and schedules."""

from __future__ import annotations

from typing import Any, Callable

from . import hookimpl
from .parts import yaml_files


@hookimpl
def register_prompt_templates(register) -> None:
    for path in yaml_files("ftcore.templates"):
        register(path)


@hookimpl
def register_recipes(register) -> None:
    for path in yaml_files("ftcore.recipes"):
        register(path.stem, str(path))


@hookimpl
def register_model_builders(register) -> None:
    register("hf", "ftcore.models.hf:build", "any causal LM transformers can load from a local folder")


def _described(register: Callable[..., None], table: dict[str, Any]) -> None:
    """Register each part of ``table`` under its name, described by its docstring's first line."""
    for name, target in table.items():
        register(name, target, (target.__doc__ or "").strip().splitlines()[0].rstrip("."))


@hookimpl
def register_adapters(register) -> None:
    from .models.adapters import ADAPTERS

    _described(register, ADAPTERS)


@hookimpl
def register_optimizers(register) -> None:
    from .train.optim import OPTIMIZERS

    _described(register, OPTIMIZERS)


@hookimpl
def register_schedules(register) -> None:
    from .train.optim import SCHEDULES

    _described(register, SCHEDULES)


@hookimpl
def register_strategies(register) -> None:
    register("single", "ftcore.train.strategy:SingleStrategy", "one process: one CUDA device or the CPU")
    register("ddp", "ftcore.train.strategy:DDPStrategy", "DistributedDataParallel: one process per GPU (NCCL), or CPU processes (gloo)")


@hookimpl
def register_training_hooks(register) -> None:
    from .train.hooks import BUILTIN_HOOKS

    for name, target, description in BUILTIN_HOOKS:
        register(name, target, description)


@hookimpl
def register_objectives(register) -> None:
    register("sft", "ftcore.train.objective:SFT", "next-token cross-entropy on the trained tokens (fine-tuning, pre-training)")


@hookimpl
def register_commands(cli) -> None:
    # Each module imports only click at load time; commands import what they need when run.
    from .chat.commands import add_chat_commands
    from .data.commands import data
    from .evaluate.commands import eval_cmd
    from .export.commands import export_cmd
    from .train.plot import plot_cmd

    cli.add_command(data)
    cli.add_command(plot_cmd)
    cli.add_command(eval_cmd)
    add_chat_commands(cli)
    cli.add_command(export_cmd)
