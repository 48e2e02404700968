"""Map functions from each supported raw record layout to ftcore messages, and back (``export``).

Every chat format returns ``{"messages": [{"role", "content", "loss"?}], **extras}``
and ``pretrain`` returns ``{"text": ..., **extras}``; ``extras`` are the record's keys
the format does not consume (``id``, ``image``, ...), passed through unchanged so that
later stages (e.g. a multimodal plugin reading ``image``) can use them. A malformed
record raises ``RecordError`` naming the offending field (``messages[2].role``).

The ``*_export`` functions are the inverses (``ftcore data convert --to NAME``): a sample
back to a record, extras written back unchanged; a conversation the layout cannot hold
(e.g. two user messages in a row for alpaca) raises ``RecordError``.
"""

from __future__ import annotations

import re
from typing import Any

from ftcore.api import DatasetFormat, RecordError, require, sample_extras, sample_messages, sample_turns

from . import tools

ROLES = ("system", "user", "assistant")
#: roles of the openai format: a ``tool`` message carries a function's result
OPENAI_ROLES = (*ROLES, "tool")

#: The system prompt the ``medical`` format adds when a record carries none.
MEDICAL_SYSTEM = (
    "You are a professional, highly experienced doctor. Answer the patient's medical question "
    "accurately, carefully and in plain language: explain the likely causes, the relevant "
    "examinations and the treatment options, and say clearly when the symptoms call for seeing "
    "a doctor in person or for emergency care."
)

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}

NO_OUTPUT = "<nooutput>"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _extras(record: dict[str, Any], consumed: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in consumed}


def _text(value: Any, field: str, *, optional: bool = False) -> str:
    if value is None:
        if optional:
            return ""
        raise RecordError(f"missing field {field!r}", field)
    if not isinstance(value, str):
        raise RecordError(f"field {field!r} must be str, got {_type_name(value)}", field)
    return value


def _items(record: dict[str, Any], field: str) -> list[Any]:
    items = require(record, field, list)
    if not items:
        raise RecordError(f"field {field!r} is an empty list", field)
    return items


