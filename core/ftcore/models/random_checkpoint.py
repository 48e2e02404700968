"""Random-weight checkpoints of any size, written one tensor at a time and NF4-quantized as they are made: the
checkpoints of shapes (a 70B) that neither one GPU nor the disk could hold in bf16, for benchmarks and tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: bitsandbytes' 4-bit settings of the written checkpoint (QLoRA's: NF4, double quantization); compute and storage
#: dtype are the checkpoint's dtype: the packed weights stored in it (``bnb_4bit_quant_storage``) shard with the rest under FSDP
QUANTIZATION = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


def _quantized(name: str, shape: tuple[int, ...]) -> bool:
    """A decoder layer's linear weight (what QLoRA keeps in 4 bits; embeddings, head and norms stay bf16)."""
    return len(shape) == 2 and ".layers." in name and name.endswith("_proj.weight")


def write_random_checkpoint(config: Any, out_dir: str | Path, device: Any = "cpu", seed: int = 0, shard_bytes: int = 4 << 30, dtype: str = "bfloat16",
                            quantize: bool = True) -> Path:
    """Write a random-weight ``transformers`` checkpoint of ``config`` (a causal-LM config, e.g. a
    ``LlamaConfig``) to ``out_dir``; with ``quantize``, its decoder layers' linear weights in bitsandbytes'
    4-bit format (as ``save_pretrained`` writes a model loaded in 4 bits: ``from_pretrained`` loads it without quantizing).
    Each tensor is drawn (normal, ``config.initializer_range``; norms 1) and quantized on ``device``, then
    written to the current safetensors shard: memory holds one shard at a time. ``dtype``: of the weights
    kept whole and of the 4-bit storage (the dtype the model trains in). Returns ``out_dir``."""
    import torch
    from bitsandbytes.functional import quantize_4bit
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {name: tuple(p.shape) for name, p in AutoModelForCausalLM.from_config(config).named_parameters()}
    generator = torch.Generator(device=device).manual_seed(seed)
    kind = getattr(torch, dtype)
    std = float(getattr(config, "initializer_range", 0.02))
    shard: dict[str, Any] = {}
    weight_map: dict[str, str] = {}
    total = 0
    files: list[str] = []

    def flush() -> None:
        if shard:
            files.append(f"model-{len(files) + 1:05d}.safetensors")
            save_file(shard, str(out / files[-1]), metadata={"format": "pt"})
            weight_map.update({key: files[-1] for key in shard})
            shard.clear()

    size = 0
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            tensors = {name: torch.ones(shape, dtype=kind)}
        else:
            weight = torch.empty(shape, dtype=kind, device=device).normal_(0.0, std, generator=generator)
            if quantize and _quantized(name, shape):
                packed, state = quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4", quant_storage=kind)
                tensors = {name: packed, **{f"{name}.{key}": value for key, value in state.as_dict(packed=True).items()}}
            else:
                tensors = {name: weight}
        for key, value in tensors.items():
            shard[key] = value.to("cpu").contiguous()
            nbytes = value.numel() * value.element_size()
            size, total = size + nbytes, total + nbytes
        if size >= shard_bytes:
            flush()
            size = 0
    flush()
    if len(files) == 1:
        (out / files[0]).rename(out / "model.safetensors")
    else:
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    saved = config.to_dict()
    if quantize:
        saved["quantization_config"] = {**QUANTIZATION, "bnb_4bit_compute_dtype": dtype, "bnb_4bit_quant_storage": dtype, "quant_method": "bitsandbytes"}
    saved["torch_dtype"] = saved["dtype"] = dtype
    (out / "config.json").write_text(json.dumps(saved, indent=1))
    return out
