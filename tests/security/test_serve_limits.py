"""``ftcore serve`` kept bounded (issue #15, item 5): body and context limits, clients that go
away mid-answer, the per-request time limit, bad numbers and model names, an empty API key and
SIGTERM, against the real CLI in subprocesses on loopback. The time bounds are hang detectors
(a wedged server never answers), not benchmarks: they are far above what a healthy server needs.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import cli_env, run_cli

pytestmark = pytest.mark.slow
pytest.importorskip("starlette", reason="ftcore serve needs the serve extra: pip install 'ftcore[serve]'")
pytest.importorskip("uvicorn", reason="ftcore serve needs the serve extra: pip install 'ftcore[serve]'")

API_KEY = "limits-key-456"
SHORT_CONTEXT = 256
PROMPT = [{"role": "user", "content": "Who are you?"}]
HANG = 30  # seconds: far more than any answer here takes, far less than forever


class Server:
    """A running ``ftcore serve``: its URL and everything it printed (stdout and stderr)."""

    def __init__(self, proc: subprocess.Popen, url: str, lines: list[str], pump: threading.Thread) -> None:
        self.proc, self.url, self.lines, self.pump = proc, url, lines, pump
        self.port = int(url.rsplit(":", 1)[1])

    def output(self) -> str:
        return "".join(self.lines)

    def request(self, body: bytes | dict, key: str | None = None, timeout: float = 60) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url + "/v1/chat/completions", data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def open_stream(self, body: dict, key: str | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}), headers)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return conn, resp

    def stream_then_drop(self, body: dict, events: int = 2, key: str | None = None) -> None:
        """Start a streamed answer, read ``events`` server-sent events, then hang up (the first
        event, the assistant role, comes before the model is free; the second is answer text)."""
        conn, resp = self.open_stream(body, key)
        got = read_events(resp, events)
        assert b"[DONE]" not in got  # hung up mid-answer
        hang_up(conn, resp)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.pump.join(timeout=10)
        return self.proc.returncode


def read_events(resp: http.client.HTTPResponse, events: int) -> bytes:
    got = b""
    while got.count(b"data:") < events:
        chunk = resp.read1(65536)
        assert chunk, f"the stream ended early: {got!r}"
        got += chunk
    return got


def hang_up(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away, whatever still refers to the socket
    resp.close()
    conn.close()


def start_server(model: Path, *args: str, timeout: float = 180) -> Server:
    """``ftcore serve MODEL --template internlm2_chat ARGS --port 0`` (as tests/test_serve.py
    starts it); waits for the address it prints and keeps collecting what it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftcore.cli", "serve", str(model), "--template", "internlm2_chat", *args, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cli_env(), text=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if re.search(r"at http://127\.0\.0\.1:\d+/", line):
                started.set()
        started.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    if not started.wait(timeout) or proc.poll() is not None:
        proc.kill()
        raise AssertionError("ftcore serve did not start:\n" + "".join(lines))
    url = re.search(r"at (http://127\.0\.0\.1:\d+)/", "".join(lines)).group(1)  # type: ignore[union-attr]
    return Server(proc, url, lines, thread)


def _variant(src: Path, dest: Path, context: int) -> Path:
    """A copy of the tiny model with ``context`` positions that never ends an answer by itself
    (EOS and <|im_end|> suppressed), so answers run to max_tokens: long ones really are long."""
    if not dest.exists():
        shutil.copytree(src, dest)
        config = json.loads((dest / "config.json").read_text())
        config["max_position_embeddings"] = context
        (dest / "config.json").write_text(json.dumps(config))
        tokens = {t["content"]: t["id"] for t in json.loads((dest / "tokenizer.json").read_text())["added_tokens"]}
        generation = json.loads((dest / "generation_config.json").read_text())
        generation["suppress_tokens"] = [tokens["</s>"], tokens["<|im_end|>"]]
        (dest / "generation_config.json").write_text(json.dumps(generation))
    return dest


@pytest.fixture(scope="module")
def short_model(tmp_path_factory, tiny_llama: Path) -> Path:
    return _variant(tiny_llama, tmp_path_factory.getbasetemp() / "tiny-short", SHORT_CONTEXT)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory, tiny_llama: Path) -> Path:
    return _variant(tiny_llama, tmp_path_factory.getbasetemp() / "tiny-long", 65536)


@pytest.fixture(scope="module")
def short(short_model: Path):
    """A small context and a 0.1 MB body limit; max_tokens up to 100000 (so the context clamps it)."""
    srv = start_server(short_model, "--api-key", API_KEY, "--max-new-tokens", "100000", "--max-body-mb", "0.1")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def long(long_model: Path):
    """Answers of up to 60000 tokens (minutes of work): one left running would wedge the server."""
    srv = start_server(long_model, "--max-new-tokens", "100000")
    yield srv
    srv.stop()


def _quick_answer(server: Server, key: str | None = None) -> dict:
    """A short answer, asserted to come back well within HANG seconds."""
    started = time.monotonic()
    try:
        status, body = server.request({"messages": PROMPT, "max_tokens": 4, "temperature": 0}, key=key, timeout=HANG + 30)
    except (TimeoutError, socket.timeout, urllib.error.URLError) as exc:
        pytest.fail(f"no answer ({exc}): the server is wedged, or an earlier answer still holds the model\n{server.output()}")
    assert status == 200, body
    assert time.monotonic() - started < HANG, "the server took too long: is the model still held by an earlier request?"
    return body


