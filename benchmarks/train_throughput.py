"""Training throughput: ftcore against plain transformers+peft on the same synthetic workload (GPU).

One invocation runs every case in its own subprocess (fresh GPU memory), then prints a table:
tokens/s counting real (non-padding) tokens, peak GPU memory, and MFU against a bf16 matmul
peak measured in the same run. Checkpoints are random-weight, shaped like InternLM2 (as the
Llama layout ftcore converts InternLM2 to); sample lengths are lognormal (median 200, cap 2048).

    python benchmarks/train_throughput.py --cases hf_qlora_naive,ftcore_lora,ftcore_qlora --model 1.8b
    python benchmarks/train_throughput.py --long-context --cases ftcore_lora,hf_lora_naive --model 1.8b
    python benchmarks/train_throughput.py --cases ftcore_lora,ftcore_lora+compile,ftcore_lora+rows+mb8

A case is a name from CASES plus optional ``+`` modifiers: ``compile`` (model.compile: each decoder
layer torch.compile'd), ``liger`` (Liger-kernel RMSNorm/RoPE/SwiGLU patched in, if installed),
``rows`` (padded rows instead of one flat row per micro batch), ``nodrop`` (LoRA dropout 0),
``mbN`` (micro batch N), ``offload`` (model.offload_activations: checkpointed layer inputs in CPU memory),
``cpuemb`` (model.offload_embeddings: the frozen embedding table in CPU memory), ``fused`` (model.fused_lora: the
LoRA product added into the base output in place instead of peft's clone + scale + add), ``gaN`` (ftcore cases: an
optimizer step every N micro batches, as ``train.grad_accum=N``; otherwise every micro batch). Levers that are always
on in ftcore can be turned off to measure them: ``noskip`` (offloaded replays compute down_proj's frozen GEMM
again), ``headrecompute`` (the frozen loss head recomputes each chunk's logits in backward, as a trained head does),
``gpulabels`` (labels go to the GPU, and the loss head finds the trained positions there), ``eagersoftmax`` (the
frozen loss head's softmax-minus-one-hot eager under ``compile``), ``mlpchunk`` (model.mlp_chunk_tokens=8192: each MLP
over 8192 tokens at a time, for --long-context), ``fp8`` (model.fp8_base: the frozen base's products
in FP8; the run checks its loss and gradients against bf16 first). With ``compile``:
``static`` (layers compiled for the batch shape instead of dynamic shapes), ``graphs`` (static, and inductor's
CUDA graphs: mode="reduce-overhead", for the host launch overhead), ``budgetNN`` (model.compile_memory_budget: the compiler's activation memory
budget at NN%: it recomputes cheap elementwise results in backward instead of saving them; at 90% a compiled
tiny Llama layer saves 15% fewer bytes per token on the CPU).

MFU counts 4 * N_matmul FLOPs per token for adapter training (forward 2N, backward through
activations 2N) and 6 * N_matmul for full fine-tunes; attention FLOPs are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "1.8b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, intermediate_size=8192, vocab_size=92544),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=92544),
}
LORA = dict(r=64, alpha=16, dropout=0.1)

# case name -> (side, method, batching, gradient checkpointing). Batching: "naive" = fixed rows of
# --max-length tokens cut from the concatenated samples (every peer takes these), "packed" = ftcore's
# packed rows with sample isolation, "padded" = samples padded to the longest in the batch.
CASES = {
    "unsloth_lora": ("unsloth", "lora", "naive", True),
    "unsloth_qlora": ("unsloth", "qlora", "naive", True),
    "unsloth_lora_packed": ("unsloth", "lora", "packed", True),
    "unsloth_qlora_packed": ("unsloth", "qlora", "packed", True),
    "hf_lora_padded": ("hf", "lora", "padded", True),
    "hf_lora_rows": ("hf", "lora", "naive", True),
    "hf_qlora_rows": ("hf", "qlora", "naive", True),
    "ftcore_qlora_naive": ("ftcore", "qlora", "naive", False),
    "hf_qlora_naive": ("hf", "qlora", "naive", True),
    "hf_qlora_padded": ("hf", "qlora", "padded", True),
    "hf_lora_naive": ("hf", "lora", "naive", True),
    "ftcore_lora": ("ftcore", "lora", "packed", False),
    "ftcore_lora_gc": ("ftcore", "lora", "packed", True),
    "ftcore_qlora": ("ftcore", "qlora", "packed", False),
    "ftcore_qlora_gc": ("ftcore", "qlora", "packed", True),
    "ftcore_lora_naive": ("ftcore", "lora", "naive", False),
}


def sample_lengths(n: int, seed: int = 0, median: int = 200, cap: int = 2048) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(math.log(median), 0.8, n).astype(int), 8, cap).tolist()


def synthetic_samples(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    return [rng.integers(100, vocab, size=length).tolist() for length in sample_lengths(n, seed)]


def make_checkpoint(model: str, root: Path) -> Path:
    """A random-weight Llama-layout checkpoint of the given shape (written once, bf16, one tensor at a time on the
    GPU), with a small byte-level BPE tokenizer beside it (Unsloth loads one with the model)."""
    from transformers import LlamaConfig

    from ftcore.models.random_checkpoint import write_random_checkpoint
    from ftcore.models.tiny import make_tokenizer

    path = root / f"random-{model}"
    if (path / "config.json").is_file():
        return path
    make_tokenizer(path)  # <unk> 0, <s> 1, </s> 2: the ids the config names
    config = LlamaConfig(**SHAPES[model], max_position_embeddings=262144, rope_theta=1_000_000.0, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return write_random_checkpoint(config, path, device="cuda", quantize=False)


def matmul_peak_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * 8192**3 / times[len(times) // 2] / 1e12


def matmul_params(model_name: str) -> int:
    """Weights that take part in matrix products per token (every projection and the LM head), from the shape."""
    s = SHAPES[model_name]
    h, head_dim = s["hidden_size"], s["hidden_size"] // s["num_attention_heads"]
    attn = h * (2 * h + 2 * s["num_key_value_heads"] * head_dim)
    mlp = 3 * h * s["intermediate_size"]
    return s["num_hidden_layers"] * (attn + mlp) + h * s["vocab_size"]


# ----------------------------------------------------------------------------- batches


def naive_rows(samples: list[list[int]], width: int) -> list[list[int]]:
    """Concatenate everything and cut rows of ``width`` (attention crosses sample borders)."""
    flat = [t for s in samples for t in s]
    return [flat[i : i + width] for i in range(0, len(flat) - width + 1, width)]


def hf_batches(samples, mode: str, micro_batch: int, width: int):
    import torch

    if mode == "naive":
        rows = naive_rows(samples, width)
        for i in range(0, len(rows) - micro_batch + 1, micro_batch):
            ids = torch.tensor(rows[i : i + micro_batch])
            yield {"input_ids": ids, "labels": ids.clone()}, ids.numel()
    else:
        for i in range(0, len(samples) - micro_batch + 1, micro_batch):
            chunk = samples[i : i + micro_batch]
            longest = max(len(s) for s in chunk)
            ids = torch.zeros(len(chunk), longest, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, s in enumerate(chunk):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}, int(mask.sum())


# kernel name pattern -> category, first match wins (for the profile's summary)
KERNEL_KINDS = [
    ("attention", r"flash|fmha|attn"),
    ("gemm", r"gemm|nvjet|cutlass|sm90_xmma|sm80_xmma|cublas|matmul"),
    ("nf4 dequant", r"dequant|kDequantize"),
    ("optimizer", r"optimizer|adam|8bit"),
    ("copy", r"memcpy|memset|copy"),
    ("compiled (triton)", r"^triton_"),
    ("loss head / softmax", r"softmax|cross_entropy|log_softmax|nll"),
    ("other elementwise/reduce", r"."),
]


def kernel_summary(prof, wall: float) -> str:
    """GPU time per kernel category for the profiled steps, against wall time."""
    import torch

    totals: dict[str, float] = {}
    count = 0
    for e in prof.key_averages():
        if e.device_type != torch.autograd.DeviceType.CUDA or "#" in e.key or e.key.startswith("ProfilerStep"):
            continue  # CPU-side ops carry their kernels' time too (count the kernels once); annotations are ranges
        kind = next(k for k, pat in KERNEL_KINDS if re.search(pat, e.key, re.I))
        totals[kind] = totals.get(kind, 0.0) + e.self_device_time_total / 1e6
        count += e.count
    busy = sum(totals.values())
    lines = [f"  PROFILE 2 steps: wall {wall * 1e3:.0f} ms, GPU busy {busy * 1e3:.0f} ms ({busy / wall:.0%}), {count} kernels"]
    for kind, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {kind:26s} {t * 1e3:8.1f} ms  {t / wall:5.1%}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- one case


def run_case(args: argparse.Namespace) -> dict:
    import torch

    if args.cap_gib:  # this process may use at most --cap-gib of the GPU (as on a smaller card; speed: auto sees it too)
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory), 0)
    base, *mods = args.case.split("+")
    side, method, batching, gc = CASES[base]
    gc = gc if args.gc is None else args.gc == "on"
    args.mods = set(mods)
    for m in mods:
        if m.startswith("mb"):
            args.micro_batch = int(m[2:])
    if batching == "padded" and not any(m.startswith("mb") for m in mods):
        args.micro_batch = 8  # the padded baseline: batches of 8 samples
    ckpt = Path(args.checkpoint)
    torch.manual_seed(0)
    if side == "unsloth":
        model, step = build_unsloth(ckpt, method, gc, args)
    elif side == "hf":
        model, step = build_hf(ckpt, method, gc, args)
    else:
        model, step = build_ftcore(ckpt, method, gc, args)
    n_matmul = matmul_params(args.model)
    vocab = SHAPES[args.model]["vocab_size"]
    if args.long_context:
        return long_context(step, side, args, n_matmul)
    samples = synthetic_samples(args.samples, vocab)
    batches = make_batches(side, batching, samples, args)
    torch.cuda.reset_peak_memory_stats()
    tokens, elapsed, done = 0, 0.0, 0
    # Compiled layers compile once for the first batch length and once more (for any length)
    # at the first batch of another length: warm up until both compilations are behind us.
    widths: set[int] = set()
    warm = False
    losses = []  # every step's mean loss, read after the timing (same data and seed in every case: the curves compare)
    for i, (batch, real) in enumerate(batches):
        if not warm and i >= args.warmup and (len(widths) > 1 or "compile" not in args.mods or i >= 4 * args.warmup + 8):
            warm = True
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        widths.add(batch["input_ids"].shape[1])
        losses.append(step(batch))
        if warm:
            tokens += real
            done += 1
        if done >= args.steps:
            break
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            p0 = time.perf_counter()
            for _ in range(2):
                step(next(batches)[0])
            torch.cuda.synchronize()
            wall = time.perf_counter() - p0
        print(kernel_summary(prof, wall), flush=True)
        for key in ("self_device_time_total", "self_cpu_time_total"):
            print("  " + prof.key_averages().table(sort_by=key, row_limit=30).replace("\n", "\n  "), flush=True)
        if args.trace_dir:  # the chrome trace, gzipped (torch does it for a .gz name), for finding GPU idle gaps
            prof.export_chrome_trace(str(Path(args.trace_dir) / (re.sub(r"[^A-Za-z0-9_.-]", "_", args.case) + ".json.gz")))
    tps = tokens / elapsed
    flops = (6 if method == "full" else 4) * n_matmul
    losses = [float(x) for x in losses if x is not None]
    return {"case": args.case, "model": args.model, "tokens_per_s": tps, "loss_first": losses[0] if losses else None,
            "loss_last10": sum(losses[-10:]) / len(losses[-10:]) if losses else None, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "tflops": tps * flops / 1e12, "steps": done, "gc": getattr(args, "gc_chosen", gc), "micro_batch": args.micro_batch}


def make_batches(side: str, batching: str, samples, args):
    if side == "hf" or (side == "unsloth" and batching != "packed"):
        return hf_batches(samples, batching, args.micro_batch, args.max_length)
    from ftcore.data.collate import collate_rows
    from ftcore.data.pack import Encoded, pack

    labels = [[-100] + s[1:] for s in samples]
    if batching == "naive":  # ftcore's own step on naively cut rows (for the isolation-cost number)
        rows = naive_rows(samples, args.max_length)
        packed = pack(Encoded.from_lists(rows, [list(r) for r in rows]), args.max_length, shuffle=False)
    else:
        packed = pack(Encoded.from_lists(samples, labels), args.max_length, seed=0)
    # as `ftcore run` collates; Unsloth gets the same packed rows laid flat with restarting position_ids
    # (TRL's padding-free layout, which Unsloth's attention reads as sample boundaries)
    flat = side == "unsloth" or ("rows" not in args.mods and args.attn in ("auto", "ftcore_varlen"))

    def gen():
        for i in range(0, len(packed) - args.micro_batch + 1, args.micro_batch):
            rows = [packed.row(j) for j in range(i, i + args.micro_batch)]
            if batching == "naive":  # every row one sample
                for r in rows:
                    r["position_ids"] = __import__("numpy").arange(len(r["input_ids"]))
            yield collate_rows(rows, pad_id=0, flat=flat), sum(len(r["input_ids"]) for r in rows)

    return gen()


def lora_dropout(args: argparse.Namespace) -> float:
    return 0.0 if "nodrop" in args.mods else LORA["dropout"]


def make_update(params, args: argparse.Namespace):
    """The optimizer step every peer side takes after its backward: clip to 1.0, then --optimizer adamw
    (torch, fused) or adamw_8bit (bitsandbytes)."""
    import torch

    if args.optimizer == "adamw_8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params, lr=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return update


def build_unsloth(ckpt: Path, method: str, gc: bool, args: argparse.Namespace):
    """Unsloth as its docs set it up: FastLanguageModel, LoRA on all seven projections, its own
    gradient checkpointing ("unsloth": offloaded to CPU memory) when on, its fused cross-entropy."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import unsloth  # noqa: F401  (first: it patches transformers and peft as they import)
    import torch
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(str(ckpt), max_seq_length=max(args.max_length, args.max_context if args.long_context else 0),
                                                 dtype=torch.bfloat16, load_in_4bit=method == "qlora", local_files_only=True)
    model = FastLanguageModel.get_peft_model(
        model, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=lora_dropout(args), bias="none", random_state=0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth" if gc else False)
    FastLanguageModel.for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    update = make_update(params, args)

    def step(batch):
        batch = {k: v.cuda(non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor) and k in ("input_ids", "labels", "attention_mask", "position_ids")}
        if "position_ids" in batch:  # a flat packed row: Unsloth's padding-free metadata (unsloth/utils/packing.py) gives the sample lengths
            starts = (batch["position_ids"][0] == 0).nonzero().flatten()
            batch["packed_seq_lengths"] = torch.diff(starts, append=torch.tensor([batch["position_ids"].shape[1]], device=starts.device)).to(torch.int32)
        loss = model(**batch).loss
        loss.backward()
        update()
        return loss.detach()

    return model, step


def build_hf(ckpt: Path, method: str, gc: bool, args: argparse.Namespace):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": torch.bfloat16, "attn_implementation": "sdpa", "device_map": {"": 0}}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), **kwargs)
    model.config.use_cache = False
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if "liger" in args.mods:  # HF tuned as well as it goes: Liger's RMSNorm/RoPE/SwiGLU and fused linear cross-entropy
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True, model=model)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=lora_dropout(args), target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()  # as transformers' Trainer does: dropout and gradient checkpointing are train-mode only
    params = [p for p in model.parameters() if p.requires_grad]
    update = make_update(params, args)

    def step(batch):
        batch = {k: v.cuda() for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        update()
        return loss.detach()

    return model, step


def build_ftcore(ckpt: Path, method: str, gc: bool, args: argparse.Namespace):
    import torch

    from ftcore.models.hf import HFBuilder
    from ftcore.models.loading import load_base_model
    from ftcore.models.plan import IGNORE, prepare_for_training
    from ftcore.recipe import Recipe, validate
    from ftcore.train.loop import to_device
    from ftcore.train.objective import loss_sum
    from ftcore.train.optim import build_optimizer

    auto = "auto" in args.mods  # what `ftcore run` picks with no flags (speed: auto, levers left null)
    levers = {} if auto else {"gradient_checkpointing": gc, "compile": "compile" in args.mods, "offload_activations": "offload" in args.mods,
                              "offload_embeddings": "cpuemb" in args.mods, "fused_lora": "fused" in args.mods, "fp8_base": "fp8" in args.mods}
    budget = next((int(m[6:]) for m in args.mods if m.startswith("budget")), None)
    if budget is not None:  # selective recompute inside the compiled layers (model.compile_memory_budget)
        levers["compile_memory_budget"] = budget / 100
    if "mlpchunk" in args.mods:  # each MLP over 8192 tokens at a time (model.mlp_chunk_tokens)
        levers["mlp_chunk_tokens"] = 8192
    recipe = Recipe({
        "model": {"builder": "hf", "path": str(ckpt), "attn_implementation": args.attn, "chunked_loss": args.chunked_loss == "on", **levers},
        "adapter": {"kind": method, "r": LORA["r"], "alpha": LORA["alpha"], "dropout": lora_dropout(args)},
        "data": {"path": "unused", "max_length": args.max_length},
        "train": {"optimizer": args.optimizer, "lr": 1e-4, "grad_accum": 16},
    }, "benchmark")
    validate(recipe)
    device = torch.device("cuda", 0)
    model = load_base_model(recipe["model"], HFBuilder(), device, "bf16")
    if auto:
        import numpy as np

        from ftcore.models.speed import resolve

        class OneProcess:
            world_size, is_main = 1, True

            def all_reduce_sum(self, value):
                return value

        # a run of --auto-tokens tokens in full rows, 16 rows an optimizer step (the shipped recipes' grad_accum)
        rows = np.full(args.auto_tokens // args.max_length, args.max_length)
        choice = resolve(recipe, model, rows, method == "full", device, OneProcess())
        print("  " + choice.summary().replace("\n", "\n  "), flush=True)
        args.micro_batch = choice.micro_batch
        args.mods.update(m for m, key in (("compile", "compile"), ("offload", "offload_activations"), ("cpuemb", "offload_embeddings"), ("fused", "fused_lora")) if recipe["model"][key])
        args.gc_chosen = recipe["model"]["gradient_checkpointing"]
    if "liger" in args.mods:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)
    if "static" in args.mods or "graphs" in args.mods:  # compiled layers specialised to the batch shape / CUDA graphs
        from ftcore.models import loading

        loading.COMPILE_OPTIONS = {"dynamic": False, **({"mode": "reduce-overhead"} if "graphs" in args.mods else {})}
    plan = prepare_for_training(model, recipe["model"], recipe["adapter"])
    model = plan.model
    if "noskip" in args.mods:
        for m in model.modules():
            if hasattr(m, "_ftcore_forward"):
                m.forward = m._ftcore_forward
    if "eagersoftmax" in args.mods:  # the frozen head's softmax-minus-one-hot eager even with compile (as before session 7)
        from ftcore.models import loss_head

        loss_head.find_loss_head(model)._softmax_grad = loss_head.softmax_grad
    if "headrecompute" in args.mods:
        from torch.utils.checkpoint import checkpoint

        from ftcore.models import loss_head

        loss_head._frozen_chunk_sum = lambda h, y, w, b, _: checkpoint(loss_head._chunk_loss, h, y, w, b, use_reentrant=False)
    keep = tuple(k for k in plan.cpu_inputs if k != "labels" or "gpulabels" not in args.mods)
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], recipe["train"])
    micro, accum = [0], next((int(m[2:]) for m in args.mods if m.startswith("ga")), 1)

    def step(batch):
        if "graphs" in args.mods:  # a new forward+backward: CUDA graph trees may reuse the last step's memory
            torch.compiler.cudagraph_mark_step_begin()
        n = int((batch["labels"][:, 1:] != IGNORE).sum())  # on the CPU copy: no device sync
        batch = to_device(batch, device, keep=keep)  # as the trainer does: pinned, no sync
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lsum, _ = loss_sum(model, batch, plan)
        (lsum / n).backward()
        micro[0] += 1
        if micro[0] % accum == 0:  # an optimizer step every `accum` micro batches (+gaN), as train.grad_accum does
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (lsum / n).detach()

    return model, step


