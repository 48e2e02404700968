"""The built-in dataset formats: conversion, field-naming errors, extras pass-through, detection."""

from __future__ import annotations

import pytest

from ftcore.app import App
from ftcore.data.formats import DatasetFormat, RecordError
from ftcore.data.apply import detect_format
from ftcore.errors import FtcoreError
from ftcore_formats.formats import FORMATS, MEDICAL_SYSTEM

F = {f.name: f for f in FORMATS}


def convert(name: str, record: dict):
    return F[name].convert(record)


def field_error(name: str, record: dict) -> RecordError:
    with pytest.raises(RecordError) as info:
        convert(name, record)
    return info.value


def test_every_format_is_registered_through_the_formats_plugin():
    parts = App().parts.formats
    assert {"openai", "alpaca", "medical", "conversation", "sharegpt", "oasst1", "pretrain"} <= set(parts.names())
    assert "formats" in parts.part("alpaca").owner


# -- openai ----------------------------------------------------------------------------


def test_openai_keeps_messages_loss_and_extra_keys():
    record = {
        "id": 7,
        "image": "cat.png",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "loss": False},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ciao"},
        ],
    }
    out = convert("openai", record)
    assert out["messages"][2] == {"role": "assistant", "content": "hello", "loss": False}
    assert out["messages"][4] == {"role": "assistant", "content": "ciao"}
    assert out["id"] == 7 and out["image"] == "cat.png"


@pytest.mark.parametrize(
    "record, field",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}, "messages[1].role"),
        ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}, "messages[0].content"),
        ({"messages": [{"content": "q"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "q"}]}, "messages"),  # nothing to train on
        ({"messages": [{"role": "assistant", "content": "a", "loss": "yes"}]}, "messages[0].loss"),
    ],
)
def test_openai_errors_name_the_field(record, field):
    err = field_error("openai", record)
    assert err.field == field
    assert field in str(err)


# -- alpaca / medical ------------------------------------------------------------------


def test_alpaca_joins_instruction_and_input_and_passes_extras():
    out = convert("alpaca", {"instruction": "Translate", "input": "bonjour", "output": "hello", "image": "x.png"})
    assert out["messages"] == [{"role": "user", "content": "Translate\nbonjour"}, {"role": "assistant", "content": "hello"}]
    assert out["image"] == "x.png"
    assert convert("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"})["messages"][0]["content"] == "Say hi"
    assert convert("alpaca", {"instruction": "Say hi", "output": "hi"})["messages"][0]["content"] == "Say hi"


def test_alpaca_nooutput_is_dropped():
    assert convert("alpaca", {"instruction": "x", "input": "", "output": "<nooutput>"}) is None
    assert convert("medical", {"instruction": "x", "output": " <nooutput> "}) is None


@pytest.mark.parametrize("missing", ["instruction", "output"])
def test_alpaca_and_medical_missing_field_is_named(missing):
    record = {"instruction": "q", "output": "a"}
    del record[missing]
    for name in ("alpaca", "medical"):
        err = field_error(name, record)
        assert err.field == missing and repr(missing) in str(err)


def test_alpaca_history_and_system_become_turns():
    out = convert("alpaca", {"instruction": "and 3?", "output": "9", "system": "math", "history": [["2?", "4"]]})
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert field_error("alpaca", {"instruction": "q", "output": "a", "history": [["only one"]]}).field == "history[0]"


def test_medical_adds_a_doctor_system_prompt():
    out = convert("medical", {"instruction": "I have a headache", "input": "for 3 days", "output": "Rest and drink water."})
    assert out["messages"][0] == {"role": "system", "content": MEDICAL_SYSTEM}
    assert "doctor" in MEDICAL_SYSTEM
    assert out["messages"][1]["content"] == "I have a headache\nfor 3 days"


# -- conversation / sharegpt / pretrain ------------------------------------------------


