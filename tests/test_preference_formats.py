"""Preference dataset formats: each pair layout to the canonical sample, detection beside the SFT formats, bad pairs refused naming the field."""

from __future__ import annotations

import copy
import json
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "plugins" / "preference"))

import ftcore_preference  # noqa: E402
from ftcore.app import App  # noqa: E402
from ftcore.data.formats import RecordError  # noqa: E402
from ftcore.data.load import detect_format, load_samples  # noqa: E402
from ftcore.plugins import get_plugin_manager  # noqa: E402
from ftcore_formats.formats import FORMATS as SFT_FORMATS  # noqa: E402
from ftcore_preference.formats import FORMATS  # noqa: E402

F = {f.name: f for f in FORMATS}

SYSTEM = {"role": "system", "content": "Be brief."}
Q1, A1, Q2 = "Who won in 2020?", "The Dodgers.", "Where was it played?"
GOOD, BAD = "Globe Life Field, Arlington.", "I don't know."
HISTORY = [SYSTEM, {"role": "user", "content": Q1}, {"role": "assistant", "content": A1}, {"role": "user", "content": Q2}]


def canonical(history: list[dict], **extras) -> dict:
    return {**extras, "messages": history, "chosen": {"role": "assistant", "content": GOOD}, "rejected": {"role": "assistant", "content": BAD}}


def sharegpt(role: str, text: str) -> dict:
    return {"from": {"system": "system", "user": "human", "assistant": "gpt"}[role], "value": text}


#: One record of every shape, and the canonical sample it must become.
SHAPES = {
    "preference": (
        {"id": 1, "system": "Be brief.", "prompt": Q2, "chosen": GOOD, "rejected": BAD},
        canonical([SYSTEM, {"role": "user", "content": Q2}], id=1),
    ),
    "preference_xtuner": (
        {"prompt": HISTORY, "chosen": [{"role": "assistant", "content": GOOD}], "rejected": [{"role": "assistant", "content": BAD}]},
        canonical(HISTORY),
    ),
    "preference_conversations": (
        {
            "prompt": Q2,  # UltraFeedback-binarized repeats the prompt and the chosen conversation (messages)
            "prompt_id": "abc",
            "chosen": HISTORY + [{"role": "assistant", "content": GOOD}],
            "rejected": HISTORY + [{"role": "assistant", "content": BAD}],
            "score_chosen": 8.0,
        },
        canonical(HISTORY, prompt_id="abc", score_chosen=8.0),
    ),
    "preference_hh": (
        {
            "chosen": f"\n\nHuman: {Q1}\n\nAssistant: {A1}\n\nHuman: {Q2}\n\nAssistant: {GOOD}",
            "rejected": f"\n\nHuman: {Q1}\n\nAssistant: {A1}\n\nHuman: {Q2}\n\nAssistant: {BAD}",
        },
        canonical(HISTORY[1:]),
    ),
    "preference_sharegpt": (
        {
            "system": "Be brief.",
            "conversations": [sharegpt(m["role"], m["content"]) for m in HISTORY[1:]],
            "chosen": {"from": "gpt", "value": GOOD},
            "rejected": {"from": "gpt", "value": BAD},
        },
        canonical(HISTORY),
    ),
    "preference_openai": (
        {"messages": HISTORY, "chosen": {"role": "assistant", "content": GOOD}, "rejected": BAD, "margin": 2.0},
        canonical(HISTORY, margin=2.0),
    ),
    "preference_alpaca": (
        {"system": "Be brief.", "instruction": Q2, "input": "", "history": [[Q1, A1]], "chosen": GOOD, "rejected": BAD},
        canonical([SYSTEM, {"role": "user", "content": Q1}, {"role": "assistant", "content": A1}, {"role": "user", "content": Q2}]),
    ),
}

#: Ordinary SFT records no preference format may claim.
SFT_RECORDS = {
    "openai": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    "alpaca": {"instruction": "add", "input": "1 and 2", "output": "3"},
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    "conversation": {"conversation": [{"input": "hi", "output": "hello"}]},
    "pretrain": {"text": "Once upon a time."},
}


