"""What a chat completion request may hold (OpenAI's ``/v1/chat/completions`` body): parsed and
checked into messages, a :class:`~ftcore.chat.generate.Sampling` and the streaming options, or a
:class:`BadRequest` naming the field (``param``) that is wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .generate import Sampling

ROLES = ("system", "user", "assistant")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{key}' must be a number, got {json.dumps(value)}", key)
    if isinstance(value, float) and not math.isfinite(value):  # json.loads reads NaN and Infinity
        raise BadRequest(f"'{key}' must be a finite number, got {value}", key)
    if value < low or value > high or (low_open and value == low):
        raise BadRequest(f"'{key}' must be {'>' if low_open else '>='} {low} and <= {high}, got {value}", key)
    return float(value)


def _image(part: dict[str, Any], where: str) -> bytes:
    """The bytes of an ``image_url`` part holding a base64 data URL."""
    import base64
    import binascii

    url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise BadRequest(f"{where}.image_url.url must be a base64 data URL (data:image/png;base64,...)", where)
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}.image_url.url is not valid base64", where) from None


def _content(value: Any, i: int, images: list[bytes] | None = None) -> str:
    """The text of a message; ``image_url`` parts go to ``images`` (None: images refused)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        texts = []
        for j, part in enumerate(value):
            where = f"messages[{i}].content[{j}]"
            if isinstance(part, dict) and part.get("type") == "image_url":
                if images is None:
                    raise BadRequest(f"{where}: this model does not take images", f"messages[{i}].content")
                images.append(_image(part, where))
                continue
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"{where} must be a text part ({{\"type\": \"text\", \"text\": ...}})", f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(f"messages[{i}].content must be a string, got {json.dumps(value)[:80]}", f"messages[{i}].content")


def parse_request(body: Any, max_new_tokens: int, images: bool = False) -> dict[str, Any]:
    """A validated chat request: ``messages``, ``sampling`` (a :class:`Sampling`), ``stream`` and
    ``usage`` (``stream_options.include_usage``: a last chunk with the token counts); raises BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if "model" in body and not isinstance(body["model"], str):
        raise BadRequest("'model' must be a string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object with role and content", f"messages[{i}]")
        if m.get("role") == "developer":
            m = {**m, "role": "system"}
        if m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {json.dumps(m.get('role'))}", f"messages[{i}].role")
        found: list[bytes] | None = [] if images else None
        clean.append({"role": m["role"], "content": _content(m.get("content"), i, found)})
        if found:
            clean[-1]["images"] = found
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest("only n=1 is supported", "n")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        limit = max_new_tokens
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise BadRequest(f"'max_tokens' must be a positive integer, got {json.dumps(limit)}", "max_tokens")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise BadRequest("'stop' must be a string or a list of up to 4 strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)):
        raise BadRequest("'stream_options' must be an object such as {\"include_usage\": true}", "stream_options")
    usage = bool(options and options.get("include_usage"))
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64):
        raise BadRequest("'seed' must be an integer that fits in 64 bits", "seed")
    sampling = Sampling(
        max_new_tokens=min(limit, max_new_tokens),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=tuple(s for s in stop if s),
        seed=seed,
    )
    return {"messages": clean, "sampling": sampling, "stream": stream, "usage": usage}
