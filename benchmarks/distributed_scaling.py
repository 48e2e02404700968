"""Multi-GPU scaling through the real CLI: every strategy (ddp, zero2, zero3, fsdp) for LoRA and QLoRA on the
InternLM2-1.8B and 7B shapes, on 1, 2, 4 and 8 GPUs (as many as the machine has), in one call per machine kind.

Random-weight checkpoints of each shape (Llama layout, bf16) with ftcore's small local tokenizer, self-cognition
data packed into 2048-token rows, LoRA r=64 on all linear layers (QLoRA: NF4 base), gradient checkpointing on,
micro batch 2 x grad accum 4 per process (the global batch grows with the GPUs, as users run it). tokens/s counts
real tokens of all processes (work_dir/metrics.jsonl, median of the steps after the 3rd); scaling = N-GPU tokens/s
over the same shape and adapter on one GPU (`single`). QLoRA with zero3 is refused by ftcore (ZeRO-3 cannot
partition a 4-bit base) and shows as such.

    python benchmarks/distributed_scaling.py                       # everything this machine's GPUs allow
    python benchmarks/distributed_scaling.py --shapes 7b --adapters qlora --gpus 1,8 --strategies zero2,fsdp
    python benchmarks/distributed_scaling.py --largest 13b,34b,70b --cap-gib 24   # FSDP-QLoRA on 2 GPUs, each capped

``--largest``: the largest shape FSDP-QLoRA trains on 2 GPUs with each process capped at ``--cap-gib``
(``torch.cuda.set_per_process_memory_fraction`` in every rank, as on two consumer cards). Those checkpoints are
written already NF4-quantized, one tensor at a time (``ftcore.models.random_checkpoint``: a 70B in bf16 would not
fit the disk), and load in CPU memory (``strategy.load_in_cpu_memory``); shapes are tried in the order given and
the first that fails ends the list.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "1.8b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, intermediate_size=8192, vocab_size=92544),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=92544),
}
#: the --largest shapes (Llama 2 13B, Code Llama 34B, Llama 2 70B)
LARGE = {
    "13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40, intermediate_size=13824, vocab_size=32000),
    "34b": dict(hidden_size=8192, num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8, intermediate_size=22016, vocab_size=32000),
    "70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, intermediate_size=28672, vocab_size=32000),
}
#: imported first by every process (PYTHONPATH): caps each rank's GPU memory at FTCORE_BENCH_CAP_GIB
CAP_HOOK = """import os
if os.environ.get("FTCORE_BENCH_CAP_GIB") and "LOCAL_RANK" in os.environ:
    import torch
    _rank = int(os.environ["LOCAL_RANK"])
    _cap = float(os.environ["FTCORE_BENCH_CAP_GIB"]) * 2**30 / torch.cuda.get_device_properties(_rank).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, _cap), _rank)
"""
STRATEGIES = ("ddp", "zero2", "zero3", "zero3_sharded", "fsdp")
#: a strategy name here -> the recipe's strategy section (zero3 keeps a base that fits whole; zero3_sharded shards it as ZeRO-3 did before)
SECTIONS = {"zero3_sharded": {"name": "zero3", "keep_base": "never"}}
REFUSED = {("qlora", "zero3"): "refused: ZeRO-3 cannot partition a 4-bit base", ("qlora", "zero3_sharded"): "refused: ZeRO-3 cannot partition a 4-bit base"}


def checkpoint(root: Path, shape: str, quantized: bool = False) -> Path:
    """A random-weight checkpoint of ``shape`` (SHAPES or LARGE; made once, on the GPU, one tensor at a time), bf16
    or with its layers NF4-quantized as they are written, with ftcore's small tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig

    from ftcore.models.random_checkpoint import write_random_checkpoint
    from ftcore.models.tiny import make_tokenizer

    path = root / f"random-{shape}{'-nf4' if quantized else ''}"
    if (path / "config.json").is_file():
        return path
    make_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(str(path))
    dims = {**SHAPES, **LARGE}[shape]
    config = LlamaConfig(**{**dims, "vocab_size": max(dims["vocab_size"], len(tok))}, max_position_embeddings=32768, rope_theta=1e6,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    started = time.monotonic()
    write_random_checkpoint(config, path, device="cuda", quantize=quantized)
    print(f"wrote {path} in {time.monotonic() - started:.0f}s", flush=True)
    return path


def run(model: Path, data: Path, work: Path, adapter: str, strategy: str, gpus: int, steps: int, largest: dict | None = None) -> dict:
    """One case through the CLI; ``largest``: the --largest settings (cap_gib, strategy options, model levers)."""
    import os

    import yaml

    case = {"adapter": adapter, "strategy": strategy, "gpus": gpus}
    recipe = {
        "model": {"builder": "hf", "path": str(model), "gradient_checkpointing": True},
        "adapter": {"kind": adapter, "r": 64, "alpha": 16, "dropout": 0.1},
        "data": {"path": str(data), "format": "openai", "template": "internlm2_chat", "max_length": 2048},
        "train": {"max_steps": steps, "micro_batch": 2, "grad_accum": 4, "save_every": 0, "lr": 2e-4},
        "strategy": SECTIONS.get(strategy, {"name": strategy}),
        "hooks": ["metrics_log"],
        "work_dir": str(work),
    }
    env = dict(os.environ)
    if largest is not None:
        recipe["strategy"].update(largest["strategy"])
        recipe["model"].update(largest["model"])
        recipe["train"].update(micro_batch=1, grad_accum=2)
        recipe["data"]["max_length"] = largest["max_length"]
        hook = work.parent / "cap-hook"
        hook.mkdir(parents=True, exist_ok=True)
        (hook / "sitecustomize.py").write_text(CAP_HOOK)
        env.update(FTCORE_BENCH_CAP_GIB=str(largest["cap_gib"]), PYTHONPATH=os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")])))
    work.parent.mkdir(parents=True, exist_ok=True)
    path = work.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "ftcore.cli", "run", "--recipe", str(path)] + (["--nproc-per-node", str(gpus)] if gpus > 1 else [])
    print("+ ftcore " + " ".join(cmd[3:]), flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = round(time.monotonic() - started, 1)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], flush=True)
        last = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        return {**case, "error": proc.returncode, "message": last, "wall_s": wall}
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steady = rows[3:] or rows
    return {**case, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "peak_gib_rank0": max(r.get("max_mem_gib", 0) for r in rows), "loss_last": rows[-1]["loss"], "wall_s": wall}