def convert(name: str, record: dict):
    return F[name].convert(copy.deepcopy(record))


def field_error(name: str, record: dict) -> RecordError:
    with pytest.raises(RecordError) as info:
        convert(name, record)
    return info.value


def preference_app() -> App:
    """The app with the preference plugin loaded (by its entry point once registered, else as a local plugin)."""
    pm = get_plugin_manager()
    if "preference" not in pm.infos:
        pm = get_plugin_manager(extra=[("preference", ftcore_preference)])
    return App(pm=pm)


# -- conversion ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_shape_converts_to_the_canonical_pair(name):
    record, expected = SHAPES[name]
    assert convert(name, record) == expected


def test_xtuner_documented_example():
    """The example of XTuner's preference data docs, verbatim in structure."""
    record = {
        "prompt": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Who won the world series in 2020?"},
            {"role": "assistant", "content": "The Los Angeles Dodgers won the World Series in 2020."},
            {"role": "user", "content": "Where was it played?"},
        ],
        "chosen": [{"role": "assistant", "content": "The 2020 World Series was played at Globe Life Field in Arlington, Texas."}],
        "rejected": [{"role": "assistant", "content": "I don't know."}],
    }
    out = convert("preference_xtuner", record)
    assert out["messages"] == record["prompt"]
    assert out["chosen"]["content"].startswith("The 2020 World Series") and out["rejected"]["content"] == "I don't know."


def test_llama_factory_dpo_demo_record():
    """A record shaped like LLaMA-Factory's data/dpo_en_demo.json (system turn inside conversations)."""
    record = {
        "conversations": [{"from": "system", "value": "You are a teacher."}, {"from": "human", "value": "Q: tag the word."}],
        "chosen": {"from": "gpt", "value": "The tag is '.'"},
        "rejected": {"from": "gpt", "value": "The tag is PRON."},
    }
    out = convert("preference_sharegpt", record)
    assert out["messages"] == [{"role": "system", "content": "You are a teacher."}, {"role": "user", "content": "Q: tag the word."}]
    assert out["chosen"] == {"role": "assistant", "content": "The tag is '.'"}


def test_conversations_accept_sharegpt_style_turns():
    turns = [sharegpt(m["role"], m["content"]) for m in HISTORY]
    record = {"chosen": turns + [sharegpt("assistant", GOOD)], "rejected": turns + [sharegpt("assistant", BAD)]}
    assert convert("preference_conversations", record) == canonical(HISTORY)


def test_hh_transcript_without_leading_newlines_and_single_turn():
    record = {"chosen": f"Human: {Q2}\n\nAssistant: {GOOD}", "rejected": f"Human: {Q2}\n\nAssistant:  {BAD} "}
    assert convert("preference_hh", record) == canonical([{"role": "user", "content": Q2}])


def test_openai_shape_takes_string_message_or_one_message_list_answers():
    for chosen in (GOOD, {"role": "assistant", "content": GOOD}, [{"role": "assistant", "content": GOOD}]):
        assert convert("preference_openai", {"messages": HISTORY, "chosen": chosen, "rejected": BAD}) == canonical(HISTORY)


def test_alpaca_joins_instruction_and_input():
    out = convert("preference_alpaca", {"instruction": "Translate.", "input": "Bonjour", "chosen": "Hello", "rejected": "Bye"})
    assert out["messages"] == [{"role": "user", "content": "Translate.\nBonjour"}]


def test_canonical_keys_win_over_extras_and_history_loss_flags_are_dropped():
    history = [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1, "loss": True}, {"role": "user", "content": Q2}]
    out = convert("preference_xtuner", {"prompt": history, "chosen": GOOD, "rejected": BAD})
    assert out["messages"][1] == {"role": "assistant", "content": A1}


# -- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_shape_is_detected_as_its_format_among_preference_formats(name):
    record = SHAPES[name][0]
    assert [f.name for f in FORMATS if f.detect(record)] == [name]
    assert detect_format([record] * 3, FORMATS) == name


