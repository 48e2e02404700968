"""``ftcore serve``: an OpenAI-compatible chat API and a web chat page (starlette + uvicorn).

``POST /v1/chat/completions`` (streamed as server-sent events or not), ``GET /v1/models``
and the page at ``/``. One model answers one request at a time (requests queue on a lock).
Bad request bodies get 400 with an OpenAI-style ``{"error": {...}}``; with an API key,
``/v1`` needs ``Authorization: Bearer KEY`` (401 otherwise).
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from importlib import resources
from typing import Any, Iterator

from ..errors import FtcoreError
from .generate import ChatModel

ROLES = ("system", "user", "assistant")


def check_server_deps() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise FtcoreError(f"ftcore serve needs starlette and uvicorn ({exc})", hint="pip install 'ftcore[serve]'") from None


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind


def _error(status: int, message: str, param: str | None = None, code: str | None = None, kind: str = "invalid_request_error") -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{key}' must be a number, got {json.dumps(value)}", key)
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
    """A validated chat request: messages, sampling settings, stream flag; raises BadRequest."""
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
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("'seed' must be an integer", "seed")
    settings = {
        "max_new_tokens": min(limit, max_new_tokens),
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        "repetition_penalty": 1.0,
        "stop": [s for s in stop if s],
        "seed": seed,
    }
    return {"messages": clean, "settings": settings, "stream": stream}


def create_app(chat: ChatModel, *, api_key: str | None = None, max_new_tokens: int = 512) -> Any:
    """The starlette application serving ``chat``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    from .. import __version__
    from ..data.formats import RecordError

    created = int(time.time())
    page = resources.files("ftcore.chat").joinpath("static/index.html").read_text(encoding="utf-8")

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())

    def unauthorized() -> Any:
        return _error(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY' with the key given to ftcore serve --api-key", code="invalid_api_key")

    async def index(request: Request) -> Any:
        return HTMLResponse(page)

    async def models(request: Request) -> Any:
        if not authorized(request):
            return unauthorized()
        return JSONResponse({"object": "list", "data": [{"id": chat.name, "object": "model", "created": created, "owned_by": f"ftcore {__version__}"}]})

    def start(request_data: dict[str, Any]) -> Any:
        generation = chat.generation(request_data["messages"], **request_data["settings"])  # renders the prompt
        return generation

    async def completions(request: Request) -> Any:
        if not authorized(request):
            return unauthorized()
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"the request body is not valid JSON: {exc}") from None
            data = parse_request(body, max_new_tokens, images=chat.accepts_images)
            try:
                generation = start(data)
            except (RecordError, FtcoreError) as exc:
                raise BadRequest(getattr(exc, "message", str(exc)), "messages") from None
        except BadRequest as exc:
            return _error(exc.status, exc.message, exc.param, exc.code, exc.kind)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        model_id = chat.name
        if data["stream"]:
            return StreamingResponse(_sse(chat, generation, cid, now, model_id), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        def run() -> str:
            with chat.lock:
                return generation.run()

        try:
            text = await run_in_threadpool(run)
        except Exception as exc:  # generation failed: a server error, said as OpenAI does
            return _error(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error")
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": now, "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": generation.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens, "total_tokens": generation.prompt_tokens + generation.completion_tokens},
        })

    async def not_found(request: Request, exc: Exception) -> Any:
        return _error(404, f"no route {request.method} {request.url.path} (routes: GET /, GET /v1/models, POST /v1/chat/completions)", code="not_found")

    async def bad_method(request: Request, exc: Exception) -> Any:
        return _error(405, f"method {request.method} is not allowed on {request.url.path}", code="method_not_allowed")

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})


def _sse(chat: ChatModel, generation: Any, cid: str, created: int, model_id: str) -> Iterator[str]:
    """The answer as server-sent events of chat.completion.chunk objects, then [DONE]."""

    def event(delta: dict[str, Any], finish: str | None = None) -> str:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    with chat.lock:  # a sync generator: starlette iterates it in a worker thread
        yield event({"role": "assistant", "content": ""})
        try:
            for piece in generation:
                yield event({"content": piece})
        except Exception as exc:
            error = {"error": {"message": f"generation failed: {type(exc).__name__}: {exc}", "type": "server_error", "param": None, "code": None}}
            yield f"data: {json.dumps(error)}\n\n"
            return
        yield event({}, generation.finish_reason)
        yield "data: [DONE]\n\n"


def open_socket(host: str, port: int) -> Any:
    """A listening-ready socket bound to ``host:port`` (0 = a free port), or a clear error."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise FtcoreError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="pick another --port, or check --host") from None
    return sock


def serve(chat: ChatModel, sock: Any, *, api_key: str | None = None, max_new_tokens: int = 512) -> None:
    """Serve ``chat`` on the bound socket ``sock`` until Ctrl-C/SIGTERM; print the address first."""
    import uvicorn

    app = create_app(chat, api_key=api_key, max_new_tokens=max_new_tokens)
    host, port = sock.getsockname()[:2]
    sock.listen(2048)  # connections made from now on wait in the backlog until uvicorn accepts them
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {chat.name} (template {chat.template.name}) at http://{shown}:{port}/  (OpenAI API: http://{shown}:{port}/v1)", flush=True)
    if api_key:
        print("clients must send 'Authorization: Bearer <your --api-key>'", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