def test_an_oversized_body_gets_413_and_the_server_goes_on(short) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 300_000}]}).encode()  # 3x the 0.1 MB limit
    status, body = short.request(big, key=API_KEY)
    assert status == 413
    assert body["error"]["code"] == "request_too_large" and "100000 bytes" in body["error"]["message"]
    _quick_answer(short, API_KEY)
    assert "Traceback" not in short.output()


def test_prompts_are_checked_against_the_context_and_max_tokens_clamped(short) -> None:
    status, body = short.request({"messages": [{"role": "user", "content": "Who are you? " * 200}]}, key=API_KEY)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded" and body["error"]["param"] == "messages"
    message = body["error"]["message"]
    prompt_tokens = int(re.search(r"prompt is (\d+) tokens", message).group(1))  # type: ignore[union-attr]
    assert prompt_tokens > SHORT_CONTEXT and f"context is {SHORT_CONTEXT} tokens" in message

    messages = [{"role": "user", "content": "Who are you? " * 10}]
    status, body = short.request({"messages": messages, "max_tokens": 50_000, "temperature": 1.0, "seed": 0}, key=API_KEY)
    assert status == 200, body
    usage = body["usage"]
    assert 0 < usage["prompt_tokens"] < SHORT_CONTEXT
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] <= SHORT_CONTEXT
    assert usage["total_tokens"] == SHORT_CONTEXT and body["choices"][0]["finish_reason"] == "length"  # filled the context, no further
    assert "Traceback" not in short.output()


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_sampling_numbers_get_400(short, raw) -> None:
    for key in ("temperature", "top_p"):
        body = ('{"messages": [{"role": "user", "content": "hi"}], "%s": %s}' % (key, raw)).encode()  # json.loads reads these
        status, reply = short.request(body, key=API_KEY)
        assert status == 400 and reply["error"]["param"] == key and "finite" in reply["error"]["message"]


def test_an_unknown_model_gets_404_naming_the_served_one(short) -> None:
    status, body = short.request({"model": "gpt-4o", "messages": PROMPT, "max_tokens": 2}, key=API_KEY)
    assert status == 404
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert "gpt-4o" in body["error"]["message"] and "tiny-short" in body["error"]["message"]
    status, body = short.request({"model": "tiny-short", "messages": PROMPT, "max_tokens": 2}, key=API_KEY)
    assert status == 200 and body["model"] == "tiny-short"


def test_streaming_clients_that_hang_up_do_not_wedge_the_server(long) -> None:
    long_answer = {"messages": PROMPT, "max_tokens": 60_000, "temperature": 1.0}
    for _ in range(3):
        long.stream_then_drop(long_answer)
    _quick_answer(long)
    # a non-streaming client that gives up is noticed too
    with pytest.raises((TimeoutError, urllib.error.URLError, socket.timeout)):
        long.request(long_answer, timeout=1)
    _quick_answer(long)
    # a client that hangs up while waiting for the model does not hold the queue either
    conn, resp = long.open_stream(long_answer)
    read_events(resp, 2)  # it answers: the model is taken
    for _ in range(2):
        long.stream_then_drop(long_answer, events=1)  # queued behind it, then gone
    hang_up(conn, resp)
    _quick_answer(long)
    output = long.output()
    assert "Traceback" not in output and "cannot join" not in output, output


def test_an_empty_api_key_is_refused_before_loading_anything(tmp_path) -> None:
    missing = str(tmp_path / "no-such-model")  # never reached: the key is checked first
    for args, env in ((("--api-key", ""), None), ((), {"FTCORE_API_KEY": ""}), (("--api-key", "  "), None)):
        proc = run_cli("serve", missing, *args, "--port", "0", env=cli_env(env), timeout=120)
        assert proc.returncode != 0, proc.stdout
        error = proc.stderr.strip()
        assert "API key is empty" in error and "\n" not in error and "Traceback" not in error, error


def test_sigterm_during_a_streamed_answer_exits_promptly_and_cleanly(long_model) -> None:
    server = start_server(long_model, "--max-new-tokens", "100000")
    try:
        conn, resp = server.open_stream({"messages": PROMPT, "max_tokens": 60_000, "temperature": 1.0})
        read_events(resp, 2)  # mid-answer
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rest = resp.read()  # the stream ends: the answer is cut short with an error event
        assert b'"code": "server_unavailable"' in rest or b"[DONE]" in rest, rest[-500:]
        conn.close()
        assert server.proc.wait(timeout=HANG) == 0  # SIGTERM is a stop asked for: exit 0
        assert time.monotonic() - started < HANG
    finally:
        code = server.stop()
    output = server.output()
    assert code == 0 and "Traceback" not in output and "Cancel" not in output, output


def test_the_request_timeout_ends_long_answers_and_frees_the_model(long_model) -> None:
    server = start_server(long_model, "--max-new-tokens", "100000", "--request-timeout", "1")
    try:
        long_answer = {"messages": PROMPT, "max_tokens": 60_000, "temperature": 1.0}
        started = time.monotonic()
        status, body = server.request(long_answer, timeout=HANG + 30)
        assert status == 200, body
        assert time.monotonic() - started < HANG
        assert body["choices"][0]["finish_reason"] == "length" and 0 < body["usage"]["completion_tokens"] < 60_000

        conn, resp = server.open_stream(long_answer)
        events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
        conn.close()
        assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"

        status, body = server.request({"messages": PROMPT, "max_tokens": 2, "temperature": 0}, timeout=HANG)
        assert status == 200, body
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()
