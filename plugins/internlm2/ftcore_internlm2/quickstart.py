"""The quickstart's assets: a tiny random InternLM2 checkpoint and a self-cognition dataset, made locally."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ftcore.api import F
from ftcore.api import TrainingHook

OPTIONS = {
    "assistant": F(str, "ftcore", "the name the assistant learns to give itself"),
    "author": F(str, None, "who made the assistant"),
    "n": F(int, 64, "self-cognition samples to write", ge=1),
    "lang": F(str, "en", "zh, en or both", choices=("zh", "en", "both")),
    "hidden": F(int, 128, "hidden size of the tiny model (4 heads)", ge=8, multiple_of=8),
    "layers": F(int, 2, "layers of the tiny model", ge=1),
}


class QuickstartAssets(TrainingHook):
    """Creates ``model.path`` (tiny InternLM2) and ``data.path`` (self-cognition JSONL) when missing."""

    creates = ("model.path", "data.path")

    def setup(self, ctx: Any) -> None:
        from ftcore.api import self_cognition_records

        from .tiny import make_tiny_internlm2

        model_dir = Path(ctx.recipe["model"]["path"])
        if not (model_dir / "config.json").is_file():
            ctx.print(f"quickstart: creating a tiny random InternLM2 checkpoint in {model_dir}")
            make_tiny_internlm2(model_dir, hidden=self.options.get("hidden", 128), layers=self.options.get("layers", 2), heads=4, kv_heads=2, intermediate=2 * self.options.get("hidden", 128))
        data_path = Path(ctx.recipe["data"]["path"] if isinstance(ctx.recipe["data"]["path"], str) else ctx.recipe["data"]["path"][0])
        if not data_path.is_file():
            records = self_cognition_records(
                self.options.get("assistant", "ftcore"), self.options.get("n", 64), self.options.get("lang", "en"),
                ctx.recipe["train"]["seed"], author=self.options.get("author"),
            )
            data_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = data_path.with_name(f".{data_path.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            os.replace(tmp, data_path)
            ctx.print(f"quickstart: wrote {len(records)} self-cognition samples to {data_path}")
