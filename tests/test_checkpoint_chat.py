"""Every checkpoint a run writes chats without ftcore's help: a full fine-tune of the quickstart chats in
``ftcore chat CKPT`` (no --template) and in plain transformers, and both stop at the template's stop
word; an adapter checkpoint carries the template too, with the run's system prompt as its default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli

QUESTION = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("full")
    run_cli("run", "--recipe", "quickstart", "adapter.kind=full", "train.lr=1e-3", "train.max_steps=30", "train.save_every=30",
            "--work-dir", str(work), check=True)
    return work / "checkpoint-30"


def test_a_full_fine_tune_chats_in_ftcore_and_plain_transformers_and_stops_at_the_stop_word(full_checkpoint) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(full_checkpoint))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert "<|im_start|>" in json.loads((full_checkpoint / "tokenizer_config.json").read_text())["chat_template"]
    assert json.loads((full_checkpoint / "generation_config.json").read_text())["eos_token_id"] == [tok.eos_token_id, im_end]

    # plain transformers: the checkpoint's own chat_template and generation_config; generate stops at <|im_end|>
    model = AutoModelForCausalLM.from_pretrained(str(full_checkpoint))
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    new = model.generate(**ids, max_new_tokens=60, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    assert new[-1] == im_end and len(new) < 60 and im_end not in new[:-1]
    answer = tok.decode(new[:-1])
    assert answer.startswith("I am ftcore")

    # ftcore chat on the folder alone: no --template, the same answer, cut at the stop word
    proc = run_cli("chat", str(full_checkpoint), "--prompt", "Who are you?", "--max-new-tokens", "60")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == answer.strip()


def test_an_adapter_checkpoint_carries_the_template_with_the_run_system_prompt(tmp_path) -> None:
    from transformers import AutoTokenizer

    from ftcore.data.encode import render_prompt
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    work = tmp_path / "lora"
    run_cli("run", "--recipe", "quickstart", "train.max_steps=1", "train.save_every=1", "data.system=You are Zed.", "--work-dir", str(work), check=True)
    checkpoint = work / "checkpoint-1"
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    template = collect_parts(get_plugin_manager()).templates.get("internlm2_chat")
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert text == tok.bos_token + render_prompt(QUESTION, template, system="You are Zed.", tokenizer=tok)
    assert "You are Zed." in text
    eos = json.loads((checkpoint / "generation_config.json").read_text())["eos_token_id"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos
