"""``ftcore merge``: the merged model computes what base + adapter computed, carries the
training template, and a failed merge leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import run_cli

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONVERSATION = [
    {"role": "system", "content": "You are Zed."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am Zed."},
    {"role": "user", "content": "What can you do?"},
]


@pytest.fixture(scope="module")
def parts():
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    return collect_parts(get_plugin_manager())


def make_adapter(model, out: Path, base: Path, *, builder: str = "hf", template: str = "internlm2_chat", seed: int = 0) -> Path:
    """A LoRA adapter with random (non-zero) A and B on every linear layer, saved as training saves it."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    recipe = {"model": {"builder": builder, "path": str(base)}, "data": {"template": template}}
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return out


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.fixture(scope="module")
def llama_adapter(tmp_path_factory, tiny_llama: Path) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    return make_adapter(model, tmp_path_factory.mktemp("adapters") / "llama", tiny_llama)


IDS = [1, 7, 42, 99, 300, 5, 17, 250, 3, 4, 512, 64]


def test_merged_llama_matches_base_plus_adapter_and_chats_with_the_training_template(tmp_path, tiny_llama, llama_adapter) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcore.chat.generate import prompt_ids
    from ftcore.data.encode import render_prompt
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    out = tmp_path / "merged"
    proc = run_cli("merge", str(tiny_llama), str(llama_adapter), str(out), "--max-shard-size", "200KB", "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert f"merged model: {out}" in proc.stdout
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    assert not list(tmp_path.glob(".tmp-*"))

    expected = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)), str(llama_adapter)), IDS)
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in k for k in merged.state_dict())
    assert (logits(merged, IDS) - expected).abs().max().item() < 1e-4
    assert (logits(AutoModelForCausalLM.from_pretrained(str(tiny_llama)), IDS) - expected).abs().max().item() > 1e-2  # the adapter matters

    # the template travels: tokenizer_config.json's chat_template renders what ftcore renders
    assert "<|im_start|>" in json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    tok = AutoTokenizer.from_pretrained(str(out))
    template = collect_parts(get_plugin_manager()).templates.get("internlm2_chat")
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == tok.bos_token + render_prompt(CONVERSATION, template, tokenizer=tok)
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert list(ids) == prompt_ids(tok, template, CONVERSATION)

    # generation stops on the template's stop token as well as EOS
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert set(eos) == {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}

    # chatting with the merged folder alone (its own chat_template, template hf) answers as base + adapter did
    from ftcore.chat.generate import Sampling
    from ftcore.chat.resolve import load_chat_model

    parts = collect_parts(get_plugin_manager())
    merged_chat = load_chat_model(parts, str(out))
    adapted_chat = load_chat_model(parts, str(tiny_llama), adapter=str(llama_adapter))
    assert merged_chat.template.name == "hf" and adapted_chat.template.name == "internlm2_chat"
    question = [{"role": "user", "content": "Who are you?"}]
    merged_answer = merged_chat.generation(question, Sampling(max_new_tokens=12)).run()
    assert merged_answer and merged_answer == adapted_chat.generation(question, Sampling(max_new_tokens=12)).run()


@pytest.mark.parametrize("name", ["default", "llama2_chat", "vicuna", "chatglm3", "zephyr", "mistral", "gemma", "llama3_chat", "qwen_chat", "internlm_chat"])
def test_chat_template_written_on_merge_renders_as_the_template_does(parts, tiny_llama, name) -> None:
    from transformers import AutoTokenizer

    from ftcore.chat.generate import prompt_ids
    from ftcore.chat.merge import template_to_jinja
    from ftcore.data.encode import render_prompt

    template = parts.templates.get(name)
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    tok.chat_template = template_to_jinja(template)
    conversations = [CONVERSATION[1:2], CONVERSATION[1:]]
    if template.system:
        conversations.append(CONVERSATION)
    for messages in conversations:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        want = render_prompt(messages, template, tokenizer=tok, bos_token=tok.bos_token)
        if template.jinja:  # a model's published template: its BOS is the real tokenizer's business
            assert text.removeprefix(tok.bos_token) == want, (name, messages)
            continue
        assert text == (tok.bos_token if template.bos != "none" else "") + want, (name, messages)
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert list(ids) == prompt_ids(tok, template, messages), (name, messages)


