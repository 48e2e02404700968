"""The LLaVA quickstart's assets, made locally: a tiny LLM, a tiny CLIP tower, pictures of coloured shapes and their records."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from ftcore.api import Option, TrainingHook

#: picture file -> (colour, shape, caption); the pictures are wider than tall, so padding to square matters
SHAPES = {
    "red_circle.png": ((230, 30, 30), "circle", "a red circle"),
    "blue_square.png": ((30, 60, 230), "square", "a blue square"),
    "green_triangle.png": ((30, 200, 60), "triangle", "a green triangle"),
    "yellow_bar.png": ((240, 220, 30), "bar", "a yellow bar"),
}
QUESTIONS = ("What is in the image?", "Describe the picture.")


def draw_shape(path: Path, colour: tuple[int, int, int], shape: str, size: tuple[int, int] = (48, 40)) -> None:
    """A ``shape`` (circle, square, triangle or bar) of ``colour`` on black, saved to ``path``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (0, 0, 0))
    d = ImageDraw.Draw(img)
    w, h = size
    if shape == "circle":
        d.ellipse([8, 6, w - 8, h - 6], fill=colour)
    elif shape == "square":
        d.rectangle([10, 6, w - 10, h - 6], fill=colour)
    elif shape == "triangle":
        d.polygon([(w // 2, 4), (6, h - 4), (w - 6, h - 4)], fill=colour)
    else:
        d.rectangle([4, h // 2 - 5, w - 4, h // 2 + 5], fill=colour)
    img.save(path)


def shape_records() -> list[dict[str, Any]]:
    """LLaVA records: each picture with each question (image paths relative to the image folder), and one text-only record."""
    records = [
        {"id": f"{Path(name).stem}-{q}", "image": name, "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": caption}]}
        for name, (_, _, caption) in SHAPES.items() for q, question in enumerate(QUESTIONS)
    ]
    records.append({"id": "text-only", "conversations": [{"from": "human", "value": "Who are you?"}, {"from": "gpt", "value": "I am an assistant that describes pictures."}]})
    return records


class LlavaQuickstartAssets(TrainingHook):
    """Creates what the ``llava_quickstart`` recipe names when missing: ``model.path`` (a tiny random
    Llama whose tokenizer knows the captions), ``model.visual_encoder`` (a tiny random CLIP tower with
    its image processor), ``model.image_folder`` (the pictures) and ``data.path`` (LLaVA JSON records)."""

    creates = ("model.path", "model.visual_encoder", "model.image_folder", "data.path")

    def __init__(
        self,
        hidden: Annotated[int, Option("hidden size of the tiny LLM (4 heads)", ge=8, multiple_of=8)] = 64,
        layers: Annotated[int, Option("layers of the tiny LLM", ge=1)] = 2,
    ) -> None:
        self.hidden, self.layers = hidden, layers

    def setup(self, ctx: Any) -> None:
        from ftcore.api import make_tiny_causal_lm, make_tokenizer

        from .tiny import make_tiny_clip

        model = ctx.recipe["model"]
        llm, clip, images = Path(model["path"]), Path(model["visual_encoder"]), Path(model["image_folder"])
        if not (llm / "config.json").is_file():
            ctx.print(f"quickstart: creating a tiny random LLM in {llm}")
            words = [caption for _, _, caption in SHAPES.values()] + list(QUESTIONS)
            with tempfile.TemporaryDirectory() as tok:
                make_tokenizer(tok, extra_corpus=words * 8)
                make_tiny_causal_lm(llm, "llama", hidden=self.hidden, layers=self.layers, intermediate=2 * self.hidden, tokenizer_dir=tok)
        if not (clip / "config.json").is_file():
            ctx.print(f"quickstart: creating a tiny random CLIP vision tower in {clip}")
            make_tiny_clip(clip)
        images.mkdir(parents=True, exist_ok=True)
        for name, (colour, shape, _) in SHAPES.items():
            if not (images / name).is_file():
                draw_shape(images / name, colour, shape)
        data_path = Path(ctx.recipe["data"]["path"] if isinstance(ctx.recipe["data"]["path"], str) else ctx.recipe["data"]["path"][0])
        if not data_path.is_file():
            records = shape_records()
            data_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = data_path.with_name(f".{data_path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(records, indent=1), encoding="utf-8")
            os.replace(tmp, data_path)
            ctx.print(f"quickstart: wrote {len(SHAPES)} pictures to {images} and {len(records)} records to {data_path}")