def _finish(messages: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """Check that a conversation has something to train on."""
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError(f"field {field!r} has no assistant message, so there is nothing to train on", field)
    return messages


# -- openai ---------------------------------------------------------------------------


def _openai_message(message: Any, where: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise RecordError(f"{where} must be an object with role and content, got {_type_name(message)}", where)
    role = message.get("role")
    if role is None:
        raise RecordError(f"missing field '{where}.role'", f"{where}.role")
    if role not in OPENAI_ROLES:
        raise RecordError(f"field '{where}.role' is {role!r}; expected one of {', '.join(OPENAI_ROLES)}", f"{where}.role")
    calls = message.get("tool_calls")
    if calls is not None and role != "assistant":
        raise RecordError(f"field '{where}.tool_calls': only an assistant message calls tools (this one is {role!r})", f"{where}.tool_calls")
    # an assistant message that calls tools may say nothing (OpenAI writes content: null)
    content = _text(message.get("content"), f"{where}.content", optional=calls is not None)
    out: dict[str, Any] = {"role": role, "content": content}
    if calls is not None:
        out["tool_calls"] = tools.tool_calls(calls, f"{where}.tool_calls")
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if message.get(key) is not None:
                out[key] = _text(message[key], f"{where}.{key}")
    loss = message.get("loss")
    if loss is not None:
        if not isinstance(loss, bool):
            raise RecordError(f"field '{where}.loss' must be true or false, got {loss!r}", f"{where}.loss")
        if role == "assistant":
            out["loss"] = loss
    return out


def openai(record: dict[str, Any]) -> dict[str, Any]:
    """``{"messages": [{role, content, loss?}], tools?}`` validated and normalised; ``tool`` results and
    assistant ``tool_calls`` as OpenAI writes them (see :mod:`ftcore_formats.tools`)."""
    messages = [_openai_message(m, f"messages[{i}]") for i, m in enumerate(_items(record, "messages"))]
    extra = _extras(record, ("messages", "tools"))
    if record.get("tools") is not None:
        extra = {"tools": tools.tools_list(record["tools"]), **extra}
    if extra.get("tools") or any(m["role"] == "tool" or "tool_calls" in m for m in messages):
        tools.check_sequence(messages, extra.get("tools"))
    return {"messages": _finish(messages, "messages"), **extra}


def openai_export(sample: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [dict(m) for m in sample_messages(sample, "openai")], **sample_extras(sample)}


# -- alpaca / medical -----------------------------------------------------------------


def _alpaca(record: dict[str, Any], default_system: str | None) -> dict[str, Any] | None:
    instruction = _text(record.get("instruction"), "instruction")
    extra = _text(record.get("input"), "input", optional=True)
    output = _text(record.get("output"), "output")
    if output.strip() == NO_OUTPUT:
        return None
    system = _text(record.get("system"), "system", optional=True) or default_system
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    history = record.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise RecordError(f"field 'history' must be a list of [user, assistant] pairs, got {_type_name(history)}", "history")
        for i, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise RecordError(f"field 'history[{i}]' must be a [user, assistant] pair of strings", f"history[{i}]")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = "\n".join(part for part in (instruction, extra) if part)
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages, **_extras(record, ("instruction", "input", "output", "system", "history"))}


def alpaca(record: dict[str, Any]) -> dict[str, Any] | None:
    """``{instruction, input?, output, system?, history?}``; ``<nooutput>`` drops the record."""
    return _alpaca(record, None)


def alpaca_export(sample: dict[str, Any]) -> dict[str, Any]:
    """The last turn as instruction/output, earlier turns as ``history``, a leading system message as ``system``."""
    turns = sample_turns(sample, "alpaca")
    if any(s for s, _, _ in turns[1:]):
        raise RecordError("a system message after the first turn cannot be written as alpaca", "messages")
    system, (_, user, assistant) = turns[0][0], turns[-1]
    out: dict[str, Any] = {"instruction": user, "input": "", "output": assistant}
    if system:
        out["system"] = system
    if len(turns) > 1:
        out["history"] = [[u, a] for _, u, a in turns[:-1]]
    return {**out, **sample_extras(sample)}


def medical(record: dict[str, Any]) -> dict[str, Any] | None:
    """Alpaca fields answered by a doctor: adds ``MEDICAL_SYSTEM`` unless the record has a system."""
    return _alpaca(record, MEDICAL_SYSTEM)


# -- XTuner conversation --------------------------------------------------------------


def conversation(record: dict[str, Any]) -> dict[str, Any]:
    """XTuner's native ``{"conversation": [{system?, input, output}, ...]}`` (multi-turn)."""
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(_items(record, "conversation")):
        where = f"conversation[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} must be an object with input and output, got {_type_name(turn)}", where)
        system = _text(turn.get("system"), f"{where}.system", optional=True)
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": _text(turn.get("input"), f"{where}.input")})
        messages.append({"role": "assistant", "content": _text(turn.get("output"), f"{where}.output")})
    return {"messages": messages, **_extras(record, ("conversation",))}


def conversation_export(sample: dict[str, Any]) -> dict[str, Any]:
    turns = [({"system": s} if s else {}) | {"input": u, "output": a} for s, u, a in sample_turns(sample, "conversation")]
    return {"conversation": turns, **sample_extras(sample)}


# -- ShareGPT -------------------------------------------------------------------------


def sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """``{"conversations": [{from: human|gpt|system, value}], system?}``."""
    system = _text(record.get("system"), "system", optional=True)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(_items(record, "conversations")):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} must be an object with from and value, got {_type_name(turn)}", where)
        speaker = turn.get("from")
        if speaker is None:
            raise RecordError(f"missing field '{where}.from'", f"{where}.from")
        role = SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise RecordError(
                f"field '{where}.from' is {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}", f"{where}.from"
            )
        messages.append({"role": role, "content": _text(turn.get("value"), f"{where}.value")})
    return {"messages": _finish(messages, "conversations"), **_extras(record, ("conversations", "system"))}


def sharegpt_export(sample: dict[str, Any]) -> dict[str, Any]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    messages = sample_messages(sample, "sharegpt")
    if any(m["role"] not in names or m.get("tool_calls") for m in messages):
        raise RecordError("sharegpt cannot hold tool calls or results (openai can)", "messages")
    turns = [{"from": names[m["role"]], "value": m["content"]} for m in messages]
    return {"conversations": turns, **sample_extras(sample)}


