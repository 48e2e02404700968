"""``ftcore serve``: an OpenAI-compatible chat API and a web chat page (starlette + uvicorn).

``POST /v1/chat/completions`` (streamed as server-sent events or not), ``GET /v1/models``
and the page at ``/``. Owns the request limits and the request's life: bodies over
``--max-body-mb`` get 413, prompts longer than the model's context 400 (``max_tokens`` is
clamped to what fits), other bad bodies 400 and an unknown ``model`` 404, all as OpenAI-style
``{"error": {...}}``; with an API key, ``/v1`` needs ``Authorization: Bearer KEY`` (401).
One model answers one request at a time (:class:`OneAtATime`): each answer is generated in a
thread of its own and cancelled when its client goes away or ``--request-timeout`` passes
(the answer so far ends with ``finish_reason`` "length"). SIGTERM cuts in-flight answers
short (an error event, or 503) and exits 0; Ctrl-C does the same and exits 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import math
import sys
import threading
import time
import uuid
from collections import deque
from importlib import resources
from typing import Any, AsyncIterator, Awaitable, Callable

from ..errors import FtcoreError
from .generate import ChatModel, Generation, Sampling

#: how often a waiting request checks whether its client is still there, in seconds
POLL_S = 0.25
#: after a deadline, how long the answer may take to stop at its next token, in seconds
STOP_GRACE_S = 10.0
#: an oversized body is read (and thrown away) up to this many times the limit before the 413
DRAIN_FACTOR = 8

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
    """A validated chat request: ``messages``, ``sampling`` (a :class:`Sampling`), ``stream``; raises BadRequest."""
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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64):
        raise BadRequest("'seed' must be an integer that fits in 64 bits", "seed")
    sampling = Sampling(
        max_new_tokens=min(limit, max_new_tokens),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=tuple(s for s in stop if s),
        seed=seed,
    )
    return {"messages": clean, "sampling": sampling, "stream": stream}


def context_length(chat: ChatModel) -> tuple[int | None, str]:
    """The most tokens (prompt and answer together) the model takes, and where that number comes
    from: the model config's ``max_position_embeddings`` (or a kin), the tokenizer's
    ``model_max_length`` when it is a real limit (not transformers' "unset" 1e30), the smaller
    of the two; ``(None, "")`` when neither says."""
    found: list[tuple[int, str]] = []
    config = getattr(chat.model, "config", None)
    if config is not None and callable(getattr(config, "get_text_config", None)):
        config = config.get_text_config()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            found.append((value, f"the model config's {key}"))
            break
    value = getattr(chat.tokenizer, "model_max_length", None)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**9:
        found.append((value, "the tokenizer's model_max_length"))
    return min(found) if found else (None, "")


class Unavailable(Exception):
    """The model could not answer: busy until the deadline, or the server is stopping (503)."""


class OneAtATime:
    """Runs one :class:`Generation` at a time, each in a thread of its own, for the event loop.

    A request takes the model in its coroutine (first come, first served, up to its deadline)
    and the generation thread gives it back when it ends. So a request that goes away (its
    iterator closed, its client disconnected, its deadline passed, the server stopping) only
    sets the generation's ``cancel`` flag: generation stops at the next token, and no lock is
    ever held across a ``yield``. A continuous-batching scheduler would replace this class.
    """

    def __init__(self) -> None:
        self._busy = False
        self._queue: deque[int] = deque()  # tickets of the requests waiting for the model
        self._tickets = itertools.count()
        self._changed = asyncio.Event()  # the model came free, a waiter left, or stop()
        self._running: dict[Generation, Callable[[], None]] = {}  # generation -> wake its reader
        self._threads: list[threading.Thread] = []
        self.stopping = False

    def stop(self) -> None:
        """Server shutdown: cut running answers short and turn waiting requests away."""
        self.stopping = True
        for generation, wake in list(self._running.items()):
            generation.cancel.set()
            wake()
        self._changed.set()

    def join(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds in all) for the generation threads to end."""
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _release(self) -> None:
        self._busy = False
        self._changed.set()

    async def _take(self, deadline: float, gone: Callable[[], Awaitable[bool]] | None) -> bool:
        """Wait for the model (first come, first served) and take it; False if the client left."""
        loop = asyncio.get_running_loop()
        ticket = next(self._tickets)
        self._queue.append(ticket)
        try:
            while self._busy or self._queue[0] != ticket:
                if self.stopping:
                    raise Unavailable("the server is shutting down")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Unavailable("the model was busy with other requests for the whole --request-timeout; try again")
                self._changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, POLL_S))
                if gone is not None and await gone():
                    return False
            if self.stopping:
                raise Unavailable("the server is shutting down")
            self._busy = True
            return True
        finally:
            self._queue.remove(ticket)
            self._changed.set()  # the next in line looks again

    async def stream(self, generation: Generation, deadline: float, gone: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[str]:
        """The pieces of ``generation``'s answer, generated once the model is free.

        Ends early, and cancels the generation, when ``gone()`` says the client left or at
        ``deadline`` (``loop.time()``), then with ``finish_reason`` "length". Raises
        :class:`Unavailable` when the model does not come free in time or the server stops,
        and re-raises the generation's own errors. Close it (``aclosing``) when done with it.
        """
        loop = asyncio.get_running_loop()
        if not await self._take(deadline, gone):
            return
        pieces: deque[tuple[str, Any]] = deque()
        arrived = asyncio.Event()

        def post(kind: str, value: Any = None) -> None:  # from the generation thread
            def put() -> None:
                pieces.append((kind, value))
                arrived.set()

            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
                loop.call_soon_threadsafe(put)

        def work() -> None:
            try:
                for piece in generation:
                    post("piece", piece)
                post("end")
            except BaseException as exc:  # noqa: BLE001 - handed to the request, which answers with it
                post("error", exc)
            finally:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._release)

        started = False
        try:
            self._running[generation] = arrived.set
            thread = threading.Thread(target=work, name="ftcore-generation", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
            started = True
            stopping_at: float | None = None  # after a deadline: when to stop waiting for the last token
            checked = loop.time()  # when gone() was last asked
            while True:
                while pieces:
                    kind, value = pieces.popleft()
                    if kind == "piece":
                        yield value
                    elif kind == "error":
                        raise value
                    else:
                        return
                if self.stopping:
                    raise Unavailable("the server is shutting down; the answer was cut short")
                now = loop.time()
                if stopping_at is None and now >= deadline:
                    generation.interrupt("length")  # the answer so far, ended as if by max_tokens
                    stopping_at = now + STOP_GRACE_S
                elif stopping_at is not None and now >= stopping_at:
                    generation.finish_reason = "length"  # stuck in one forward pass: answer anyway
                    return
                if gone is not None and now - checked >= POLL_S:
                    if await gone():
                        return
                    checked = loop.time()
                if not pieces:  # (none came in meanwhile: clearing loses no wake-up)
                    arrived.clear()
                    wait = min(POLL_S, (stopping_at or deadline) - now)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(arrived.wait(), max(wait, 0.0))
        finally:
            generation.cancel.set()
            self._running.pop(generation, None)
            if not started:
                self._release()


def _log_failure(exc: BaseException) -> None:
    """One line in the server's log for a failed generation (the client gets it too)."""
    print(f"ftcore serve: generation failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _sse_event(cid: str, created: int, model_id: str, delta: dict[str, Any], finish: str | None = None) -> str:
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def _sse_error(message: str, kind: str = "server_error", code: str | None = None) -> str:
    return f"data: {json.dumps({'error': {'message': message, 'type': kind, 'param': None, 'code': code}})}\n\n"


async def _sse(pieces: AsyncIterator[str], generation: Generation, cid: str, created: int, model_id: str) -> AsyncIterator[str]:
    """The answer as server-sent events of chat.completion.chunk objects, then [DONE]; an
    ``{"error": ...}`` event instead of the end when generation fails or cannot go on."""
    async with contextlib.aclosing(pieces):
        yield _sse_event(cid, created, model_id, {"role": "assistant", "content": ""})
        try:
            async for piece in pieces:
                yield _sse_event(cid, created, model_id, {"content": piece})
        except Unavailable as exc:
            yield _sse_error(str(exc), code="server_unavailable")
            return
        except Exception as exc:  # generation failed: said as OpenAI does, in the stream
            _log_failure(exc)
            yield _sse_error(f"generation failed: {type(exc).__name__}: {exc}")
            return
    yield _sse_event(cid, created, model_id, {}, generation.finish_reason)
    yield "data: [DONE]\n\n"


def create_app(chat: ChatModel, *, api_key: str | None = None, max_new_tokens: int = 512,
               request_timeout: float = 300.0, max_body_bytes: int = 8_000_000) -> Any:
    """The starlette application serving ``chat``; ``app.state.runner`` is its :class:`OneAtATime`."""
    import anyio
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    from .. import __version__
    from ..data.formats import RecordError

    created = int(time.time())
    page = resources.files("ftcore.chat").joinpath("static/index.html").read_text(encoding="utf-8")
    runner = OneAtATime()
    context, context_source = context_length(chat)

    class Stream(StreamingResponse):
        """Closes its body iterator however the response ends, so the generation is cancelled
        at once (and not when the abandoned generator is garbage-collected)."""

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.body_iterator.aclose()  # type: ignore[attr-defined]

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

    async def read_body(request: Request, deadline: float) -> bytes:
        """The body, up to ``max_body_bytes``; past that 413, once the rest is read and thrown away
        (up to a bound), so that the client, still sending, gets to read the answer."""
        too_large = BadRequest(f"the request body is larger than this server's limit of {max_body_bytes} bytes (ftcore serve --max-body-mb)",
                               status=413, code="request_too_large")
        length = request.headers.get("content-length", "")
        drain = length.isdigit() and int(length) > max_body_bytes
        if drain and request.headers.get("expect", "").lower() == "100-continue":
            raise too_large  # the client waits for a go-ahead before sending: nothing to read
        chunks, size = [], 0
        try:
            with anyio.fail_after(max(deadline - asyncio.get_running_loop().time(), 0.0)):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_body_bytes:
                        drain = True
                    if drain:
                        chunks = []
                        if size > DRAIN_FACTOR * max_body_bytes:
                            break  # enough: the connection closes under the client
                    else:
                        chunks.append(chunk)
        except TimeoutError:
            if drain:
                raise too_large from None
            raise BadRequest(f"the request body did not arrive within --request-timeout ({request_timeout:g} s)", status=408, code="request_timeout") from None
        if drain:
            raise too_large
        return b"".join(chunks)

    async def prepare(request: Request, deadline: float) -> tuple[dict[str, Any], Generation]:
        """The validated request and its generation (prompt rendered, ``max_tokens`` fitted); raises BadRequest."""
        raw = await read_body(request, deadline)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {str(exc)[:200]}") from None
        data = parse_request(body, max_new_tokens, images=chat.accepts_images)
        try:  # rendering and tokenizing a long prompt takes a while: off the event loop
            generation = await run_in_threadpool(chat.generation, data["messages"], data["sampling"])
        except (RecordError, FtcoreError) as exc:
            raise BadRequest(getattr(exc, "message", str(exc)), "messages") from None
        model = body.get("model")
        if model is not None and model != chat.name:
            raise BadRequest(f"The model '{model[:200]}' does not exist; this server serves: {chat.name}", "model", status=404, code="model_not_found")
        if context is not None:
            room = context - generation.prompt_tokens
            if room < 1:
                raise BadRequest(
                    f"the prompt is {generation.prompt_tokens} tokens, but the model's context is {context} tokens ({context_source}), "
                    "which leaves no room for an answer: shorten the conversation", "messages", code="context_length_exceeded",
                )
            if generation.max_new_tokens > room:
                generation.limit(room)  # prompt + answer must fit in the context
        return data, generation

    async def completions(request: Request) -> Any:
        deadline = asyncio.get_running_loop().time() + request_timeout
        if not authorized(request):
            return unauthorized()
        try:
            data, generation = await prepare(request, deadline)
        except BadRequest as exc:
            return _error(exc.status, exc.message, exc.param, exc.code, exc.kind)
        except ClientDisconnect:  # gone while sending its body: nobody to answer
            return _error(400, "the client disconnected")
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        pieces = runner.stream(generation, deadline, request.is_disconnected)
        if data["stream"]:
            return Stream(_sse(pieces, generation, cid, now, chat.name), media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text = []
        try:
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    text.append(piece)
        except Unavailable as exc:
            return _error(503, str(exc), code="server_unavailable", kind="server_error")
        except Exception as exc:  # generation failed: a server error, said as OpenAI does
            _log_failure(exc)
            return _error(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error")
        answer = "".join(text).rstrip()
        completion = generation.completion_tokens
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": now, "model": chat.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": generation.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": completion, "total_tokens": generation.prompt_tokens + completion},
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
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    app.state.runner = runner
    return app


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


def serve(chat: ChatModel, sock: Any, *, api_key: str | None = None, max_new_tokens: int = 512,
          request_timeout: float = 300.0, max_body_bytes: int = 8_000_000) -> None:
    """Serve ``chat`` on the bound socket ``sock`` until Ctrl-C/SIGTERM; print the address first.

    On SIGTERM or Ctrl-C running answers are cut short and waiting requests turned away, so
    uvicorn's graceful shutdown ends at once; SIGTERM then returns normally (exit 0), Ctrl-C
    raises KeyboardInterrupt as usual.
    """
    import signal

    import uvicorn

    app = create_app(chat, api_key=api_key, max_new_tokens=max_new_tokens, request_timeout=request_timeout, max_body_bytes=max_body_bytes)
    runner: OneAtATime = app.state.runner

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == signal.SIGTERM:
                self.should_exit = True  # not re-raised after shutdown: a stop asked for is a clean exit
            else:
                super().handle_exit(sig, frame)
            with contextlib.suppress(RuntimeError):  # a signal handler: let the loop do the work
                asyncio.get_running_loop().call_soon_threadsafe(runner.stop)

    host, port = sock.getsockname()[:2]
    sock.listen(2048)  # connections made from now on wait in the backlog until uvicorn accepts them
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {chat.name} (template {chat.template.name}) at http://{shown}:{port}/  (OpenAI API: http://{shown}:{port}/v1)", flush=True)
    if api_key:
        print("clients must send 'Authorization: Bearer <your --api-key>'", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    try:
        Server(config).run(sockets=[sock])
    finally:
        runner.join(timeout=5)  # cancelled generations stop at their next token
