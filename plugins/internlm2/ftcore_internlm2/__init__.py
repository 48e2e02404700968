"""The InternLM2 plugin: loads InternLM2 checkpoints as transformers' Llama (no remote code), and its recipes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ftcore import hookimpl


@hookimpl
def register_model_builders(register) -> None:
    register("internlm2", "ftcore_internlm2.builder:build", "InternLM2 checkpoints, converted to Llama on load (no trust_remote_code)")


@hookimpl
def register_training_hooks(register) -> None:
    from .quickstart import OPTIONS

    register("quickstart_assets", "ftcore_internlm2.quickstart:QuickstartAssets", "create the quickstart's tiny model and self-cognition data when missing", OPTIONS)


@hookimpl
def register_recipes(register) -> None:
    root = resources.files("ftcore_internlm2.recipes")
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            register(entry.name[: -len(".yaml")], str(Path(str(entry))))
