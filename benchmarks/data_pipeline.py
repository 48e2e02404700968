"""Data-pipeline throughput on CPU: load (JSONL) + format + encode + pack, in records/s.

Writes N synthetic alpaca records (deterministic under --seed) to a JSONL file, trains a byte-level BPE tokenizer (~32k vocab, the
``tokenizers`` library) on part of that text, then times ``ftcore.data.pipeline.build_data``
(the uncached pipeline: load_records -> apply_format -> encode_all -> pack) with template
internlm2_chat, max_length 2048 and packing on. Tokenizer training and writing the file are
not timed. The result is printed as a table and appended to benchmarks/RESULTS.md.

Record sizes (``--profile``):
- ``alpaca`` (default): the size of Stanford Alpaca's records. Instruction 6-22 words, an input in 40%
  of records (3-20 words), output 17-85 words: 352 characters per record. From the dataset's card:
  52,002 records take 47.8 MB with the three fields plus a "text" column that repeats them inside
  the ~200-character prompt template, so about (47.8 MB / 52,002 - 200) / 2 = 360 characters.
- ``long``: the first version of this benchmark. Instruction 20-60 words, input in 20% (5-30),
  output 30-150 words: 676 characters per record, 1.9x Alpaca's.

    python benchmarks/data_pipeline.py                  # 100k records, best of 2 runs
    python benchmarks/data_pipeline.py --records 20000 --repeats 1 --no-record
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
TARGET = 10_000  # records/s on 2 cores


def make_words(rng: random.Random, n: int = 30_000) -> list[str]:
    """Pseudo-English words from syllables, so BPE has sub-word structure to learn.

    Returned shortest first with ties shuffled: frequent words are short, as in English
    (with the Zipf weights below the mean word is about 5 letters).
    """
    onsets = ["", "", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "w", "st", "tr", "ch", "sh", "th"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng"]
    words: set[str] = {"a", "I"}
    while len(words) < n:
        syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables)))
    return sorted(words, key=lambda w: (len(w), rng.random()))


#: words per field: (instruction, input, output) ranges and the share of records with an input
PROFILES = {
    "alpaca": ((6, 22), (3, 20), (17, 85), 0.4),
    "long": ((20, 60), (5, 30), (30, 150), 0.2),
}


def make_records(n: int, seed: int, profile: str = "alpaca") -> list[dict[str, str]]:
    rng = random.Random(seed)
    words = make_words(rng)
    # Zipf-like word frequencies: a few very common words, a long tail.
    cum_weights = list(itertools.accumulate(1.0 / (rank + 3) for rank in range(len(words))))
    punct = [".", ".", ",", ",", ",", "?", "!", ";", ":"]

    def text(lo: int, hi: int) -> str:
        count = rng.randint(lo, hi)
        chosen = rng.choices(words, cum_weights=cum_weights, k=count)
        out = []
        for i, word in enumerate(chosen):
            if i == 0 or out[-1].endswith((".", "?", "!")):
                word = word.capitalize()
            if rng.random() < 0.02:
                word = str(rng.randint(0, 9999))
            if rng.random() < 0.12:
                word += rng.choice(punct)
            out.append(word)
        return " ".join(out) + "."

    instruction, input_, output, with_input = PROFILES[profile]
    records = []
    for _ in range(n):
        record = {"instruction": text(*instruction), "input": "", "output": text(*output)}
        if rng.random() < with_input:
            record["input"] = text(*input_)
        records.append(record)
    return records


def make_tokenizer(texts: list[str], vocab_size: int, out_dir: Path) -> tuple[object, float]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t0 = time.perf_counter()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.save_pretrained(str(out_dir))
    return fast, time.perf_counter() - t0


def _timed(fn):
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def stage_times(data_cfg: dict, formats, tokenizer, template, seed: int) -> dict[str, tuple[float, float]]:
    """The pipeline's steps timed one by one (the same calls build_data makes): (wall s, CPU s)."""
    from ftcore.data.load import apply_format, load_records
    from ftcore.data.pack import pack
    from ftcore.data.pipeline import DataReport, encode_all

    times = {}
    records, *times["load"] = _timed(lambda: load_records(data_cfg["path"]))
    (samples, _), *times["format"] = _timed(lambda: apply_format(records, formats.get(data_cfg["format"]), on_error="raise"))
    (encoded, extras), *times["encode"] = _timed(lambda: encode_all(samples, tokenizer, template, data_cfg, DataReport()))
    _, *times["pack"] = _timed(lambda: pack(encoded, data_cfg["max_length"], packed=True, shuffle=True, seed=seed, extras=extras))
    # For comparison: the Rust tokenizer alone on the records' raw text (no template, no
    # Python work), called in the pipeline's batch size with its BPE cache and GC settings.
    from ftcore.data.pipeline import ENCODE_CHUNK, _large_bpe_cache, _no_gc

    texts = [t for r in records for t in (r["instruction"], r["input"], r["output"]) if t]
    backend = tokenizer.backend_tokenizer

    def rust_only() -> None:
        with _no_gc(), _large_bpe_cache(tokenizer):
            for i in range(0, len(texts), 3 * ENCODE_CHUNK):
                backend.encode_batch_fast(texts[i : i + 3 * ENCODE_CHUNK], add_special_tokens=False)

    _, *times["(Rust tokenizer alone)"] = _timed(rust_only)
    return {k: tuple(v) for k, v in times.items()}


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}), {model}, load avg {load:.2f} at start"


