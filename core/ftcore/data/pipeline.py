"""The data pipeline end to end, with an on-disk cache keyed by everything that shapes the result."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import FtcoreError
from .encode import EncodedBatch
from .pack import Encoded, PackedData, pack

PIPELINE_VERSION = "4"
#: Sample keys (besides the text) carried from records into batches: an image path, a
#: preference pair's side and pair number (see :mod:`ftcore.data.pairs`).
CARRIED_KEYS = ("image", "side", "pair")
ENCODE_CHUNK = 2048
#: BPE word-cache entries while a whole dataset is encoded (the tokenizers default, 10,000, is
#: smaller than a dataset's vocabulary of words: misses redo the merges).
BPE_CACHE = 500_000


@dataclass
class DataReport:
    """What happened to the data: counts at each stage, and whether the cache was used."""

    records: int = 0
    format: str = ""
    dropped_by_format: int = 0
    skipped: int = 0
    skipped_where: list[str] = field(default_factory=list)
    truncated: int = 0
    #: long texts (pre-training) cut into ``chunks`` samples of up to max_length, no token lost
    chunked: int = 0
    chunks: int = 0
    dropped_empty: int = 0
    samples: int = 0
    rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    efficiency: float = 0.0
    cached: bool = False

    def summary(self) -> str:
        parts = [f"{self.records} records ({self.format})", f"{self.samples} samples", f"{self.rows} rows", f"{self.tokens} tokens ({self.trained_tokens} trained)"]
        if self.dropped_by_format:
            parts.append(f"{self.dropped_by_format} dropped by the format")
        if self.skipped:
            parts.append(f"{self.skipped} bad records skipped ({', '.join(self.skipped_where[:5])}{', ...' if self.skipped > 5 else ''})")
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        if self.chunked:
            parts.append(self.chunk_text())
        if self.dropped_empty:
            parts.append(f"{self.dropped_empty} dropped with no trained token")
        parts.append(f"packing efficiency {self.efficiency:.1%}")
        return ", ".join(parts)

    def chunk_text(self) -> str:
        return f"{self.chunked} long text(s) split into {self.chunks} chunks of up to max_length (nothing lost)"


def split_config(data_cfg: dict[str, Any], split: str) -> dict[str, Any]:
    """The data section that makes the ``train`` or ``eval`` data: held-out files (``data.eval_path``,
    read in file order), or a fixed share of the training records (``data.eval_ratio``)."""
    if split == "eval" and data_cfg.get("eval_path"):
        return {**data_cfg, "path": data_cfg["eval_path"], "eval_ratio": 0.0, "split": None, "shuffle": False, "max_samples": None}
    if data_cfg.get("eval_ratio"):
        return {**data_cfg, "split": split, **({"shuffle": False} if split == "eval" else {})}
    return data_cfg


def take_split(records: Any, data_cfg: dict[str, Any], seed: int) -> Any:
    """The records of ``data_cfg["split"]`` when ``data.eval_ratio`` holds some out (the same ones every
    run with the same seed); all of them otherwise."""
    split, ratio = data_cfg.get("split"), data_cfg.get("eval_ratio") or 0.0
    if not split or not ratio:
        return records
    held = np.zeros(len(records), bool)
    held[np.random.default_rng([seed, 1]).permutation(len(records))[: max(1, round(len(records) * ratio))]] = True
    return records.subset(np.flatnonzero(held if split == "eval" else ~held).tolist())


def data_paths(data_cfg: dict[str, Any]) -> list[Path]:
    paths = data_cfg["path"] if isinstance(data_cfg["path"], list) else [data_cfg["path"]]
    return [Path(p).expanduser() for p in paths]


def _hash_path(h: Any, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, getattr(tokenizer, "chat_template", None)], default=str).encode())
    return h.hexdigest()


def cache_key(data_cfg: dict[str, Any], tokenizer: Any, template: Any, fmt: str, seed: int, extra: str = "") -> str:
    """Changes whenever the data content, tokenizer, template, format or any data setting changes."""
    h = hashlib.sha256(PIPELINE_VERSION.encode())
    for path in data_paths(data_cfg):
        _hash_path(h, path)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(repr(template).encode())
    settings = {k: data_cfg.get(k) for k in ("max_length", "pack", "shuffle", "max_samples", "on_error", "system", "eval_ratio", "split",
                                              "sheet", "text_split", "chunk_overlap")}
    h.update(json.dumps({**settings, "format": fmt, "seed": seed, "extra": extra}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    root = os.environ.get("FTCORE_CACHE_DIR") or Path.home() / ".cache" / "ftcore"
    return Path(root) / "data"


@dataclass
class RecordProblem:
    """One bad record: where it is (``file:line``), the field at fault (if known) and what is wrong."""

    where: str
    field: str | None
    message: str
    #: the record's place in the data (file index, line, item): problems sort by it
    origin: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" + (f" [field: {self.field}]" if self.field else "")


def find_format_problems(records: Any, fmt: Any) -> tuple[Any, Any, list[RecordProblem]]:
    """``apply_format`` with ``on_error="skip"``, plus *every* malformed record as a ``RecordProblem``.

    Returns the samples, the ``FormatReport`` and the problems. Only the records that did
    not become samples are looked at again (one by one, with ``on_error="raise"``) to learn
    each one's field and location. Unlike ``apply_format`` it does not fail when no sample is left.
    """
    from .apply import FormatReport, apply_format
    from .formats import RecordError
    from .records import RecordList

    try:
        samples, report = apply_format(records, fmt, "skip")
    except FtcoreError:  # no sample left: every record was dropped or malformed
        samples, report = RecordList([], [], getattr(records, "files", [])), None
    kept = set(samples.origins)
    problems: list[RecordProblem] = []
    dropped_at: list[str] = []
    for i in range(len(records)):
        if records.origins[i] in kept:
            continue
        try:
            apply_format(records.subset([i]), fmt, "raise")
        except RecordError as exc:
            problems.append(RecordProblem(exc.where or records.where(i), exc.field, exc.message, tuple(records.origins[i])))
        except FtcoreError:  # "no samples left": the format dropped the record on purpose
            try:
                on_purpose = fmt.convert(records[i]) is None
            except Exception:
                on_purpose = False
            if not on_purpose:
                raise
            dropped_at.append(records.where(i))
    if report is None:
        report = FormatReport(fmt.name, total=len(records), dropped=len(dropped_at), skipped=len(problems), dropped_at=dropped_at[:5])
    return samples, report, problems


def _encode_located(samples: Any, offset: int, tokenizer: Any, template: Any, data_cfg: dict[str, Any], problems: list[RecordProblem]) -> list[EncodedBatch]:
    """Encode ``samples``; a batch with a malformed sample is split in halves until each bad one is
    found (cheap: ``encode_batch`` checks every sample before it tokenises). Returns the
    sub-batches' outputs in order, with ``indices`` counted from ``offset``."""
    from .encode import encode_batch
    from .formats import RecordError
    from .records import where_of

    try:
        out = encode_batch(samples, tokenizer, template, data_cfg["max_length"], system=data_cfg["system"], chunk_overlap=data_cfg.get("chunk_overlap") or 0)
        out.indices = out.indices + offset
        return [out]
    except RecordError as exc:
        if len(samples) == 1:
            message = exc.message.removeprefix("sample 0: ")
            origin = tuple(samples.origins[0]) if getattr(samples, "origins", None) else (offset,)
            problems.append(RecordProblem(where_of(samples, 0), exc.field, f"cannot encode the sample: {message}", origin))
            return []
    half = len(samples) // 2
    left = samples.subset(range(half)) if hasattr(samples, "subset") else samples[:half]
    right = samples.subset(range(half, len(samples))) if hasattr(samples, "subset") else samples[half:]
    return _encode_located(left, offset, tokenizer, template, data_cfg, problems) + _encode_located(
        right, offset + half, tokenizer, template, data_cfg, problems
    )


@contextmanager
def _large_bpe_cache(tokenizer: Any) -> Iterator[None]:
    """Give a ``tokenizers`` BPE model a big word cache while a dataset is encoded (about a
    quarter less tokeniser CPU on English-like text), then shrink it back to the default."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    resize = getattr(getattr(backend, "model", None), "_resize_cache", None)  # tokenizers >= 0.21, BPE models
    resized = False
    if resize is not None:
        try:
            resize(BPE_CACHE)
            resized = True
        except Exception:  # an unexpected tokenizers version: encode with the cache as it is
            pass
    try:
        yield
    finally:
        if resized:
            resize(10_000)  # the tokenizers default; frees the big cache


def _encode_overlapped(samples: Any, tokenizer: Any, template: Any, data_cfg: dict[str, Any]) -> list[EncodedBatch]:
    """Encode chunk by chunk, tokenising one chunk in a worker thread (the Rust tokenizer
    releases the GIL) while this thread renders the next chunk and assembles the previous one."""
    from concurrent.futures import ThreadPoolExecutor

    from .encode import assemble, plan_batch, tokenize

    max_length = data_cfg["max_length"]
    outs: list[EncodedBatch] = []

    def finish(start: int, plan: Any, future: Any) -> None:
        outs.append(assemble(plan, future.result(), max_length, data_cfg.get("chunk_overlap") or 0))
        outs[-1].indices += start

    pending: tuple[int, Any, Any] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="ftcore-tokenize") as pool:
        for start in range(0, len(samples), ENCODE_CHUNK):
            plan = plan_batch(samples[start : start + ENCODE_CHUNK], tokenizer, template, data_cfg["system"])
            future = pool.submit(tokenize, tokenizer, plan.texts)
            if pending is not None:
                finish(*pending)
            pending = (start, plan, future)
        if pending is not None:
            finish(*pending)
    return outs


def encode_all(
    samples: Any,
    tokenizer: Any,
    template: Any,
    data_cfg: dict[str, Any],
    report: DataReport,
    problems: list[RecordProblem] | None = None,
) -> tuple[Encoded, dict[str, list]]:
    """Encode in chunks; returns the kept samples and their carried extras.

    A malformed sample raises ``RecordError``, unless ``problems`` is a list: then every
    malformed sample is appended to it (with its ``file:line``) and left out.
    """
    with _large_bpe_cache(tokenizer):
        if problems is None:
            outs = _encode_overlapped(samples, tokenizer, template, data_cfg)
        else:
            outs = []
            for start in range(0, len(samples), ENCODE_CHUNK):
                chunk = samples.subset(range(start, min(start + ENCODE_CHUNK, len(samples)))) if hasattr(samples, "subset") else samples[start : start + ENCODE_CHUNK]
                outs += _encode_located(chunk, start, tokenizer, template, data_cfg, problems)
    report.truncated += sum(o.truncated for o in outs)
    report.chunked += sum(o.chunked for o in outs)
    report.chunks += sum(o.chunks for o in outs)
    report.dropped_empty += sum(o.dropped for o in outs)
    kept = np.concatenate([o.indices for o in outs]).tolist() if outs else []
    keys = [k for k in CARRIED_KEYS if any(k in s for s in samples)]
    extras = {k: [samples[i].get(k) for i in kept] for k in keys}
    return Encoded.concat(outs), extras


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: building millions of lists and dicts (records,
    samples, token lists) otherwise triggers full collections over and over (~15% of the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_data(data_cfg: dict[str, Any], formats: Any, tokenizer: Any, template: Any, seed: int, log: Callable[[str], None] = print) -> tuple[PackedData, DataReport]:
    """Load -> format -> encode -> pack, without the cache."""
    with _no_gc():
        return _build_data(data_cfg, formats, tokenizer, template, seed, log)


def _build_data(data_cfg: dict[str, Any], formats: Any, tokenizer: Any, template: Any, seed: int, log: Callable[[str], None]) -> tuple[PackedData, DataReport]:
    from .apply import apply_format, detect_format
    from .load import load_records, read_options, sheets_explained

    report = DataReport()
    paths = [str(p) for p in data_paths(data_cfg)]
    records = take_split(load_records(paths, max_samples=data_cfg["max_samples"], seed=seed, options=read_options(data_cfg)), data_cfg, seed)
    report.records = len(records)
    fmt = data_cfg["format"]
    with sheets_explained(records):
        if fmt == "auto":
            fmt = detect_format(records, formats)
            log(f"data format detected: {fmt} (set data.format to choose it yourself)")
        report.format = fmt
        samples, fmt_report = apply_format(records, formats.get(fmt), on_error=data_cfg["on_error"])
    report.dropped_by_format = fmt_report.dropped
    report.skipped = fmt_report.skipped
    report.skipped_where = list(fmt_report.problems)
    if not samples:
        raise FtcoreError("no usable samples left after formatting", where=", ".join(map(str, data_paths(data_cfg))), hint="check data.format and the records (`ftcore data check`)")
    needs_template = any("messages" in s for s in samples)
    if needs_template and template is None:
        raise FtcoreError("chat data needs a template", where="data.template", hint="name one from `ftcore list templates`, e.g. internlm2_chat")
    packed = encode_and_pack(samples, tokenizer, template, data_cfg, report, seed)
    if packed is None:
        raise FtcoreError("every sample was dropped while encoding (no trained tokens left)", where="data", hint="raise data.max_length or check the template")
    return packed, report


def encode_and_pack(samples: Any, tokenizer: Any, template: Any, data_cfg: dict[str, Any], report: DataReport, seed: int,
                    problems: list[RecordProblem] | None = None) -> PackedData | None:
    """Encode then pack the formatted samples (None when none is left), filling the report's counts.

    Preference pairs become their two answers, packed together: a row holds whole pairs, up to
    twice ``data.max_length`` tokens (``data.max_length`` bounds each answer with its prompt).
    """
    from .pairs import PAIR, expand_pairs, is_pair, whole_pairs

    pairs = bool(len(samples)) and is_pair(samples[0])
    if pairs:
        samples = expand_pairs(samples)
    encoded, extras = encode_all(samples, tokenizer, template, data_cfg, report, problems=problems)
    if pairs:
        keep = whole_pairs(extras.get(PAIR, []))
        report.dropped_empty += int((~keep).sum())  # the other half of a pair that lost one
        encoded = encoded.subset(keep)
        extras = {k: [v for v, kept in zip(values, keep) if kept] for k, values in extras.items()}
    if not len(encoded):
        return None
    capacity = data_cfg["max_length"] * (2 if pairs else 1)
    packed = pack(encoded, capacity, packed=data_cfg["pack"], shuffle=data_cfg["shuffle"], seed=seed, extras=extras, group=2 if pairs else 1)
    fill_counts(report, packed)
    return packed


def fill_counts(report: DataReport, packed: PackedData) -> None:
    report.samples, report.rows = packed.num_samples, len(packed)
    report.tokens, report.trained_tokens = len(packed.tokens), packed.trained_tokens()
    report.efficiency = packed.efficiency()


def prepare_data(
    data_cfg: dict[str, Any],
    formats: Any,
    tokenizer: Any,
    template: Any,
    seed: int,
    *,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = print,
    extra_key: str = "",
) -> tuple[PackedData, DataReport]:
    """The packed training data, from the cache when nothing that shapes it changed.

    With several processes only the main one (of each machine) does the work; the others wait
    at ``barrier`` and read the cache.
    """
    if not data_cfg["cache"]:
        return build_data(data_cfg, formats, tokenizer, template, seed, log)
    fmt = data_cfg["format"]
    folder = Path(data_cfg["cache_dir"] or default_cache_dir()) / cache_key(data_cfg, tokenizer, template, fmt, seed, extra_key)
    if is_main and not (folder / "report.json").is_file():
        packed, report = build_data(data_cfg, formats, tokenizer, template, seed, log)
        tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        packed.save(tmp)
        (tmp / "report.json").write_text(json.dumps(asdict(report)))
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another machine's first process, sharing this cache, wrote the same data first
            if not (folder / "report.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"processed data cached in {folder}")
        barrier()
        return packed, report
    barrier()
    packed = PackedData.load(folder)
    report = DataReport(**json.loads((folder / "report.json").read_text()))
    report.cached = True
    if is_main:
        log(f"using cached data from {folder} (delete it or set data.cache=false to rebuild)")
    return packed, report
