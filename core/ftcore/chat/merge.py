"""``ftcore merge``: fold a LoRA adapter into its base model and save a standalone model.

The merged folder is what plain transformers (or any serving stack) loads without ftcore:
sharded safetensors in the builder's layout, the tokenizer with the training template as
its Jinja ``chat_template``, and ``generation_config.json`` whose ``eos_token_id`` holds
EOS plus the template's stop tokens. Everything is written into a temporary folder next to
OUT and renamed into place at the end, so a failure leaves nothing at OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path
from typing import Any, Callable

from ..errors import FtcoreError
from ..models.loading import DTYPES
from .generate import stop_token_ids
from .resolve import AdapterInfo, attach_adapter, model_config, read_adapter, tokenizer_folder
from .resolve import builder_name as resolve_builder_name

FORMATS = ("native", "llama")


# --------------------------------------------------------------------------- templates -> Jinja


def _jinja_str(text: str) -> str:
    """``text`` as a Jinja string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f"'{escaped}'"


def _jinja_expr(fmt: str, values: dict[str, str], field: str, template: Any) -> str:
    """A ``str.format`` string of a template field as a Jinja expression (``values``: placeholder -> expression)."""
    parts: list[str] = []
    for literal, name, spec, conversion in string.Formatter().parse(fmt):
        if literal:
            parts.append(_jinja_str(literal))
        if name is None:
            continue
        if spec or conversion or name not in values:
            raise FtcoreError(
                f"template {template.name!r}: cannot write {field} placeholder {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} as Jinja",
                hint="give the template a `jinja` field with its chat_template",
            )
        parts.append(values[name])
    return " + ".join(parts) if parts else "''"


def template_to_jinja(template: Any) -> str:
    """A Jinja chat_template that renders conversations exactly as ``template`` does.

    With ``add_generation_prompt`` (the template's instruction already ends where the
    answer starts) the rendering equals the tokenizer's BOS text followed by
    :func:`ftcore.data.encode.render_prompt`; a whole conversation renders as in training.
    A template with a ``jinja`` field uses that.
    """
    if getattr(template, "jinja", None):
        return template.jinja
    if getattr(template, "use_tokenizer_template", False):
        raise FtcoreError("the hf template is the tokenizer's own chat_template; there is nothing to convert")
    out: list[str] = []
    default = template.default_system or ""
    out.append(
        "{%- if messages[0]['role'] == 'system' -%}{%- set system_message = messages[0]['content'] -%}"
        "{%- set loop_messages = messages[1:] -%}"
        f"{{%- else -%}}{{%- set system_message = {_jinja_str(default)} -%}}{{%- set loop_messages = messages -%}}{{%- endif -%}}"
    )
    if not template.system:
        out.append(
            "{%- if system_message -%}{{ raise_exception('this chat template has no system prompt') }}{%- endif -%}"
        )
    out.append("{%- for message in loop_messages -%}")
    out.append(
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    )
    out.append("{%- if message['role'] == 'user' -%}")
    if template.bos == "every_turn":
        out.append("{{ bos_token }}")
    elif template.bos == "first":
        out.append("{%- if loop.first -%}{{ bos_token }}{%- endif -%}")
    if template.system:
        system_expr = _jinja_expr(template.system, {"system": "system_message"}, "system", template)
        out.append(f"{{%- if loop.first and system_message -%}}{{{{ {system_expr} }}}}{{%- endif -%}}")
    instruction = _jinja_expr(
        template.instruction, {"input": "message['content']", "round": "((loop.index0 // 2 + 1) | string)"}, "instruction", template
    )
    out.append(f"{{{{ {instruction} }}}}")
    out.append("{%- else -%}")
    answer = "message['content']" + (f" + {_jinja_str(template.suffix)}" if template.suffix else "")
    out.append(f"{{{{ {answer} }}}}")
    if not template.suffix_as_eos:
        out.append("{{ eos_token }}")
    if template.sep:
        out.append(f"{{{{ {_jinja_str(template.sep)} }}}}")
    out.append("{%- endif -%}{%- endfor -%}")
    return "".join(out)


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


