"""Preference dataset formats: every common chosen/rejected pair layout mapped to one canonical pair sample.

Every format returns ``{"messages": [...], "chosen": {...}, "rejected": {...}, **extras}``:
``messages`` is the history both answers reply to (system/user/assistant turns, each
``{"role", "content"}``, ending with a user turn), ``chosen`` and ``rejected`` are
``{"role": "assistant", "content": str}``; ``extras`` are the record's keys the format does not
consume (``id``, a reward ``margin``, scores, ...), passed through unchanged. A bad pair raises
``RecordError`` naming the field: a missing side, an empty answer, identical answers, a history
that does not end with a user turn, or two conversations that do not share their history.
Messages may be written openai-style (``role``/``content``) or ShareGPT-style (``from``/``value``)
wherever a format takes messages.
"""

from __future__ import annotations

import re
from typing import Any

from ftcore.api import DatasetFormat, RecordError

Message = dict[str, str]

#: Speaker names accepted in messages (openai roles and ShareGPT ``from`` values), lower-cased.
SPEAKERS = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
}

#: The keys of a canonical pair sample.
PAIR_KEYS = ("messages", "chosen", "rejected")

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _text(value: Any, field: str) -> str:
    if value is None:
        raise RecordError(f"missing field {field!r}", field)
    if not isinstance(value, str):
        raise RecordError(f"field {field!r} must be str, got {_type_name(value)}", field)
    return value


def _is_sharegpt(message: dict[str, Any]) -> bool:
    """Whether a message object is written ShareGPT-style (``from``/``value``) rather than openai-style."""
    return ("from" in message or "value" in message) and "role" not in message


def _message(value: Any, where: str) -> Message:
    """One message, ``{role, content}`` or ``{from, value}``, as ``{"role", "content"}``."""
    if not isinstance(value, dict):
        raise RecordError(f"{where} must be a message object (role and content), got {_type_name(value)}", where)
    role_key, content_key = ("from", "value") if _is_sharegpt(value) else ("role", "content")
    speaker = value.get(role_key)
    if speaker is None:
        raise RecordError(f"missing field '{where}.{role_key}'", f"{where}.{role_key}")
    role = SPEAKERS.get(str(speaker).lower())
    if role is None:
        expected = ", ".join(SPEAKERS) if role_key == "from" else "system, user, assistant"
        raise RecordError(f"field '{where}.{role_key}' is {speaker!r}; expected one of {expected}", f"{where}.{role_key}")
    return {"role": role, "content": _text(value.get(content_key), f"{where}.{content_key}")}


def _messages(value: Any, field: str) -> list[Message]:
    if value is None:
        raise RecordError(f"missing field {field!r}", field)
    if not isinstance(value, list):
        raise RecordError(f"field {field!r} must be a list of messages, got {_type_name(value)}", field)
    return [_message(m, f"{field}[{i}]") for i, m in enumerate(value)]


def _answer(record: dict[str, Any], field: str) -> str:
    """The text of one side of the pair: a string, an assistant message, or a list holding one."""
    value = record.get(field)
    if value is None:
        raise RecordError(f"missing field {field!r}: a preference pair needs both a chosen and a rejected answer", field)
    where = field
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError(f"field {field!r} must hold exactly one assistant message, got {len(value)}", field)
        value, where = value[0], f"{field}[0]"
    if isinstance(value, dict):
        message = _message(value, where)
        role_key, content_key = ("from", "value") if _is_sharegpt(value) else ("role", "content")
        if message["role"] != "assistant":
            where = f"{where}.{role_key}"
            raise RecordError(f"field {where!r} must be the assistant, got {message['role']!r}", where)
        value, where = message["content"], f"{where}.{content_key}"
    text = _text(value, where)
    if not text.strip():
        raise RecordError(f"field {where!r} is an empty answer", where)
    return text


def _pair(
    record: dict[str, Any],
    history: list[Message],
    history_field: str,
    chosen: str,
    rejected: str,
    consumed: tuple[str, ...],
) -> dict[str, Any]:
    """Check a pair and build the canonical sample; ``history_field`` is named when the history is wrong."""
    if not history or history[-1]["role"] != "user":
        last = f"a {history[-1]['role']} turn" if history else "nothing"
        what = f"field {history_field!r}" if history_field not in ("chosen", "rejected") else f"the turns of {history_field!r} before its answer"
        raise RecordError(f"{what} must end with the user turn both answers reply to; it ends with {last}", history_field)
    if chosen.strip() == rejected.strip():
        raise RecordError("field 'rejected' is identical to 'chosen': a pair must hold two different answers", "rejected")
    extras = {k: v for k, v in record.items() if k not in consumed and k not in PAIR_KEYS}
    return {
        **extras,
        "messages": history,
        "chosen": {"role": "assistant", "content": chosen},
        "rejected": {"role": "assistant", "content": rejected},
    }


