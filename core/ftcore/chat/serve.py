"""``ftcore serve``: an OpenAI-compatible chat API, a web chat page, health and metrics
(starlette + uvicorn).

``POST /v1/chat/completions`` (streamed as server-sent events or not), ``GET /v1/models`` (the
one model, or the base and its adapters: the request's ``model`` picks one), the page at ``/``,
``GET /health`` (503 until the model has loaded, 200 then) and ``GET /metrics`` (Prometheus).
Owns the request's life: bodies over ``--max-body-mb`` get 413, prompts longer than the model's
context 400 (``max_tokens`` is clamped to what fits), other bad bodies 400 and an unknown
``model`` 404 listing the served names, all as OpenAI-style ``{"error": {...}}``; with an API key,
``/v1`` needs ``Authorization: Bearer KEY`` (401). Answers are decoded together by the
continuous batcher (:mod:`ftcore.chat.batching`; a plugin's image model one at a time); when
``--max-queue`` requests wait already, more get 429 with ``Retry-After``. An answer is cancelled
when its client goes away or ``--request-timeout`` passes (the answer so far ends with
``finish_reason`` "length"). SIGTERM cuts in-flight answers short (an error event, or 503) and
exits 0; Ctrl-C does the same and exits 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import threading
import time
import uuid
from importlib import resources
from typing import Any, AsyncIterator, Callable

from ..errors import FtcoreError
from .batching import BASE_ROW, Batcher, QueueFull, Unavailable
from .catalog import Catalog, Served
from .generate import ChatModel, Generation
from .monitor import Metrics, Monitor
from .one_at_a_time import OneAtATime
from .openai_request import BadRequest, parse_request

#: an oversized body is read (and thrown away) up to this many times the limit before the 413
DRAIN_FACTOR = 8
#: Retry-After, in seconds: a full queue, a model still loading
RETRY_QUEUE_S, RETRY_LOADING_S = 1, 5


def check_server_deps() -> None:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise FtcoreError(f"ftcore serve needs starlette, uvicorn and prometheus_client ({exc})", hint="pip install 'ftcore[serve]'") from None


def _error(status: int, message: str, param: str | None = None, code: str | None = None, kind: str = "invalid_request_error",
           retry_after: int | None = None) -> Any:
    from starlette.responses import JSONResponse

    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status, headers=headers)


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


class Service:
    """What the app serves: empty until :meth:`ready` hands it the loaded :class:`Catalog`, then
    the catalog and the runner that answers with it (the batcher, or one at a time for a model
    that takes images)."""

    def __init__(self, max_batch: int = 64, max_queue: int = 256) -> None:
        self.max_batch, self.max_queue = max_batch, max_queue
        self.catalog: Catalog | None = None
        self.runner: Any = None
        self.context: tuple[int | None, str] = (None, "")
        self.stopping = False

    def ready(self, catalog: Catalog) -> None:
        first = catalog.first
        self.context = context_length(first)
        if first.accepts_images:
            self.runner = OneAtATime(self.max_queue)
        else:
            self.runner = Batcher(catalog.model, max_batch=self.max_batch, max_queue=self.max_queue, multi_adapter=catalog.multi_adapter)
        self.catalog = catalog  # last: a request that sees the catalog finds the runner

    def stop(self) -> None:
        """Server shutdown: cut running answers short and turn waiting requests away."""
        self.stopping = True
        if self.runner is not None:
            self.runner.stop()

    def join(self, timeout: float) -> None:
        if self.runner is not None:
            self.runner.join(timeout)


def _log_failure(exc: BaseException) -> None:
    """One line in the server's log for a failed generation (the client gets it too)."""
    print(f"ftcore serve: generation failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _sse_event(cid: str, created: int, model_id: str, delta: dict[str, Any], finish: str | None = None) -> str:
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def _sse_error(message: str, kind: str = "server_error", code: str | None = None) -> str:
    return f"data: {json.dumps({'error': {'message': message, 'type': kind, 'param': None, 'code': code}})}\n\n"


def _usage(generation: Generation) -> dict[str, int]:
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


async def _timed(pieces: AsyncIterator[str], generation: Generation, info: dict[str, Any]) -> AsyncIterator[str]:
    """``pieces``, noting in the request's ``info`` (read by the access log and metrics) the time
    to the first piece and how the answer ended."""
    ended = False
    try:
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                if "ttft" not in info:
                    info["ttft"] = time.monotonic() - info["started"]
                yield piece
        ended = True
    except Unavailable:
        info["finish"] = "unavailable"
        raise
    except Exception:
        info["finish"] = "error"
        raise
    finally:
        info["completion_tokens"] = generation.completion_tokens
        info.setdefault("finish", generation.finish_reason if ended else "disconnected")


async def _sse(pieces: AsyncIterator[str], generation: Generation, cid: str, created: int, model_id: str, usage: bool) -> AsyncIterator[str]:
    """The answer as server-sent events of chat.completion.chunk objects (with ``usage``, a last
    chunk with the token counts), then [DONE]; an ``{"error": ...}`` event instead of the end when
    generation fails or cannot go on."""
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
    if usage:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id, "choices": [], "usage": _usage(generation)}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def create_app(served: Catalog | ChatModel | None = None, *, api_key: str | None = None, max_new_tokens: int = 512,
               request_timeout: float = 300.0, max_body_bytes: int = 8_000_000, max_batch: int = 64, max_queue: int = 256,
               access_log: bool = True) -> Any:
    """The starlette application; ``app.state.service`` is its :class:`Service`, ready at once when
    ``served`` is given, else when ``service.ready(catalog)`` is called (``/health`` says 503 until then)."""
    import anyio
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from .. import __version__
    from ..data.formats import RecordError

    created = int(time.time())
    page = resources.files("ftcore.chat").joinpath("static/index.html").read_text(encoding="utf-8")
    service = Service(max_batch, max_queue)
    metrics = Metrics(lambda: service.runner)
    if served is not None:
        service.ready(served if isinstance(served, Catalog) else Catalog.single(served))

    class Stream(StreamingResponse):
        """Closes its body iterator however the response ends, and cancels its answer, so that
        generation stops at once (even when the body never started)."""

        def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_close = on_close

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.on_close()
                await self.body_iterator.aclose()  # type: ignore[attr-defined]

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())

    def unauthorized() -> Any:
        return _error(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY' with the key given to ftcore serve --api-key", code="invalid_api_key")

    def not_ready() -> Any:
        if service.stopping:
            return _error(503, "the server is shutting down", code="server_unavailable", kind="server_error")
        return _error(503, "the model is still loading; try again shortly (GET /health says 200 once it is ready)",
                      code="model_loading", kind="server_error", retry_after=RETRY_LOADING_S)

    async def index(request: Request) -> Any:
        return HTMLResponse(page)

    async def health(request: Request) -> Any:
        if service.catalog is None or service.stopping:
            return JSONResponse({"status": "stopping" if service.stopping else "loading"}, status_code=503, headers={"Retry-After": str(RETRY_LOADING_S)})
        return JSONResponse({"status": "ok", "models": service.catalog.names()})

    async def metrics_page(request: Request) -> Any:
        body, content_type = metrics.metrics()
        return Response(body, media_type=content_type)

    async def models(request: Request) -> Any:
        if not authorized(request):
            return unauthorized()
        catalog = service.catalog
        if catalog is None:
            return not_ready()
        base = next((e.name for e in catalog.entries.values() if e.adapter == BASE_ROW), None)
        data = []
        for entry in catalog.entries.values():
            item = {"id": entry.name, "object": "model", "created": created, "owned_by": f"ftcore {__version__}"}
            if base is not None and entry.adapter not in (None, BASE_ROW):
                item["parent"] = base  # as vLLM lists a LoRA adapter
            data.append(item)
        return JSONResponse({"object": "list", "data": data})

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

    async def prepare(request: Request, catalog: Catalog, deadline: float) -> tuple[Served, dict[str, Any], Generation]:
        """The validated request, the served model it names and its generation (prompt rendered,
        ``max_tokens`` fitted); raises BadRequest."""
        raw = await read_body(request, deadline)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {str(exc)[:200]}") from None
        data = parse_request(body, max_new_tokens, images=catalog.first.accepts_images)
        name = body.get("model")
        entry = catalog.entries.get(name) if name is not None else catalog.entries[catalog.default]
        chat = entry.chat if entry is not None else catalog.first  # an unknown name: bad messages still get their 400 first
        try:  # rendering and tokenizing a long prompt takes a while: off the event loop
            generation = await run_in_threadpool(chat.generation, data["messages"], data["sampling"])
        except (RecordError, FtcoreError) as exc:
            raise BadRequest(getattr(exc, "message", str(exc)), "messages") from None
        if entry is None:
            raise BadRequest(f"The model '{name[:200]}' does not exist; this server serves: {', '.join(catalog.names())}", "model", status=404, code="model_not_found")
        context, context_source = service.context
        if context is not None:
            room = context - generation.prompt_tokens
            if room < 1:
                raise BadRequest(
                    f"the prompt is {generation.prompt_tokens} tokens, but the model's context is {context} tokens ({context_source}), "
                    "which leaves no room for an answer: shorten the conversation", "messages", code="context_length_exceeded",
                )
            if generation.max_new_tokens > room:
                generation.limit(room)  # prompt + answer must fit in the context
        return entry, data, generation

    async def completions(request: Request) -> Any:
        deadline = asyncio.get_running_loop().time() + request_timeout
        info: dict[str, Any] = request.scope.setdefault("ftcore", {"started": time.monotonic()})
        if not authorized(request):
            return unauthorized()
        catalog, runner = service.catalog, service.runner
        if catalog is None or service.stopping:
            return not_ready()
        try:
            entry, data, generation = await prepare(request, catalog, deadline)
        except BadRequest as exc:
            info["error"] = exc.code or exc.kind
            return _error(exc.status, exc.message, exc.param, exc.code, exc.kind)
        except ClientDisconnect:  # gone while sending its body: nobody to answer
            info["finish"] = "disconnected"
            return _error(400, "the client disconnected")
        info.update(model=entry.name, prompt_tokens=generation.prompt_tokens)
        try:
            ticket = runner.submit(generation, entry.adapter)
        except QueueFull as exc:
            info["error"] = "queue_full"
            return _error(429, str(exc), code="queue_full", kind="rate_limit_error", retry_after=RETRY_QUEUE_S)
        except Unavailable as exc:
            info["error"] = "server_unavailable"
            return _error(503, str(exc), code="server_unavailable", kind="server_error", retry_after=RETRY_QUEUE_S)

        async def gone() -> bool:
            if await request.is_disconnected():
                info["finish"] = "disconnected"
                return True
            return False

        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        pieces = _timed(runner.stream(ticket, deadline, gone), generation, info)
        if data["stream"]:
            return Stream(_sse(pieces, generation, cid, now, entry.name, data["usage"]), media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}, on_close=lambda: runner.cancel(ticket))
        text = []
        try:
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    text.append(piece)
        except Unavailable as exc:
            return _error(503, str(exc), code="server_unavailable", kind="server_error", retry_after=RETRY_QUEUE_S)
        except Exception as exc:  # generation failed: a server error, said as OpenAI does
            _log_failure(exc)
            return _error(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error")
        finally:
            runner.cancel(ticket)
        answer = "".join(text).rstrip()
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": now, "model": entry.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": generation.finish_reason, "logprobs": None}],
            "usage": _usage(generation),
        })

    async def not_found(request: Request, exc: Exception) -> Any:
        return _error(404, f"no route {request.method} {request.url.path} (routes: GET /, GET /health, GET /metrics, GET /v1/models, POST /v1/chat/completions)", code="not_found")

    async def bad_method(request: Request, exc: Exception) -> Any:
        return _error(405, f"method {request.method} is not allowed on {request.url.path}", code="method_not_allowed")

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    app.add_middleware(Monitor, metrics=metrics, access_log=access_log)
    app.state.service = service
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


def _describe(catalog: Catalog) -> str:
    return ", ".join(f"{e.name} (template {e.chat.template.name})" for e in catalog.entries.values())


def serve(load: Callable[[], Catalog], sock: Any, *, label: str, api_key: str | None = None, max_new_tokens: int = 512,
          request_timeout: float = 300.0, max_body_bytes: int = 8_000_000, max_batch: int = 64, max_queue: int = 256,
          access_log: bool = True) -> None:
    """Serve what ``load()`` returns on the bound socket ``sock`` until Ctrl-C/SIGTERM.

    The server answers at once (``/health`` 503 meanwhile) and loads in a thread; once loaded it
    prints the address. A load that fails stops the server and its error is raised here. On
    SIGTERM or Ctrl-C running answers are cut short and waiting requests turned away, so
    uvicorn's graceful shutdown ends at once; SIGTERM then returns normally (exit 0), Ctrl-C
    raises KeyboardInterrupt as usual.
    """
    import signal

    import uvicorn

    app = create_app(api_key=api_key, max_new_tokens=max_new_tokens, request_timeout=request_timeout, max_body_bytes=max_body_bytes,
                     max_batch=max_batch, max_queue=max_queue, access_log=access_log)
    service: Service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == signal.SIGTERM:
                self.should_exit = True  # not re-raised after shutdown: a stop asked for is a clean exit
            else:
                super().handle_exit(sig, frame)
            with contextlib.suppress(RuntimeError):  # a signal handler: let the loop do the work
                asyncio.get_running_loop().call_soon_threadsafe(service.stop)

    host, port = sock.getsockname()[:2]
    sock.listen(2048)  # connections made from now on wait in the backlog until uvicorn accepts them
    shown = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = Server(config)
    failed: list[BaseException] = []

    def loading() -> None:
        try:
            catalog = load()
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread, after the server stops
            failed.append(exc)
            server.should_exit = True
            return
        service.ready(catalog)
        print(f"serving {_describe(catalog)} at {shown}/  (OpenAI API: {shown}/v1, health: {shown}/health, metrics: {shown}/metrics)", flush=True)
        if api_key:
            print("clients must send 'Authorization: Bearer <your --api-key>'", flush=True)

    print(f"loading {label}; {shown}/health answers 503 until it is ready", flush=True)
    threading.Thread(target=loading, name="ftcore-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        service.join(timeout=5)  # cancelled generations stop at their next step
    if failed:
        raise failed[0]
