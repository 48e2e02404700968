"""Tiny random checkpoints and tokenizers made locally (quickstart and tests; no downloads)."""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_CORPUS = [
    "You are a helpful assistant. I am an AI assistant developed to help you.",
    "Who are you? Please introduce yourself. What is your name? Hello!",
    "I am ftcore's assistant, a language model fine-tuned to answer questions.",
    "The quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9.",
    "system user assistant Human Bot Instruction Response Input Output",
    "Medical question: what are the symptoms of a cold? Answer: cough, fever.",
    "你好！你是谁？请介绍一下你自己。我是一个人工智能助手，很高兴为你服务。",
    "我是由开发者训练的语言模型助手。你的名字是什么？医学问题：感冒的症状有哪些？",
    "[INST] <<SYS>> <</SYS>> [/INST] ### Instruction: ### Response: USER: ASSISTANT:",
    "<|user|> <|assistant|> <|system|> <start_of_turn>user <end_of_turn> <|eot_id|>",
]


def make_tokenizer(out_dir: str | Path, vocab_size: int = 1024, extra_corpus: list[str] | None = None) -> Path:
    """Train a small byte-level BPE tokenizer (English + Chinese) and save it HF-style.

    Special tokens: ``<unk>`` ``<s>`` (BOS) ``</s>`` (EOS) ``<|im_start|>`` ``<|im_end|>``
    ``<|pad|>``. Returns ``out_dir``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_CORPUS + list(extra_corpus or [])) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.save_pretrained(str(out))
    return out


def make_tiny_causal_lm(out_dir: str | Path, arch: str = "llama", *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int = 128, seed: int = 0, init_std: float = 0.15, tokenizer_dir: str | Path | None = None) -> Path:
    """A tiny random HF-layout causal LM (``llama`` or ``qwen2``) with a tokenizer, saved as safetensors.

    ``init_std`` is larger than real models use so that a frozen random LM head can still
    express confident predictions: LoRA on a tiny random model then learns visibly.
    """
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    if tokenizer_dir is None:
        make_tokenizer(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for f in Path(tokenizer_dir).iterdir():
            if f.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(f, out / f.name)
    tok = AutoTokenizer.from_pretrained(str(out))
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    config = config_cls(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(str(out), safe_serialization=True)
    return out