def test_conversation_is_multi_turn_with_system():
    out = convert(
        "conversation",
        {"id": "a", "conversation": [{"system": "sys", "input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]},
    )
    assert [(m["role"], m["content"]) for m in out["messages"]] == [
        ("system", "sys"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"),
    ]
    assert out["id"] == "a"


def test_conversation_missing_field_is_named():
    err = field_error("conversation", {"conversation": [{"input": "q", "output": "a"}, {"output": "a2"}]})
    assert err.field == "conversation[1].input"
    assert field_error("conversation", {"messages": []}).field == "conversation"


def test_sharegpt_maps_speakers_to_roles():
    out = convert(
        "sharegpt",
        {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                           {"from": "user", "value": "q2"}, {"from": "assistant", "value": "a2"}], "image": "i.png"},
    )
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert out["image"] == "i.png"


def test_sharegpt_errors_name_the_field():
    assert field_error("sharegpt", {"conversations": [{"from": "robot", "value": "x"}]}).field == "conversations[0].from"
    assert field_error("sharegpt", {"conversations": [{"from": "human"}]}).field == "conversations[0].value"
    assert field_error("sharegpt", {}).field == "conversations"


def test_pretrain_text_and_missing_field():
    assert convert("pretrain", {"text": "once upon a time", "id": 1}) == {"text": "once upon a time", "id": 1}
    assert field_error("pretrain", {"content": "x"}).field == "text"
    assert convert("pretrain", {"text": "  "}) is None


# -- detection -------------------------------------------------------------------------

SAMPLES = {
    "openai": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "alpaca": {"instruction": "q", "input": "", "output": "a"},
    "conversation": {"conversation": [{"input": "q", "output": "a"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    "pretrain": {"text": "plain text"},
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_detect_each_format(name):
    assert detect_format([SAMPLES[name]] * 3, FORMATS) == name


def test_detect_uses_a_registry_too():
    assert detect_format([SAMPLES["sharegpt"]], App().parts.formats) == "sharegpt"


def test_detect_ambiguous_lists_candidates():
    with pytest.raises(FtcoreError) as info:
        detect_format([{"instruction": "q", "output": "a", "text": "t"}], FORMATS)
    text = str(info.value)
    assert "alpaca" in text and "pretrain" in text and "data.format" in text


def test_detect_none_lists_formats_and_the_setting():
    with pytest.raises(FtcoreError) as info:
        detect_format([{"question": "q", "answer": "a"}], FORMATS, setting="--from")
    text = str(info.value)
    assert "question, answer" in text and "--from" in text
    assert all(name in text for name in F)


def test_detect_prefers_the_format_most_records_fit():
    records = [SAMPLES["alpaca"], {"instruction": "missing output"}, SAMPLES["alpaca"]]
    assert detect_format(records, FORMATS) == "alpaca"


# -- the DatasetFormat base class ------------------------------------------------------------


def test_a_format_made_from_functions_has_documented_defaults():
    fmt = DatasetFormat("qa", lambda r: {"text": r["q"]})
    assert fmt.convert({"q": "x"}) == {"text": "x"}
    assert fmt.detect({"q": "x"}) is False and not fmt.can_detect
    assert not fmt.can_export and fmt.description == ""
    with pytest.raises(RecordError, match="cannot write"):
        fmt.export({"text": "x"})
    full = DatasetFormat("qa", lambda r: {"text": r["q"]}, lambda r: "q" in r, "q only", export=lambda s: {"q": s["text"]})
    assert full.detect({"q": 1}) and full.can_detect and full.can_export and full.description == "q only"
    assert full.export({"text": "y"}) == {"q": "y"}
    assert repr(full) == "DatasetFormat('qa')"


def test_a_subclass_overrides_methods_and_needs_no_functions():
    class Upper(DatasetFormat):
        name = "upper"
        description = "{t} upper-cased"

        def convert(self, record):
            return {"text": record["t"].upper()}

        def export(self, sample):
            return {"t": sample["text"]}

    fmt = Upper()
    assert (fmt.name, fmt.description) == ("upper", "{t} upper-cased")
    assert fmt.convert({"t": "a"}) == {"text": "A"} and fmt.export({"text": "A"}) == {"t": "A"}
    assert fmt.can_export and not fmt.can_detect
    with pytest.raises(FtcoreError, match="upper is never auto-detected"):
        detect_format([{"t": "a"}], [fmt, F["pretrain"]])


def test_a_format_without_convert_is_refused_when_made():
    with pytest.raises(TypeError, match="convert"):
        DatasetFormat("nothing")


# -- export: a sample back to a format's record --------------------------------------------------

ROUND_TRIP = {
    "openai": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss": False}], "id": 3},
    "alpaca": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}], "id": 3},
    "conversation": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                  {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}], "id": 3},
    "sharegpt": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "id": 3},
    "pretrain": {"text": "plain text", "id": 3},
    "oasst1": {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}], "id": 3},
}


def test_every_writable_builtin_format_exports_what_it_reads_back():
    assert {f.name for f in FORMATS if f.can_export} == set(ROUND_TRIP)
    for name, sample in ROUND_TRIP.items():
        record = F[name].export(sample)
        assert detect_format([record], FORMATS) == name
        assert convert(name, record) == sample, name


def test_export_names_what_the_format_cannot_hold():
    with pytest.raises(RecordError, match="text-only"):
        F["sharegpt"].export({"text": "plain"})
    with pytest.raises(RecordError, match="no plain text"):
        F["pretrain"].export(ROUND_TRIP["sharegpt"])
    with pytest.raises(RecordError, match="does not end with an assistant"):
        F["conversation"].export({"messages": [{"role": "user", "content": "q"}]})
    assert not F["medical"].can_export