@pytest.mark.parametrize("sft", sorted(SFT_RECORDS))
def test_no_preference_format_claims_an_sft_record(sft):
    record = SFT_RECORDS[sft]
    assert [f.name for f in FORMATS if f.detect(record)] == []
    assert detect_format([record] * 3, SFT_FORMATS + FORMATS) == sft


def _detect_cases():
    cases = [(name, SHAPES[name][0]) for name in sorted(SHAPES)]
    ultrafeedback = dict(SHAPES["preference_conversations"][0], messages=HISTORY + [{"role": "assistant", "content": GOOD}])
    cases.append(("preference_conversations+messages", ultrafeedback))
    return [
        pytest.param(
            case,
            record,
            id=case,
        )
        for case, record in cases
    ]


@pytest.mark.parametrize("case, record", _detect_cases())
def test_detection_through_the_registry_with_every_format(case, record):
    expected = case.split("+")[0]
    assert detect_format([record] * 3, preference_app().parts.formats) == expected


def test_the_plugin_registers_every_format():
    registered = []
    ftcore_preference.register_dataset_formats(register=registered.append)
    assert [f.name for f in registered] == [f.name for f in FORMATS]
    parts = preference_app().parts.formats
    assert set(F) <= set(parts.names())
    assert all("preference" in parts.part(name).owner for name in F)


# -- bad pairs -------------------------------------------------------------------------------


def without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


def with_(record: dict, **changes) -> dict:
    return {**copy.deepcopy(record), **changes}


def _bad_pairs():
    p, x, c, h, s, o, a = (SHAPES[n][0] for n in ("preference", "preference_xtuner", "preference_conversations", "preference_hh", "preference_sharegpt", "preference_openai", "preference_alpaca"))
    conv_last = len(c["chosen"]) - 1
    return [
        # a missing side
        ("preference", without(p, "rejected"), "rejected"),
        ("preference", without(p, "chosen"), "chosen"),
        ("preference_xtuner", without(x, "chosen"), "chosen"),
        ("preference_conversations", without(c, "rejected"), "rejected"),
        ("preference_hh", without(h, "chosen"), "chosen"),
        ("preference_sharegpt", with_(s, rejected=None), "rejected"),
        ("preference_openai", without(o, "chosen"), "chosen"),
        ("preference_alpaca", without(a, "rejected"), "rejected"),
        # identical chosen and rejected
        ("preference", with_(p, rejected=GOOD), "rejected"),
        ("preference_xtuner", with_(x, rejected=[{"role": "assistant", "content": GOOD + " "}]), "rejected"),
        ("preference_conversations", with_(c, rejected=copy.deepcopy(c["chosen"])), "rejected"),
        ("preference_hh", with_(h, rejected=h["chosen"]), "rejected"),
        ("preference_sharegpt", with_(s, rejected={"from": "gpt", "value": GOOD}), "rejected"),
        ("preference_openai", with_(o, rejected=GOOD), "rejected"),
        ("preference_alpaca", with_(a, chosen=BAD), "rejected"),
        # an empty answer
        ("preference", with_(p, chosen="  "), "chosen"),
        ("preference_xtuner", with_(x, rejected=[{"role": "assistant", "content": ""}]), "rejected[0].content"),
        ("preference_conversations", with_(c, chosen=HISTORY + [{"role": "assistant", "content": " "}]), f"chosen[{conv_last}].content"),
        ("preference_hh", with_(h, rejected=f"\n\nHuman: {Q1}\n\nAssistant: {A1}\n\nHuman: {Q2}\n\nAssistant:"), "rejected"),
        ("preference_sharegpt", with_(s, chosen={"from": "gpt", "value": ""}), "chosen.value"),
        ("preference_openai", with_(o, chosen={"role": "assistant", "content": "\n"}), "chosen.content"),
        ("preference_alpaca", with_(a, rejected=""), "rejected"),
        # a history not ending with a user turn
        ("preference_xtuner", with_(x, prompt=HISTORY[:3]), "prompt"),
        ("preference_xtuner", with_(x, prompt=[SYSTEM]), "prompt"),
        ("preference_xtuner", with_(x, prompt=[]), "prompt"),
        ("preference_sharegpt", with_(s, conversations=[sharegpt("user", Q1), sharegpt("assistant", A1)]), "conversations"),
        ("preference_openai", with_(o, messages=HISTORY[:3]), "messages"),
        ("preference_conversations", with_(c, chosen=[{"role": "assistant", "content": GOOD}], rejected=[{"role": "assistant", "content": BAD}]), "chosen"),
        ("preference_hh", with_(h, chosen=f"\n\nAssistant: {A1}\n\nAssistant: {GOOD}", rejected=f"\n\nAssistant: {A1}\n\nAssistant: {BAD}"), "chosen"),
        # an empty prompt
        ("preference", with_(p, prompt=""), "prompt"),
        ("preference_alpaca", with_(a, instruction=" ", input=None), "instruction"),
    ]


