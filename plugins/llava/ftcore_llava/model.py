"""The LLaVA model: CLIP vision tower -> projector -> image features spliced into the LLM's input embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ftcore.api import FtcoreError

IGNORE = -100
PROJECTOR_CONFIG = {"model_type": "projector", "architectures": ["ProjectorModel"], "hidden_act": "gelu", "depth": 2, "bias": True}


class Projector(nn.Module):
    """``Linear(vision -> llm)``, then ``depth - 1`` times GELU + ``Linear(llm -> llm)``, with bias.

    The parameters are named as XTuner's ``ProjectorModel`` (``model.0``, ``model.2``), and
    :meth:`save_pretrained` writes the same ``config.json`` + ``model.safetensors``.
    """

    def __init__(self, visual_hidden_size: int, llm_hidden_size: int, depth: int = 2, bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(visual_hidden_size, llm_hidden_size, bias=bias)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(llm_hidden_size, llm_hidden_size, bias=bias)]
        self.model = nn.Sequential(*layers)
        self.config = {**PROJECTOR_CONFIG, "visual_hidden_size": visual_hidden_size, "llm_hidden_size": llm_hidden_size, "depth": depth, "bias": bias}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.model[0].weight.dtype))

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))

    def load_weights(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        for key in ("visual_hidden_size", "llm_hidden_size", "depth"):
            if config.get(key) != self.config[key]:
                raise FtcoreError(
                    f"projector in {folder} has {key}={config.get(key)}, but this vision tower and LLM need {self.config[key]}",
                    where="model.projector",
                    hint="use the projector trained with the same vision tower and LLM",
                )
        self.load_state_dict(load_file(str(folder / "model.safetensors")))


class LlavaModel(nn.Module):
    """An LLM that reads images: ``<image>`` token positions get projected CLIP features.

    ``input_ids`` hold ``num_image_tokens`` consecutive image tokens per image (see
    :func:`expand_image_tokens`); their embeddings are replaced, in order, by the
    projected features of ``pixel_values`` (second-to-last vision layer, CLS dropped, as
    transformers' ``LlavaForConditionalGeneration`` does). The LLM's output (``.logits``)
    is returned unchanged, so ftcore's loop and loss head work as for any causal LM.
    """

    def __init__(self, llm: nn.Module, visual_encoder: nn.Module, projector: Projector, image_token_id: int, select_layer: int = -2) -> None:
        super().__init__()
        self.llm, self.visual_encoder, self.projector = llm, visual_encoder, projector
        self.image_token_id = int(image_token_id)
        self.select_layer = select_layer
        self.config = llm.config

    @property
    def num_image_tokens(self) -> int:
        cfg = self.visual_encoder.config
        return (cfg.image_size // cfg.patch_size) ** 2

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[images, patches, llm_hidden]`` projected features."""
        dtype = next(self.visual_encoder.parameters()).dtype
        out = self.visual_encoder(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        return self.projector(out.hidden_states[self.select_layer][:, 1:])

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        is_image = input_ids == self.image_token_id
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        n_tokens = int(is_image.sum())
        if pixel_values is None or len(pixel_values) == 0:
            if n_tokens:
                raise FtcoreError(f"the batch has {n_tokens} image tokens but no images")
            return embeds
        features = self.image_features(pixel_values)
        if n_tokens != features.shape[0] * features.shape[1]:
            raise FtcoreError(f"the batch has {n_tokens} image tokens for {features.shape[0]} image(s) of {features.shape[1]} tokens each")
        return embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.dtype).reshape(-1, embeds.shape[-1]))

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        kwargs.pop("labels", None)  # the loop computes the loss from the logits
        embeds = self.embed(input_ids, pixel_values)
        return self.llm(inputs_embeds=embeds, position_ids=position_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Like ``model.generate``: the prompt ids followed by the new ones."""
        embeds = self.embed(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        new = self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


def expand_image_tokens(input_ids: np.ndarray, labels: np.ndarray, position_ids: np.ndarray, image_token_id: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row with each image token repeated ``n`` times (labels -100, positions renumbered per sample).

    Position ids restart at 0 at each packed sample (and at padding); after expansion they
    count up again from each sample's start.
    """
    is_image = input_ids == image_token_id
    repeats = np.where(is_image, n, 1)
    ids = np.repeat(input_ids, repeats)
    labs = np.repeat(labels, repeats)
    labs[np.repeat(is_image, repeats)] = IGNORE
    sample = np.cumsum(position_ids == 0) - 1
    sample = np.repeat(sample - sample.min(), repeats)
    starts = np.searchsorted(sample, np.arange(sample.max() + 1))
    positions = np.arange(len(ids)) - starts[sample]
    return ids, labs, positions
