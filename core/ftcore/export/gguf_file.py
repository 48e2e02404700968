"""A Llama-layout checkpoint folder as one GGUF file for llama.cpp and Ollama (through the ``gguf`` package).

Tensors are renamed by :data:`GLOBAL_NAMES` and :data:`LAYER_NAMES` (transformers' Llama names ->
llama.cpp's). Llama's rotary embedding pairs dimension ``i`` with ``i + d/2`` of each head in
transformers but neighbours ``2i, 2i+1`` in llama.cpp, so the rows of q and k (weights and biases)
are reordered per head (:func:`interleave_rope`), as llama.cpp's converter does. 1-D tensors (norms,
biases) stay float32; matrices take the chosen type, and for ``q8_0`` a matrix whose rows are not a
whole number of 32-value blocks falls back to f16. The metadata carries the hyperparameters, the
tokenizer (:mod:`ftcore.export.vocab`), the chat template and the template's end-of-turn token as
EOS (llama.cpp stops there; ``eot`` says the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import FtcoreError

#: --outtype -> (GGML type of matrices, llama.cpp's file type name)
OUTTYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}

GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
#: ``model.layers.N.<key>`` -> ``blk.N.<value>``
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
#: q/k rows are reordered per head for llama.cpp's rotary layout: GGUF name suffix -> config key of its head count
ROPE_ROWS = {"attn_q.weight": "num_attention_heads", "attn_q.bias": "num_attention_heads",
             "attn_k.weight": "num_key_value_heads", "attn_k.bias": "num_key_value_heads"}
#: tensors a checkpoint may hold that GGUF does not take (recomputed by llama.cpp)
SKIPPED = ("rotary_emb.inv_freq",)


def gguf_name(name: str) -> str | None:
    """llama.cpp's name of transformers' Llama tensor ``name`` (None: not written)."""
    if name.endswith(SKIPPED):
        return None
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and parts[3] in LAYER_NAMES:
        return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}"
    raise FtcoreError(f"GGUF export: tensor {name!r} has no place in llama.cpp's Llama", hint="only plain Llama checkpoints (ftcore merge's default layout) are exported")


def interleave_rope(rows: Any, heads: int) -> Any:
    """Per head, rows ``[x_0..x_{d/2-1}, y_0..y_{d/2-1}]`` -> ``[x_0, y_0, x_1, y_1, ...]`` (weights or biases)."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def rope_settings(config: dict[str, Any]) -> tuple[float, str, float | None]:
    """(theta, scaling kind, factor) from transformers 5's ``rope_parameters`` or 4's ``rope_theta``/``rope_scaling``."""
    rope = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    theta = rope.get("rope_theta") or config.get("rope_theta") or 10000.0
    return float(theta), rope.get("rope_type") or rope.get("type") or "default", rope.get("factor")


def check_config(config: dict[str, Any], folder: Path) -> None:
    """Refuse what llama.cpp's Llama cannot run as transformers does."""
    where = str(folder / "config.json")
    if config.get("model_type") != "llama":
        raise FtcoreError(
            f"GGUF export writes the Llama architecture; {folder} holds a {config.get('model_type')!r} model",
            where=where, hint="merge or export from a model ftcore loads as a Llama (Llama, InternLM2), or use llama.cpp's convert_hf_to_gguf.py",
        )
    if config.get("mlp_bias"):
        raise FtcoreError("GGUF export: llama.cpp's Llama has no MLP biases (mlp_bias: true)", where=where)
    _, kind, _ = rope_settings(config)
    if kind not in ("default", "linear", "dynamic"):
        raise FtcoreError(f"GGUF export: rope_scaling {kind!r} is not written by ftcore", where=where, hint="use llama.cpp's convert_hf_to_gguf.py on the merged model")


def read_tensors(folder: Path) -> Iterator[tuple[str, Any]]:
    """(name, float32 numpy array) of every weight in ``folder``'s safetensors, one at a time."""
    from safetensors import safe_open

    files = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter"))
    if not files:
        raise FtcoreError(f"{folder} has no *.safetensors weights", hint="export a merged model (ftcore merge) or a full fine-tune checkpoint")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name).float().numpy()


def _metadata(writer: Any, config: dict[str, Any], name: str, file_type: Any, gguf: Any, log: Callable[[str], None]) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    theta, kind, factor = rope_settings(config)
    writer.add_rope_freq_base(theta)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif kind == "dynamic":
        log("note: llama.cpp has no dynamic NTK rope scaling; the GGUF runs with plain RoPE (as llama.cpp's own converter writes it)")


def _tokenizer_metadata(writer: Any, folder: Path, tokenizer: Any, size: int, chat_template: str | None, eos: list[int]) -> None:
    from .vocab import read_vocab

    vocab = read_vocab(folder, tokenizer, size)
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    for key, value in (("bos", tokenizer.bos_token_id), ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    end_of_turn = next((i for i in eos if i != tokenizer.eos_token_id), tokenizer.eos_token_id)
    if end_of_turn is not None:
        writer.add_eos_token_id(end_of_turn)
        writer.add_eot_token_id(end_of_turn)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id)
    if chat_template:
        writer.add_chat_template(chat_template)


def eos_of(folder: Path, tokenizer: Any) -> list[int]:
    """generation_config.json's EOS ids (ftcore writes EOS + the template's stop words there), else the tokenizer's EOS."""
    try:
        value = json.loads((folder / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError):
        value = None
    ids = value if isinstance(value, list) else [value] if value is not None else []
    return ids or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def write_gguf(folder: str | Path, out: str | Path, outtype: str = "f16", *, tokenizer: Any, chat_template: str | None = None,
               eos: list[int] | None = None, name: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Write the Llama checkpoint in ``folder`` (config.json, safetensors, ``tokenizer`` loaded from it)
    to the GGUF file ``out``; ``chat_template`` and ``eos`` default to the folder's."""
    import gguf
    import numpy as np

    folder, out = Path(folder), Path(out)
    if outtype not in OUTTYPES:
        raise FtcoreError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    check_config(config, folder)
    qname, file_type = OUTTYPES[outtype]
    qtype = gguf.GGMLQuantizationType[qname]
    chat_template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    eos = eos if eos is not None else eos_of(folder, tokenizer)

    writer = gguf.GGUFWriter(str(out), "llama")
    _metadata(writer, config, name or folder.name, gguf.LlamaFileType[file_type], gguf, log)
    _tokenizer_metadata(writer, folder, tokenizer, config["vocab_size"], chat_template, eos)
    tied = config.get("tie_word_embeddings", False)
    for hf_name, data in read_tensors(folder):
        target = gguf_name(hf_name)
        if target is None or (target == "output.weight" and tied):
            continue
        suffix = target.split(".", 2)[-1]
        if suffix in ROPE_ROWS:
            data = interleave_rope(data, config.get(ROPE_ROWS[suffix]) or config["num_attention_heads"])
        kind = qtype if data.ndim > 1 else gguf.GGMLQuantizationType.F32
        if kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
            kind = gguf.GGMLQuantizationType.F16  # rows that are not whole Q8_0 blocks
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(target, np.ascontiguousarray(data, dtype=np.float32))
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(target, data.astype(np.float16))
        else:
            writer.add_tensor(target, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
