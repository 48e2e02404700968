"""The ``hf`` builder: any causal LM transformers can load from a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FtcoreError
from .builder import ModelBuilder


def check_model_dir(path: str) -> Path:
    """``path`` as a folder holding a config.json, or a clear error saying what to put there."""
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FtcoreError(
            f"model folder {path!r} {'has no config.json' if p.is_dir() else 'does not exist'}",
            hint="point model.path at a local Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files)",
        )
    return p


#: ``head`` of :meth:`ModelBuilder.load_model` -> (transformers class suffix, extra from_pretrained arguments)
HEADS: dict[str, tuple[str, dict[str, Any]]] = {
    "causal_lm": ("CausalLM", {}),
    "sequence_classification": ("SequenceClassification", {"num_labels": 1}),  # a reward model's one score
}


def has_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` holds tokenizer files (a training checkpoint does; ftcore's conversion cache does not)."""
    p = Path(folder).expanduser()
    return any((p / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def check_remote_code(path: str, trust_remote_code: bool) -> None:
    """Refuse, before loading, a checkpoint whose config needs its own Python code (``auto_map`` to
    a model type transformers does not have) unless the user passed ``--trust-remote-code``."""
    import json

    from transformers import CONFIG_MAPPING

    if trust_remote_code:
        return
    config = Path(path).expanduser() / "config.json"
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    auto_map = cfg.get("auto_map") if isinstance(cfg, dict) else None
    if auto_map and cfg.get("model_type") not in CONFIG_MAPPING:
        files = sorted({str(v).split(".")[0] + ".py" for v in (auto_map.values() if isinstance(auto_map, dict) else []) if isinstance(v, str)})
        raise FtcoreError(
            f"the model asks to run its own Python code ({', '.join(files) or 'auto_map'}) for model_type {cfg.get('model_type')!r}, which transformers does not know",
            where=f"{config} (auto_map)",
            hint=f"pass --trust-remote-code if you trust the code in {path}; ftcore never runs it on a checkpoint's say-so",
        )


def _refuse_remote_code(exc: ValueError, path: str) -> FtcoreError:
    return FtcoreError(
        f"{path} needs its own Python code to load ({str(exc).splitlines()[0][:200]})",
        hint=f"pass --trust-remote-code if you trust the code in {path}",
    )


class HFBuilder(ModelBuilder):
    """Loads with ``AutoTokenizer``/``AutoModelForCausalLM``; saves with ``save_pretrained``."""

    def load_tokenizer(self, path: str, trust_remote_code: bool = False) -> Any:
        from transformers import AutoTokenizer

        if not has_tokenizer(path):  # a model folder, or a checkpoint that saved its tokenizer
            check_model_dir(path)
        try:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (ValueError, OSError) as exc:
            if "trust_remote_code" in str(exc):
                raise _refuse_remote_code(exc, path) from None
            raise FtcoreError(
                f"cannot load a tokenizer from {path}: {str(exc).strip().splitlines()[0][:300]}",
                hint="the folder needs the model's tokenizer files (tokenizer.json, or tokenizer.model / vocab files with tokenizer_config.json); set model.tokenizer_path if they live elsewhere",
            ) from None

    def load_model(self, path: str, head: str = "causal_lm", **kwargs: Any) -> Any:
        import transformers

        check_model_dir(path)
        check_remote_code(path, bool(kwargs.get("trust_remote_code")))
        auto, extra = HEADS[head]
        try:
            return getattr(transformers, f"AutoModelFor{auto}").from_pretrained(path, **extra, **kwargs)
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise _refuse_remote_code(exc, path) from None
            raise



build = HFBuilder()
