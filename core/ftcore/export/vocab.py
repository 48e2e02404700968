"""A checkpoint's tokenizer as llama.cpp's GGUF vocabulary: SentencePiece (``llama``) or byte-level BPE (``gpt2``).

Each kind is a row of :data:`VOCABS`: whether a folder's tokenizer is of that kind, and how its
tokens, scores, token types and merges are read. Token ids are the model's: a token the tokenizer
lacks up to the embedding's rows becomes an unused ``[PADn]``, as llama.cpp's converter writes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import FtcoreError

# llama.cpp's token types (gguf.TokenType), kept here so reading a folder needs no gguf import
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

#: the pre-tokenizer of a byte-level BPE tokenizer.json -> llama.cpp's name for it (``tokenizer.ggml.pre``)
PRE_TOKENIZERS: dict[str, str] = {
    # ByteLevel(use_regex=True) splits with GPT-2's pattern, which llama.cpp calls gpt-2
    json.dumps({"type": "ByteLevel", "use_regex": True}): "gpt-2",
}


@dataclass
class Vocab:
    """What GGUF's ``tokenizer.ggml.*`` keys hold."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    add_space_prefix: bool | None = None


def _tokenizer_json(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))


def _pad(tokens: list[str | None], types: list[int], scores: list[float] | None, size: int) -> None:
    """Fill ids the tokenizer does not use (up to ``size``) with unused ``[PADn]`` tokens."""
    tokens.extend([None] * (size - len(tokens)))
    types.extend([UNUSED] * (size - len(types)))
    if scores is not None:
        scores.extend([-1000.0] * (size - len(scores)))
    for i, token in enumerate(tokens):
        if token is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED


def _mark_added(tokens: list[str | None], types: list[int], tokenizer: Any, scores: list[float] | None) -> None:
    """The tokenizer's added tokens: special ones CONTROL, the others USER_DEFINED (where they are not in the base vocabulary)."""
    for i, added in sorted(tokenizer.added_tokens_decoder.items()):
        if i >= len(tokens):
            tokens.extend([None] * (i + 1 - len(tokens)))
            types.extend([UNUSED] * (i + 1 - len(types)))
            if scores is not None:
                scores.extend([-1000.0] * (i + 1 - len(scores)))
        tokens[i] = added.content
        types[i] = CONTROL if added.special else USER_DEFINED


def is_sentencepiece(folder: Path, tokenizer: Any) -> bool:
    return (folder / "tokenizer.model").is_file()


def sentencepiece_vocab(folder: Path, tokenizer: Any, size: int) -> Vocab:
    """Pieces, scores and types from ``tokenizer.model``; the HF tokenizer's added tokens on top."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tokens: list[str | None] = []
    types: list[int] = []
    scores: list[float] = []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i) else BYTE if sp.is_byte(i) else NORMAL)
    _mark_added(tokens, types, tokenizer, scores)
    _pad(tokens, types, scores, size)
    prefix = sp.encode("a", out_type=str)
    return Vocab("llama", tokens, types, scores, add_space_prefix=bool(prefix) and prefix[0].startswith("\u2581"))


def is_byte_level_bpe(folder: Path, tokenizer: Any) -> bool:
    if not (folder / "tokenizer.json").is_file():
        return False
    data = _tokenizer_json(folder)
    return (data.get("model") or {}).get("type") == "BPE" and (data.get("decoder") or {}).get("type") == "ByteLevel"


def byte_level_bpe_vocab(folder: Path, tokenizer: Any, size: int) -> Vocab:
    """Tokens and merges from ``tokenizer.json``; the pre-tokenizer named as llama.cpp knows it."""
    data = _tokenizer_json(folder)
    pre_tokenizer = data.get("pre_tokenizer") or {}
    key = json.dumps({"type": pre_tokenizer.get("type"), "use_regex": pre_tokenizer.get("use_regex", True)})
    pre = PRE_TOKENIZERS.get(key)
    if pre is None:
        raise FtcoreError(
            f"GGUF export: llama.cpp would split text differently from this tokenizer's pre-tokenizer ({json.dumps(pre_tokenizer)[:200]})",
            where=str(folder / "tokenizer.json"),
            hint="ftcore writes byte-level BPE with GPT-2's pre-tokenizer and SentencePiece tokenizers; for others use llama.cpp's "
                 "convert_hf_to_gguf.py on the merged model (ftcore merge)",
        )
    vocab = data["model"]["vocab"]
    tokens: list[str | None] = [None] * (max(vocab.values()) + 1)
    for text, i in vocab.items():
        tokens[i] = text
    types = [NORMAL if t is not None else UNUSED for t in tokens]
    _mark_added(tokens, types, tokenizer, None)
    _pad(tokens, types, None, size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges") or []]
    return Vocab("gpt2", tokens, types, merges=merges, pre=pre)


#: tokenizer kinds, first match wins: (name, is it this kind, read it)
VOCABS: list[tuple[str, Callable[[Path, Any], bool], Callable[[Path, Any, int], Vocab]]] = [
    ("SentencePiece (tokenizer.model)", is_sentencepiece, sentencepiece_vocab),
    ("byte-level BPE (tokenizer.json)", is_byte_level_bpe, byte_level_bpe_vocab),
]


def read_vocab(folder: Path, tokenizer: Any, size: int) -> Vocab:
    """The GGUF vocabulary of the tokenizer in ``folder`` (``size``: the model's embedding rows)."""
    for _, matches, read in VOCABS:
        if matches(folder, tokenizer):
            vocab = read(folder, tokenizer, size)
            if len(vocab.tokens) > size:
                raise FtcoreError(f"GGUF export: the tokenizer has {len(vocab.tokens)} tokens, the model's embedding only {size} rows", where=str(folder))
            return vocab
    raise FtcoreError(
        f"GGUF export: {folder} has no tokenizer llama.cpp can take",
        hint=f"ftcore writes these kinds: {'; '.join(name for name, _, _ in VOCABS)}",
    )
