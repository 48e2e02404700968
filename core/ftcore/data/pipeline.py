"""The data pipeline end to end, with an on-disk cache keyed by everything that shapes the result."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import FtcoreError
from .pack import PackedData, pack

PIPELINE_VERSION = "2"
#: Sample keys (besides the text) carried from records into batches, e.g. an image path.
CARRIED_KEYS = ("image",)
ENCODE_CHUNK = 2048


@dataclass
class DataReport:
    """What happened to the data: counts at each stage, and whether the cache was used."""

    records: int = 0
    format: str = ""
    dropped_by_format: int = 0
    skipped: int = 0
    skipped_where: list[str] = field(default_factory=list)
    truncated: int = 0
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
        if self.dropped_empty:
            parts.append(f"{self.dropped_empty} dropped with no trained token")
        parts.append(f"packing efficiency {self.efficiency:.1%}")
        return ", ".join(parts)


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


def cache_key(data_cfg: dict[str, Any], tokenizer: Any, template: Any, fmt: str, seed: int) -> str:
    """Changes whenever the data content, tokenizer, template, format or any data setting changes."""
    h = hashlib.sha256(PIPELINE_VERSION.encode())
    for path in data_paths(data_cfg):
        _hash_path(h, path)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(repr(template).encode())
    settings = {k: data_cfg[k] for k in ("max_length", "pack", "shuffle", "max_samples", "on_error", "system")}
    h.update(json.dumps({**settings, "format": fmt, "seed": seed}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    root = os.environ.get("FTCORE_CACHE_DIR") or Path.home() / ".cache" / "ftcore"
    return Path(root) / "data"


def encode_all(samples: list[dict[str, Any]], tokenizer: Any, template: Any, data_cfg: dict[str, Any], report: DataReport) -> tuple[list[list[int]], list[list[int]], dict[str, list]]:
    """Encode in chunks; returns ids, labels and the carried extras of the kept samples."""
    from .encode import encode_batch

    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    kept: list[int] = []
    for start in range(0, len(samples), ENCODE_CHUNK):
        out = encode_batch(samples[start : start + ENCODE_CHUNK], tokenizer, template, data_cfg["max_length"], system=data_cfg["system"])
        input_ids.extend(out["input_ids"])
        labels.extend(out["labels"])
        kept.extend(start + i for i in out["indices"])
        report.truncated += out["truncated"]
        report.dropped_empty += out["dropped"]
    keys = [k for k in CARRIED_KEYS if any(k in s for s in samples)]
    extras = {k: [samples[i].get(k) for i in kept] for k in keys}
    return input_ids, labels, extras


def build_data(data_cfg: dict[str, Any], formats: Any, tokenizer: Any, template: Any, seed: int, log: Callable[[str], None] = print) -> tuple[PackedData, DataReport]:
    """Load -> format -> encode -> pack, without the cache."""
    from .load import apply_format, detect_format, load_records

    report = DataReport()
    records = load_records([str(p) for p in data_paths(data_cfg)], max_samples=data_cfg["max_samples"], seed=seed)
    report.records = len(records)
    fmt = data_cfg["format"]
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
    input_ids, labels, extras = encode_all(samples, tokenizer, template, data_cfg, report)
    if not input_ids:
        raise FtcoreError("every sample was dropped while encoding (no trained tokens left)", where="data", hint="raise data.max_length or check the template")
    packed = pack(input_ids, labels, data_cfg["max_length"], packed=data_cfg["pack"], shuffle=data_cfg["shuffle"], seed=seed, extras=extras)
    fill_counts(report, packed)
    return packed, report


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
) -> tuple[PackedData, DataReport]:
    """The packed training data, from the cache when nothing that shapes it changed.

    With several processes only the main one does the work; the others wait at
    ``barrier`` and read the cache.
    """
    if not data_cfg["cache"]:
        return build_data(data_cfg, formats, tokenizer, template, seed, log)
    fmt = data_cfg["format"]
    folder = Path(data_cfg["cache_dir"] or default_cache_dir()) / cache_key(data_cfg, tokenizer, template, fmt, seed)
    if is_main and not (folder / "report.json").is_file():
        packed, report = build_data(data_cfg, formats, tokenizer, template, seed, log)
        tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        packed.save(tmp)
        (tmp / "report.json").write_text(json.dumps(asdict(report)))
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
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
