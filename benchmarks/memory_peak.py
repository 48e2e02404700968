"""What is live on the GPU at a case's peak: replays torch's allocator trace and groups the live blocks by source line.

    python benchmarks/memory_peak.py --model 7b --case ftcore_qlora_gc+compile+offload+cpuemb --micro-batch 4 --steps 6

Runs one case of ``train_throughput.py`` in this process with the allocator's history recorded,
then prints the peak and the biggest groups of blocks live at that moment (first frame inside
ftcore, transformers, peft or bitsandbytes; else the innermost Python frame).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402

KEEP = ("ftcore", "transformers", "peft", "bitsandbytes", "train_throughput", "torch/_inductor", "torch/utils/checkpoint")


def where(frames: list[dict]) -> str:
    for f in frames:
        name = f.get("filename", "")
        if any(k in name for k in KEEP) and "memory_peak" not in name:
            return f"{name.split('site-packages/')[-1]}:{f.get('line')} {f.get('name')}"
    return frames[0]["filename"] + ":" + str(frames[0].get("line")) if frames else "?"


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="7b")
    p.add_argument("--case", required=True)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--optimizer", default="adamw_8bit")
    p.add_argument("--root", default="/tmp/ftcore-bench")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    ckpt = tt.make_checkpoint(a.model, Path(a.root))
    argv = ["--model", a.model, "--case", a.case, "--checkpoint", str(ckpt), "--micro-batch", str(a.micro_batch),
            "--optimizer", a.optimizer, "--steps", "1", "--warmup", "0"]
    args = tt.build_parser().parse_args(argv)
    base, *mods = a.case.split("+")
    args.mods = set(mods)
    for m in mods:
        if m.startswith("mb"):
            args.micro_batch = int(m[2:])
    _, method, batching, gc = tt.CASES[base]
    torch.manual_seed(0)
    model, step = tt.build_ftcore(ckpt, method, gc, args)
    batches = tt.make_batches("ftcore", batching, tt.synthetic_samples(args.samples, tt.SHAPES[a.model]["vocab_size"]), args)
    for _ in range(a.warmup):  # compilation and the first optimizer step (which allocates its state) come first
        step(next(batches)[0])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000)
    for _ in range(a.steps):
        step(next(batches)[0])
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    events = [e for trace in snap["device_traces"] for e in trace]
    current = torch.cuda.memory_allocated()  # at the end
    # walk back from the end to the start to get the starting level, then forward to the peak
    level = current
    for e in reversed(events):
        if e["action"] == "alloc":
            level -= e["size"]
        elif e["action"] == "free_completed":
            level += e["size"]
    start, peak, peak_i = level, level, -1
    for i, e in enumerate(events):
        if e["action"] == "alloc":
            level += e["size"]
            if level > peak:
                peak, peak_i = level, i
        elif e["action"] == "free_completed":
            level -= e["size"]
    at_peak: dict[int, tuple[int, str]] = {}
    for e in events[: peak_i + 1]:
        if e["action"] == "alloc":
            at_peak[e["addr"]] = (e["size"], where(e.get("frames", [])))
        elif e["action"] == "free_completed":
            at_peak.pop(e["addr"], None)
    groups: collections.Counter[str] = collections.Counter()
    for size, w in at_peak.values():
        groups[w] += size
    print(f"max_memory_allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; replayed peak {peak / 2**30:.2f} GiB, "
          f"of which allocated before recording {start / 2**30:.2f} GiB (weights, optimizer state)")
    for w, size in groups.most_common(a.top):
        print(f"  {size / 2**20:9.1f} MiB  {w}")


if __name__ == "__main__":
    main()
