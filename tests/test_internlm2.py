"""The internlm2 builder: conversion, a reference InternLM2 forward, rope scaling, tokenizers, cache, save."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ftcore.errors import FtcoreError
from ftcore_internlm2 import builder as builder_mod
from ftcore_internlm2.builder import build
from ftcore_internlm2.convert import (
    internlm2_config_to_llama,
    internlm2_to_llama_state_dict,
    llama_config_to_internlm2,
    llama_to_internlm2_state_dict,
)
from ftcore_internlm2.tiny import make_tiny_internlm2

PROMPT = "<|im_start|>user\nWho are you? 你好，请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random InternLM2-layout checkpoint (GQA 4 heads / 2 KV heads, no biases)."""
    return make_tiny_internlm2(tmp_path_factory.mktemp("m") / "tiny-internlm2", seed=1)


@pytest.fixture(scope="module")
def tiny_ntk(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Path:
    """Biased wqkv/wo, dynamic NTK rope scaling and a short max_position_embeddings (16)."""
    return make_tiny_internlm2(
        tmp_path_factory.mktemp("m") / "tiny-ntk", seed=2, tokenizer_dir=tiny, bias=True, rope_theta=10000.0,
        rope_scaling={"type": "dynamic", "factor": 4.0}, max_position_embeddings=16,
    )


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


# ---------------------------------------------------------------- an independent InternLM2 forward


def reference_internlm2_logits(sd: dict[str, torch.Tensor], cfg: dict[str, Any], ids: list[int], ntk: bool = True) -> torch.Tensor:
    """InternLM2's forward written from the architecture, on InternLM2-named weights (fp32, one sequence)."""
    hidden, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    d, g, eps, n = hidden // nh, nh // nkv, cfg["rms_norm_eps"], len(ids)

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        out = x @ sd[name + ".weight"].T
        return out + sd[name + ".bias"] if name + ".bias" in sd else out

    base, pos = float(cfg["rope_theta"]), torch.arange(n, dtype=torch.float32)
    scaling, max_pos = cfg.get("rope_scaling"), cfg["max_position_embeddings"]
    if scaling and scaling["type"] == "dynamic" and ntk and n > max_pos:
        f = scaling["factor"]
        base = base * ((f * n / max_pos) - (f - 1)) ** (d / (d - 2))
    if scaling and scaling["type"] == "linear":
        pos = pos / scaling["factor"]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    emb = torch.cat([torch.outer(pos, inv_freq)] * 2, dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: (n, heads, d)
        rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)
        return x * cos + rotated * sin

    causal = torch.full((n, n), float("-inf")).triu(1)
    x = sd["model.tok_embeddings.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = lin(rms(x, sd[p + "attention_norm.weight"]), p + "attention.wqkv").view(n, nkv, g + 2, d)
        q = rope(qkv[:, :, :g].reshape(n, nh, d))
        k = rope(qkv[:, :, g]).repeat_interleave(g, dim=1)  # query head h reads KV group h // g
        v = qkv[:, :, g + 1].repeat_interleave(g, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d) + causal
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, nh * d)
        x = x + lin(attn, p + "attention.wo")
        h = rms(x, sd[p + "ffn_norm.weight"])
        x = x + lin(torch.nn.functional.silu(lin(h, p + "feed_forward.w1")) * lin(h, p + "feed_forward.w3"), p + "feed_forward.w2")
    return rms(x, sd["model.norm.weight"]) @ sd["output.weight"].T


# ---------------------------------------------------------------- (a) weights round trip


@pytest.mark.parametrize("heads,kv_heads,bias", [(4, 1, False), (4, 2, True), (4, 4, False), (8, 2, True)])
def test_state_dict_round_trip_is_bitwise_exact(heads: int, kv_heads: int, bias: bool) -> None:
    d, hidden = 8, heads * 8
    cfg = {"hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": kv_heads}
    gen = torch.Generator().manual_seed(0)
    rows = (heads + 2 * kv_heads) * d
    sd = {"model.tok_embeddings.weight": torch.randn(10, hidden, generator=gen), "model.norm.weight": torch.randn(hidden, generator=gen), "output.weight": torch.randn(10, hidden, generator=gen)}
    for i in range(2):
        p = f"model.layers.{i}."
        sd |= {p + "attention.wqkv.weight": torch.randn(rows, hidden, generator=gen), p + "attention.wo.weight": torch.randn(hidden, hidden, generator=gen)}
        sd |= {p + f"feed_forward.w{j}.weight": torch.randn(hidden, hidden, generator=gen) for j in (1, 2, 3)}
        sd |= {p + "attention_norm.weight": torch.randn(hidden, generator=gen), p + "ffn_norm.weight": torch.randn(hidden, generator=gen)}
        if bias:
            sd |= {p + "attention.wqkv.bias": torch.randn(rows, generator=gen), p + "attention.wo.bias": torch.randn(hidden, generator=gen)}
    llama = internlm2_to_llama_state_dict(sd, cfg)
    assert "model.layers.0.self_attn.q_proj.weight" in llama and not any("wqkv" in k for k in llama)
    back = llama_to_internlm2_state_dict(llama, cfg)
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_wqkv_split_follows_the_per_group_layout() -> None:
    """Row r of wqkv holds (group, slot, dim): slots 0..G-1 are queries, G the key, G+1 the value."""
    heads, kv_heads, d, hidden = 6, 2, 4, 24
    g = heads // kv_heads
    tag = torch.tensor([[grp * 1000 + slot * 10 + dim for slot in range(g + 2) for dim in range(d)] for grp in range(kv_heads)], dtype=torch.float32).reshape(-1)
    wqkv = tag[:, None].expand(-1, hidden).clone()
    out = internlm2_to_llama_state_dict({"model.layers.0.attention.wqkv.weight": wqkv}, {"hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": kv_heads})
    q, k, v = (out[f"model.layers.0.self_attn.{x}_proj.weight"][:, 0] for x in "qkv")
    assert q.tolist() == [(h // g) * 1000 + (h % g) * 10 + dim for h in range(heads) for dim in range(d)]
    assert k.tolist() == [grp * 1000 + g * 10 + dim for grp in range(kv_heads) for dim in range(d)]
    assert v.tolist() == [grp * 1000 + (g + 1) * 10 + dim for grp in range(kv_heads) for dim in range(d)]


def test_checkpoint_round_trips_through_llama_names(tiny: Path) -> None:
    native, cfg = load_file(str(tiny / "model.safetensors")), _config(tiny)
    assert "model.layers.0.attention.wqkv.weight" in native and "output.weight" in native
    back = llama_to_internlm2_state_dict(internlm2_to_llama_state_dict(native, cfg), internlm2_config_to_llama(cfg))
    assert set(back) == set(native) and all(torch.equal(back[k], native[k]) for k in native)


def test_config_round_trip_and_refusals(tiny: Path) -> None:
    cfg = _config(tiny)
    assert cfg["model_type"] == "internlm2" and cfg["architectures"] == ["InternLM2ForCausalLM"]
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_internlm2.InternLM2ForCausalLM"
    llama = internlm2_config_to_llama({**cfg, "bias": True})
    assert llama["attention_bias"] is True and llama["mlp_bias"] is False and llama["head_dim"] == 16
    back = llama_config_to_internlm2(internlm2_config_to_llama(cfg))
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta", "rope_scaling", "bias", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
        assert back[key] == cfg[key], key
    with pytest.raises(FtcoreError, match="MLP biases"):
        llama_config_to_internlm2({**llama, "mlp_bias": True})
    with pytest.raises(FtcoreError, match="rope type 'yarn'"):
        llama_config_to_internlm2({**llama, "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}})
    with pytest.raises(FtcoreError, match="rope_scaling type"):
        internlm2_config_to_llama({**cfg, "rope_scaling": {"type": "yarn", "factor": 2.0}})


# ---------------------------------------------------------------- (b) logits equal the reference


def test_loaded_model_matches_reference_internlm2_forward(tiny: Path) -> None:
    tok = build.load_tokenizer(str(tiny))
    ids = tok(PROMPT).input_ids
    model = build.load_model(str(tiny), dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    ref = reference_internlm2_logits(load_file(str(tiny / "model.safetensors")), _config(tiny), ids)
    got = _logits(model, torch.tensor([ids]))
    assert (got - ref).abs().max().item() < 1e-5
    assert ref.abs().max().item() > 1.0  # the comparison is not between near-zero tensors


# ---------------------------------------------------------------- (c) dynamic NTK rope scaling


def test_dynamic_ntk_rope_scaling_maps_to_llama_dynamic(tiny_ntk: Path) -> None:
    cfg = _config(tiny_ntk)
    assert cfg["rope_scaling"] == {"type": "dynamic", "factor": 4.0}
    assert internlm2_config_to_llama(cfg, rope_style="parameters")["rope_parameters"] == {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
    old = internlm2_config_to_llama(cfg, rope_style="scaling")
    assert old["rope_scaling"] == {"rope_type": "dynamic", "factor": 4.0} and old["rope_theta"] == 10000.0 and "rope_parameters" not in old
    model = build.load_model(str(tiny_ntk), dtype=torch.float32).eval()
    assert model.config.rope_parameters["rope_type"] == "dynamic" and model.config.rope_parameters["factor"] == 4.0
    assert model.config.rope_parameters["rope_theta"] == 10000.0 and model.config.attention_bias is True
    sd, tok = load_file(str(tiny_ntk / "model.safetensors")), build.load_tokenizer(str(tiny_ntk))
    ids = tok(PROMPT + "I am a helpful assistant. 我是一个人工智能助手。" * 2).input_ids
    assert len(ids) > 2 * cfg["max_position_embeddings"]  # past the trained length: NTK changes the base
    got = _logits(model, torch.tensor([ids]))
    assert (got - reference_internlm2_logits(sd, cfg, ids)).abs().max().item() < 1e-5
    assert (got - reference_internlm2_logits(sd, cfg, ids, ntk=False)).abs().max().item() > 1e-3  # scaling is really applied
    short = ids[:10]  # within max_position_embeddings: plain rope again
    assert (_logits(model, torch.tensor([short])) - reference_internlm2_logits(sd, cfg, short, ntk=False)).abs().max().item() < 1e-5


# ---------------------------------------------------------------- (d) tokenizers


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shipped like a real InternLM2 repo: tokenizer.model (SentencePiece BPE) and a remote-code tokenizer_config."""
    import sentencepiece as spm

    from ftcore.models.tiny import _CORPUS

    folder = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_prefix=str(folder / "tokenizer"), vocab_size=600, model_type="bpe",
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "added_tokens_decoder": {"3": {"content": "<|im_start|>", "special": True}, "4": {"content": "<|im_end|>", "special": True}},
    }))
    return folder


def test_tokenizer_from_sentencepiece_model_matches_sentencepiece(spm_folder: Path) -> None:
    import sentencepiece as spm

    assert not (spm_folder / "tokenizer.json").exists()
    sp = spm.SentencePieceProcessor(model_file=str(spm_folder / "tokenizer.model"))
    tok = build.load_tokenizer(str(spm_folder))
    for text in ["你好！我是一个人工智能助手，很高兴为你服务。", "Who are you?  Two  spaces\nand a newline", "罕见字：龘 and emoji 🤖"]:
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == text == sp.decode(ids)
    assert "<0x" in "".join(tok.convert_ids_to_tokens(tok("龘🤖", add_special_tokens=False).input_ids))  # byte fallback, no <unk>
    ids = tok(PROMPT).input_ids
    assert ids[0] == tok.bos_token_id == 1 and tok.eos_token == "</s>" and tok.eos_token_id == 2 and tok.pad_token == "</s>"
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2 and ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 1
    assert {"<|im_start|>", "<|im_end|>"} <= set(tok.all_special_tokens)
    assert "你好，请介绍一下你自己。" in tok.decode(ids) and "<|im_start|>" not in tok.decode(ids, skip_special_tokens=True)


def test_tiny_checkpoint_with_sentencepiece_tokenizer_runs(spm_folder: Path, tmp_path: Path) -> None:
    folder = make_tiny_internlm2(tmp_path / "m", tokenizer_dir=spm_folder, layers=1)
    tok = build.load_tokenizer(str(folder))
    assert _config(folder)["vocab_size"] == len(tok) == 600 and (folder / "tokenizer.model").is_file()
    model = build.load_model(str(folder), dtype=torch.float32)
    assert _logits(model, torch.tensor([tok(PROMPT).input_ids])).shape[-1] == 600


def test_tokenizer_json_is_used_even_when_the_config_names_remote_code(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tiny, folder)
    tcfg = json.loads((folder / "tokenizer_config.json").read_text())
    tcfg |= {"tokenizer_class": "InternLM2TokenizerFast", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", "tokenization_internlm2_fast.InternLM2TokenizerFast"]}}
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg))
    tok = build.load_tokenizer(str(folder))
    text = "你好，请介绍一下你自己。"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    ids = tok("<|im_start|>user<|im_end|>", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids)[0] == "<|im_start|>" and tok.convert_ids_to_tokens(ids)[-1] == "<|im_end|>"
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FtcoreError, match="neither tokenizer.json nor tokenizer.model"):
        build.load_tokenizer(str(folder))


# ---------------------------------------------------------------- (e) conversion cache and errors


def test_conversion_is_cached_and_keyed_on_the_weights(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTCORE_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny, folder)
    first = builder_mod.llama_folder(folder)
    assert first.parent == tmp_path / "cache" / "converted" and _config(first)["model_type"] == "llama"
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp folders left behind

    def no_reconversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted again")

    real = builder_mod.convert_internlm2_folder
    monkeypatch.setattr(builder_mod, "convert_internlm2_folder", no_reconversion)
    model = build.load_model(str(folder), dtype=torch.float32)
    assert Path(model.config._name_or_path) == first
    os.utime(folder / "model.safetensors", ns=(1, 1))  # weights changed: a new key, a new conversion
    with pytest.raises(AssertionError, match="converted again"):
        builder_mod.llama_folder(folder)
    monkeypatch.setattr(builder_mod, "convert_internlm2_folder", real)
    assert builder_mod.llama_folder(folder) != first


def test_builder_errors_say_what_to_put_where(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(FtcoreError, match="does not exist") as err:
        build.load_model(str(tmp_path / "nope"))
    assert "checkpoint folder" in (err.value.hint or "")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FtcoreError, match="has no config.json") as err:
        build.load_model(str(tmp_path / "empty"))
    assert "config.json" in (err.value.hint or "")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    shutil.copy(tiny / "model.safetensors", tmp_path / "gpt2")
    with pytest.raises(FtcoreError, match="model_type 'gpt2'") as err:
        build.load_model(str(tmp_path / "gpt2"))
    assert "builder: hf" in (err.value.hint or "")
    (tmp_path / "noweights").mkdir()
    shutil.copy(tiny / "config.json", tmp_path / "noweights")
    with pytest.raises(FtcoreError, match="has no weights") as err:
        build.load_model(str(tmp_path / "noweights"))
    assert "safetensors" in (err.value.hint or "")


def test_bin_checkpoint_loads_with_weights_only(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(tiny / "config.json", folder)
    torch.save(load_file(str(tiny / "model.safetensors")), folder / "pytorch_model.bin")
    ids = torch.tensor([[1, 5, 9, 200, 3]])
    assert torch.equal(_logits(build.load_model(str(folder), dtype=torch.float32), ids), _logits(build.load_model(str(tiny), dtype=torch.float32), ids))


# ---------------------------------------------------------------- (f) save


def test_native_save_loads_back_with_identical_logits(tiny_ntk: Path, tmp_path: Path) -> None:
    model = build.load_model(str(tiny_ntk), dtype=torch.float32).eval()
    ids = torch.tensor([build.load_tokenizer(str(tiny_ntk))(PROMPT).input_ids])
    (tiny_ntk / "modeling_internlm2.py").write_text("# the checkpoint's remote code\n")
    out = tmp_path / "native"
    build.save(model, out, max_shard_size="100KB")  # several shards + index
    assert (out / "modeling_internlm2.py").read_text() == "# the checkpoint's remote code\n"  # auto_map still resolves
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    cfg = _config(out)
    assert cfg["model_type"] == "internlm2" and cfg["rope_scaling"] == {"type": "dynamic", "factor": 4.0} and cfg["bias"] is True
    saved = {k: v for s in shards for k, v in load_file(str(s)).items()}
    original = load_file(str(tiny_ntk / "model.safetensors"))
    assert set(saved) == set(original) and all(torch.equal(saved[k], original[k]) for k in original)
    assert torch.equal(_logits(build.load_model(str(out), dtype=torch.float32), ids), _logits(model, ids))
    build.save(model, tmp_path / "llama", layout="llama")
    assert _config(tmp_path / "llama")["model_type"] == "llama"
    assert builder_mod.llama_folder(tmp_path / "llama") == tmp_path / "llama"  # loaded as is, not converted
    assert torch.equal(_logits(build.load_model(str(tmp_path / "llama"), dtype=torch.float32), ids), _logits(model, ids))
    with pytest.raises(FtcoreError, match="unknown layout"):
        build.save(model, tmp_path / "x", layout="gguf")
