"""The core's own plugin: chat templates from templates/, core recipes, the hf builder, core strategies and hooks."""

from __future__ import annotations

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
    from .train.plot import plot_cmd

    cli.add_command(data)
    cli.add_command(plot_cmd)
    add_chat_commands(cli)
