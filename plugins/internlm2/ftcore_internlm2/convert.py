"""InternLM2 <-> Llama conversion of configs and state dicts (pure functions, no I/O).

InternLM2 is a Llama with other names and a fused ``wqkv`` projection. Its rows are laid
out per KV group: ``G = heads / kv_heads`` query heads, then one key head, then one value
head, ``head_dim`` rows each, i.e. ``wqkv.view(kv_heads, G + 2, head_dim, hidden)``.
Converting both ways only slices and concatenates, so a round trip is bitwise exact.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import torch

from ftcore.api import FtcoreError

INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}

# per-layer renames that need no reshaping: InternLM2 suffix -> Llama suffix
_LAYER_RENAMES = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wo.bias": "self_attn.o_proj.bias",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_RENAMES = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_ROPE_TYPES = ("default", "linear", "dynamic")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def is_internlm2_config(cfg: dict[str, Any]) -> bool:
    """Whether a config.json dict describes an InternLM2 checkpoint (model_type or architectures)."""
    archs = cfg.get("architectures") or []
    return cfg.get("model_type") == "internlm2" or any(str(a).startswith("InternLM2") for a in archs)


def is_llama_config(cfg: dict[str, Any]) -> bool:
    """Whether a config.json dict describes a transformers Llama checkpoint."""
    archs = cfg.get("architectures") or []
    return cfg.get("model_type") == "llama" or "LlamaForCausalLM" in archs


def _rope_style() -> str:
    """``"parameters"`` for transformers >= 5 (``rope_parameters``), else ``"scaling"`` (``rope_theta`` + ``rope_scaling``)."""
    import transformers

    return "parameters" if int(transformers.__version__.split(".")[0]) >= 5 else "scaling"


def _dims(cfg: dict[str, Any]) -> tuple[int, int, int, int]:
    """(hidden, heads, kv_heads, head_dim) of an InternLM2 or Llama config dict."""
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise FtcoreError(f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})", where="config.json")
    return hidden, heads, kv_heads, head_dim


def _shared_fields(cfg: dict[str, Any], hidden: int, heads: int, kv_heads: int) -> dict[str, Any]:
    """The config keys InternLM2 and Llama spell the same way."""
    return {
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": hidden,
        "intermediate_size": int(cfg["intermediate_size"]),
        "num_hidden_layers": int(cfg["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": cfg.get("hidden_act", "silu"),
        "max_position_embeddings": int(cfg.get("max_position_embeddings", 2048)),
        "initializer_range": float(cfg.get("initializer_range", 0.02)),
        "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "use_cache": bool(cfg.get("use_cache", True)),
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
    }


def internlm2_config_to_llama(cfg: dict[str, Any], rope_style: str | None = None) -> dict[str, Any]:
    """A LlamaConfig dict equivalent to an InternLM2 config.json dict.

    InternLM2 ``bias`` (on wqkv and wo only; its MLP never has biases) becomes Llama
    ``attention_bias`` with ``mlp_bias=False``. ``rope_scaling: {type: dynamic|linear,
    factor: F}`` becomes that rope type. ``rope_style`` picks how rope is written:
    ``"parameters"`` (transformers 5: ``rope_parameters``) or ``"scaling"`` (transformers 4:
    ``rope_theta`` + ``rope_scaling``); by default the installed transformers' style.
    """
    hidden, heads, kv_heads, head_dim = _dims(cfg)
    if head_dim * heads != hidden:
        raise FtcoreError(f"hidden_size {hidden} is not num_attention_heads {heads} x head_dim", where="config.json")
    theta = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or None
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    if scaling:
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind not in ("linear", "dynamic"):
            raise FtcoreError(f"unsupported InternLM2 rope_scaling type {kind!r}", where="config.json: rope_scaling", hint="InternLM2 defines 'linear' and 'dynamic' (NTK)")
        factor = float(scaling["factor"])
        if factor < 1.0:
            raise FtcoreError(f"rope_scaling factor must be >= 1, got {factor}", where="config.json: rope_scaling")
        rope = {"rope_type": kind, "factor": factor, "rope_theta": theta}
    out: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **_shared_fields(cfg, hidden, heads, kv_heads),
        "head_dim": head_dim,
        "attention_bias": bool(cfg.get("bias", True)),  # InternLM2Config's default is True
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "bos_token_id": cfg.get("bos_token_id", 1),
        "eos_token_id": cfg.get("eos_token_id", 2),
        "pad_token_id": cfg.get("pad_token_id", 0),
    }
    dtype = cfg.get("dtype", cfg.get("torch_dtype"))
    if dtype:
        out["dtype" if (rope_style or _rope_style()) == "parameters" else "torch_dtype"] = dtype
    if (rope_style or _rope_style()) == "parameters":
        out["rope_parameters"] = rope
    else:
        out["rope_theta"] = theta
        out["rope_scaling"] = None if rope["rope_type"] == "default" else {"rope_type": rope["rope_type"], "factor": rope["factor"]}
    return out


def _llama_rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, InternLM2 rope_scaling or None) from a Llama config dict in either rope style."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", scaling.get("rope_theta", 10000.0))))
    src = params if params.get("rope_type", params.get("type")) else scaling
    kind = src.get("rope_type", src.get("type", "default")) if src else "default"
    if kind not in _ROPE_TYPES:
        raise FtcoreError(f"rope type {kind!r} has no InternLM2 equivalent", where="config.json", hint=f"InternLM2 supports {', '.join(_ROPE_TYPES)}")
    return theta, (None if kind == "default" else {"type": kind, "factor": float(src["factor"])})


def llama_config_to_internlm2(cfg: dict[str, Any]) -> dict[str, Any]:
    """An InternLM2 config.json dict (for its remote-code classes) equivalent to a Llama config dict."""
    hidden, heads, kv_heads, head_dim = _dims(cfg)
    if head_dim * heads != hidden:
        raise FtcoreError(f"head_dim {head_dim} x heads {heads} != hidden_size {hidden}: InternLM2 cannot express this", where="config.json")
    if cfg.get("mlp_bias"):
        raise FtcoreError("InternLM2 has no MLP biases (mlp_bias=true)", where="config.json", hint="save with layout='llama' instead")
    theta, scaling = _llama_rope(cfg)
    out: dict[str, Any] = {
        "architectures": ["InternLM2ForCausalLM"],
        "auto_map": dict(INTERNLM2_AUTO_MAP),
        "model_type": "internlm2",
        **_shared_fields(cfg, hidden, heads, kv_heads),
        "bias": bool(cfg.get("attention_bias", False)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "attn_implementation": "eager",
        "bos_token_id": cfg.get("bos_token_id", 1),
        "eos_token_id": cfg.get("eos_token_id", 2),
        "pad_token_id": cfg.get("pad_token_id", 0),
    }
    dtype = cfg.get("dtype", cfg.get("torch_dtype"))
    if dtype:
        out["torch_dtype"] = str(dtype).replace("torch.", "")
    return out


def _rename(
    sd: dict[str, torch.Tensor], top: dict[str, str], per_layer: dict[str, str], out: dict[str, torch.Tensor], unknown: list[str]
) -> Iterator[tuple[str, str, str, torch.Tensor]]:
    """Copy the one-to-one renames into ``out`` and collect non-layer strangers in ``unknown``;
    yield ``(key, "model.layers.N.", rest, tensor)`` for the layer weights left (the q/k/v ones).
    RoPE ``inv_freq`` buffers that some ``.bin`` checkpoints carry are dropped."""
    for key, t in sd.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key in top:
            out[top[key]] = t
            continue
        m = _LAYER_RE.match(key)
        if not m:
            unknown.append(key)
            continue
        prefix, rest = f"model.layers.{m.group(1)}.", m.group(2)
        if rest in per_layer:
            out[prefix + per_layer[rest]] = t
        else:
            yield key, prefix, rest, t


def internlm2_to_llama_state_dict(sd: dict[str, torch.Tensor], cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename InternLM2 weights to Llama's and split each fused ``wqkv`` into q/k/v projections.

    ``cfg`` is the InternLM2 (or the converted Llama) config dict. Rotary ``inv_freq``
    buffers some ``.bin`` checkpoints carry are dropped; any other unknown key is an error.
    """
    _, heads, kv_heads, head_dim = _dims(cfg)
    groups = heads // kv_heads
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, prefix, rest, t in _rename(sd, _TOP_RENAMES, _LAYER_RENAMES, out, unknown):
        if rest in ("attention.wqkv.weight", "attention.wqkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            expect = (heads + 2 * kv_heads) * head_dim
            if t.shape[0] != expect:
                raise FtcoreError(f"{key} has {t.shape[0]} rows, expected (heads + 2*kv_heads) * head_dim = {expect}", where="checkpoint weights", hint="check num_attention_heads / num_key_value_heads in config.json")
            # own copies: slices of one tensor would share storage (safetensors refuses that)
            grouped = t.reshape(kv_heads, groups + 2, head_dim, *t.shape[1:])
            out[f"{prefix}self_attn.q_proj.{kind}"] = grouped[:, :groups].reshape(heads * head_dim, *t.shape[1:]).clone(memory_format=torch.contiguous_format)
            out[f"{prefix}self_attn.k_proj.{kind}"] = grouped[:, groups].reshape(kv_heads * head_dim, *t.shape[1:]).clone(memory_format=torch.contiguous_format)
            out[f"{prefix}self_attn.v_proj.{kind}"] = grouped[:, groups + 1].reshape(kv_heads * head_dim, *t.shape[1:]).clone(memory_format=torch.contiguous_format)
        else:
            unknown.append(key)
    if unknown:
        raise FtcoreError(f"unexpected weights for InternLM2: {', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''}", where="checkpoint weights", hint="is this really an InternLM2 checkpoint (not e.g. an InternLM2 vision-language or reward model)?")
    return out


def llama_to_internlm2_state_dict(sd: dict[str, torch.Tensor], cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`internlm2_to_llama_state_dict`: fuse q/k/v back into ``wqkv`` and rename.

    ``cfg`` is the Llama (or InternLM2) config dict. Unknown keys are an error.
    """
    _, heads, kv_heads, head_dim = _dims(cfg)
    groups = heads // kv_heads
    top = {v: k for k, v in _TOP_RENAMES.items()}
    per_layer = {v: k for k, v in _LAYER_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, prefix, rest, t in _rename(sd, top, per_layer, out, unknown):
        if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj") and rest.count(".") == 2:
            _, proj, kind = rest.split(".")
            qkv.setdefault((prefix, kind), {})[proj[0]] = t
        else:
            unknown.append(key)
    if unknown:
        raise FtcoreError(f"weights with no InternLM2 equivalent: {', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''}", where="model state dict", hint="save with layout='llama' instead")
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise FtcoreError(f"{prefix}self_attn has only {sorted(parts)} {kind} projections", where="model state dict")
        tail = parts["q"].shape[1:]
        q = parts["q"].reshape(kv_heads, groups, head_dim, *tail)
        k = parts["k"].reshape(kv_heads, 1, head_dim, *tail)
        v = parts["v"].reshape(kv_heads, 1, head_dim, *tail)
        out[f"{prefix}attention.wqkv.{kind}"] = torch.cat([q, k, v], dim=1).reshape((heads + 2 * kv_heads) * head_dim, *tail).contiguous()
    return out
