"""What ``ftcore serve`` tells about itself: Prometheus metrics (``GET /metrics``, through
``prometheus_client``, one registry per app) and the access log, one JSON line per request.

The :class:`Monitor` is ASGI middleware: it times every HTTP request, sees its status, and reads
what the endpoint wrote into ``scope["ftcore"]`` (model, tokens, time to first token, how the
answer ended) once the response, streamed or not, is over. Successful ``/health`` and
``/metrics`` requests (probes and scrapes) are counted but not logged.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

QUIET_PATHS = ("/health", "/metrics")
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The server's Prometheus metrics; ``runner()`` gives the queue and batch gauges (None: not loaded)."""

    def __init__(self, runner: Callable[[], Any]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()

        def gauge(name: str, doc: str, read: Callable[[Any], float]) -> None:
            Gauge(name, doc, registry=registry).set_function(lambda: float(read(runner())) if runner() is not None else 0.0)

        self.requests = Counter("ftcore_requests", "HTTP requests by model and status code", ["model", "code"], registry=registry)
        self.latency = Histogram("ftcore_request_duration_seconds", "time from request to the end of its response", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram("ftcore_time_to_first_token_seconds", "time from request to the first answer text", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("ftcore_generated_tokens", "answer tokens generated", ["model"], registry=registry)
        self.prompt_tokens = Counter("ftcore_prompt_tokens", "prompt tokens read", ["model"], registry=registry)
        gauge("ftcore_queue_length", "requests waiting for a place in the running batch", lambda r: r.waiting)
        gauge("ftcore_running_batch_size", "answers being generated together now", lambda r: r.running)
        gauge("ftcore_peak_batch_size", "the most answers generated together since the server started", lambda r: r.peak)
        gauge("ftcore_tokens_per_second", "answer tokens generated per second, all requests, over the last 10 s", lambda r: r.tokens_per_second())

    def metrics(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def record(self, info: dict[str, Any], status: int, latency: float) -> None:
        model = info.get("model") or ""
        self.requests.labels(model, str(status)).inc()
        if model:
            self.latency.labels(model).observe(latency)
            if "ttft" in info:
                self.ttft.labels(model).observe(info["ttft"])
            self.tokens.labels(model).inc(info.get("completion_tokens") or 0)
            self.prompt_tokens.labels(model).inc(info.get("prompt_tokens") or 0)


class Monitor:
    """ASGI middleware: every HTTP request counted in ``metrics`` and, unless quiet, logged."""

    def __init__(self, app: Any, metrics: Metrics, access_log: bool = True, log: Callable[[str], None] | None = None) -> None:
        self.app, self.metrics, self.access_log = app, metrics, access_log
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        info: dict[str, Any] = {"started": started}
        scope["ftcore"] = info
        status = [0]  # none sent yet

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # no response at all: the client left first (499, as nginx logs it), or the app failed
            self._record(scope, info, status[0] or (499 if info.get("finish") == "disconnected" else 500), time.monotonic() - started)

    def _record(self, scope: Any, info: dict[str, Any], status: int, latency: float) -> None:
        self.metrics.record(info, status, latency)
        model = info.get("model")
        if not self.access_log or (scope["path"] in QUIET_PATHS and status < 400):
            return
        client = scope.get("client")
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()), "client": client[0] if client else None,
            "method": scope["method"], "path": scope["path"], "status": status, "model": model,
            "prompt_tokens": info.get("prompt_tokens"), "completion_tokens": info.get("completion_tokens"),
            "finish": info.get("finish"), "ttft_s": _round(info.get("ttft")), "latency_s": _round(latency),
        }
        if "error" in info:
            line["error"] = info["error"]
        self.log("access " + json.dumps({k: v for k, v in line.items() if v is not None}, ensure_ascii=False))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
