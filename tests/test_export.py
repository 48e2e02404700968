"""``ftcore export``: the quickstart's adapter as the plain Llama layout and as GGUF (f32, f16, bf16,
q8_0), read back with gguf's reader and checked against the merged model; llama.cpp (when
llama-cpp-python is installed) tokenizes and answers greedily as transformers does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli

pytest.importorskip("gguf", reason="pip install 'ftcore[gguf]'")

QUESTION = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """The quickstart's LoRA adapter on the tiny InternLM2 (30 steps: it answers, then <|im_end|>)."""
    work = tmp_path_factory.mktemp("quickstart")
    run_cli("run", "--recipe", "quickstart", "train.max_steps=30", "train.save_every=30", "--work-dir", str(work), check=True)
    return work / "checkpoint-30"


@pytest.fixture(scope="module")
def merged(adapter, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "llama"
    proc = run_cli("export", str(adapter), str(out), "--to", "llama", "--dtype", "fp32", check=True)
    assert "vllm serve" in proc.stdout and "lmdeploy serve api_server" in proc.stdout
    return out


def test_llama_export_is_the_plain_llama_layout_with_template_and_stop_words(merged) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((merged / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in config
    tok = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=40, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    assert out[-1] == tok.convert_tokens_to_ids("<|im_end|>") and len(out) < 40
    assert tok.decode(out[:-1]).startswith("I am ftcore")


def _gguf_fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def _expected_tensors(merged: Path) -> dict:
    """The merged model's tensors under llama.cpp's names, q/k rows in llama.cpp's rotary order."""
    from safetensors.numpy import load_file

    config = json.loads((merged / "config.json").read_text())
    sd = {k: v.astype("float32") for f in merged.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    head_dim = config["hidden_size"] // config["num_attention_heads"]

    def rope_rows(w, heads):  # written out here, independently of ftcore's interleave_rope
        out = w.copy()
        for h in range(heads):
            block = w[h * head_dim:(h + 1) * head_dim]
            out[h * head_dim:(h + 1) * head_dim][0::2] = block[: head_dim // 2]
            out[h * head_dim:(h + 1) * head_dim][1::2] = block[head_dim // 2:]
        return out

    expected = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"], "output.weight": sd["lm_head.weight"]}
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(config["num_hidden_layers"]):
        for hf, gg in names.items():
            expected[f"blk.{i}.{gg}.weight"] = sd[f"model.layers.{i}.{hf}.weight"]
        expected[f"blk.{i}.attn_q.weight"] = rope_rows(sd[f"model.layers.{i}.self_attn.q_proj.weight"], config["num_attention_heads"])
        expected[f"blk.{i}.attn_k.weight"] = rope_rows(sd[f"model.layers.{i}.self_attn.k_proj.weight"], config["num_key_value_heads"])
    return expected


#: --outtype -> (GGML type of the matrices, largest error allowed relative to each tensor's largest value)
OUTTYPES = {"f32": ("F32", 0.0), "f16": ("F16", 1e-3), "bf16": ("BF16", 8e-3), "q8_0": ("Q8_0", 1 / 127)}


@pytest.mark.parametrize("outtype", list(OUTTYPES))
def test_gguf_holds_the_merged_model_its_tokenizer_template_and_stop_token(adapter, merged, tmp_path, outtype) -> None:
    import gguf
    import numpy as np
    from transformers import AutoTokenizer

    out = tmp_path / f"model-{outtype}.gguf"
    source = adapter if outtype == "q8_0" else merged  # an adapter is merged on the way; a Llama folder is read as it is
    proc = run_cli("export", str(source), str(out), "--outtype", outtype)
    assert proc.returncode == 0, proc.stderr
    assert f"exported: {out}" in proc.stdout and not list(tmp_path.glob(".ftcore-export-*"))
    reader = gguf.GGUFReader(str(out))
    fields = _gguf_fields(reader)
    config = json.loads((merged / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(merged))

    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == gguf.LlamaFileType[{"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}[outtype]]
    for key, value in {"block_count": "num_hidden_layers", "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
                       "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
                       "context_length": "max_position_embeddings", "vocab_size": "vocab_size"}.items():
        assert fields[f"llama.{key}"] == config[value], key
    assert fields["llama.rope.freq_base"] == pytest.approx(config.get("rope_theta") or config["rope_parameters"]["rope_theta"])
    assert fields["llama.rope.dimension_count"] == config["hidden_size"] // config["num_attention_heads"]

    # the tokenizer: every token at its id, the merges, the special ids; the template and its stop token
    vocab = tok.get_vocab()
    assert len(fields["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert all(fields["tokenizer.ggml.tokens"][i] == t for t, i in vocab.items())
    types = fields["tokenizer.ggml.token_type"]
    assert types[vocab["<|im_end|>"]] == gguf.TokenType.CONTROL and types[vocab["Who"]] == gguf.TokenType.NORMAL
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in json.loads((merged / "tokenizer.json").read_text())["model"]["merges"]]
    assert fields["tokenizer.chat_template"] == tok.chat_template and "<|im_start|>" in tok.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.eot_token_id"] == vocab["<|im_end|>"]
    assert fields["tokenizer.ggml.bos_token_id"] == tok.bos_token_id and fields["tokenizer.ggml.padding_token_id"] == tok.pad_token_id

    # every tensor under its llama.cpp name, shape, type and value
    expected = _expected_tensors(merged)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(expected)
    kind, tolerance = OUTTYPES[outtype]
    for name, want in expected.items():
        t = tensors[name]
        assert list(t.shape) == list(reversed(want.shape)), name  # GGUF lists dimensions fastest first
        assert t.tensor_type.name == (kind if want.ndim > 1 else "F32"), name
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        error = float(np.abs(got - want).max())
        assert error <= tolerance * float(np.abs(want).max()), (name, error)
        if kind == "Q8_0" and want.ndim > 1:
            assert error > 0, name  # really quantized


def test_export_refuses_what_it_cannot_write(tmp_path, merged, tiny_llama) -> None:
    from ftcore.models.tiny import make_tiny_causal_lm

    qwen = make_tiny_causal_lm(tmp_path / "qwen", "qwen2", tokenizer_dir=tiny_llama)
    proc = run_cli("export", str(qwen), str(tmp_path / "q.gguf"))
    assert proc.returncode == 2 and "GGUF export writes the Llama architecture" in proc.stderr and "'qwen2'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "q.gguf").exists()
    taken = tmp_path / "taken.gguf"
    taken.write_text("mine")
    proc = run_cli("export", str(merged), str(taken))
    assert proc.returncode == 2 and "--force" in proc.stderr and taken.read_text() == "mine"
    proc = run_cli("export", str(tmp_path / "nowhere"), str(tmp_path / "x.gguf"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_cli("export", str(merged), str(tmp_path / "x.gguf"), "--outtype", "q4")
    assert proc.returncode == 2 and "q8_0" in proc.stderr


def test_llama_cpp_tokenizes_and_answers_greedily_as_transformers(merged, tmp_path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (PyPI has no wheel; it compiles llama.cpp)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model-f32.gguf"
    run_cli("export", str(merged), str(out), "--outtype", "f32", check=True)
    tok = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=1, verbose=False)
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    assert llm.tokenize("The quick brown fox, 你好！".encode(), add_bos=False) == tok("The quick brown fox, 你好！", add_special_tokens=False)["input_ids"]

    import torch

    want = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)[0, len(ids):].tolist()
    got = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        got.append(token)
        if llm.token_eos() == token or len(got) == 40:
            break
    assert got == want and got[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_a_sentencepiece_tokenizer_becomes_llama_cpp_s_spm_vocabulary(tmp_path, tiny_llama) -> None:
    """tokenizer.model (InternLM2's kind): every piece with its score and type, the added tokens, padding to the embedding."""
    import gguf
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from ftcore.export.vocab import read_vocab

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["Who are you? I am an AI assistant.", "The quick brown fox jumps over the lazy dog.", "你好，我是助手。"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=400, model_type="bpe",
                                   byte_fallback=True, character_coverage=1.0, user_defined_symbols=["<|im_start|>", "<|im_end|>"])
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))  # only its added tokens are read: give them ids past the pieces
    tok.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    size = max(sp.vocab_size(), max(tok.added_tokens_decoder) + 1) + 3
    vocab = read_vocab(tmp_path, tok, size)

    assert vocab.model == "llama" and vocab.add_space_prefix is True and len(vocab.tokens) == size
    pieces = range(sp.vocab_size())
    added = set(tok.added_tokens_decoder)
    for i in (i for i in pieces if i not in added):
        assert vocab.tokens[i] == sp.id_to_piece(i) and vocab.scores[i] == sp.get_score(i), i
    assert [vocab.types[i] for i in pieces if sp.is_byte(i) and i not in added][:3] == [gguf.TokenType.BYTE] * 3
    assert vocab.types[sp.unk_id()] in (gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL)
    extra = tok.convert_tokens_to_ids("<|extra|>")
    assert vocab.tokens[extra] == "<|extra|>" and vocab.types[extra] == gguf.TokenType.CONTROL
    assert vocab.tokens[-1] == f"[PAD{size - 1}]" and vocab.types[-1] == gguf.TokenType.UNUSED
