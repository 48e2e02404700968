"""Loading a checkpoint's trained weights (PEFT adapter or full model) back into a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FtcoreError


def load_trained_weights(model: Any, folder: Path) -> None:
    """An adapter (``adapter_model.safetensors``) or full-model safetensors (one file or shards) into ``model``."""
    from safetensors.torch import load_file

    if (folder / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    elif (folder / "model.safetensors").is_file():
        missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        if unexpected:
            raise FtcoreError(f"checkpoint {folder} does not match the model (unexpected keys {unexpected[:3]})")
    else:
        from transformers.modeling_utils import load_sharded_checkpoint

        load_sharded_checkpoint(model, str(folder), strict=False)
