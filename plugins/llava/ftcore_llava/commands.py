"""The ``ftcore llava`` commands: ``export`` writes a run as transformers' LLaVA checkpoint (model + processor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ftcore.api import DTYPES


@click.group("llava")
def llava() -> None:
    """LLaVA runs: export to transformers (`ftcore chat MODEL --llava DIR` chats with one)."""


@llava.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--llm", help="the LLM the run trained on (default: the checkpoint recipe's model.path)")
@click.option("--visual-encoder", help="the CLIP vision tower folder (default: the checkpoint recipe's model.visual_encoder)")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="fp32", show_default=True, help="the saved weights' dtype")
@click.option("--max-shard-size", default="2GB", show_default=True, help="largest safetensors shard")
@click.option("--force", is_flag=True, help="replace OUT if it exists")
@click.pass_obj
def export_cmd(app: Any, checkpoint: Path, out: Path, llm: str | None, visual_encoder: str | None, dtype: str, max_shard_size: str, force: bool) -> None:
    """Write CHECKPOINT (a llava run's checkpoint-N, or its work dir: the latest) to OUT as transformers'
    LlavaForConditionalGeneration with its AutoProcessor: adapters merged, the training chat template
    (images as {"type": "image"} parts), BOS, the template's stop words as EOS and the run's image
    padding, so `processor.apply_chat_template` + greedy `generate` answer as `ftcore chat --llava` does."""
    from .chat import recorded_folder, resolve_llava_dir
    from .export import to_hf_llava

    folder = resolve_llava_dir(checkpoint)
    llm = recorded_folder(folder, "path", llm, "LLM", "--llm")
    visual_encoder = recorded_folder(folder, "visual_encoder", visual_encoder, "vision tower", "--visual-encoder")
    written = to_hf_llava(llm, folder, visual_encoder, out, parts=app.parts, dtype=dtype, max_shard_size=max_shard_size, force=force, log=click.echo)
    click.echo(f"exported {folder} to {written}: load it with LlavaForConditionalGeneration.from_pretrained and AutoProcessor.from_pretrained")