def versions() -> str:
    import numpy
    import tokenizers
    import transformers

    import ftcore

    return f"python {platform.python_version()}, ftcore {ftcore.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, numpy {numpy.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", choices=list(PROFILES), default="alpaca", help="record sizes (see the module docstring)")
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--tokenizer-records", type=int, default=20_000, help="records the tokenizer is trained on")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2, help="end-to-end runs; the best is reported")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args()

    from ftcore.app import App
    from ftcore.data.pipeline import build_data

    start_machine = machine()
    parts = App().parts
    template = parts.templates.get("internlm2_chat")
    with tempfile.TemporaryDirectory(prefix="ftcore-bench-") as tmp:
        tmp_path = Path(tmp)
        t = time.perf_counter()
        records = make_records(args.records, args.seed, args.profile)
        chars = sum(len(r["instruction"]) + len(r["input"]) + len(r["output"]) for r in records)
        path = tmp_path / "alpaca.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        gen_s = time.perf_counter() - t
        corpus = [r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in records[: args.tokenizer_records]]
        del records
        tokenizer, train_s = make_tokenizer(corpus, args.vocab, tmp_path / "tok")
        print(f"data: {args.records} records ({args.profile} sizes, {chars / args.records:.0f} characters/record), {path.stat().st_size / 1e6:.1f} MB JSONL (generated in {gen_s:.1f}s)")
        print(f"tokenizer: byte-level BPE trained with `tokenizers` on {len(corpus)} records, vocab {len(tokenizer)} ({train_s:.1f}s, not timed)")
        data_cfg = {
            "path": str(path), "format": "alpaca", "template": "internlm2_chat", "system": None, "max_length": args.max_length,
            "pack": True, "shuffle": True, "max_samples": None, "on_error": "raise", "num_proc": 1, "cache": False, "cache_dir": None,
        }
        stages = stage_times(data_cfg, parts.formats, tokenizer, template, args.seed)
        runs = []
        report = None
        for _ in range(args.repeats):
            (packed, report), wall, cpu = _timed(lambda: build_data(data_cfg, parts.formats, tokenizer, template, args.seed, log=lambda m: None))
            runs.append((wall, cpu))
    best, best_cpu = min(runs)
    rate = args.records / best
    rows = [(name, w, c) for name, (w, c) in stages.items()]
    rows.append((f"end to end (best of {args.repeats})", best, best_cpu))
    print()
    print(f"{'stage':<26} {'wall s':>7} {'CPU s':>7} {'records/s':>10}")
    for name, w, c in rows:
        print(f"{name:<26} {w:>7.2f} {c:>7.2f} {args.records / w:>10,.0f}")
    print()
    print(f"samples {report.samples}, rows {report.rows}, tokens {report.tokens:,} ({report.tokens / args.records:.0f}/record), "
          f"trained {report.trained_tokens:,}, truncated {report.truncated}, packing efficiency {report.efficiency:.1%}")
    print(f"load average now {os.getloadavg()[0]:.2f} (other processes share these cores; CPU s is less affected)")
    verdict = "meets" if rate >= TARGET else "BELOW"
    print(f"{rate:,.0f} records/s ({rate * report.tokens / args.records / 1e6:.2f}M tokens/s) end to end: {verdict} the {TARGET:,} records/s target")
    if args.no_record:
        return
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]])
    stage_text = ", ".join(f"{n} {w:.2f}s" for n, (w, _) in stages.items())
    entry = (
        f"\n## data_pipeline ({args.profile} records), {datetime.date.today().isoformat()}: {rate:,.0f} records/s\n\n"
        f"- command: `{command}`\n"
        f"- machine: {start_machine}\n"
        f"- versions: {versions()}\n"
        f"- workload: {args.records} alpaca records ({args.profile} sizes, {chars / args.records:.0f} characters/record), byte-level BPE vocab {len(tokenizer)} (trained with `tokenizers`), "
        f"internlm2_chat, max_length {args.max_length}, pack on; {report.tokens / args.records:.0f} tokens/record, efficiency {report.efficiency:.1%}\n"
        f"- end to end {best:.2f}s wall, {best_cpu:.2f}s CPU (best of {args.repeats}: {', '.join(f'{w:.2f}' for w, _ in runs)}); "
        f"load avg at end {os.getloadavg()[0]:.2f}; stages (wall): {stage_text}\n"
    )
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n", encoding="utf-8")
    with open(RESULTS, "a", encoding="utf-8") as fh:
        fh.write(entry)
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
