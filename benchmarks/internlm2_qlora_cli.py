"""The tutorial job through the real CLI on a GPU: `ftcore run --recipe internlm2_qlora` for 50 steps.

Writes a random-weight InternLM2-1.8B-shaped checkpoint in InternLM2's own layout (fused wqkv;
loaded without trust_remote_code), a self-cognition dataset, runs the shipped recipe with only
paths and the step count overridden, and prints tokens/s and peak GPU memory from the run's
metrics.jsonl.

    python benchmarks/internlm2_qlora_cli.py --root /tmp/ftcore-il2 --steps 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default="/tmp/ftcore-il2")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides")
    args = p.parse_args()
    root = Path(args.root)
    model = root / "internlm2-chat-1_8b-random"
    if not (model / "config.json").is_file():
        from ftcore_internlm2.tiny import make_tiny_internlm2

        t0 = time.time()
        make_tiny_internlm2(model, hidden=2048, layers=24, heads=16, kv_heads=8, intermediate=8192, vocab_size=92544, init_std=0.02, max_position_embeddings=32768)
        print(f"wrote {model} in {time.time() - t0:.0f}s", flush=True)
    data = root / "assistant.jsonl"
    if not data.is_file():
        from ftcore.data.self_cognition import self_cognition_records

        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self_cognition_records("ftcore", 20000, "both", 0)))
    work = root / "work"
    cmd = [sys.executable, "-m", "ftcore.cli", "run", "--recipe", "internlm2_qlora", f"model.path={model}", f"data.path={data}",
           f"train.max_steps={args.steps}", "train.save_every=0", "hooks=[dataset_info,metrics_log,{name: throughput, every: 10}]",
           "--work-dir", str(work), *args.extra]
    print("+ ftcore " + " ".join(cmd[3:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    steady = rows[5:]
    print(json.dumps({
        "steps": len(rows), "wall_s": round(time.time() - t0, 1),
        "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu_median": statistics.median(r.get("mfu", 0) for r in steady),
        "peak_gpu_gib": max(r.get("max_mem_gib", 0) for r in rows),
        "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
    }), flush=True)


if __name__ == "__main__":
    main()