def _system(record: dict[str, Any]) -> list[Message]:
    system = record.get("system")
    if system is None or system == "":
        return []
    return [{"role": "system", "content": _text(system, "system")}]


def _shared_history(chosen: list[Message], rejected: list[Message]) -> list[Message]:
    """The history two whole conversations share: all but their last turn, which must be the assistant's answer."""
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv:
            raise RecordError(f"field {field!r} is an empty conversation", field)
        if conv[-1]["role"] != "assistant":
            where = f"{field}[{len(conv) - 1}]"
            raise RecordError(f"{where} must be the assistant's answer that ends the conversation, got {conv[-1]['role']}", where)
    history, other = chosen[:-1], rejected[:-1]
    for i in range(max(len(history), len(other))):
        if i >= len(history) or i >= len(other) or history[i] != other[i]:
            raise RecordError(
                f"rejected[{i}] differs from chosen[{i}]: the two conversations must share every turn before their last answer",
                f"rejected[{i}]",
            )
    return history


# -- {prompt, chosen, rejected} strings (TRL standard, ORPO, most DPO datasets) ---------------


def preference(record: dict[str, Any]) -> dict[str, Any]:
    """``{prompt, chosen, rejected, system?}`` with strings."""
    prompt = _text(record.get("prompt"), "prompt")
    if not prompt.strip():
        raise RecordError("field 'prompt' is empty: there is nothing for the answers to reply to", "prompt")
    history = [*_system(record), {"role": "user", "content": prompt}]
    chosen, rejected = _answer(record, "chosen"), _answer(record, "rejected")
    return _pair(record, history, "prompt", chosen, rejected, ("prompt", "system"))


# -- XTuner / TRL conversational: {prompt: [messages], chosen: [message], rejected: [message]} --


def preference_xtuner(record: dict[str, Any]) -> dict[str, Any]:
    """XTuner's preference jsonl (and TRL's conversational shape): message lists, one answer message per side."""
    history = _messages(record.get("prompt"), "prompt")
    chosen, rejected = _answer(record, "chosen"), _answer(record, "rejected")
    return _pair(record, history, "prompt", chosen, rejected, ("prompt",))


# -- two full conversations sharing a history (TRL implicit prompt, UltraFeedback) ------------


def preference_conversations(record: dict[str, Any]) -> dict[str, Any]:
    """``{chosen: [messages], rejected: [messages]}``: whole conversations, identical up to their last answer."""
    if record.get("chosen") is None:
        raise RecordError("missing field 'chosen': a preference pair needs both a chosen and a rejected answer", "chosen")
    if record.get("rejected") is None:
        raise RecordError("missing field 'rejected': a preference pair needs both a chosen and a rejected answer", "rejected")
    chosen, rejected = _messages(record["chosen"], "chosen"), _messages(record["rejected"], "rejected")
    history = _shared_history(chosen, rejected)
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv[-1]["content"].strip():
            key = "value" if _is_sharegpt(record[field][-1]) else "content"
            where = f"{field}[{len(conv) - 1}].{key}"
            raise RecordError(f"field {where!r} is an empty answer", where)
    # UltraFeedback-binarized repeats the prompt (``prompt``) and the chosen conversation (``messages``)
    return _pair(record, history, "chosen", chosen[-1]["content"], rejected[-1]["content"], ("prompt", "messages"))


# -- Anthropic HH-RLHF transcripts --------------------------------------------------------


