"""What a saved model carries so that it chats anywhere: the chat template as the tokenizer's Jinja
``chat_template`` (the run's system prompt as its default) and the template's stop words as EOS in
``generation_config.json``. Every checkpoint, merged model and export is written through
:func:`write_chat_files`, so plain transformers (``apply_chat_template`` + ``generate``) renders
and stops as ftcore does, and ``ftcore chat FOLDER`` needs no ``--template``.
"""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path
from typing import Any, Callable

from ..errors import FtcoreError
from .generate import stop_token_ids

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


def template_to_jinja(template: Any, system: str | None = None) -> str:
    """A Jinja chat_template that renders conversations exactly as ``template`` does.

    With ``add_generation_prompt`` (the template's instruction already ends where the
    answer starts) the rendering equals the tokenizer's BOS text followed by
    :func:`ftcore.data.encode.render_prompt`; a whole conversation renders as in training.
    A template with a ``jinja`` field uses that, unless ``system`` (the training run's
    ``data.system``) is given: it becomes the default system prompt of a generated template,
    as training put it before every conversation that had none.
    """
    if system and template.system:
        template = dataclasses.replace(template, default_system=system, jinja=None)
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


# --------------------------------------------------------------------------- writing


def _update_json(path: Path, update: Callable[[dict[str, Any]], None]) -> None:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    update(data)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def writes_jinja(template: Any) -> bool:
    """Whether ``template`` replaces the tokenizer's chat_template (``hf`` renders with the tokenizer's own;
    a family's Jinja template, e.g. ``qwen2_5_chat``, is written as it is)."""
    return template is not None and (not template.use_tokenizer_template or bool(template.jinja))


def save_tokenizer(folder: str | Path, tokenizer: Any, template: Any, system: str | None = None) -> None:
    """``tokenizer.save_pretrained(folder)`` with ``template`` as its ``chat_template`` (in
    tokenizer_config.json, where every transformers version reads it); ``tokenizer`` itself is left as it was."""
    folder = Path(folder)
    if not writes_jinja(template):
        tokenizer.save_pretrained(str(folder))
        return
    before = getattr(tokenizer, "chat_template", None)
    tokenizer.chat_template = template_to_jinja(template, system)
    try:
        tokenizer.save_pretrained(str(folder), save_jinja_files=False)
    finally:
        tokenizer.chat_template = before
    (folder / "chat_template.jinja").unlink(missing_ok=True)  # an older file must not say otherwise


def eos_ids(tokenizer: Any, template: Any) -> list[int]:
    """EOS and the template's single-token stop words (EOS alone without a template)."""
    if template is not None:
        return stop_token_ids(tokenizer, template)
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def write_generation_config(folder: str | Path, tokenizer: Any, template: Any, model: Any = None) -> None:
    """``generation_config.json`` with ``eos_token_id`` = EOS + the template's stop words (+ any EOS
    ids already there), and ``pad_token_id``; kept as it is otherwise (or started from ``model``'s)."""
    eos = eos_ids(tokenizer, template)
    base = model.generation_config.to_dict() if getattr(model, "generation_config", None) is not None else {}

    def update(data: dict[str, Any]) -> None:
        if not data:
            data.update({k: v for k, v in base.items() if k in ("bos_token_id", "pad_token_id", "transformers_version")})
            if data.get("bos_token_id") is None and tokenizer.bos_token_id is not None:
                data["bos_token_id"] = tokenizer.bos_token_id
        existing = data.get("eos_token_id")
        existing = existing if isinstance(existing, list) else ([existing] if existing is not None else [])
        ids = eos + [i for i in existing if i not in eos]
        data["eos_token_id"] = ids[0] if len(ids) == 1 else ids
        if data.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
            data["pad_token_id"] = tokenizer.pad_token_id

    _update_json(Path(folder) / "generation_config.json", update)


def write_chat_files(folder: str | Path, tokenizer: Any, template: Any, *, system: str | None = None, model: Any = None) -> None:
    """The tokenizer with ``template`` as its chat_template, and generation_config.json's EOS ids:
    what makes the model in ``folder`` (or the adapter there) chat correctly without ftcore."""
    save_tokenizer(folder, tokenizer, template, system)
    write_generation_config(folder, tokenizer, template, model)
