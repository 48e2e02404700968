"""InternLM2 tokenizers without remote code: tokenizer.json as is, or a fast tokenizer built from tokenizer.model.

Real InternLM2 repositories ship a SentencePiece ``tokenizer.model`` and a remote-code
``InternLM2Tokenizer`` (a Llama-style SentencePiece tokenizer, BOS added, no EOS). Here the
SentencePiece model is read with the ``sentencepiece`` library plus a small reader of its
protobuf fields (no ``protobuf`` package needed) and turned into an equivalent ``tokenizers``
object: byte-fallback BPE (or Unigram), SentencePiece's normalisation (charsmap, extra
whitespace removal, dummy prefix, ``▁`` for spaces) and a decoder that undoes it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcore.api import FtcoreError

# SentencePiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPECIAL_LOOKING = re.compile(r"^<[^<>\s]+>$")


@dataclass
class SpmSpec:
    """The fields of a SentencePiece ModelProto that the conversion needs."""

    model_type: int = 1  # 1 unigram, 2 bpe
    byte_fallback: bool = False
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    pieces: list[tuple[str, float, int]] = field(default_factory=list)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message: ints for varints, bytes for length-delimited."""
    out: list[tuple[int, int, Any]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i : i + n], i + n
        elif wire == 5:
            val, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((num, wire, val))
    return out


def read_spm_model(path: str | Path) -> SpmSpec:
    """Parse a SentencePiece ``tokenizer.model`` (its pieces, trainer and normalizer specs)."""
    try:
        top = _fields(Path(path).read_bytes())
    except (ValueError, IndexError) as exc:
        raise FtcoreError(f"{path} is not a SentencePiece model ({exc})", hint="replace it with the tokenizer.model of the checkpoint") from exc
    spec = SpmSpec()
    for num, _, val in top:
        if num == 1:  # SentencePiece piece
            piece, score, kind = "", 0.0, _NORMAL
            for n, _, v in _fields(val):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2:
                    score = struct.unpack("<f", v)[0]
                elif n == 3:
                    kind = v
            spec.pieces.append((piece, score, kind))
        elif num == 2:  # TrainerSpec
            for n, _, v in _fields(val):
                if n == 3:
                    spec.model_type = v
                elif n == 35:
                    spec.byte_fallback = bool(v)
        elif num == 3:  # NormalizerSpec
            for n, _, v in _fields(val):
                if n == 2:
                    spec.precompiled_charsmap = bytes(v)
                elif n == 3:
                    spec.add_dummy_prefix = bool(v)
                elif n == 4:
                    spec.remove_extra_whitespaces = bool(v)
                elif n == 5:
                    spec.escape_whitespaces = bool(v)
    if not spec.pieces:
        raise FtcoreError(f"{path} holds no SentencePiece pieces", hint="replace it with the tokenizer.model of the checkpoint")
    return spec


def _bpe_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece BPE vocab: each piece from two pieces, ordered by the piece's score."""
    merges: list[tuple[str, str, float, int, int]] = []
    for piece, score in scores.items():
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                merges.append((left, right, score, vocab[left], vocab[right]))
    merges.sort(key=lambda m: (-m[2], m[3], m[4]))
    return [(m[0], m[1]) for m in merges]