def table(results: list[dict]) -> str:
    lines = [f"{'shape':<6}{'adapter':<8}{'strategy':<10}{'GPUs':>5}{'tokens/s':>12}{'per GPU':>10}{'scaling':>9}{'peak GiB':>10}"]
    base = {(r["shape"], r["adapter"]): r.get("tokens_per_s") for r in results if r["strategy"] == "single"}
    for r in results:
        head = f"{r['shape']:<6}{r['adapter']:<8}{r['strategy']:<10}{r['gpus']:>5}"
        if "tokens_per_s" not in r:
            lines.append(f"{head}   {r.get('refused') or 'failed (' + str(r.get('error')) + '): ' + r.get('message', '')}")
            continue
        one = base.get((r["shape"], r["adapter"]))
        scaling = f"{r['tokens_per_s'] / one:>9.2f}" if one else f"{'-':>9}"
        lines.append(f"{head}{r['tokens_per_s']:>12.0f}{r['tokens_per_s'] / r['gpus']:>10.0f}{scaling}{r['peak_gib_rank0']:>10.1f}")
    return "\n".join(lines)


def main() -> None:
    import torch

    available = torch.cuda.device_count()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", default="1,2,4,8", help="GPU counts to run (those above this machine's are skipped)")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--adapters", default="lora,qlora")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="on more than one GPU; one GPU runs `single`")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--root", default="/tmp/ftcore-scaling")
    p.add_argument("--out", help="write every result as JSON Lines here too")
    p.add_argument("--largest", help="instead: these LARGE shapes, in order, FSDP-QLoRA on 2 GPUs under --cap-gib each")
    p.add_argument("--cap-gib", type=float, default=24.0)
    p.add_argument("--largest-length", type=int, default=1024, help="--largest: tokens per row")
    p.add_argument("--offload-params", action="store_true", help="--largest: strategy.offload_params (shards in CPU memory)")
    args = p.parse_args()
    counts = [n for n in map(int, args.gpus.split(",")) if n <= available]
    if not counts:
        sys.exit(f"this machine has {available} GPU(s); none of --gpus {args.gpus} fits")
    root = Path(args.root)
    data = root / "data.jsonl"
    if not data.is_file():
        from ftcore.data.self_cognition import self_cognition_records

        root.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self_cognition_records("ftcore", 40000, "both", 0)))
    print(f"{available} GPU(s) ({torch.cuda.get_device_name(0)}); counts {counts}", flush=True)
    results = []
    if args.largest:
        if available < 2:
            sys.exit("--largest trains on 2 GPUs")
        settings = {"cap_gib": args.cap_gib, "max_length": args.largest_length,
                    "strategy": {"load_in_cpu_memory": True, "offload_params": args.offload_params},
                    "model": {"offload_activations": True}}
        for shape in args.largest.split(","):
            result = {"shape": shape, "cap_gib": args.cap_gib, **run(checkpoint(root, shape, quantized=True), data, root / f"work-largest-{shape}", "qlora", "fsdp", 2, args.steps, settings)}
            results.append(result)
            print(json.dumps(result), flush=True)
            if "tokens_per_s" not in result:
                break
        print(json.dumps(results))
        return
    for shape in args.shapes.split(","):
        model = checkpoint(root, shape)
        for adapter in args.adapters.split(","):
            cases = [("single", 1)] if 1 in counts else []
            cases += [(s, n) for n in counts if n > 1 for s in args.strategies.split(",")]
            for strategy, gpus in cases:
                if (adapter, strategy) in REFUSED:
                    result = {"adapter": adapter, "strategy": strategy, "gpus": gpus, "refused": REFUSED[(adapter, strategy)]}
                else:
                    result = run(model, data, root / f"work-{shape}-{adapter}-{strategy}-{gpus}", adapter, strategy, gpus, args.steps)
                results.append({"shape": shape, **result})
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(results[-1]) + "\n")
    print("\n" + table(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
