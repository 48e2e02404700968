"""Tool calls (OpenAI layout): rendered exactly as the family's Jinja template renders them, only assistant turns trained, malformed calls named with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
RECORD = {
    "tools": TOOLS,
    "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "25 C, clear"},
        {"role": "assistant", "content": "Paris: 18 C and sunny. Rome: 25 C and clear."},
    ],
}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ftcore_families.tiny import make_family_model

    return make_family_model("qwen2_5", tmp_path_factory.mktemp("qwen") / "tiny-qwen2_5", layers=1)


@pytest.mark.parametrize("template", ["qwen2_5_chat", "hf"])
def test_tool_call_conversation_renders_as_the_jinja_template_and_trains_only_assistant_turns(qwen, template) -> None:
    from ftcore_formats.formats import openai
    from transformers import AutoTokenizer

    from ftcore.data.encode import encode_batch
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    tok = AutoTokenizer.from_pretrained(str(qwen))
    tpl = collect_parts(get_plugin_manager()).templates.get(template)
    sample = openai(json.loads(json.dumps(RECORD)))
    enc = encode_batch([sample], tok, tpl, 1024)
    # the model's own rendering, with arguments as objects as chat templates take them
    messages = sample["messages"]
    expected = tok.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    assert tok.decode(enc.tokens.tolist()) == expected
    assert "<tools>" in expected and '{"name": "get_weather", "arguments": {"city": "Paris"}}' in expected
    trained = tok.decode([t for t, lab in zip(enc.tokens.tolist(), enc.labels.tolist()) if lab != -100])
    # both assistant turns (the calls and the answer), each with its <|im_end|>; no tool result, question or tool list
    assert trained == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
                       '{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
                       "Paris: 18 C and sunny. Rome: 25 C and clear.<|im_end|>\n")


def test_a_template_without_tools_refuses_tool_calls_by_name(qwen) -> None:
    from ftcore_formats.formats import openai
    from transformers import AutoTokenizer

    from ftcore.data.encode import encode_batch
    from ftcore.data.formats import RecordError
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    tok = AutoTokenizer.from_pretrained(str(qwen))
    with pytest.raises(RecordError, match=r"messages\[1\] is a tool call, which this template cannot render"):
        encode_batch([openai(json.loads(json.dumps(RECORD)))], tok, collect_parts(get_plugin_manager()).templates.get("internlm2_chat"), 1024)


def test_data_check_names_each_malformed_tool_call_with_file_and_line(qwen, tmp_path) -> None:
    def broken(**changes) -> dict:
        record = json.loads(json.dumps(RECORD))
        for path, value in changes.items():
            node = record
            *keys, last = path.split("/")
            for k in keys:
                node = node[int(k)] if k.isdigit() else node[k]
            node[int(last) if last.isdigit() else last] = value
        return record

    cases = [
        (broken(**{"messages/1/tool_calls/0/function/arguments": "{city: Paris"}), "messages[1].tool_calls[0].function.arguments' is not valid JSON"),
        (broken(**{"messages/1/tool_calls/1/function/name": "get_time"}), "calls 'get_time', which is not in the record's tools"),
        (broken(**{"messages/2/tool_call_id": "c9"}), "messages[2].tool_call_id 'c9' answers no call"),
        (broken(**{"messages/1/tool_calls": [{"name": "get_weather"}]}), "messages[1].tool_calls[0]' must be {\"type\": \"function\""),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}, {"role": "assistant", "content": "ok"}]}, "no assistant message with tool_calls comes before it"),
    ]
    data = tmp_path / "tools.jsonl"
    data.write_text(json.dumps(RECORD) + "\n" + "".join(json.dumps(r) + "\n" for r, _ in cases))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"model": {"builder": "hf", "path": str(qwen)}, "data": {"path": str(data), "format": "openai", "template": "qwen2_5_chat"}}))
    proc = run_cli("data", "check", "-r", str(recipe))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    for line, (_, message) in enumerate(cases, start=2):  # every problem at once, each at its line
        assert any(f"tools.jsonl:{line}" in row and message in row for row in out.splitlines()), (line, message, out)
