"""The families plugin: LoRA/QLoRA recipes for Qwen2.5, Qwen3, Llama 3.x, Mistral, Gemma 2/3 and Phi-3/4 (the hf builder, each family's own chat template)."""

from __future__ import annotations

from ftcore.api import hookimpl, yaml_files


@hookimpl
def register_recipes(register) -> None:
    for path in yaml_files("ftcore_families.recipes"):
        register(path.stem, str(path))
