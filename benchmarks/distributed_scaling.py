"""Multi-GPU scaling through the real CLI: one GPU (`single`) against N GPUs (`zero2`, `zero3`).

A random-weight InternLM2-1.8B-shaped checkpoint (Llama layout, bf16) with ftcore's small local
tokenizer, self-cognition data packed into 2048-token rows, LoRA r=64 on all linear layers,
gradient checkpointing on, micro batch 2, grad accum 4 per process. tokens/s counts real tokens of
all processes (from work_dir/metrics.jsonl); scaling = N-GPU tokens/s over one-GPU tokens/s.

    python benchmarks/distributed_scaling.py --gpus 2 --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SHAPE = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, intermediate_size=8192, vocab_size=92544)


def checkpoint(root: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ftcore.models.tiny import make_tokenizer

    path = root / "random-1.8b"
    if (path / "config.json").is_file():
        return path
    make_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(str(path))
    config = LlamaConfig(**SHAPE, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(path))
    return path


def run(model: Path, data: Path, work: Path, strategy: str, nproc: int, steps: int) -> dict:
    recipe = {
        "model": {"builder": "hf", "path": str(model)},
        "adapter": {"kind": "lora", "r": 64, "alpha": 16, "dropout": 0.1},
        "data": {"path": str(data), "format": "openai", "template": "internlm2_chat", "max_length": 2048},
        "train": {"max_steps": steps, "micro_batch": 2, "grad_accum": 4, "save_every": 0, "lr": 2e-4},
        "strategy": {"name": strategy},
        "hooks": ["metrics_log"],
        "work_dir": str(work),
    }
    import yaml

    path = work.with_suffix(".yaml")
    work.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "ftcore.cli", "run", "--recipe", str(path)]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    print("+ ftcore " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], flush=True)
        return {"strategy": strategy, "gpus": nproc, "error": proc.returncode}
    rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    steady = rows[3:]
    return {"strategy": strategy, "gpus": nproc, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "peak_gib_rank0": max(r.get("max_mem_gib", 0) for r in rows), "loss_last": rows[-1]["loss"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--root", default="/tmp/ftcore-scaling")
    p.add_argument("--strategies", default="zero2,zero3")
    args = p.parse_args()
    root = Path(args.root)
    model = checkpoint(root)
    data = root / "data.jsonl"
    if not data.is_file():
        from ftcore.data.self_cognition import self_cognition_records

        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self_cognition_records("ftcore", 40000, "both", 0)))
    results = [run(model, data, root / "work-single", "single", 1, args.steps)]
    for strategy in args.strategies.split(","):
        results.append(run(model, data, root / f"work-{strategy}", strategy, args.gpus, args.steps))
    base = results[0].get("tokens_per_s")
    print(f"\n{'strategy':<10}{'GPUs':>5}{'tokens/s':>12}{'per GPU':>10}{'scaling':>9}{'peak GiB':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['strategy']:<10}{r['gpus']:>5}   failed ({r['error']})")
            continue
        print(f"{r['strategy']:<10}{r['gpus']:>5}{r['tokens_per_s']:>12.0f}{r['tokens_per_s'] / r['gpus']:>10.0f}{r['tokens_per_s'] / base:>9.2f}{r['peak_gib_rank0']:>10.1f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
