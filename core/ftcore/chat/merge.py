"""``ftcore merge``: fold a LoRA adapter into its base model and save a standalone model.

The merged folder is what plain transformers (or vLLM, LMDeploy, ``ftcore export``) loads
without ftcore and without remote code: sharded safetensors in Llama's layout when the builder
loads the model as a Llama (InternLM2), else the builder's own; the tokenizer with the training
template as its Jinja ``chat_template``; ``generation_config.json`` whose ``eos_token_id`` holds
EOS plus the template's stop tokens (:mod:`ftcore.chat.chat_files`). A reward-model adapter
becomes a sequence-classification model. Everything is written into a temporary folder next
to OUT and renamed into place at the end, so a failure leaves nothing at OUT.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..errors import FtcoreError
from ..models.loading import DTYPES
from .chat_files import save_tokenizer, write_chat_files
from .chat_files import template_to_jinja as template_to_jinja  # re-exported: where callers found it
from .resolve import AdapterInfo, attach_adapter, model_config, read_adapter, recorded_builder, tokenizer_folder
from .resolve import builder_name as resolve_builder_name

FORMATS = ("native", "llama")
#: PEFT ``task_type`` of an adapter -> the head its base is loaded with (``ftcore.models.hf.HEADS``)
TASK_HEADS = {"CAUSAL_LM": "causal_lm", "SEQ_CLS": "sequence_classification"}


# --------------------------------------------------------------------------- merging


def parse_size(text: str) -> int:
    """``2GB``, ``500MB``, ``1.5GiB``, ``1000`` -> bytes (as transformers reads max_shard_size)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    t = str(text).strip().upper()
    number = t.rstrip("KMGTIB")
    unit = t[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise FtcoreError(f"--max-shard-size {text!r} is not a size", hint="write it like 2GB, 500MB or 1GiB")
    return int(value * units[unit])


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FtcoreError(f"{out} exists and is not a folder", hint="give another OUT")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FtcoreError(f"{out} already exists and is not empty", hint="pass --force to replace it, or give another OUT")


def check_disk_space(folder: Path, needed: int) -> None:
    """Refuse to start writing ``needed`` bytes (plus 5% and 64 MiB slack) where they do not fit."""
    free = shutil.disk_usage(folder).free
    want = int(needed * 1.05) + (64 << 20)
    if free < want:
        raise FtcoreError(
            f"not enough disk space in {folder}: the merged model needs about {want / 1e9:.2f} GB, {free / 1e9:.2f} GB is free",
            hint="free some space, write OUT elsewhere, or pick a smaller --dtype (bf16/fp16 halve it)",
        )


def adapter_head(info: AdapterInfo | None) -> str:
    """The model head an adapter was trained on (:data:`ftcore.models.hf.HEADS`), from PEFT's ``task_type``."""
    if info is None:
        return "causal_lm"
    config = info.path / "adapter_config.json"
    task = json.loads(config.read_text(encoding="utf-8")).get("task_type") or "CAUSAL_LM"
    if task not in TASK_HEADS:
        raise FtcoreError(f"adapter task_type {task!r} cannot be merged", where=str(config), hint=f"ftcore merges {', '.join(TASK_HEADS)} adapters")
    return TASK_HEADS[task]


def code_files(config: dict[str, Any]) -> list[str]:
    """The Python files a config.json's ``auto_map`` points at (``modeling_x.XForCausalLM`` -> ``modeling_x.py``)."""
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    names = [v if isinstance(v, str) else next((x for x in v if x), "") for v in auto_map.values()]
    return sorted({name.split("--")[-1].rsplit(".", 1)[0] + ".py" for name in names if isinstance(name, str) and "." in name})


def check_native_code(folder: Path, what: str) -> None:
    """Refuse a native layout whose config.json asks for code files that are not beside it."""
    config = model_config(folder)
    missing = [f for f in code_files(config) if not (folder / f).is_file()]
    if missing:
        raise FtcoreError(
            f"--format native: the {config.get('model_type')} layout loads only with its own code files, and {what} lacks {', '.join(missing)} "
            f"(config.json auto_map names them)",
            hint="leave out --format (the default Llama layout loads in plain transformers, vLLM and LMDeploy without remote code), "
                 "or copy the model's code files into the base folder first",
        )


def check_mergeable(parts: Any, base: str, adapter: str, out: str | Path) -> None:
    """Refuse, naming what to run instead, a checkpoint whose builder (its ``recipe.yaml``'s
    ``model.builder``) says ``ftcore merge`` cannot make it a standalone model
    (:meth:`ftcore.models.builder.ModelBuilder.merge_command`), or whose builder is not installed."""
    name = recorded_builder(adapter)
    if name is None:
        return
    what = f"{str(adapter)!r} is a {name} checkpoint (its recipe.yaml says model.builder: {name})"
    if name not in parts.models:
        if not (Path(adapter).expanduser() / "adapter_config.json").is_file():
            raise FtcoreError(f"{what}, not a LoRA adapter, and {parts.models.unknown_message(name)}")
        return  # an adapter all the same: merged with the builder --builder or model_type picks
    command = parts.models.get(name).merge_command(str(base), Path(adapter), str(out))
    if command:
        raise FtcoreError(f"{what}, not one LoRA adapter: ftcore merge cannot merge it", hint=f"write it as a standalone model with: {command}")


def merge_adapter(
    parts: Any,
    base: str,
    adapter: str | None,
    out: str | Path,
    *,
    max_shard_size: str = "2GB",
    dtype: str | None = None,
    fmt: str | None = None,
    builder: str | None = None,
    template: str | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = print,
    before_load: Callable[[], None] | None = None,
) -> Path:
    """Merge ``adapter`` into ``base`` (or re-save ``base`` alone, ``adapter=None``) and write a
    standalone model to ``out``; return ``out``.

    The merge runs in fp32 on the CPU; the result is saved in ``dtype`` (default: the base
    checkpoint's own dtype, fp32 when it does not say). ``fmt`` ``None`` writes the layout plain
    transformers loads without remote code: Llama's when the builder loads the model as a Llama
    (InternLM2 does), else the builder's native one. ``native`` asks for the builder's own layout,
    refused when it needs code files the base does not have. A reward-model adapter (PEFT task
    ``SEQ_CLS``) becomes a sequence-classification model. Every argument, path and name is
    checked before anything heavy is imported; ``before_load`` runs just before.
    """
    out = Path(out).expanduser()
    if fmt is not None and fmt not in FORMATS:
        raise FtcoreError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    parse_size(max_shard_size)
    if adapter is not None:
        check_mergeable(parts, base, adapter, out)
    check_out_dir(out, force)
    info: AdapterInfo | None = read_adapter(adapter) if adapter is not None else None
    for name, folder in (("BASE", base), ("ADAPTER", adapter)):
        if folder is not None and out.resolve() == Path(folder).expanduser().resolve():
            raise FtcoreError(f"OUT is the {name} folder ({folder}); {'merging' if adapter else 'writing'} would overwrite it", hint="give a new folder as OUT")
    if not (Path(base).expanduser() / "config.json").is_file():
        raise FtcoreError(f"base model folder {base!r} {'has no config.json' if Path(base).is_dir() else 'does not exist'}", hint="give the local checkpoint folder the adapter was trained on")
    head = adapter_head(info)
    if fmt == "native":
        check_native_code(Path(base).expanduser(), f"BASE ({base})")
    builder_name = resolve_builder_name(parts, builder, base, info)
    template_name = template or (info.template if info is not None else None)
    if template and info is not None and info.template and template != info.template:
        log(f"warning: the adapter was trained with template {info.template!r}, but --template is {template!r}")
    chat_template = parts.templates.get(template_name) if template_name else None
    if chat_template is None:
        log("note: no recipe.yaml naming the training template and no --template: the base tokenizer's chat_template is kept")
    system = info.system if info is not None else None
    out_dtype = dtype or {torch_name: short for short, torch_name in DTYPES.items()}.get(
        str(model_config(base).get("torch_dtype") or model_config(base).get("dtype") or "float32"), "fp32"
    )
    if out_dtype not in DTYPES:
        raise FtcoreError(f"--dtype must be one of {', '.join(DTYPES)}, got {out_dtype!r}")

    if before_load is not None:
        before_load()
    import torch

    build = parts.models.get(builder_name)
    log(f"loading {base} ({builder_name} builder)" + (f" and the adapter {info.path}" if info is not None else ""))
    if info is not None and info.asks_remote_code and not trust_remote_code:
        log(f"note: {info.path / 'recipe.yaml'} asks for the base model's own Python code (model.trust_remote_code: true); "
            "it does not run unless you pass --trust-remote-code")
    tokenizer_dir = tokenizer_folder(str(base), info)
    tokenizer = build.load_tokenizer(tokenizer_dir, trust_remote_code=trust_remote_code)
    load_kwargs: dict[str, Any] = {"head": head} if head != "causal_lm" else {}
    model = build.load_model(str(base), dtype=torch.float32, trust_remote_code=trust_remote_code, **load_kwargs)
    if head != "causal_lm" and model.config.pad_token_id is None:  # the head scores each row's last non-pad token
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if info is not None:
        model = attach_adapter(model, info).merge_and_unload()
    model.to(getattr(torch, DTYPES[out_dtype]))
    layout = fmt or ("llama" if model.config.model_type == "llama" else "native")
    needed = sum(p.numel() * p.element_size() for p in model.state_dict().values())

    out.parent.mkdir(parents=True, exist_ok=True)
    check_disk_space(out.parent, needed)
    tmp = out.parent / f".tmp-merge-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        log(f"saving {out_dtype} weights ({needed / 1e6:.1f} MB, {layout} layout, shards up to {max_shard_size})")
        build.save(model, tmp, max_shard_size=max_shard_size, layout=layout)
        written = model_config(tmp)
        if layout == "llama" and written.get("model_type") != "llama":
            raise FtcoreError(f"--format llama: the {builder_name} builder wrote a {written.get('model_type')!r} model", hint="leave out --format to write its own layout")
        wanted = type(model).__name__
        if head != "causal_lm" and wanted not in (written.get("architectures") or []):
            raise FtcoreError(f"the {builder_name} builder's {layout} layout has no {wanted}", hint="leave out --format: the Llama layout keeps the score head")
        if layout == "native":
            check_native_code(tmp, "the written model")
        if (Path(tokenizer_dir) / "tokenizer.model").is_file():  # SentencePiece: slow tokenizers and llama.cpp read it
            shutil.copy(Path(tokenizer_dir) / "tokenizer.model", tmp / "tokenizer.model")
        if head == "causal_lm":
            write_chat_files(tmp, tokenizer, chat_template, system=system, model=model)
        else:
            save_tokenizer(tmp, tokenizer, chat_template, system)
        _finish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{'merged' if info is not None else 'written'} model: {out} ({_dir_size(out) / 1e6:.1f} MB)")
    return out


def _finish(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; a replaced ``out`` is removed only after the move."""
    old = None
    if out.exists():
        old = out.parent / f".old-merge-{out.name}-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