def long_context(step, side: str, args: argparse.Namespace, n_matmul: int) -> dict:
    """The longest single sample (doubling from 4k) that trains one step without running out of memory."""
    import torch

    import gc

    def fits(length: int) -> bool:
        ids = torch.randint(100, 1000, (1, length))
        batch = {"input_ids": ids, "labels": ids.clone()}
        if side == "ftcore":
            batch["position_ids"] = torch.arange(length)[None]
        try:
            torch.cuda.reset_peak_memory_stats()
            step(batch)
            torch.cuda.synchronize()
            print(f"  {args.case}: {length} tokens ok, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
            return True
        except torch.OutOfMemoryError:
            print(f"  {args.case}: {length} tokens out of memory", flush=True)
        gc.collect()  # what the failed step held goes before the next try
        torch.cuda.empty_cache()
        return False

    best, failed = 0, None
    length = 4096
    while length <= args.max_context:
        if not fits(length):
            failed = length
            break
        best = length
        length *= 2
    for _ in range(args.refine if failed else 0):  # halve the gap between the longest that fit and the first that did not
        middle = (best + failed) // 2 // 4096 * 4096
        if middle <= best:
            break
        best, failed = (middle, failed) if fits(middle) else (best, middle)
    return {"case": args.case, "model": args.model, "longest_sample": best}


# ----------------------------------------------------------------------------- driver


def check_varlen() -> float:
    """Packed-row loss and gradients: ftcore_varlen (flash varlen) against SDPA with a block mask, bf16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftcore.data.collate import collate_rows
    from ftcore.data.pack import Encoded, pack
    from ftcore.models.varlen import register
    from ftcore.train.objective import loss_sum

    register()
    cfg = LlamaConfig(hidden_size=512, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1024, vocab_size=1000)
    samples = synthetic_samples(40, 1000, seed=3)
    packed = pack(Encoded.from_lists([s[:500] for s in samples], [[-100] + s[1:500] for s in samples]), 2048, seed=0)
    rows = [packed.row(0), packed.row(1)]
    batch = {k: v.cuda() for k, v in collate_rows(rows, 0).items() if isinstance(v, torch.Tensor)}
    flat = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in collate_rows(rows, 0, flat=True).items()}
    grads, losses = [], []
    for impl, inputs in (("sdpa", batch), ("ftcore_varlen", batch), ("ftcore_varlen", flat)):  # GQA: 8 query heads, 2 K/V heads
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).cuda().to(torch.bfloat16)
        model.config._attn_implementation = impl
        loss, _ = loss_sum(model, inputs)
        loss.backward()
        losses.append(float(loss))
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    rel = max(float((g - grads[0]).norm() / grads[0].norm()) for g in grads[1:])
    print(f"varlen check: loss sdpa-mask {losses[0]:.4f} varlen rows {losses[1]:.4f} varlen flat {losses[2]:.4f}; "
          f"largest gradient relative difference {rel:.2e}", flush=True)
    return rel


def lora_loss_and_grads(cfg, tokens: int, model_cfg: dict, r: int, dropout: float, ids_on_cpu: bool = False):
    """One forward/backward of a random bf16 Llama of ``cfg`` with LoRA (rank ``r``, every B drawn at random so
    each adapter path is live), prepared on the GPU with ``model_cfg``, on ``tokens`` fixed random ids (kept in
    CPU memory with ``ids_on_cpu``, as offloaded embeddings take them): the summed loss and the adapter
    gradients, flattened."""
    import torch
    from transformers import LlamaForCausalLM

    from ftcore.models.plan import prepare_for_training
    from ftcore.train.objective import loss_sum

    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).cuda().to(torch.bfloat16)
    adapter = {"kind": "lora", "r": r, "alpha": 16, "dropout": dropout, "targets": "all-linear", "modules_to_save": None, "bias": "none"}
    model = prepare_for_training(model, {"quantization": "none", "chunked_loss": True, **model_cfg}, adapter).model
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(3, cfg.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids if ids_on_cpu else ids.cuda(), "labels": ids.cuda(), "position_ids": torch.arange(tokens)[None].cuda()}
    torch.manual_seed(1)  # the dropout masks
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = loss_sum(model, batch)
    loss.backward()
    return float(loss), torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad])


def check_offload() -> float:
    """Checkpointed LoRA training with layer inputs and embeddings in CPU memory (side-stream copies,
    prefetch) against plain checkpointing on the GPU: loss and gradients, bf16, dropout on."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1024, vocab_size=1000)
    (loss, grads), (off_loss, off_grads) = (
        lora_loss_and_grads(cfg, 1024, {"gradient_checkpointing": True, "offload_activations": off, "offload_embeddings": off}, 8, 0.1, ids_on_cpu=off)
        for off in (False, True))
    rel = float((off_grads - grads).norm() / grads.norm())
    print(f"offload check: loss {loss:.4f} vs offloaded {off_loss:.4f}; gradient relative difference {rel:.2e}", flush=True)
    return rel


def check_fp8() -> float:
    """LoRA on a frozen bf16 base with the base's products in FP8 (model.fp8_base) against bf16: loss and
    adapter gradients on one batch, two layers of the 1.8B shape (hidden 2048, MLP 8192)."""
    import torch
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=2048, num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=8, intermediate_size=8192, vocab_size=1000)
    (loss, grads), (fp8_loss, fp8_grads) = (lora_loss_and_grads(cfg, 2048, {"gradient_checkpointing": False, "fp8_base": fp8}, 64, 0.0) for fp8 in (False, True))
    rel = float((fp8_grads - grads).norm() / grads.norm())
    cos = float(torch.nn.functional.cosine_similarity(fp8_grads, grads, dim=0))
    print(f"fp8 check: mean loss bf16 {loss / 2047:.5f} vs fp8 base {fp8_loss / 2047:.5f}; adapter gradient relative difference {rel:.2e}, cosine {cos:.5f}", flush=True)
    return rel


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="1.8b", choices=list(SHAPES))
    p.add_argument("--cases", default="hf_qlora_naive,ftcore_lora,ftcore_qlora")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--root", default="/tmp/ftcore-bench")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--samples", type=int, default=6000)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--attn", default="auto", help="ftcore attention (auto = ftcore_varlen)")
    p.add_argument("--gc", choices=["on", "off"], help="force gradient checkpointing on/off for every case")
    p.add_argument("--chunked-loss", default="on", choices=["on", "off"])
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--long-context", action="store_true")
    p.add_argument("--refine", type=int, default=0, help="--long-context: after the doubling, this many halvings of the gap to the first length that ran out of memory")
    p.add_argument("--max-context", type=int, default=131072)
    p.add_argument("--cap-gib", type=float, default=0, help="cap each case's GPU memory at this many GiB (torch.cuda.set_per_process_memory_fraction); 0: none")
    p.add_argument("--auto-tokens", type=int, default=50_000_000, help="+auto: the length of the run speed auto plans for (compile pays off on long runs)")
    p.add_argument("--case-timeout", type=float, default=0, help="give up on a case after this many seconds; 0: never")
    p.add_argument("--json", help="append results as JSON lines to this file")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of two more steps per case")
    p.add_argument("--trace-dir", help="with --profile: write each case's chrome trace (gzipped) here")
    return p


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return
    import torch

    check_varlen()
    check_offload()
    if "fp8" in args.cases:
        check_fp8()
    ckpt = make_checkpoint(args.model, Path(args.root))
    peak = matmul_peak_tflops()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 matmul peak measured {peak:.0f} TFLOP/s", flush=True)
    results = []
    passthrough = [a for a in sys.argv[1:] if not a.startswith("--cases")]
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", case, "--checkpoint", str(ckpt), *[a for a in passthrough if a != args.cases]]
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout or None,
                                  env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        except subprocess.TimeoutExpired:
            print(f"{case}: TIMED OUT after {args.case_timeout} s", flush=True)
            continue
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{case}: FAILED ({proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
            continue
        for l in proc.stdout.splitlines():
            if l.startswith("  "):
                print(l)
        r = json.loads(lines[-1][7:])
        r["wall_s"] = round(time.time() - t0, 1)
        if "tflops" in r:
            r["mfu"] = r["tflops"] / peak
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps({**r, "peak_tflops": peak, "device": torch.cuda.get_device_name(), "torch": torch.__version__}) + "\n")
    print(f"\n{'case':<34}{'model':>6}{'tokens/s':>12}{'peak GiB':>10}{'MFU':>8}{'longest':>10}{'vs Unsloth':>12}{'loss 1st':>10}{'last 10':>9}")
    for r in results:
        ratio = unsloth_ratio(r, results)
        losses = f"{r['loss_first']:>10.4f}{r['loss_last10']:>9.4f}" if r.get("loss_first") is not None else ""
        print(f"{r['case']:<34}{r['model']:>6}{r.get('tokens_per_s', 0):>12.0f}{r.get('peak_gib', 0):>10.1f}{r.get('mfu', 0):>8.1%}"
              f"{r.get('longest_sample', ''):>10}{'' if ratio is None else f'{ratio:.2f}x':>12}{losses}")


def unsloth_ratio(row: dict, results: list[dict]) -> float | None:
    """A row's tokens/s over the best Unsloth row of the same method that peaks at no less memory
    (the comparison at equal or lower memory); None for Unsloth's own rows or without one."""
    if row["case"].startswith("unsloth") or "tokens_per_s" not in row:
        return None
    method = CASES[row["case"].split("+")[0]][1]
    peers = [u["tokens_per_s"] for u in results if u["case"].startswith("unsloth") and "tokens_per_s" in u
             and CASES[u["case"].split("+")[0]][1] == method and u["peak_gib"] >= row["peak_gib"]]
    return row["tokens_per_s"] / max(peers) if peers else None


if __name__ == "__main__":
    main()
