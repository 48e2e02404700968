"""DPO with QLoRA: ftcore (through the real ``ftcore run`` CLI) against TRL's DPOTrainer, same workload, one call.

One invocation writes a random-weight checkpoint (the InternLM2 shapes of train_throughput.py's SHAPES, in
the Llama layout, with a small byte-level BPE tokenizer and a ChatML chat template), synthetic preference pairs
with realistic lengths (prompt ~200 tokens, answers ~250, lognormal), then runs every case in its own
subprocess (fresh GPU memory) and prints a table.

    python benchmarks/dpo_throughput.py --model 1.8b --cases ftcore_gc,ftcore_nogc,trl_pre,trl_live
    python benchmarks/dpo_throughput.py --model 7b --cases ftcore_gc,trl_pre --pairs 192
    python benchmarks/dpo_throughput.py --tiny --device cpu            # local check: tiny Llama, 2 steps

Cases (``+`` modifiers: ``mbN`` ftcore rows per micro batch / TRL pairs per micro batch, ``offload``
(model.offload_activations + model.offload_embeddings), ``compile``, ``fused`` (model.fused_lora), ``fp8`` (model.fp8_base: the NF4 base's products in FP8),
``profile`` (ftcore: a torch.profiler table of optimizer steps 6-7, printed in the log)):

- ``ftcore_sft_gc``: not DPO; the same answers (prompt + chosen, prompt + rejected) as SFT samples in rows of
  the same 2 x max_length, same settings: the step cost without DPO's per-answer bookkeeping (its pairs/s is
  tokens/s over the mean tokens of a pair).
- ``ftcore_gc`` / ``ftcore_nogc``: ``ftcore run`` on a generated recipe: builder ``hf``, adapter qlora (NF4 +
  double quant) r=64 alpha=16 dropout 0 on all linear layers, ``objective: {name: dpo, beta: 0.1}``, bf16,
  ``train.optimizer=adamw_8bit``, gradient checkpointing on/off, template ``hf`` (the tokenizer's ChatML
  template), ``data.max_length`` per answer (rows of up to 2 x max_length hold whole pairs). Steps, tokens/s,
  pairs and peak memory come from ``work_dir/metrics.jsonl``; the reference pass (before step 1, not in the
  step times) is timed from its log line to the write of ``reference_logps.json``.
- ``trl_pre`` / ``trl_live``: TRL's DPOTrainer, the checkpoint loaded 4-bit NF4 (double quant, bf16
  compute) with bitsandbytes, the same peft LoRA config, beta, max_length, bf16, ``optim="adamw_8bit"``,
  gradient checkpointing (non-reentrant), SDPA attention, conversational records (TRL renders them with the
  same chat template). ``trl_pre``: ``precompute_ref_log_probs=True`` (the reference pass before training,
  timed separately); ``trl_live``: the reference forward (adapter disabled) in every step. TRL 1.x has
  no ``max_prompt_length`` and its ``padding_free`` is disabled for DPO ("temporarily unavailable", it warns
  and pads), so TRL pads each micro batch of 2 x B sequences to its longest.

Tokens/s is defined identically for both sides: the real (non-padding) tokens of the sequences the policy
forward/backward processes, i.e. per pair len(prompt+chosen) + len(prompt+rejected) as rendered by the chat
template (the prompt counts twice on both sides), summed over the timed optimizer steps, divided by their
wall time (first ``--warmup`` steps skipped). ftcore: the packed rows' lengths (``tokens_per_s * time`` per
step). TRL: the sum of each micro batch's attention mask, with a CUDA sync at every step end. Peak memory
is ``torch.cuda.max_memory_allocated`` over the whole process on both sides (loading, reference pass and
training). Wall is the subprocess's end-to-end time (imports, data processing, loading and quantizing,
reference pass, every training step). Both sides train one epoch over the same pairs.

On the GPU machine (wheels: ../shared/gpu/pack-wheels.sh --peers; carry .whl):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site; python3 -m pip install -q --no-deps --no-build-isolation -e .
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import SHAPES  # noqa: E402

LORA = dict(r=64, alpha=16, dropout=0.0)
BETA = 0.1
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CASES = ("ftcore_gc", "ftcore_nogc", "ftcore_sft_gc", "trl_pre", "trl_live")


# ----------------------------------------------------------------------------- assets


def make_checkpoint(args: argparse.Namespace) -> Path:
    """A random-weight Llama-layout checkpoint of the shape (bf16 on the GPU, fp32 tiny; one tensor at a time) with a ChatML tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig

    from ftcore.models.random_checkpoint import write_random_checkpoint
    from ftcore.models.tiny import make_tokenizer

    name = "tiny" if args.tiny else args.model
    match_vocab = getattr(args, "match_vocab", False)  # serve_load: every sampled id decodes to text
    path = Path(args.root) / f"dpo-random-{name}{'-vocab' if match_vocab else ''}"
    if (path / "config.json").is_file():
        return path
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    make_tokenizer(tmp)
    tok = AutoTokenizer.from_pretrained(str(tmp))
    tok.chat_template = CHATML
    tok.save_pretrained(str(tmp))
    shape = dict(TINY, vocab_size=len(tok)) if args.tiny else dict(SHAPES[args.model], **({"vocab_size": len(tok)} if match_vocab else {}))
    config = LlamaConfig(**shape, max_position_embeddings=32768, rope_theta=1_000_000.0, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    write_random_checkpoint(config, tmp, device="cpu" if args.device == "cpu" else "cuda", dtype="float32" if args.tiny else "bfloat16", quantize=False)
    os.replace(tmp, path)
    return path


def make_pairs(args: argparse.Namespace, ckpt: Path) -> tuple[Path, Path, dict]:
    """The same pairs for both sides: {prompt, chosen, rejected} strings (ftcore's ``preference`` format) and
    the conversational form TRL renders with the chat template. Texts are made of words that are single
    tokens, so lengths in tokens follow the drawn lognormal lengths."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    words = sorted({t[1:] for t in tok.get_vocab() if t.startswith("\u0120") and t[1:].isalpha() and len(t) > 2})
    words = [w for w in words if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    rng = np.random.default_rng(args.seed)

    def lengths(median: int, cap: int) -> np.ndarray:
        return np.clip(rng.lognormal(math.log(median), 0.4, args.pairs), 24, cap).astype(int)

    def text(n: int) -> str:
        return " ".join(words[i] for i in rng.integers(0, len(words), n))

    p_len, c_len, r_len = lengths(args.prompt_len, args.prompt_cap), lengths(args.answer_len, args.answer_cap), lengths(args.answer_len, args.answer_cap)
    records = [{"prompt": text(p), "chosen": text(c), "rejected": text(r)} for p, c, r in zip(p_len, c_len, r_len)]
    root = Path(args.root) / f"dpo-data-{'tiny' if args.tiny else args.model}-{args.pairs}"
    root.mkdir(parents=True, exist_ok=True)
    plain, conv = root / "pairs.jsonl", root / "pairs_conversational.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in records))
    # the same answers as SFT samples (ftcore_sft_gc: the cost of DPO's bookkeeping over a plain packed SFT step)
    (root / "answers_sft.jsonl").write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r[side]}]}) + "\n"
                                                    for r in records for side in ("chosen", "rejected")))
    conv.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": r["prompt"]}],
                                        "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                        "rejected": [{"role": "assistant", "content": r["rejected"]}]}) + "\n" for r in records))
    # tokens per pair as the chat template renders them (both sides' definition of a processed token)
    render = lambda msgs: len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])  # noqa: E731
    seq = [render([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r[side]}]) for r in records[:64] for side in ("chosen", "rejected")]
    stats = {"pairs": args.pairs, "prompt_tokens_median": int(np.median(p_len)), "answer_tokens_median": int(np.median(np.r_[c_len, r_len])),
             "answer_tokens_mean": float(np.mean(np.r_[c_len, r_len])), "sequence_tokens_mean": float(np.mean(seq)),
             "pair_tokens_mean": 2 * float(np.mean(seq)), "longest_sequence_sampled": int(max(seq))}
    return plain, conv, stats


# ----------------------------------------------------------------------------- ftcore


def ftcore_case(args: argparse.Namespace, case: str, ckpt: Path, data: Path, stats: dict) -> dict:
    base, *mods = case.split("+")
    gc = base in ("ftcore_gc", "ftcore_sft_gc")
    sft = base == "ftcore_sft_gc"
    rows = next((int(m[2:]) for m in mods if m.startswith("mb")), None)
    if rows is None:  # rows per micro batch to hold about TRL's pairs per step (a row holds ~2 x max_length tokens)
        rows = max(1, round(args.pairs_per_step * stats["pair_tokens_mean"] / (2 * args.max_length * 0.95)))
    work = Path(args.root) / "work" / f"{case}-{args.model if not args.tiny else 'tiny'}-{int(time.time())}"
    cpu = args.device == "cpu"
    recipe = {
        "work_dir": str(work),
        "model": {"builder": "hf", "path": str(ckpt), "gradient_checkpointing": gc, "quantization": "none" if cpu else "nf4",
                  "offload_activations": "offload" in mods, "offload_embeddings": "offload" in mods,
                  "compile": "compile" in mods, "fused_lora": "fused" in mods, "fp8_base": "fp8" in mods},
        "adapter": {"kind": "lora" if cpu else "qlora", **{k: v for k, v in LORA.items()}, "targets": "all-linear"},
        "data": {"path": str(data.with_name("answers_sft.jsonl")) if sft else str(data), "format": "openai" if sft else "preference",
                 "template": "hf", "max_length": args.max_length * (2 if sft else 1), "cache_dir": str(work / "data-cache")},
        "objective": {"name": "sft"} if sft else {"name": "dpo", "beta": BETA},
        "train": {"lr": args.lr, "micro_batch": rows, "grad_accum": 1, "warmup_ratio": 0.03, "save_every": 0,
                  "optimizer": "adamw" if cpu else "adamw_8bit", "precision": "fp32" if cpu else "bf16",
                  "seed": 0, "log_every": 1, "device": "cpu" if cpu else "auto",
                  **({"max_steps": args.steps} if args.steps else {"epochs": 1})},
        "hooks": ["dataset_info", "metrics_log"],
    }
    work.mkdir(parents=True, exist_ok=True)
    path = work / "recipe.yaml"
    path.write_text(json.dumps(recipe, indent=1))  # JSON is YAML
    cmd = [sys.executable, "-m", "ftcore.cli", "run", "--recipe", str(path)]
    if "profile" in mods:  # the same CLI, with torch.profiler around optimizer steps 6-7 (this case's timings are not comparable)
        cmd = [sys.executable, __file__, "--profiled-cli", "6", "run", "--recipe", str(path)]
    print(f"+ {' '.join(cmd)}   # {json.dumps(recipe)}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(args))
    ref_start = None
    tail: list[str] = []
    for line in proc.stdout:
        if "reference log-probs" in line and ref_start is None:
            ref_start = time.time()
        if not line.startswith("step ") or args.verbose:
            print("  | " + line.rstrip(), flush=True)
        tail = (tail + [line])[-40:]
    rc = proc.wait()
    wall = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"ftcore run failed ({rc}):\n{''.join(tail)}")
    metrics = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines() if l.strip()]
    ref_file = work / "reference_logps.json"
    ref_s = ref_file.stat().st_mtime - ref_start if ref_start and ref_file.is_file() else None
    timed = metrics[args.warmup:] or metrics
    secs = sum(m["time"] for m in timed)
    tokens = sum(m["tokens_per_s"] * m["time"] for m in timed)
    pair_of = lambda m: m["pairs"] if "pairs" in m else m["tokens_per_s"] * m["time"] / stats["pair_tokens_mean"]  # noqa: E731  (sft: estimated)
    pairs = sum(pair_of(m) for m in timed)
    return {"case": case, "side": "ftcore", "steps": len(metrics), "timed_steps": len(timed), "tokens_per_s": tokens / secs,
            "pairs_per_s": pairs / secs, "pairs_per_step": pairs / len(timed), "tokens_per_step": tokens / len(timed),
            "peak_gib": max(m.get("max_mem_gib", 0) for m in metrics), "reference_s": ref_s,
            "train_s": sum(m["time"] for m in metrics), "wall_s": wall, "micro_batch_rows": rows, "gc": gc,
            "epoch_tokens": sum(m["tokens_per_s"] * m["time"] for m in metrics), "epoch_pairs": sum(pair_of(m) for m in metrics),
            "loss_first": metrics[0]["loss"], "loss_last": metrics[-1]["loss"],
            "accuracy_last": metrics[-1].get("rewards/accuracy"), "objective": "sft" if sft else "dpo"}


def profiled_cli(at: int, argv: list[str]) -> None:
    """``ftcore`` with ``Trainer.train_step`` wrapped: a torch.profiler trace of optimizer steps ``at`` and
    ``at + 1``; prints GPU busy time against wall time and the top operators by device and by CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ftcore.cli import main as cli_main
    from ftcore.train import loop

    original, state = loop.Trainer.train_step, {"n": 0}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def train_step(self):  # noqa: ANN001
        state["n"] += 1
        if state["n"] == at:
            sync()
            state["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            state["prof"].__enter__()
            state["t0"] = time.perf_counter()
        out = original(self)
        if state["n"] == at + 1:
            sync()
            wall = time.perf_counter() - state["t0"]
            prof = state.pop("prof")
            prof.__exit__(None, None, None)
            events = prof.key_averages()
            busy = sum(e.self_device_time_total for e in events) / 1e6
            kernels = sum(e.count for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
            print(f"PROFILE 2 steps: wall {wall * 1e3:.0f} ms, GPU kernels busy {busy * 1e3:.0f} ms ({busy / wall:.0%}), "
                  f"{kernels} kernels", flush=True)
            print(events.table(sort_by="self_device_time_total", row_limit=25), flush=True)
            print(events.table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
        return out

    loop.Trainer.train_step = train_step
    cli_main(argv)


# ----------------------------------------------------------------------------- TRL


def trl_case(args: argparse.Namespace) -> dict:
    """Runs inside the case's subprocess: TRL's DPOTrainer on the conversational pairs."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    base, *mods = args.case.split("+")
    pre = base == "trl_pre"
    batch = next((int(m[2:]) for m in mods if m.startswith("mb")), args.pairs_per_step)
    cpu = args.device == "cpu"
    kwargs = {"dtype": torch.float32 if cpu else torch.bfloat16, "attn_implementation": "sdpa"}
    if not cpu:
        kwargs["device_map"] = {"": 0}
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, **kwargs)
    model.config.use_cache = False
    records = [json.loads(l) for l in Path(args.data).read_text().splitlines()]
    dataset = Dataset.from_list(records)
    config = DPOConfig(
        output_dir=str(Path(args.root) / "work" / f"trl-{args.case}-{int(time.time())}"), beta=BETA, max_length=args.max_length,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="cosine",
        warmup_steps=round(0.03 * (args.steps or math.ceil(len(records) / batch))), max_grad_norm=1.0, optim="adamw_torch" if cpu else "adamw_8bit", bf16=not cpu, use_cpu=cpu,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        precompute_ref_log_probs=pre, precompute_ref_batch_size=batch, padding_free=False,
        logging_steps=1, save_strategy="no", report_to=[], seed=0, dataloader_num_workers=0,
        num_train_epochs=1, max_steps=args.steps or -1, disable_tqdm=True,
    )
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear", task_type="CAUSAL_LM")
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    marks: list[float] = []
    counts: list = []

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001
            sync()
            marks.append(time.perf_counter())

        def on_train_begin(self, a, state, control, **kw):  # noqa: ANN001
            sync()
            marks.append(time.perf_counter())

    class Counting(DPOTrainer):
        def training_step(self, model, inputs, *a, **kw):  # noqa: ANN001
            counts.append((inputs["attention_mask"].sum(), inputs["input_ids"].shape[0] // 2, inputs["input_ids"].numel()))  # on the device: no sync
            return super().training_step(model, inputs, *a, **kw)

    ref_time: list[float] = []
    original = Counting._precompute_ref_logps

    def timed_precompute(self, *a, **kw):  # noqa: ANN001
        sync()
        t = time.perf_counter()
        out = original(self, *a, **kw)
        sync()
        ref_time.append(time.perf_counter() - t)
        return out

    Counting._precompute_ref_logps = timed_precompute
    t_build = time.perf_counter()
    trainer = Counting(model=model, args=config, train_dataset=dataset, processing_class=tok, peft_config=peft_config, callbacks=[Timer()])
    build_s = time.perf_counter() - t_build
    trainer.train()
    per_step = [(float(t), int(p), int(n)) for t, p, n in counts]
    steps = len(marks) - 1
    w = min(args.warmup, max(0, steps - 1))
    secs = marks[-1] - marks[w]
    timed = per_step[w:steps]
    tokens = sum(t for t, _, _ in timed)
    pairs = sum(p for _, p, _ in timed)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"case": args.case, "side": "trl", "trl": trl.__version__, "steps": steps, "timed_steps": len(timed),
            "tokens_per_s": tokens / secs, "pairs_per_s": pairs / secs, "pairs_per_step": pairs / max(1, len(timed)),
            "tokens_per_step": tokens / max(1, len(timed)), "padded_tokens_per_step": sum(n for _, _, n in timed) / max(1, len(timed)),
            "peak_gib": 0.0 if cpu else torch.cuda.max_memory_allocated() / 2**30,
            "reference_s": ref_time[0] if ref_time else None, "trainer_init_s": build_s, "train_s": marks[-1] - marks[0],
            "micro_batch_pairs": batch, "precompute_ref_log_probs": pre,
            "epoch_tokens": sum(t for t, _, _ in per_step[:steps]), "epoch_pairs": sum(p for _, p, _ in per_step[:steps]),
            "loss_first": logs[0]["loss"] if logs else None, "loss_last": logs[-1]["loss"] if logs else None,
            "accuracy_last": logs[-1].get("rewards/accuracies") if logs else None}


# ----------------------------------------------------------------------------- driver


def _env(args: argparse.Namespace) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(Path(args.root) / "hf-datasets-cache"))
    if args.device != "cpu":
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    return env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="1.8b", choices=list(SHAPES))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--tiny", action="store_true", help="tiny Llama config, 8 pairs, 2 steps (local check)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--root", default="/tmp/ftcore-dpo")
    p.add_argument("--pairs", type=int, default=256, help="preference pairs (both sides train one epoch over them)")
    p.add_argument("--pairs-per-step", type=int, default=8, help="TRL's per-device batch (pairs); ftcore's rows per micro batch are chosen to hold about as many")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per answer with its prompt (both sides)")
    p.add_argument("--prompt-len", type=int, default=200)
    p.add_argument("--prompt-cap", type=int, default=400)
    p.add_argument("--answer-len", type=int, default=250)
    p.add_argument("--answer-cap", type=int, default=560)
    p.add_argument("--steps", type=int, default=0, help="max optimizer steps (0: one epoch)")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="append results as JSON lines to this file")
    p.add_argument("--verbose", action="store_true", help="also print ftcore's per-step lines")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    return p


def main() -> None:
    if sys.argv[1:2] == ["--profiled-cli"]:
        profiled_cli(int(sys.argv[2]), sys.argv[3:])
        return
    args = build_parser().parse_args()
    if args.tiny:
        args.pairs, args.steps, args.warmup, args.pairs_per_step = 8, args.steps or 2, 0, 2
        args.prompt_len, args.answer_len, args.max_length = 24, 24, 128
        args.prompt_cap, args.answer_cap = 40, 60
    if args.case:  # a TRL case, in its own process
        print("RESULT " + json.dumps(trl_case(args)), flush=True)
        return
    import torch

    gpu = args.device == "cuda"
    ckpt = make_checkpoint(args)
    plain, conv, stats = make_pairs(args, ckpt)
    versions = {"torch": torch.__version__}
    for mod in ("transformers", "peft", "bitsandbytes", "trl", "ftcore"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001
            versions[mod] = f"missing ({type(exc).__name__})"
    device = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"device {device}; {json.dumps(versions)}", flush=True)
    print(f"workload {json.dumps(stats)}; max_length {args.max_length}; TRL pairs per step {args.pairs_per_step}", flush=True)
    results = []
    for case in args.cases.split(","):
        t0 = time.time()
        try:
            if case.startswith("ftcore"):
                r = ftcore_case(args, case, ckpt, plain, stats)
            else:
                if versions["trl"].startswith("missing"):
                    print(f"{case}: skipped (trl is not importable)", flush=True)
                    continue
                passthrough = [a for a in sys.argv[1:] if not a.startswith("--cases") and a != args.cases]
                cmd = [sys.executable, __file__, *passthrough, "--case", case, "--checkpoint", str(ckpt), "--data", str(conv)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(args))
                lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    raise RuntimeError(f"({proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}")
                for l in proc.stderr.splitlines():
                    if "padding_free" in l or "warn" in l.lower() and "trl" in l.lower():
                        print("  | " + l[:300], flush=True)
                r = json.loads(lines[-1][7:])
                r["wall_s"] = time.time() - t0
        except Exception as exc:  # noqa: BLE001
            print(f"{case}: FAILED {exc}", flush=True)
            continue
        r.update(model="tiny" if args.tiny else args.model, device=device)
        results.append(r)
        print(json.dumps(r), flush=True)
        if args.json:  # one line per case as it finishes (a call cut short keeps what it measured)
            with open(args.json, "a") as f:
                f.write(json.dumps({**r, **versions, "workload": stats, "max_length": args.max_length}) + "\n")
    trl_best = max((r["tokens_per_s"] for r in results if r["side"] == "trl"), default=None)
    print(f"\n{'case':<22}{'model':>6}{'tok/s':>9}{'pairs/s':>9}{'pairs/st':>9}{'peak GiB':>9}{'ref s':>7}{'train s':>8}{'wall s':>8}{'x TRL':>7}")
    for r in results:
        ratio = f"{r['tokens_per_s'] / trl_best:.2f}" if trl_best else "-"
        ref = f"{r['reference_s']:.1f}" if r.get("reference_s") is not None else "-"
        print(f"{r['case']:<22}{r['model']:>6}{r['tokens_per_s']:>9.0f}{r['pairs_per_s']:>9.2f}{r['pairs_per_step']:>9.1f}"
              f"{r['peak_gib']:>9.2f}{ref:>7}{r['train_s']:>8.1f}{r['wall_s']:>8.1f}{ratio:>7}")
    print("(x TRL: tokens/s over the best TRL case of this call)")


if __name__ == "__main__":
    main()