# -- oasst1 (Guanaco) ------------------------------------------------------------------

#: a speaker mark of the Guanaco text (timdettmers/openassistant-guanaco, XTuner's oasst1)
OASST1_TURN = re.compile(r"### (Human|Assistant):")
OASST1_ROLES = {"Human": "user", "Assistant": "assistant"}


def _is_oasst1(record: dict[str, Any]) -> bool:
    text = record.get("text")
    return isinstance(text, str) and text.lstrip().startswith("### Human:") and "### Assistant:" in text


def oasst1(record: dict[str, Any]) -> dict[str, Any]:
    """``{"text": "### Human: ...### Assistant: ...### Human: ..."}`` as turns; a last question with no answer is left out (as XTuner does)."""
    text = require(record, "text", str)
    marks = list(OASST1_TURN.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise RecordError("field 'text' must start with '### Human:' (the Guanaco/oasst1 layout)", "text")
    messages: list[dict[str, Any]] = []
    for mark, after in zip(marks, marks[1:] + [None]):
        role = OASST1_ROLES[mark.group(1)]
        if messages and messages[-1]["role"] == role:
            raise RecordError(f"field 'text' has two '### {mark.group(1)}:' turns in a row (at character {mark.start()})", "text")
        messages.append({"role": role, "content": text[mark.end() : after.start() if after else len(text)].strip()})
    if messages[-1]["role"] == "user":
        messages.pop()  # nothing answers it, so nothing of it would train
    return {"messages": _finish(messages, "text"), **_extras(record, ("text",))}


def oasst1_export(sample: dict[str, Any]) -> dict[str, Any]:
    turns = sample_turns(sample, "oasst1")
    if any(s for s, _, _ in turns):
        raise RecordError("oasst1 (Guanaco) text has no place for a system message", "messages")
    return {"text": "".join(f"### Human: {u}### Assistant: {a}" for _, u, a in turns), **sample_extras(sample)}


# -- pre-training text ----------------------------------------------------------------


def pretrain(record: dict[str, Any]) -> dict[str, Any] | None:
    """``{"text": ...}`` for continued pre-training; an empty text drops the record."""
    text = require(record, "text", str)
    if not text.strip():
        return None
    return {"text": text, **_extras(record, ("text",))}


def pretrain_export(sample: dict[str, Any]) -> dict[str, Any]:
    if "text" not in sample:
        raise RecordError("a conversation has no plain text to write as pretrain", "messages")
    return {"text": sample["text"], **sample_extras(sample)}


def _has_list(key: str):
    def detect(record: dict[str, Any]) -> bool:  # a preference pair (chosen + rejected) is not SFT data
        return isinstance(record.get(key), list) and not ("chosen" in record and "rejected" in record)

    return detect


FORMATS = [
    DatasetFormat(
        "openai", openai, _has_list("messages"), "{messages: [{role, content, loss?}], tools?} (system/user/assistant/tool, tool_calls)", export=openai_export
    ),
    DatasetFormat(
        "alpaca",
        alpaca,
        lambda r: "instruction" in r and "output" in r,
        "{instruction, input?, output} (Stanford Alpaca); <nooutput> records are dropped",
        export=alpaca_export,
    ),
    DatasetFormat(
        "medical",
        medical,
        None,  # same fields as alpaca: never auto-detected, name it with data.format=medical
        "alpaca fields with a doctor's system prompt (not auto-detected: set data.format=medical)",
    ),
    DatasetFormat(
        "conversation",
        conversation,
        _has_list("conversation"),
        "XTuner {conversation: [{system?, input, output}]} multi-turn",
        export=conversation_export,
    ),
    DatasetFormat(
        "sharegpt", sharegpt, _has_list("conversations"), "{conversations: [{from: human|gpt|system, value}]}", export=sharegpt_export
    ),
    DatasetFormat(
        "oasst1", oasst1, _is_oasst1, "{text: '### Human: ...### Assistant: ...'} OpenAssistant as Guanaco has it (XTuner's oasst1)", export=oasst1_export
    ),
    DatasetFormat(
        "pretrain", pretrain, lambda r: isinstance(r.get("text"), str) and not _is_oasst1(r), "{text} plain text for (continued) pre-training", export=pretrain_export
    ),
]
