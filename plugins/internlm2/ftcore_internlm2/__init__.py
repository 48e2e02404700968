"""The InternLM2 plugin: loads InternLM2 checkpoints as transformers' Llama (no remote code), and its recipes."""

from __future__ import annotations

from ftcore.api import hookimpl
from ftcore.api import yaml_files


@hookimpl
def register_model_builders(register) -> None:
    register("internlm2", "ftcore_internlm2.builder:build", "InternLM2 checkpoints, converted to Llama on load (no trust_remote_code)")


@hookimpl
def register_training_hooks(register) -> None:
    register("quickstart_assets", "ftcore_internlm2.quickstart:QuickstartAssets", "create the quickstart's tiny model and self-cognition data when missing")


@hookimpl
def register_recipes(register) -> None:
    for path in yaml_files("ftcore_internlm2.recipes"):
        register(path.stem, str(path))
