"""Load on ``ftcore serve``: N concurrent streaming clients against one server, and sequential HF
``generate`` on the same model for comparison (issue #19's performance target).

Each client sends ``--requests`` streamed chat completions one after another (temperature, top-p and
``max_tokens`` as given, ``stream_options.include_usage`` for the token count); every level of
concurrency runs against the same server. Reported per level: requests/s and output tokens/s (all
answers' completion tokens over the level's wall time), p50/p95 time to first token and latency, and
errors (any non-200 status, error event or missing [DONE]). The baseline answers the same prompts one
at a time through ``Generation`` (transformers' ``generate`` with a streamer), in this process, with
the server stopped.

    ftcore run --recipe quickstart      # makes work_dirs/quickstart/ (the tiny InternLM2 and its adapter)
    python benchmarks/serve_load.py work_dirs/quickstart/tiny-internlm2-chat --adapter work_dirs/quickstart/checkpoint-40
    python benchmarks/serve_load.py --random 1.8b --clients 1,4,16,32,64 --requests 8   # GPU: a random 1.8B-shaped model
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 1,4,16,64   # a server already running
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROMPTS = ["Who are you?", "Please introduce yourself.", "What is your name?", "Hello! Who made you?", "你好！你是谁？", "Tell me about yourself."]


def start_server(model: str, adapter: str | None, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "ftcore.cli", "serve", model, *(["--adapter", adapter] if adapter else []), "--port", "0", "--no-access-log", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    for line in proc.stdout:  # type: ignore[union-attr]
        match = re.search(r" at (http://[^/\s]+)/", line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, match.group(1)
    raise SystemExit(f"ftcore serve exited ({proc.wait()}) before serving")


def one_request(url: str, body: dict) -> dict:
    """A streamed completion: its time to first text, latency, completion tokens, or an error."""
    parsed = urllib.parse.urlparse(url)
    started = time.perf_counter()
    first = None
    tokens = 0
    try:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}"}
        done = False
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                return {"error": event["error"].get("code") or "error event"}
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
        conn.close()
        if not done:
            return {"error": "no [DONE]"}
    except OSError as exc:
        return {"error": type(exc).__name__}
    return {"ttft": first if first is not None else time.perf_counter() - started, "latency": time.perf_counter() - started, "tokens": tokens}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_level(url: str, clients: int, requests: int, sampling: dict) -> dict:
    def client(c: int) -> list[dict]:
        return [one_request(url, {"messages": [{"role": "user", "content": PROMPTS[(c + r) % len(PROMPTS)]}], "stream": True,
                                  "stream_options": {"include_usage": True}, **sampling}) for r in range(requests)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    return {
        "clients": clients, "requests": len(results), "wall_s": wall, "req_per_s": len(ok) / wall,
        "out_tok_per_s": sum(r["tokens"] for r in ok) / wall, "mean_tokens": statistics.mean(r["tokens"] for r in ok) if ok else 0,
        "ttft_p50": percentile([r["ttft"] for r in ok], 0.5), "ttft_p95": percentile([r["ttft"] for r in ok], 0.95),
        "lat_p50": percentile([r["latency"] for r in ok], 0.5), "lat_p95": percentile([r["latency"] for r in ok], 0.95),
        "errors": len(results) - len(ok), "error_kinds": sorted({r["error"] for r in results if "error" in r}),
    }


def hf_baseline(model: str, adapter: str | None, n: int, sampling: dict) -> dict:
    """The same prompts answered one at a time through ``Generation`` (HF generate), in process."""
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from ftcore.app import installed_parts
    from ftcore.chat.generate import Sampling
    from ftcore.chat.resolve import load_chat_model

    chat = load_chat_model(installed_parts(), model, adapter=adapter, warn=lambda m: None)
    settings = Sampling(max_new_tokens=sampling["max_tokens"], temperature=sampling["temperature"], top_p=sampling["top_p"])
    chat.generation([{"role": "user", "content": PROMPTS[0]}], settings).run()  # warm-up
    tokens, latencies = 0, []
    started = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        generation = chat.generation([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], settings)
        generation.run()
        latencies.append(time.perf_counter() - t)
        tokens += generation.completion_tokens
    wall = time.perf_counter() - started
    return {"requests": n, "wall_s": wall, "req_per_s": n / wall, "out_tok_per_s": tokens / wall, "mean_tokens": tokens / n,
            "lat_p50": percentile(latencies, 0.5), "lat_p95": percentile(latencies, 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="model folder to serve (or give --url)")
    parser.add_argument("--adapter", help="adapter checkpoint to serve with MODEL (the single-checkpoint form)")
    parser.add_argument("--random", metavar="SHAPE", help="serve a random-weight model of this train_throughput.py shape "
                        "(written under --root once; its vocabulary is its tokenizer's, so every sampled id decodes)")
    parser.add_argument("--root", default="/tmp/ftcore-bench", help="where --random writes its checkpoint")
    parser.add_argument("--url", help="a running ftcore serve instead of starting one (no HF baseline then)")
    parser.add_argument("--clients", default="1,4,16,64", help="concurrency levels, comma separated")
    parser.add_argument("--requests", type=int, default=4, help="requests per client at each level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--baseline-requests", type=int, default=16, help="sequential HF generate requests (0: skip)")
    parser.add_argument("--serve-args", default="--max-batch 64 --max-queue 256", help="extra ftcore serve options")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if args.random:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from dpo_throughput import make_checkpoint

        args.model = str(make_checkpoint(argparse.Namespace(model=args.random, tiny=False, root=args.root, device="cuda", match_vocab=True)))
    if not args.url and not args.model:
        parser.error("give MODEL (to start ftcore serve), --random SHAPE or --url")
    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p}
    results: dict = {"sampling": sampling, "levels": []}
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.model, args.adapter, args.serve_args.split())
    try:
        levels = [int(c) for c in args.clients.split(",")]
        run_level(url, 1, 2, sampling)  # warm-up: one answer at a time,
        run_level(url, max(levels), 1, sampling)  # then batched (first-use costs of batched kernels land here, not in a level)
        print(f"{'clients':>7} {'reqs':>5} {'req/s':>7} {'out tok/s':>10} {'tok/req':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'lat p50':>8} {'lat p95':>8} {'errors':>6}", flush=True)
        for clients in levels:
            level = run_level(url, clients, args.requests, sampling)
            results["levels"].append(level)
            print(f"{clients:>7} {level['requests']:>5} {level['req_per_s']:>7.2f} {level['out_tok_per_s']:>10.1f} {level['mean_tokens']:>8.1f} "
                  f"{level['ttft_p50']:>8.3f}s {level['ttft_p95']:>8.3f}s {level['lat_p50']:>7.2f}s {level['lat_p95']:>7.2f}s {level['errors']:>6}"
                  + (f" {level['error_kinds']}" if level["errors"] else ""), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    levels = {level["clients"]: level for level in results["levels"]}
    for many in (16, 32, 64):
        if 1 in levels and many in levels:
            print(f"{many} clients / 1 client, output tokens/s: {levels[many]['out_tok_per_s'] / levels[1]['out_tok_per_s']:.1f}x")
    if args.model and args.baseline_requests:
        base = hf_baseline(args.model, args.adapter, args.baseline_requests, sampling)
        results["hf_generate"] = base
        print(f"sequential HF generate: {base['requests']} requests, {base['req_per_s']:.2f} req/s, {base['out_tok_per_s']:.1f} out tok/s, "
              f"{base['mean_tokens']:.1f} tok/req, latency p50 {base['lat_p50']:.2f}s p95 {base['lat_p95']:.2f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
