"""The ``hf`` builder: any causal LM transformers can load from a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FtcoreError


def check_model_dir(path: str) -> Path:
    """``path`` as a folder holding a config.json, or a clear error saying what to put there."""
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FtcoreError(
            f"model folder {path!r} {'has no config.json' if p.is_dir() else 'does not exist'}",
            hint="point model.path at a local Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files)",
        )
    return p


class HFBuilder:
    """Loads with ``AutoTokenizer``/``AutoModelForCausalLM``; saves with ``save_pretrained``."""

    def load_tokenizer(self, path: str, trust_remote_code: bool = False) -> Any:
        from transformers import AutoTokenizer

        check_model_dir(path)
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)

    def load_model(self, path: str, **kwargs: Any) -> Any:
        from transformers import AutoModelForCausalLM

        check_model_dir(path)
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)

    def save(self, model: Any, out_dir: Path, max_shard_size: str = "2GB", layout: str = "native") -> None:
        model.save_pretrained(str(out_dir), max_shard_size=max_shard_size, safe_serialization=True)


build = HFBuilder()
