"""Tiny random checkpoints made locally: InternLM2 layout (quickstart, tests) and plain HF Llama/Qwen2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .convert import llama_config_to_internlm2, llama_to_internlm2_state_dict

TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "added_tokens")


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy the tokenizer files of folder ``src`` (tokenizer*, special_tokens*, added_tokens*) into ``dst``."""
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        if f.is_file() and f.name.startswith(TOKENIZER_PREFIXES):
            shutil.copy(f, out / f.name)


def make_tiny_internlm2(
    out_dir: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    init_std: float = 0.15,
    rope_theta: float = 1_000_000.0,
    rope_scaling: dict[str, Any] | None = None,
    max_position_embeddings: int = 4096,
    bias: bool = False,
    vocab_size: int | None = None,
) -> Path:
    """Write a tiny random InternLM2-layout checkpoint (as the remote-code InternLM2 classes expect) to ``out_dir``.

    A random ``LlamaForCausalLM`` is converted: config.json in InternLM2 form (with
    ``auto_map``), model.safetensors with InternLM2 names (fused ``wqkv``),
    generation_config.json and a tokenizer (copied from ``tokenizer_dir`` or a fresh one
    from :func:`ftcore.models.tiny.make_tokenizer`). ``vocab_size`` is the tokenizer's
    length. ``rope_scaling`` uses InternLM2's form, e.g. ``{"type": "dynamic", "factor": 2.0}``.
    ``init_std`` is large so a frozen random head can still express confident predictions.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftcore.api import make_tokenizer

    from .convert import internlm2_config_to_llama
    from .tokenizer import load_internlm2_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        make_tokenizer(out)
    else:
        copy_tokenizer_files(tokenizer_dir, out)
    tok = load_internlm2_tokenizer(out)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    internlm2_cfg: dict[str, Any] = {
        "model_type": "internlm2", "vocab_size": max(len(tok), vocab_size or 0), "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_position_embeddings, "rms_norm_eps": 1e-5, "initializer_range": init_std,
        "rope_theta": rope_theta, "rope_scaling": rope_scaling, "bias": bias, "tie_word_embeddings": False,
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": pad, "torch_dtype": "float32",
    }
    llama_cfg = internlm2_config_to_llama(internlm2_cfg)
    config = LlamaConfig.from_dict(llama_cfg)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if bias:  # transformers zero-initialises biases; make them matter in tests
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, init_std)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    native = llama_to_internlm2_state_dict(sd, llama_cfg)
    save_file(native, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(llama_config_to_internlm2(llama_cfg), indent=2) + "\n")
    generation = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": pad}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out


def make_tiny_llama(out_dir: str | Path, **kwargs: Any) -> Path:
    """A tiny random HF-layout Llama checkpoint with a tokenizer (see :func:`ftcore.models.tiny.make_tiny_causal_lm`)."""
    from ftcore.api import make_tiny_causal_lm

    return make_tiny_causal_lm(out_dir, "llama", **kwargs)


def make_tiny_qwen2(out_dir: str | Path, **kwargs: Any) -> Path:
    """A tiny random HF-layout Qwen2 checkpoint with a tokenizer (see :func:`ftcore.models.tiny.make_tiny_causal_lm`)."""
    from ftcore.api import make_tiny_causal_lm

    return make_tiny_causal_lm(out_dir, "qwen2", **kwargs)
