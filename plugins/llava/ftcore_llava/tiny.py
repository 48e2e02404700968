"""A tiny random CLIP vision tower with its image processor, made locally (tests and demos; no downloads)."""

from __future__ import annotations

from pathlib import Path


def make_tiny_clip(out_dir: str | Path, *, image_size: int = 32, patch_size: int = 8, hidden: int = 32, layers: int = 3, heads: int = 4, seed: int = 0) -> Path:
    """A random ``CLIPVisionModel`` (``(image_size / patch_size) ** 2`` patch tokens) plus a CLIP image processor."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = Path(out_dir)
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                              image_size=image_size, patch_size=patch_size, projection_dim=hidden)
    torch.manual_seed(seed)
    CLIPVisionModel(config).save_pretrained(str(out), safe_serialization=True)
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(str(out))
    return out
