"""A LLaVA model behind `ftcore serve --llava`: OpenAI image_url parts become the prompt's image."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcore.api import ChatModel, Generation, prompt_ids
from ftcore.api import FtcoreError

from .chat import IMAGE_TOKEN, load_llava


@dataclass
class LlavaServeModel(ChatModel):
    """``ChatModel`` whose requests may carry one image (the first ``image_url`` part)."""

    processor: Any = None
    pad_to_square: bool = True
    accepts_images: bool = True

    def generation(self, messages: list[dict[str, Any]], **settings: Any) -> Generation:
        import numpy as np
        from PIL import Image

        from .data import expand_to_square
        from .model import expand_image_tokens

        system = settings.pop("system", None) or self.system
        images = [img for m in messages for img in m.get("images", [])]
        if len(images) > 1:
            raise FtcoreError("one image per conversation is supported")
        plain = []
        for m in messages:
            content = m["content"]
            if m.get("images"):
                content = f"{IMAGE_TOKEN}\n{content}"
            plain.append({"role": m["role"], "content": content})
        ids = prompt_ids(self.tokenizer, self.template, plain, system)
        inputs: dict[str, Any] = {}
        if images:
            try:
                image = Image.open(io.BytesIO(images[0])).convert("RGB")
            except (OSError, ValueError) as exc:
                raise FtcoreError(f"the image cannot be read: {exc}") from None
            if self.pad_to_square:
                image = expand_to_square(image, [int(x * 255) for x in self.processor.image_mean])
            device = next(self.model.parameters()).device
            inputs["pixel_values"] = self.processor(images=[image], return_tensors="pt")["pixel_values"].to(device)
            arr = np.asarray(ids)
            ids = expand_image_tokens(arr, arr.copy(), np.arange(len(arr)), self.model.image_token_id, self.model.num_image_tokens)[0].tolist()
        return Generation(self.model, self.tokenizer, self.template, plain, system=system, ids=ids, inputs=inputs, **settings)


def load_serve_model(llm_path: str | Path, llava_dir: str | Path, visual_encoder_path: str | Path, **options: Any) -> LlavaServeModel:
    """The trained LLaVA model (adapters merged) ready for ``ftcore serve``."""
    chat = load_llava(llm_path, llava_dir, visual_encoder_path, **options)
    return LlavaServeModel(chat.model, chat.tokenizer, chat.template, chat.system, name=Path(str(llava_dir)).name,
                           processor=chat.processor, pad_to_square=chat.pad_to_square)
