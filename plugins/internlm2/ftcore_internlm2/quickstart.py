"""The quickstart's assets: a tiny random InternLM2 checkpoint and a self-cognition dataset, made locally."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from ftcore.api import Option, TrainingHook


class QuickstartAssets(TrainingHook):
    """Creates ``model.path`` (tiny InternLM2) and ``data.path`` (self-cognition JSONL) when missing."""

    creates = ("model.path", "data.path")

    def __init__(
        self,
        assistant: Annotated[str, Option("the name the assistant learns to give itself")] = "ftcore",
        author: Annotated[str | None, Option("who made the assistant")] = None,
        n: Annotated[int, Option("self-cognition samples to write", ge=1)] = 64,
        lang: Annotated[Literal["zh", "en", "both"], Option("zh, en or both")] = "en",
        hidden: Annotated[int, Option("hidden size of the tiny model (4 heads)", ge=8, multiple_of=8)] = 128,
        layers: Annotated[int, Option("layers of the tiny model", ge=1)] = 2,
    ) -> None:
        self.assistant, self.author, self.n, self.lang, self.hidden, self.layers = assistant, author, n, lang, hidden, layers

    def setup(self, ctx: Any) -> None:
        from ftcore.api import self_cognition_records

        from .tiny import make_tiny_internlm2

        model_dir = Path(ctx.recipe["model"]["path"])
        if not (model_dir / "config.json").is_file():
            ctx.print(f"quickstart: creating a tiny random InternLM2 checkpoint in {model_dir}")
            make_tiny_internlm2(model_dir, hidden=self.hidden, layers=self.layers, heads=4, kv_heads=2, intermediate=2 * self.hidden)
        data_path = Path(ctx.recipe["data"]["path"] if isinstance(ctx.recipe["data"]["path"], str) else ctx.recipe["data"]["path"][0])
        if not data_path.is_file():
            records = self_cognition_records(
                self.assistant, self.n, self.lang, ctx.recipe["train"]["seed"], author=self.author,
            )
            data_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = data_path.with_name(f".{data_path.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            os.replace(tmp, data_path)
            ctx.print(f"quickstart: wrote {len(records)} self-cognition samples to {data_path}")