def _hh_turns(record: dict[str, Any], field: str) -> list[Message]:
    text = _text(record.get(field), field)
    stripped = text.lstrip()
    if not stripped.startswith(("Human:", "Assistant:")):
        raise RecordError(f"field {field!r} must be a transcript starting with 'Human:'", field)
    parts = _HH_TURN.split("\n\n" + stripped)
    return [{"role": "user" if who == "Human" else "assistant", "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def preference_hh(record: dict[str, Any]) -> dict[str, Any]:
    """Anthropic HH-RLHF: ``{chosen, rejected}`` transcripts of ``\\n\\nHuman: ...\\n\\nAssistant: ...`` turns."""
    for side in ("chosen", "rejected"):
        if record.get(side) is None:
            raise RecordError(f"missing field {side!r}: a preference pair needs both a chosen and a rejected answer", side)
    chosen, rejected = _hh_turns(record, "chosen"), _hh_turns(record, "rejected")
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv or conv[-1]["role"] != "assistant":
            raise RecordError(f"field {field!r} must end with an 'Assistant:' answer", field)
        if not conv[-1]["content"]:
            raise RecordError(f"field {field!r} ends with an empty answer", field)
    history, other = chosen[:-1], rejected[:-1]
    if history != other:
        raise RecordError("field 'rejected' does not share the transcript of 'chosen' before the last 'Assistant:' answer", "rejected")
    return _pair(record, history, "chosen", chosen[-1]["content"], rejected[-1]["content"], ())


# -- LLaMA-Factory ranking datasets -------------------------------------------------------


def preference_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's ShareGPT ranking data: ``{conversations: [...], chosen: {from, value}, rejected: {from, value}, system?}``."""
    history = [*_system(record), *_messages(record.get("conversations"), "conversations")]
    chosen, rejected = _answer(record, "chosen"), _answer(record, "rejected")
    return _pair(record, history, "conversations", chosen, rejected, ("conversations", "system"))


def preference_openai(record: dict[str, Any]) -> dict[str, Any]:
    """``{messages: [...history], chosen, rejected}``: LLaMA-Factory's openai-tagged ranking data; answers as strings or messages."""
    history = _messages(record.get("messages"), "messages")
    chosen, rejected = _answer(record, "chosen"), _answer(record, "rejected")
    return _pair(record, history, "messages", chosen, rejected, ("messages",))


def preference_alpaca(record: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's alpaca ranking data: ``{instruction, input?, chosen, rejected, system?, history?}``."""
    instruction = _text(record.get("instruction"), "instruction")
    extra = record.get("input")
    extra = "" if extra is None else _text(extra, "input")
    history = _system(record)
    past = record.get("history")
    if past is not None:
        if not isinstance(past, list):
            raise RecordError(f"field 'history' must be a list of [user, assistant] pairs, got {_type_name(past)}", "history")
        for i, turn in enumerate(past):
            if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                raise RecordError(f"field 'history[{i}]' must be a [user, assistant] pair of strings", f"history[{i}]")
            history += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    user = "\n".join(part for part in (instruction, extra) if part)
    if not user.strip():
        raise RecordError("field 'instruction' is empty: there is nothing for the answers to reply to", "instruction")
    history.append({"role": "user", "content": user})
    chosen, rejected = _answer(record, "chosen"), _answer(record, "rejected")
    return _pair(record, history, "instruction", chosen, rejected, ("instruction", "input", "system", "history"))


# -- detection ----------------------------------------------------------------------------


def _both_sides(record: dict[str, Any]) -> bool:
    return "chosen" in record and "rejected" in record


def _detect_preference(r: dict[str, Any]) -> bool:
    return isinstance(r.get("prompt"), str) and isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str)


def _detect_xtuner(r: dict[str, Any]) -> bool:
    return isinstance(r.get("prompt"), list) and _both_sides(r)


def _detect_conversations(r: dict[str, Any]) -> bool:
    return (
        isinstance(r.get("chosen"), list)
        and isinstance(r.get("rejected"), list)
        and not isinstance(r.get("prompt"), list)
        and not any(k in r for k in ("conversations", "instruction"))
    )


def _detect_hh(r: dict[str, Any]) -> bool:
    chosen = r.get("chosen")
    return (
        isinstance(chosen, str)
        and isinstance(r.get("rejected"), str)
        and not any(k in r for k in ("prompt", "instruction", "messages", "conversations"))
        and chosen.lstrip().startswith("Human:")
    )


def _detect_sharegpt(r: dict[str, Any]) -> bool:
    return isinstance(r.get("conversations"), list) and _both_sides(r)


def _detect_openai(r: dict[str, Any]) -> bool:
    return isinstance(r.get("messages"), list) and _both_sides(r) and not isinstance(r.get("chosen"), list)


def _detect_alpaca(r: dict[str, Any]) -> bool:
    return "instruction" in r and _both_sides(r) and "output" not in r


FORMATS = [
    DatasetFormat("preference", preference, _detect_preference, "{prompt, chosen, rejected, system?} strings (TRL standard / ORPO / DPO pairs)"),
    DatasetFormat(
        "preference_xtuner",
        preference_xtuner,
        _detect_xtuner,
        "XTuner / TRL conversational pairs: {prompt: [messages], chosen: [assistant message], rejected: [...]}",
    ),
    DatasetFormat(
        "preference_conversations",
        preference_conversations,
        _detect_conversations,
        "{chosen: [messages], rejected: [messages]}: two whole conversations sharing all but the last answer (UltraFeedback)",
    ),
    DatasetFormat("preference_hh", preference_hh, _detect_hh, "Anthropic HH-RLHF {chosen, rejected} '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts"),
    DatasetFormat(
        "preference_sharegpt",
        preference_sharegpt,
        _detect_sharegpt,
        "LLaMA-Factory ShareGPT ranking: {conversations: [{from, value}], chosen: {from, value}, rejected: {from, value}}",
    ),
    DatasetFormat(
        "preference_openai",
        preference_openai,
        _detect_openai,
        "{messages: [history ending with user], chosen, rejected}: answers as strings or assistant messages",
    ),
    DatasetFormat(
        "preference_alpaca",
        preference_alpaca,
        _detect_alpaca,
        "LLaMA-Factory alpaca ranking: {instruction, input?, chosen, rejected, system?, history?}",
    ),
]
