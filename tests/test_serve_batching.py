"""``ftcore serve`` decodes concurrent requests together (issue #19 items 1 and 3): the same greedy
answers as one-at-a-time ``generate``, a bounded queue (429 with Retry-After), clients that go
away leave the batch, ``/health`` before and after loading, ``/metrics`` in Prometheus text and
one access-log line per request; against the real CLI in subprocesses on loopback, and the app
in process for the loading state."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from security.test_serve_limits import HANG, _variant, hang_up, read_events, start_server

pytestmark = pytest.mark.slow
pytest.importorskip("starlette", reason="ftcore serve needs the serve extra: pip install 'ftcore[serve]'")
pytest.importorskip("uvicorn", reason="ftcore serve needs the serve extra: pip install 'ftcore[serve]'")
prometheus = pytest.importorskip("prometheus_client", reason="ftcore serve needs the serve extra: pip install 'ftcore[serve]'")

#: prompts and answer lengths that differ, so rows join and leave the batch at different steps
REQUESTS = [
    ("Who are you?", 40),
    ("Hello!", 7),
    ("Please introduce yourself. What is your name? I would like to know everything about you.", 64),
    ("你好！你是谁？", 23),
    ("Numbers: 0 1 2 3", 51),
    ("What are the symptoms of a cold?", 12),
]


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory, tiny_llama: Path) -> Path:
    """The tiny model with EOS and <|im_end|> suppressed: every answer runs to its max_tokens."""
    return _variant(tiny_llama, tmp_path_factory.getbasetemp() / "tiny-endless", 4096)


def _post(url: str, body: dict, timeout: float = HANG + 30) -> tuple[int, Any, dict]:
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def _stream(url: str, body: dict) -> tuple[str, dict]:
    """A streamed answer's text and its usage chunk (stream_options.include_usage)."""
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG + 30)
    conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    conn.close()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, chunks[-1]["usage"]


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_concurrent_greedy_answers_equal_sequential_generate(endless_model: Path) -> None:
    from ftcore.app import installed_parts
    from ftcore.chat.generate import Sampling
    from ftcore.chat.resolve import load_chat_model

    chat = load_chat_model(installed_parts(), str(endless_model), template="internlm2_chat", warn=lambda m: None)
    expected = []
    for prompt, n in REQUESTS:  # one at a time, through transformers' generate
        generation = chat.generation([{"role": "user", "content": prompt}], Sampling(max_new_tokens=n))
        expected.append((generation.run(), generation.completion_tokens))
    assert [tokens for _, tokens in expected] == [n for _, n in REQUESTS]

    server = start_server(endless_model, "--max-batch", "4")  # 6 requests: two wait for a row, then join
    try:
        bodies = [{"messages": [{"role": "user", "content": p}], "max_tokens": n, "temperature": 0} for p, n in REQUESTS]
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            plain = list(pool.map(lambda b: _post(server.url, b), bodies))
            streamed = list(pool.map(lambda b: _stream(server.url, b), bodies))
        for (status, _, body), (text, usage), (want, tokens) in zip(plain, streamed, expected):
            assert status == 200, body
            assert body["choices"][0]["message"]["content"] == want and body["usage"]["completion_tokens"] == tokens
            assert body["choices"][0]["finish_reason"] == "length"
            assert text == want and usage["completion_tokens"] == tokens
        metrics = _metrics(server.url)
        assert metrics[("ftcore_peak_batch_size", ())] >= 2  # they really were decoded together
        assert metrics[("ftcore_peak_batch_size", ())] <= 4  # and never more than --max-batch
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.output()


