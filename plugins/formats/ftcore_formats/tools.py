"""Tool calls in OpenAI-format records: the ``tools`` list, an assistant's ``tool_calls`` and the ``tool`` results, checked and normalised.

A record as OpenAI's chat API and its fine-tuning files have it::

    {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}],
     "messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
                      "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"},
                  {"role": "assistant", "content": "18 C and sunny."}]}

Arguments given as a JSON string become an object, as chat templates (``tool_call.arguments | tojson``)
expect. Every problem raises ``RecordError`` naming the field (``messages[1].tool_calls[0].function.arguments``).
"""

from __future__ import annotations

import json
from typing import Any

from ftcore.api import RecordError


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"field '{where}' must be the function's name (a non-empty string), got {value!r}", where)
    return value


def tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` as ``[{"type": "function", "function": {"name", "arguments": {...}}, "id"?}]``."""
    if not isinstance(value, list) or not value:
        raise RecordError(f"field '{where}' must be a non-empty list of calls, got {_type_name(value)}", where)
    calls = []
    for j, call in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise RecordError(f"field '{at}' must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \"arguments\": ...}}}}, got {json.dumps(call)[:80]}", f"{at}.function")
        function = call["function"]
        name = _name(function.get("name"), f"{at}.function.name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError as exc:
                raise RecordError(f"field '{at}.function.arguments' is not valid JSON ({exc}): {arguments[:80]!r}", f"{at}.function.arguments") from None
        if not isinstance(arguments, dict):
            raise RecordError(f"field '{at}.function.arguments' must be a JSON object of the arguments, got {_type_name(arguments)}", f"{at}.function.arguments")
        out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if call.get("id") is not None:
            if not isinstance(call["id"], str):
                raise RecordError(f"field '{at}.id' must be a string, got {_type_name(call['id'])}", f"{at}.id")
            out["id"] = call["id"]
        calls.append(out)
    return calls


def tools_list(value: Any) -> list[dict[str, Any]]:
    """A record's ``tools``: function definitions (``{"type": "function", "function": {"name", ...}}``; a bare ``{"name", ...}`` is wrapped)."""
    if not isinstance(value, list) or not value:
        raise RecordError(f"field 'tools' must be a non-empty list of function definitions, got {_type_name(value)}", "tools")
    out = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise RecordError(f"field 'tools[{i}]' must be an object, got {_type_name(tool)}", f"tools[{i}]")
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        _name(function.get("name"), f"tools[{i}].function.name" if "function" in tool else f"tools[{i}].name")
        out.append(tool if "function" in tool else {"type": "function", "function": tool})
    return out


def check_sequence(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> None:
    """Tool results answer the calls just before them (by ``tool_call_id`` when both give ids), every call
    is answered before the conversation goes on, and a call names a function of ``tools`` when it is given."""
    known = {t["function"]["name"] for t in tools} if tools else None
    pending: list[dict[str, Any]] | None = None  # the calls of the last assistant message, while results may follow
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "tool":
            if pending is None:
                raise RecordError(f"messages[{i}] is a tool result, but no assistant message with tool_calls comes before it", f"messages[{i}].role")
            ids = {c["id"] for c in pending if "id" in c}
            if m.get("tool_call_id") is not None and ids and m["tool_call_id"] not in ids:
                raise RecordError(f"messages[{i}].tool_call_id {m['tool_call_id']!r} answers no call of the assistant message before it (ids: {', '.join(sorted(ids))})", f"messages[{i}].tool_call_id")
            continue
        if pending is not None and (not messages[i - 1]["role"] == "tool"):
            raise RecordError(f"messages[{i - 1}] calls tools, but messages[{i}] is no tool result (role {role!r}); give each call's result as a 'tool' message", f"messages[{i - 1}].tool_calls")
        pending = None
        if role == "assistant" and m.get("tool_calls"):
            for j, call in enumerate(m["tool_calls"]):
                if known is not None and call["function"]["name"] not in known:
                    raise RecordError(f"messages[{i}].tool_calls[{j}] calls {call['function']['name']!r}, which is not in the record's tools ({', '.join(sorted(known))})",
                                      f"messages[{i}].tool_calls[{j}].function.name")
            pending = m["tool_calls"]
