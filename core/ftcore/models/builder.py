"""The model-builder protocol: how a recipe's ``model`` section becomes a tokenizer and a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class ModelBuilder(Protocol):
    """What a registered model builder provides.

    ``load_model`` receives ordinary ``from_pretrained`` keyword arguments prepared by the
    core (``dtype``, ``quantization_config``, ``attn_implementation``, ``device_map``,
    ``trust_remote_code``) and returns a transformers ``PreTrainedModel``. ``save`` writes
    a (merged or fully fine-tuned) model in the builder's native layout as safetensors.
    """

    def load_tokenizer(self, path: str, trust_remote_code: bool = False) -> Any: ...

    def load_model(self, path: str, **kwargs: Any) -> Any: ...

    def save(self, model: Any, out_dir: Path, max_shard_size: str = "2GB", layout: str = "native") -> None: ...

    # Optional methods, looked up with getattr by the runner (the llava plugin uses them all):
    # - ``configure(model_cfg, parts) -> builder``: a per-run builder that knows its model.* options;
    # - ``prepare_batch(batch) -> batch``: carried per-sample extras (e.g. ``image`` paths) into
    #   model inputs (e.g. ``pixel_values``) while collating;
    # - ``prepare_for_training(model, model_cfg, adapter_cfg) -> model``: replaces the core's
    #   adapter set-up (e.g. LoRA on the LLM and on the vision tower, a trainable projector);
    # - ``save_checkpoint(model, folder)`` / ``load_checkpoint(model, folder)``: replace the
    #   core's PEFT/HF checkpoint layout.