def test_a_full_queue_gets_429_with_retry_after_and_gone_clients_leave(endless_model: Path) -> None:
    server = start_server(endless_model, "--max-batch", "1", "--max-queue", "1", "--max-new-tokens", "100000")
    try:
        long_answer = {"messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 60_000, "temperature": 1.0}
        running = server.open_stream(long_answer)
        read_events(running[1], 2)  # it has the one row
        waiting = server.open_stream(long_answer)  # it waits in the queue (its role event comes at once)
        status, headers, body = _post(server.url, long_answer)
        assert status == 429 and body["error"]["code"] == "queue_full" and "--max-queue 1" in body["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        hang_up(*running)  # the running answer leaves the batch, the waiting one takes the row...
        read_events(waiting[1], 2)
        hang_up(*waiting)  # ...and leaves it too
        started = time.monotonic()
        status, _, body = _post(server.url, {"messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 3, "temperature": 0})
        assert status == 200 and body["usage"]["completion_tokens"] == 3, body
        assert time.monotonic() - started < HANG, "a gone client's answer still held the only row"
        metrics = _metrics(server.url)
        assert metrics[("ftcore_requests_total", (("code", "429"), ("model", "tiny-endless")))] == 1
        assert metrics[("ftcore_queue_length", ())] == 0 and metrics[("ftcore_running_batch_size", ())] == 0
    finally:
        assert server.stop() == 0
    output = server.output()
    assert "Traceback" not in output and "Cancel" not in output, output
    log = [json.loads(line.split(" ", 1)[1]) for line in output.splitlines() if line.startswith("access ")]
    finishes = [entry.get("finish") for entry in log if entry["path"] == "/v1/chat/completions"]
    assert finishes.count("disconnected") == 2 and "length" in finishes, log


def test_metrics_and_access_log_count_every_request(endless_model: Path) -> None:
    server = start_server(endless_model, "--max-new-tokens", "64")
    try:
        sizes = [5, 9, 13]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda n: _post(server.url, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": n, "temperature": 0}), sizes))
        assert [r[2]["usage"]["completion_tokens"] for r in replies] == sizes
        assert _post(server.url, {"model": "nope", "messages": [{"role": "user", "content": "Hi"}]})[0] == 404
        with urllib.request.urlopen(server.url + "/health", timeout=30) as resp:
            assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok", "models": ["tiny-endless"]}
        metrics = _metrics(server.url)
    finally:
        assert server.stop() == 0
    model = (("model", "tiny-endless"),)
    assert metrics[("ftcore_requests_total", (("code", "200"),) + model)] == 3
    assert metrics[("ftcore_requests_total", (("code", "404"), ("model", "")))] == 1
    assert metrics[("ftcore_generated_tokens_total", model)] == sum(sizes)
    assert metrics[("ftcore_time_to_first_token_seconds_count", model)] == 3
    assert metrics[("ftcore_request_duration_seconds_count", model)] == 3
    assert ("ftcore_tokens_per_second", ()) in metrics and ("ftcore_queue_length", ()) in metrics
    output = server.output()
    log = [json.loads(line.split(" ", 1)[1]) for line in output.splitlines() if line.startswith("access ")]
    answers = [entry for entry in log if entry["path"] == "/v1/chat/completions"]
    assert sorted(e["completion_tokens"] for e in answers if e["status"] == 200) == sizes
    for entry in answers:
        assert entry["method"] == "POST" and entry["latency_s"] >= 0
    assert [e["status"] for e in answers].count(404) == 1
    assert all(e["model"] == "tiny-endless" and e["ttft_s"] <= e["latency_s"] for e in answers if e["status"] == 200)
    assert not [e for e in log if e["path"] in ("/health", "/metrics")]  # probes and scrapes are not logged
    assert "Traceback" not in output


def test_health_is_503_until_the_model_is_loaded(tiny_llama: Path) -> None:
    from starlette.testclient import TestClient

    from ftcore.app import installed_parts
    from ftcore.chat.catalog import Catalog
    from ftcore.chat.resolve import load_chat_model
    from ftcore.chat.serve import create_app

    app = create_app(api_key="k")
    with TestClient(app) as client:
        loading = client.get("/health")
        assert loading.status_code == 503 and loading.json() == {"status": "loading"} and loading.headers["Retry-After"]
        busy = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, headers={"Authorization": "Bearer k"})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "model_loading" and busy.headers["Retry-After"]
        assert client.get("/v1/models").status_code == 401  # the key is still checked first
        app.state.service.ready(Catalog.single(load_chat_model(installed_parts(), str(tiny_llama), template="internlm2_chat", warn=lambda m: None)))
        ready = client.get("/health")
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
        models = client.get("/v1/models", headers={"Authorization": "Bearer k"}).json()
        assert [m["id"] for m in models["data"]] == [tiny_llama.name]
        app.state.service.stop()
        assert client.get("/health").status_code == 503
