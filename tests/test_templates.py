"""Chat templates as data files: every XTuner template is shipped with XTuner's strings, loads, and is listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftcore.data.template import PromptTemplate
from ftcore.errors import FtcoreError
from ftcore.parts import collect_parts
from ftcore.plugins import get_plugin_manager

from helpers import ROOT, cli_env, run_cli

JINJA = Path(__file__).resolve().parent / "fixtures" / "jinja"

#: Every template an XTuner 0.1.x config can name (PROMPT_TEMPLATE keys), plus the hf one.
XTUNER_NAMES = [
    "default", "zephyr", "internlm_chat", "internlm2_chat", "moss_sft", "llama2_chat", "code_llama_chat",
    "chatglm2", "chatglm3", "qwen_chat", "baichuan_chat", "baichuan2_chat", "wizardlm", "wizardcoder",
    "vicuna", "deepseek_coder", "deepseekcoder", "deepseek_moe", "deepseek_v2", "mistral", "mixtral",
    "minicpm", "gemma", "cohere_chat", "llama3_chat", "phi3_chat",
]  # fmt: skip


def registered() -> dict[str, PromptTemplate]:
    return {part.name: part.target for part in collect_parts(get_plugin_manager()).templates}


TEMPLATES = registered()


def test_every_xtuner_template_and_hf_are_registered() -> None:
    missing = sorted(set(XTUNER_NAMES + ["hf"]) - set(TEMPLATES))
    assert not missing, f"templates missing: {missing}"


def test_template_files_are_named_after_their_template_and_use_only_known_keys() -> None:
    files = sorted((ROOT / "templates").glob("*.yaml"))
    assert {f.stem for f in files} >= set(XTUNER_NAMES)
    for f in files:
        tpl = PromptTemplate.from_file(f)  # raises on unknown keys or bad fields
        assert tpl.name == f.stem


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_has_a_one_line_description_and_valid_fields(name: str) -> None:
    tpl = TEMPLATES[name]
    assert tpl.description and "\n" not in tpl.description and len(tpl.description) <= 120
    if tpl.use_tokenizer_template:
        return
    assert "{input}" in tpl.instruction
    assert tpl.system == "" or "{system}" in tpl.system
    # the BOS policy is XTuner's: a BOS starts every turn exactly when an EOS closes every answer
    assert tpl.bos == ("first" if tpl.suffix_as_eos else "every_turn")
    # what chat generation stops on must end a trained answer
    assert all(word in (tpl.suffix + "<eoc><eom><|endoftext|>") for word in tpl.stop_words)


# XTuner 0.1.23 xtuner/utils/templates.py, copied field by field (SYSTEM, INSTRUCTION, SUFFIX, SUFFIX_AS_EOS, SEP, STOP_WORDS).
XTUNER_STRINGS = {
    "default": ("<|System|>:{system}\n", "<|User|>:{input}\n<|Bot|>:", "", False, "\n", ()),
    "internlm_chat": ("<|System|>:{system}\n", "<|User|>:{input}<eoh>\n<|Bot|>:", "<eoa>", True, "\n", ("<eoa>",)),
    "internlm2_chat": (
        "<|im_start|>system\n{system}<|im_end|>\n",
        "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_end|>", True, "\n", ("<|im_end|>",),
    ),
    "llama2_chat": (
        "[INST] <<SYS>>\n You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
        "while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, "
        "or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n"
        "{system}\n<</SYS>>\n [/INST] ",
        "[INST] {input} [/INST]", "", False, "\n", (),
    ),
    "code_llama_chat": ("{system}\n", "[INST] {input} [/INST]", "", False, "", ()),
    "chatglm2": ("{system}\n", "[Round {round}]\n\n问：{input}\n\n答：", "", False, "\n\n", ()),
    "qwen_chat": (
        "<|im_start|>system\n{system}<|im_end|>\n",
        "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_end|>", True, "\n", ("<|im_end|>", "<|endoftext|>"),
    ),
    "wizardcoder": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n{system}\n ",
        "### Instruction:\n{input}\n\n### Response:", "", False, "\n\n", (),
    ),
    "deepseek_v2": ("{system}\n\n", "User: {input}\n\nAssistant: ", "<｜end▁of▁sentence｜>", True, "", ("<｜end▁of▁sentence｜>",)),
    "minicpm": ("{system}\n", "<用户> {input} <AI>", "", False, "\n", ()),  # system line: ftcore's addition
    "gemma": (
        "<start_of_turn>system\n{system}<end_of_turn>\n",
        "<start_of_turn>user\n{input}<end_of_turn>\n<start_of_turn>model\n",
        "<end_of_turn>", False, "\n", ("<end_of_turn>",),
    ),
    "cohere_chat": (
        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{system}<|END_OF_TURN_TOKEN|>",
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{input}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        "<|END_OF_TURN_TOKEN|>", True, "", ("<|END_OF_TURN_TOKEN|>",),
    ),
    "llama3_chat": (
        "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|>", True, "", ("<|eot_id|>",),
    ),
    "phi3_chat": ("<|system|>\n{system}<|end|>\n", "<|user|>\n{input}<|end|>\n<|assistant|>\n", "<|end|>", True, "\n", ("<|end|>",)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(XTUNER_STRINGS))
def test_template_strings_are_xtuners(name: str) -> None:
    tpl = TEMPLATES[name]
    got = (tpl.system, tpl.instruction, tpl.suffix, tpl.suffix_as_eos, tpl.sep, tpl.stop_words)
    assert got == XTUNER_STRINGS[name]


def test_same_strings_templates_stay_in_sync() -> None:
    def strings(t: PromptTemplate) -> tuple:
        return (t.system, t.instruction, t.suffix, t.suffix_as_eos, t.sep, t.stop_words, t.bos)

    assert strings(TEMPLATES["vicuna"]) == strings(TEMPLATES["wizardlm"])
    assert strings(TEMPLATES["mistral"]) == strings(TEMPLATES["mixtral"]) == strings(TEMPLATES["deepseek_moe"])
    assert strings(TEMPLATES["deepseek_coder"]) == strings(TEMPLATES["deepseekcoder"])


@pytest.mark.parametrize("name", ["internlm2_chat", "llama3_chat", "qwen_chat", "qwen2_5_chat", "qwen3_chat", "mistral_instruct", "gemma2_chat",
                                  "gemma3_chat", "phi3_instruct", "phi4_chat"])
def test_jinja_field_is_the_models_public_chat_template(name: str) -> None:
    assert TEMPLATES[name].jinja == (JINJA / f"{name}.jinja").read_text(encoding="utf-8")


def test_qwen_default_system_matches_its_jinja_default() -> None:
    tpl = TEMPLATES["qwen_chat"]
    assert tpl.default_system == "You are a helpful assistant."
    assert f"system\\n{tpl.default_system}<|im_end|>" in (tpl.jinja or "")


def test_hf_template_renders_with_the_tokenizers_chat_template() -> None:
    tpl = TEMPLATES["hf"]
    assert tpl.use_tokenizer_template and tpl.bos == "none" and tpl.jinja is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"instruction": "{input} {bot_name}"}, "unknown placeholder {bot_name}"),
        ({"system": "{system} {input}"}, "system uses unknown placeholder {input}"),
        ({"instruction": "{input} {"}, "not a valid format string"),
        ({"instruction": "no placeholder"}, "must contain {input}"),
        ({"system": "no placeholder"}, "must contain {system}"),
        ({"bos": "always"}, "bos must be one of"),
        ({"sep": 3}, "sep must be a string"),
        ({"colour": "red"}, "unknown template keys: colour"),
    ],
)
def test_invalid_template_fields_are_rejected_with_the_reason(fields: dict, message: str) -> None:
    with pytest.raises(FtcoreError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")):
        PromptTemplate.from_dict({"name": "bad", **fields})


def test_round_placeholder_and_literal_braces_are_accepted() -> None:
    tpl = PromptTemplate.from_dict({"name": "ok", "instruction": "[{round}] {{json}} {input}"})
    assert tpl.instruction.format(input="x", round=2) == "[2] {json} x"


def test_template_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("instruction: 'no input here'\n")
    with pytest.raises(FtcoreError) as info:
        PromptTemplate.from_file(bad)
    assert info.value.where == str(bad) and "must contain {input}" in str(info.value)


def test_cli_lists_every_template_with_its_description() -> None:
    rows = json.loads(run_cli("list", "templates", "--json", check=True).stdout)
    listed = {r["name"]: r["description"] for r in rows}
    for name, tpl in TEMPLATES.items():
        assert listed[name] == tpl.description


def test_cli_table_of_templates_prints_every_name() -> None:
    # the table goes through rich markup: a description such as "[/INST]" would crash it
    proc = run_cli("list", "templates", env=cli_env({"COLUMNS": "250"}))
    assert proc.returncode == 0, proc.stderr
    for name in TEMPLATES:
        assert f" {name} " in proc.stdout
