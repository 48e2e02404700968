"""The ``internlm2`` builder: InternLM2 checkpoints loaded as transformers' Llama, without remote code.

An InternLM2-layout folder is converted once into a Llama-layout folder in a content-keyed
cache (``$FTCORE_CACHE_DIR/converted/<key>``, default ``~/.cache/ftcore/converted``), then
loaded with ``LlamaForCausalLM.from_pretrained`` so that ``dtype``, ``quantization_config``,
``device_map`` and ``attn_implementation`` work as for any Llama. ``save`` writes the
InternLM2 layout back (``layout="native"``) or a plain Llama folder (``layout="llama"``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from ftcore.api import HEADS, FtcoreError, ModelBuilder

from .convert import (
    internlm2_config_to_llama,
    internlm2_to_llama_state_dict,
    is_internlm2_config,
    is_llama_config,
    llama_config_to_internlm2,
    llama_to_internlm2_state_dict,
)
from .tokenizer import load_internlm2_tokenizer

CONVERTER_VERSION = "1"  # bump when the converted output changes, to invalidate caches
SOURCE_FILE = "ftcore_source.json"  # in a converted folder: where it came from
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_PUT_HINT = "put the checkpoint's config.json and weights (*.safetensors or pytorch_model*.bin, with the index file if sharded) in the folder"


def converted_cache_root() -> Path:
    """Where converted checkpoints live: ``$FTCORE_CACHE_DIR/converted`` or ``~/.cache/ftcore/converted``."""
    root = os.environ.get("FTCORE_CACHE_DIR") or Path.home() / ".cache" / "ftcore"
    return Path(root) / "converted"


def read_config(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The folder and its config.json, or a clear error for a missing folder or config."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FtcoreError(f"model folder {str(path)!r} does not exist", hint=f"point model.path at a local InternLM2 (or Llama) checkpoint folder; {_PUT_HINT}")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FtcoreError(f"model folder {str(path)!r} has no config.json", hint=_PUT_HINT)
    try:
        return folder, json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FtcoreError(f"config.json is not valid JSON: {exc}", where=str(cfg_file)) from exc


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: the shards an index names, else ``*.safetensors``, else ``*.bin``."""
    for index in _INDEXES:
        if (folder / index).is_file():
            names = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise FtcoreError(f"{index} names shards that are missing: {', '.join(missing[:4])}", where=str(folder), hint="download every shard the index lists")
            return [folder / n for n in names]
    files = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter")) or sorted(p for p in folder.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
    if not files:
        raise FtcoreError(f"model folder {str(folder)!r} has no weights", hint=_PUT_HINT)
    return files


def _read_weights(file: Path) -> dict[str, Any]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    import torch

    return torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)


def cache_key(folder: Path, files: list[Path]) -> str:
    """A key that changes with the config or any weight file (name, size, mtime)."""
    h = hashlib.sha256(f"internlm2->llama v{CONVERTER_VERSION}\n".encode())
    h.update((folder / "config.json").read_bytes())
    for f in files + [folder / i for i in _INDEXES if (folder / i).is_file()]:
        st = f.stat()
        h.update(f"\n{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def convert_internlm2_folder(src: Path, dst: Path, files: list[Path] | None = None) -> None:
    """Write the Llama-layout equivalent of InternLM2 folder ``src`` into ``dst`` (shard by shard).

    Each input shard becomes one safetensors shard (with an index when there are several),
    so memory holds one shard at a time. generation_config.json is copied; tokenizer files are not.
    """
    from safetensors.torch import save_file

    _, cfg = read_config(src)
    files = files or weight_files(src)
    llama_cfg = internlm2_config_to_llama(cfg)
    dst.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    for n, file in enumerate(files, 1):
        name = "model.safetensors" if len(files) == 1 else f"model-{n:05d}-of-{len(files):05d}.safetensors"
        converted = internlm2_to_llama_state_dict(_read_weights(file), cfg)
        converted = {k: v.contiguous() for k, v in converted.items()}
        save_file(converted, str(dst / name), metadata={"format": "pt"})
        total += sum(v.numel() * v.element_size() for v in converted.values())
        weight_map.update(dict.fromkeys(converted, name))
    if not llama_cfg["tie_word_embeddings"] and "lm_head.weight" not in weight_map:
        raise FtcoreError("the checkpoint has no output.weight (and tie_word_embeddings is false)", where=str(src), hint=_PUT_HINT)
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (dst / "config.json").write_text(json.dumps(llama_cfg, indent=2) + "\n")
    if (src / "generation_config.json").is_file():
        shutil.copy(src / "generation_config.json", dst / "generation_config.json")
    (dst / SOURCE_FILE).write_text(json.dumps({"source": str(src.resolve()), "files": [f.name for f in files]}, indent=2) + "\n")


def llama_folder(path: str | Path, log: Any = None) -> Path:
    """A Llama-layout folder for checkpoint ``path``: the folder itself, or its cached conversion.

    Raises :class:`FtcoreError` for a missing folder, config or weights, or an unknown layout.
    """
    folder, cfg = read_config(path)
    files = weight_files(folder)
    if is_llama_config(cfg):
        return folder
    if not is_internlm2_config(cfg):
        raise FtcoreError(
            f"config.json describes model_type {cfg.get('model_type')!r} ({', '.join(cfg.get('architectures') or []) or 'no architectures'}), not InternLM2 or Llama",
            where=str(folder / "config.json"),
            hint="the internlm2 builder loads InternLM2 (model_type internlm2) or Llama checkpoints; use `builder: hf` for other models",
        )
    root = converted_cache_root()
    final = root / cache_key(folder, files)
    if (final / "config.json").is_file():
        if log:
            log(f"using the converted InternLM2 checkpoint cached in {final}")
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if log:
        log(f"converting InternLM2 checkpoint {folder} to Llama layout in {final}")
    try:
        convert_internlm2_folder(folder, tmp, files)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _shards(sd: dict[str, Any], max_shard_size: str | int) -> Iterator[tuple[str, dict[str, Any]]]:
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(sd, max_shard_size=max_shard_size, filename_pattern="model{suffix}.safetensors")
    for filename, keys in split.filename_to_tensors.items():
        yield filename, {k: sd[k] for k in keys}


class InternLM2Builder(ModelBuilder):
    """Loads InternLM2 (or Llama) checkpoints as ``LlamaForCausalLM``; saves InternLM2 or Llama layout."""

    def load_tokenizer(self, path: str, trust_remote_code: bool = False) -> Any:
        """The tokenizer of ``path`` (tokenizer.json, else tokenizer.model); remote code is never run."""
        return load_internlm2_tokenizer(path)

    def load_model(self, path: str, head: str = "causal_lm", **kwargs: Any) -> Any:
        """``LlamaForCausalLM.from_pretrained`` (or ``LlamaForSequenceClassification`` for
        ``head="sequence_classification"``) on ``path`` or its cached Llama conversion.

        ``kwargs`` are ordinary ``from_pretrained`` arguments; ``trust_remote_code`` is
        dropped since no remote code is needed.
        """
        import transformers

        kwargs.pop("trust_remote_code", None)
        suffix, extra = HEADS[head]
        return getattr(transformers, f"LlamaFor{suffix}").from_pretrained(str(llama_folder(path)), **extra, **kwargs)

    def save(self, model: Any, out_dir: Path, max_shard_size: str = "2GB", layout: str = "native") -> None:
        """Write ``model`` to ``out_dir``: ``native`` = InternLM2 layout (config, safetensors shards, index), ``llama`` = ``save_pretrained``."""
        out = Path(out_dir)
        if layout == "llama":
            model.save_pretrained(str(out), max_shard_size=max_shard_size, safe_serialization=True)
            return
        if layout != "native":
            raise FtcoreError(f"unknown layout {layout!r}", hint="use 'native' (InternLM2) or 'llama'")
        cfg = model.config.to_dict()
        if not is_llama_config(cfg):
            raise FtcoreError(f"cannot save a {cfg.get('model_type')!r} model in InternLM2 layout", hint="save with layout='llama'")
        if getattr(model, "is_quantized", False) or cfg.get("quantization_config"):
            raise FtcoreError("cannot save a quantized model in InternLM2 layout", hint="merge the adapter into a model loaded in 16/32-bit first")
        from safetensors.torch import save_file

        sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        if cfg.get("tie_word_embeddings"):
            sd.pop("lm_head.weight", None)
        floats = [v.dtype for v in sd.values() if v.is_floating_point()]
        if floats:  # the weights' dtype, which may differ from the config's after model.to(...)
            cfg["dtype"] = str(floats[0]).replace("torch.", "")
        native = llama_to_internlm2_state_dict(sd, cfg)
        out.mkdir(parents=True, exist_ok=True)
        for stale in list(out.glob("model*.safetensors")) + [out / "model.safetensors.index.json"]:
            stale.unlink(missing_ok=True)
        weight_map: dict[str, str] = {}
        for filename, part in _shards(native, max_shard_size):
            save_file(part, str(out / filename), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, filename))
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in native.values())}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (out / "config.json").write_text(json.dumps(llama_config_to_internlm2(cfg), indent=2) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.to_json_file(str(out / "generation_config.json"))
        self._copy_remote_code(model, out)

    @staticmethod
    def _copy_remote_code(model: Any, out: Path) -> None:
        """Copy the InternLM2 remote-code ``*internlm2*.py`` files of the checkpoint the model was converted from, if known."""
        src_file = Path(str(getattr(model.config, "_name_or_path", "") or "")) / SOURCE_FILE
        if not src_file.is_file():
            return
        source = Path(json.loads(src_file.read_text())["source"])
        for f in source.glob("*internlm2*.py") if source.is_dir() else []:
            shutil.copy(f, out / f.name)


build = InternLM2Builder()