def spm_to_tokenizers(spec: SpmSpec, special: set[str] | None = None) -> Any:
    """A ``tokenizers.Tokenizer`` that encodes and decodes like the SentencePiece model ``spec``.

    Control pieces and user-defined pieces become added tokens (special when in ``special``
    or when they look like ``<...>``); BOS/EOS post-processing is left to the caller.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers

    special = set(special or ())
    vocab = {p: i for i, (p, _, _) in enumerate(spec.pieces)}
    unk = next((i for i, (_, _, k) in enumerate(spec.pieces) if k == _UNKNOWN), 0)
    unk_piece = spec.pieces[unk][0]
    if spec.model_type == 2:
        normal = {p: s for p, s, k in spec.pieces if k == _NORMAL}
        model = models.BPE(vocab=vocab, merges=_bpe_merges(vocab, normal), unk_token=unk_piece, fuse_unk=True, byte_fallback=spec.byte_fallback)
    elif spec.model_type == 1:
        model = models.Unigram([(p, s) for p, s, _ in spec.pieces], unk_id=unk, byte_fallback=spec.byte_fallback)
    else:
        raise FtcoreError(f"SentencePiece model type {spec.model_type} is not supported (only unigram and BPE)")
    tok = Tokenizer(model)
    norms: list[Any] = []
    if spec.precompiled_charsmap:
        norms.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        norms += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        norms.append(normalizers.Prepend("▁"))
    if spec.escape_whitespaces:
        norms.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(norms)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    added = [
        AddedToken(p, special=(p in special or k == _CONTROL or bool(_SPECIAL_LOOKING.match(p))), normalized=False)
        for p, _, k in spec.pieces
        if k in (_CONTROL, _USER_DEFINED)
    ]
    tok.add_tokens([a for a in added if not a.special])
    tok.add_special_tokens([a for a in added if a.special])
    return tok


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def load_internlm2_tokenizer(path: str | Path) -> Any:
    """The tokenizer of an InternLM2 (or any SentencePiece/HF) checkpoint folder, never running remote code.

    ``tokenizer.json`` is used when present; otherwise ``tokenizer.model`` is converted
    (settings from tokenizer_config.json: special tokens, ``add_bos_token``/``add_eos_token``,
    ``chat_template``, ``model_max_length``). ``<|im_start|>``/``<|im_end|>`` stay single
    special tokens; BOS ``<s>``, EOS ``</s>``.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FtcoreError(f"tokenizer folder {str(path)!r} does not exist", hint="point model.path (or model.tokenizer_path) at the checkpoint folder")
    cfg_file = folder / "tokenizer_config.json"
    tcfg: dict[str, Any] = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    smap_file = folder / "special_tokens_map.json"
    smap: dict[str, Any] = json.loads(smap_file.read_text(encoding="utf-8")) if smap_file.is_file() else {}
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    if not (folder / "tokenizer.model").is_file():
        raise FtcoreError(
            f"{folder} has neither tokenizer.json nor tokenizer.model",
            hint="copy the tokenizer files of the base model (tokenizer.model, tokenizer_config.json) into this folder",
        )
    spec = read_spm_model(folder / "tokenizer.model")
    declared = {str(v.get("content")): bool(v.get("special", True)) for v in (tcfg.get("added_tokens_decoder") or {}).values() if isinstance(v, dict)}
    extra = [_token_text(t) for t in (tcfg.get("additional_special_tokens") or smap.get("additional_special_tokens") or [])]
    special = {t for t, s in declared.items() if s} | {t for t in extra if t} | {"<|im_start|>", "<|im_end|>"}
    tok = spm_to_tokenizers(spec, special)
    known = {p for p, _, _ in spec.pieces}
    from tokenizers import AddedToken

    missing = [t for t in declared if t not in known]  # declared tokens beyond the SentencePiece vocab
    if missing:
        tok.add_special_tokens([AddedToken(t, special=declared[t], normalized=False) for t in missing])

    def pick(name: str, default: str | None) -> str | None:
        return _token_text(tcfg.get(name)) or _token_text(smap.get(name)) or default

    bos, eos, unk = pick("bos_token", "<s>"), pick("eos_token", "</s>"), pick("unk_token", "<unk>")
    pad = pick("pad_token", None)
    add_bos, add_eos = bool(tcfg.get("add_bos_token", True)), bool(tcfg.get("add_eos_token", False))
    single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
    pair = single + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
    ids = {t: tok.token_to_id(t) for t in (bos, eos) if t and tok.token_to_id(t) is not None}
    tok.post_processor = processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair), special_tokens=[(t, i) for t, i in ids.items() if (t == bos and add_bos) or (t == eos and add_eos)])
    in_vocab_special = [t for t in special if tok.token_to_id(t) is not None and t not in (bos, eos, unk, pad)]
    kwargs: dict[str, Any] = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "additional_special_tokens": sorted(in_vocab_special, key=tok.token_to_id)}
    if pad:
        kwargs["pad_token"] = pad
    if tcfg.get("model_max_length"):
        kwargs["model_max_length"] = tcfg["model_max_length"]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **kwargs)
    if tcfg.get("chat_template"):
        fast.chat_template = tcfg["chat_template"]
    return fast
