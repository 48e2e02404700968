"""The LLaVA plugin: image + text fine-tuning (CLIP vision tower, projector, any registered LLM builder).

Parts: the ``llava`` model builder, the ``llava`` dataset format, the ``llava_quickstart`` (CPU, no
downloads; its ``llava_quickstart_assets`` hook makes the tiny models and pictures) and
``llava_internlm2_pretrain`` / ``llava_internlm2_qlora`` recipes; the ``llava`` chat backend:
``ftcore chat MODEL --llava DIR --visual-encoder PATH --image IMG`` and ``ftcore serve MODEL
--llava DIR --visual-encoder PATH``; and ``ftcore llava export CHECKPOINT OUT``, transformers'
``LlavaForConditionalGeneration`` + ``AutoProcessor`` (:func:`ftcore_llava.export.to_hf_llava`).
Use a trained model from Python with :func:`ftcore_llava.chat.answer_with_image`.
"""

from __future__ import annotations

from ftcore.api import hookimpl
from ftcore.api import yaml_files


@hookimpl
def register_model_builders(register) -> None:
    register("llava", "ftcore_llava.builder:build", "LLaVA: CLIP vision tower + projector + an LLM from any builder (model.llm_builder)")


@hookimpl
def register_dataset_formats(register) -> None:
    from .data import FORMAT

    register(FORMAT)


@hookimpl
def register_training_hooks(register) -> None:
    register("llava_quickstart_assets", "ftcore_llava.quickstart:LlavaQuickstartAssets", "create the LLaVA quickstart's tiny LLM, tiny CLIP tower, pictures and records when missing")


@hookimpl
def register_recipes(register) -> None:
    for path in yaml_files("ftcore_llava.recipes"):
        register(path.stem, str(path))


@hookimpl
def register_commands(cli) -> None:
    from ftcore.api import add_chat_backend

    from .chat import LlavaBackend  # imports no torch
    from .commands import llava

    add_chat_backend(cli, LlavaBackend())
    cli.add_command(llava)