@pytest.mark.parametrize("name, record, field", _bad_pairs())
def test_bad_pairs_are_refused_naming_the_field(name, record, field):
    err = field_error(name, record)
    assert err.field == field, str(err)
    assert field.split("[")[0].split(".")[0] in str(err)


@pytest.mark.parametrize(
    "name, record, field",
    [
        # conversations that do not share their history
        ("preference_conversations", with_(SHAPES["preference_conversations"][0], rejected=[{"role": "user", "content": "other"}, {"role": "assistant", "content": BAD}]), "rejected[0]"),
        ("preference_conversations", with_(SHAPES["preference_conversations"][0], rejected=HISTORY[:1] + HISTORY[3:] + [{"role": "assistant", "content": BAD}]), "rejected[1]"),
        ("preference_conversations", with_(SHAPES["preference_conversations"][0], rejected=HISTORY), "rejected[3]"),
        ("preference_hh", with_(SHAPES["preference_hh"][0], rejected=f"\n\nHuman: other\n\nAssistant: {BAD}"), "rejected"),
        # answers that are not one assistant message
        ("preference_xtuner", with_(SHAPES["preference_xtuner"][0], chosen=[{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]), "chosen"),
        ("preference_xtuner", with_(SHAPES["preference_xtuner"][0], chosen=[{"role": "user", "content": GOOD}]), "chosen[0].role"),
        ("preference_sharegpt", with_(SHAPES["preference_sharegpt"][0], rejected={"from": "human", "value": BAD}), "rejected.from"),
        ("preference_openai", with_(SHAPES["preference_openai"][0], chosen=3), "chosen"),
        # malformed messages in the history
        ("preference_openai", with_(SHAPES["preference_openai"][0], messages=[{"role": "bot", "content": "x"}, HISTORY[3]]), "messages[0].role"),
        ("preference_sharegpt", with_(SHAPES["preference_sharegpt"][0], conversations=[{"from": "human"}]), "conversations[0].value"),
        ("preference_xtuner", with_(SHAPES["preference_xtuner"][0], prompt="not a list"), "prompt"),
        ("preference_hh", with_(SHAPES["preference_hh"][0], chosen="no speakers here"), "chosen"),
        ("preference_alpaca", with_(SHAPES["preference_alpaca"][0], history=[["only one"]]), "history[0]"),
    ],
)
def test_malformed_pairs_are_refused_naming_the_field(name, record, field):
    assert field_error(name, record).field == field


# -- through the data loader -------------------------------------------------------------------


def test_a_jsonl_file_is_detected_converted_and_a_bad_pair_reported_with_file_and_line(tmp_path):
    good = SHAPES["preference_xtuner"][0]
    bad = with_(good, rejected=copy.deepcopy(good["chosen"]))
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (good, good, bad, good)))
    formats = preference_app().parts.formats
    with pytest.raises(RecordError) as info:
        load_samples(str(path), "auto", formats)
    assert info.value.field == "rejected"
    assert "pairs.jsonl:3" in str(info.value.where)
    samples, report = load_samples(str(path), "auto", formats, on_error="skip")
    assert report.format == "preference_xtuner" and report.kept == 3 and report.skipped == 1
    assert samples[0] == canonical(HISTORY)
