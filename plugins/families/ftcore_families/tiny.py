"""Tiny random checkpoints of each family, made locally from its real transformers config class, with its chat template and special tokens (tests; no downloads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    """How to make a tiny checkpoint of one family: its config and model classes (names in
    transformers), the template its recipes use, its special tokens and config extras."""

    config: str
    model: str
    template: str
    bos: str | None
    eos: str
    special: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "qwen2_5": Family("Qwen2Config", "Qwen2ForCausalLM", "qwen2_5_chat", None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>")),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM", "qwen3_chat", None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>"), {"head_dim": 16}),
    "llama3": Family("LlamaConfig", "LlamaForCausalLM", "llama3_chat", "<|begin_of_text|>", "<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>"),
                     {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                               "original_max_position_embeddings": 512}}),
    "mistral": Family("MistralConfig", "MistralForCausalLM", "mistral_instruct", "<s>", "</s>", ("[INST]", "[/INST]"), {"sliding_window": None}),
    # small windows, so that packed samples longer than a window exercise the sliding-window path
    "gemma2": Family("Gemma2Config", "Gemma2ForCausalLM", "gemma2_chat", "<bos>", "<eos>", ("<start_of_turn>", "<end_of_turn>"),
                     {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 24, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0}),
    "gemma3": Family("Gemma3TextConfig", "Gemma3ForCausalLM", "gemma3_chat", "<bos>", "<eos>", ("<start_of_turn>", "<end_of_turn>"),
                     {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 24, "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": Family("Phi3Config", "Phi3ForCausalLM", "phi3_instruct", "<s>", "<|endoftext|>", ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>")),
    "phi4": Family("Phi3Config", "Phi3ForCausalLM", "phi4_chat", None, "<|im_end|>", ("<|im_start|>", "<|im_sep|>", "<|endoftext|>")),
}


def make_family_model(family: str, out_dir: str | Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A tiny random checkpoint of ``family`` (a key of :data:`FAMILIES`) in ``out_dir``: its config class,
    a small BPE tokenizer with the family's special tokens, and the family template's Jinja as chat_template."""
    from importlib import resources

    import torch
    import transformers

    from ftcore.api import PromptTemplate, make_tokenizer

    spec = FAMILIES[family]
    out = Path(out_dir)
    make_tokenizer(out)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    names = [t for t in (spec.bos, spec.eos, *spec.special) if t and t not in tok.get_vocab()]
    tok.add_special_tokens({"additional_special_tokens": names})
    tok.bos_token, tok.eos_token = spec.bos, spec.eos
    template = PromptTemplate.from_file(Path(str(resources.files("ftcore.templates") / f"{spec.template}.yaml")))  # the shipped template file
    tok.chat_template = template.jinja
    tok.save_pretrained(str(out))
    config = getattr(transformers, spec.config)(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False, initializer_range=0.15, **spec.extra,
    )
    torch.manual_seed(seed)
    getattr(transformers, spec.model)(config).save_pretrained(str(out), safe_serialization=True)
    return out