def test_generated_jinja_matches_for_every_template_without_one(parts, tiny_llama) -> None:
    from transformers import AutoTokenizer

    from ftcore.chat.merge import template_to_jinja
    from ftcore.data.encode import render_prompt

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    checked = 0
    for part in parts.templates:
        template = part.target
        if template.use_tokenizer_template:
            continue
        tok.chat_template = template_to_jinja(template.__class__(**{**template.__dict__, "jinja": None}))
        for messages in ([CONVERSATION[1]], CONVERSATION[1:]):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            want = render_prompt(messages, template, tokenizer=tok, bos_token=tok.bos_token)
            assert text == (tok.bos_token if template.bos != "none" else "") + want, template.name
        checked += 1
    assert checked >= 20


def test_an_adapter_trained_on_another_base_is_refused_and_leaves_nothing(parts, tmp_path, tiny_llama) -> None:
    from transformers import AutoModelForCausalLM

    from ftcore.chat.merge import merge_adapter
    from ftcore.errors import FtcoreError
    from ftcore.models.tiny import make_tiny_causal_lm

    other = make_tiny_causal_lm(tmp_path / "other", hidden=32, intermediate=64, tokenizer_dir=tiny_llama)
    adapter = make_adapter(AutoModelForCausalLM.from_pretrained(str(other)), tmp_path / "other-adapter", other)
    out = tmp_path / "out"
    with pytest.raises(FtcoreError, match="does not fit this base model: .*size mismatch") as info:
        merge_adapter(parts, str(tiny_llama), str(adapter), out, log=lambda m: None)
    assert "trained on" in info.value.hint
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_adapter_with_more_layers_than_the_base_is_refused(parts, tmp_path, tiny_llama) -> None:
    from transformers import AutoModelForCausalLM

    from ftcore.chat.merge import merge_adapter
    from ftcore.errors import FtcoreError
    from ftcore.models.tiny import make_tiny_causal_lm

    deeper = make_tiny_causal_lm(tmp_path / "deeper", layers=3, tokenizer_dir=tiny_llama)
    adapter = make_adapter(AutoModelForCausalLM.from_pretrained(str(deeper)), tmp_path / "deeper-adapter", deeper)
    with pytest.raises(FtcoreError, match=r"have no place in this model \(e\.g\. .*layers\.2\."):
        merge_adapter(parts, str(tiny_llama), str(adapter), tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_missing_adapter_files_and_an_occupied_out_are_errors(tmp_path, tiny_llama, llama_adapter) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(llama_adapter, broken)
    (broken / "adapter_model.safetensors").unlink()
    proc = run_cli("merge", str(tiny_llama), str(broken), str(tmp_path / "out"))
    assert proc.returncode == 2 and "has no adapter weights" in proc.stderr
    proc = run_cli("merge", str(tiny_llama), str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (broken / "adapter_config.json").unlink()
    proc = run_cli("merge", str(tiny_llama), str(broken), str(tmp_path / "out"))
    assert proc.returncode == 2 and "has no adapter_config.json" in proc.stderr
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    proc = run_cli("merge", str(tiny_llama), str(llama_adapter), str(occupied))
    assert proc.returncode == 2 and "--force" in proc.stderr and (occupied / "keep.txt").read_text() == "mine"
    proc = run_cli("merge", str(tiny_llama), str(llama_adapter), str(tmp_path / "x"), "--max-shard-size", "lots")
    assert proc.returncode == 2 and "is not a size" in proc.stderr
    proc = run_cli("merge", str(tiny_llama), str(llama_adapter), str(llama_adapter), "--force")
    assert proc.returncode == 2 and "OUT is the ADAPTER folder" in proc.stderr and (llama_adapter / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_not_enough_disk_space_is_found_before_writing(parts, monkeypatch, tmp_path, tiny_llama, llama_adapter) -> None:
    import shutil
    from collections import namedtuple

    from ftcore.chat.merge import merge_adapter
    from ftcore.errors import FtcoreError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    out = tmp_path / "out"
    with pytest.raises(FtcoreError, match="not enough disk space"):
        merge_adapter(parts, str(tiny_llama), str(llama_adapter), out, log=lambda m: None)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_force_replaces_an_existing_out(parts, tmp_path, tiny_llama, llama_adapter) -> None:
    from ftcore.chat.merge import merge_adapter

    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    merge_adapter(parts, str(tiny_llama), str(llama_adapter), out, force=True, dtype="bf16", log=lambda m: None)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert json.loads((out / "config.json").read_text()).get("dtype", json.loads((out / "config.json").read_text()).get("torch_dtype")) == "bfloat16"
    assert not list(tmp_path.glob(".old-*")) and not list(tmp_path.glob(".tmp-*"))


# --------------------------------------------------------------------------- InternLM2


@pytest.fixture(scope="module")
def internlm2(tmp_path_factory, tiny_llama):
    """(tiny InternLM2 checkpoint, its builder, an adapter trained through that builder)."""
    builder_mod = pytest.importorskip("ftcore_internlm2.builder", reason="the internlm2 builder plugin is not there yet")
    tiny = pytest.importorskip("ftcore_internlm2.tiny")
    root = tmp_path_factory.mktemp("internlm2")
    base = tiny.make_tiny_internlm2(root / "base", tokenizer_dir=tiny_llama)
    build = builder_mod.build
    model = build.load_model(str(base), dtype=__import__("torch").float32)
    adapter = make_adapter(model, root / "adapter", base, builder="internlm2")
    return base, build, adapter


@pytest.mark.parametrize("fmt", ["native", "llama", None])
def test_internlm2_merge_matches_base_plus_adapter(parts, tmp_path, internlm2, fmt) -> None:
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftcore.chat.merge import merge_adapter

    base, build, adapter = internlm2
    if fmt == "native":  # the native layout only with the model's code files beside it
        with_code = tmp_path / "base-with-code"
        shutil.copytree(base, with_code)
        for name in ("configuration_internlm2.py", "modeling_internlm2.py"):
            (with_code / name).write_text("# InternLM2's remote code (never run here)\n")
        base = with_code
    out = tmp_path / "merged"
    merge_adapter(parts, str(base), str(adapter), out, fmt=fmt, dtype="fp32", max_shard_size="200KB", log=lambda m: None)
    config = json.loads((out / "config.json").read_text())
    expected = logits(PeftModel.from_pretrained(build.load_model(str(base), dtype=__import__("torch").float32), str(adapter)), IDS)
    if fmt == "native":
        assert config["model_type"] == "internlm2"
        assert (out / "configuration_internlm2.py").is_file() and (out / "modeling_internlm2.py").is_file()
        from safetensors import safe_open

        keys = [k for f in out.glob("*.safetensors") for k in safe_open(str(f), framework="pt").keys()]
        assert any(".attention.wqkv." in k for k in keys) and not any("lora" in k for k in keys)
        merged = build.load_model(str(out), dtype=__import__("torch").float32)
    else:  # the default is the Llama layout: plain transformers, no remote code
        assert config["model_type"] == "llama" and "auto_map" not in config
        merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert (logits(merged, IDS) - expected).abs().max().item() < 1e-4
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"]


def test_internlm2_native_layout_without_its_code_files_is_refused_before_loading(tmp_path, internlm2) -> None:
    base, _, adapter = internlm2
    out = tmp_path / "merged"
    proc = run_cli("merge", str(base), str(adapter), str(out), "--format", "native")
    assert proc.returncode == 2, proc.stderr
    assert "configuration_internlm2.py, modeling_internlm2.py" in proc.stderr and "leave out --format" in proc.stderr
    assert "Traceback" not in proc.stderr and "loading" not in proc.stdout
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