def _update_json(path: Path, update: Callable[[dict[str, Any]], None]) -> None:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    update(data)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def merge_adapter(
    parts: Any,
    base: str,
    adapter: str,
    out: str | Path,
    *,
    max_shard_size: str = "2GB",
    dtype: str | None = None,
    fmt: str = "native",
    builder: str | None = None,
    template: str | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = print,
    before_load: Callable[[], None] | None = None,
) -> Path:
    """Merge ``adapter`` into ``base`` and write a standalone model to ``out``; return ``out``.

    The merge runs in fp32 on the CPU; the result is saved in ``dtype`` (default: the base
    checkpoint's own dtype, fp32 when it does not say). Every argument, path and name is
    checked before anything heavy is imported; ``before_load`` runs just before.
    """
    out = Path(out).expanduser()
    if fmt not in FORMATS:
        raise FtcoreError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    parse_size(max_shard_size)
    check_out_dir(out, force)
    info: AdapterInfo = read_adapter(adapter)
    for name, folder in (("BASE", base), ("ADAPTER", adapter)):
        if out.resolve() == Path(folder).expanduser().resolve():
            raise FtcoreError(f"OUT is the {name} folder ({folder}); merging would overwrite it", hint="give a new folder as OUT")
    if not (Path(base).expanduser() / "config.json").is_file():
        raise FtcoreError(f"base model folder {base!r} {'has no config.json' if Path(base).is_dir() else 'does not exist'}", hint="give the local checkpoint folder the adapter was trained on")
    builder_name = resolve_builder_name(parts, builder, base, info)
    template_name = template or info.template
    if template and info.template and template != info.template:
        log(f"warning: the adapter was trained with template {info.template!r}, but --template is {template!r}")
    chat_template = parts.templates.get(template_name) if template_name else None
    if chat_template is None:
        log("note: the adapter has no recipe.yaml naming its template and no --template was given: the base tokenizer's chat_template is kept")
    out_dtype = dtype or {torch_name: short for short, torch_name in DTYPES.items()}.get(
        str(model_config(base).get("torch_dtype") or model_config(base).get("dtype") or "float32"), "fp32"
    )
    if out_dtype not in DTYPES:
        raise FtcoreError(f"--dtype must be one of {', '.join(DTYPES)}, got {out_dtype!r}")

    if before_load is not None:
        before_load()
    import torch

    build = parts.models.get(builder_name)
    log(f"loading {base} ({builder_name} builder) and the adapter {info.path}")
    if info.asks_remote_code and not trust_remote_code:
        log(f"note: {info.path / 'recipe.yaml'} asks for the base model's own Python code (model.trust_remote_code: true); "
            "it does not run unless you pass --trust-remote-code")
    tokenizer = build.load_tokenizer(tokenizer_folder(str(base), info), trust_remote_code=trust_remote_code)
    model = build.load_model(str(base), dtype=torch.float32, trust_remote_code=trust_remote_code)
    model = attach_adapter(model, info)
    model = model.merge_and_unload()
    model.to(getattr(torch, DTYPES[out_dtype]))
    needed = sum(p.numel() * p.element_size() for p in model.state_dict().values())

    out.parent.mkdir(parents=True, exist_ok=True)
    check_disk_space(out.parent, needed)
    tmp = out.parent / f".tmp-merge-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        log(f"saving {out_dtype} weights ({needed / 1e6:.1f} MB, {fmt} layout, shards up to {max_shard_size})")
        build.save(model, tmp, max_shard_size=max_shard_size, layout=fmt)
        written_type = model_config(tmp).get("model_type")
        if fmt == "llama" and written_type != "llama":
            raise FtcoreError(f"--format llama: the {builder_name} builder wrote a {written_type!r} model", hint="use --format native with this builder")
        if chat_template is not None and not chat_template.use_tokenizer_template:
            tokenizer.chat_template = template_to_jinja(chat_template)
        tokenizer.save_pretrained(str(tmp), save_jinja_files=False)
        _write_generation_config(tmp, model, tokenizer, chat_template)
        if chat_template is not None and not chat_template.use_tokenizer_template:
            # the Jinja file a newer transformers may also have written must say the same
            jinja_file = tmp / "chat_template.jinja"
            if jinja_file.exists():
                jinja_file.unlink()
        _finish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"merged model: {out} ({_dir_size(out) / 1e6:.1f} MB)")
    return out


def _write_generation_config(folder: Path, model: Any, tokenizer: Any, template: Any) -> None:
    eos = stop_token_ids(tokenizer, template) if template is not None else ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    base = model.generation_config.to_dict() if getattr(model, "generation_config", None) is not None else {}

    def update(data: dict[str, Any]) -> None:
        if not data:
            data.update({k: v for k, v in base.items() if k in ("bos_token_id", "pad_token_id", "transformers_version")})
        existing = data.get("eos_token_id")
        existing = existing if isinstance(existing, list) else ([existing] if existing is not None else [])
        ids = eos + [i for i in existing if i not in eos]
        data["eos_token_id"] = ids[0] if len(ids) == 1 else ids
        if data.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
            data["pad_token_id"] = tokenizer.pad_token_id

    _update_json(folder / "generation_config.json", update)


def _finish(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; a replaced ``out`` is removed only after the move."""
    old = None
    if out.exists():
        old = out.parent / f".old-merge-{out.name}-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
