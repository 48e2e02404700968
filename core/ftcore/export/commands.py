"""``ftcore export``: a model, full checkpoint or adapter (merged on the way) in a deploy format.

Each format is a row of :data:`FORMATS`: ``llama`` is the merged model in the plain Llama layout
(transformers, vLLM and LMDeploy load it as is), ``gguf`` one GGUF file for llama.cpp and Ollama.
Only click is imported at module level.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import FtcoreError
from ..models.loading import DTYPES
from .gguf_file import OUTTYPES


@dataclass
class Source:
    """What to export, checked: a base model folder and an adapter to merge into it, if any."""

    model: str
    adapter: str | None
    is_llama: bool


def resolve_source(model: str, adapter: str | None) -> Source:
    """MODEL alone (a model folder or an adapter checkpoint, whose base its recipe names) or with ``--adapter``."""
    from ..chat.resolve import base_of, is_adapter_dir, model_config, read_adapter

    if adapter is None and is_adapter_dir(model):
        adapter, model = model, base_of(read_adapter(model))
    elif adapter is not None:
        read_adapter(adapter)
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        raise FtcoreError(f"model folder {model!r} {'has no config.json' if folder.is_dir() else 'does not exist'}",
                          hint="give a model folder (a merged model, a full fine-tune checkpoint) or an adapter checkpoint")
    return Source(model=str(folder), adapter=adapter, is_llama=model_config(folder).get("model_type") == "llama")


def _merge(parts: Any, source: Source, out: Path, *, dtype: str | None, template: str | None, builder: str | None,
           trust_remote_code: bool, log: Callable[[str], None], force: bool = False) -> Path:
    from ..chat.merge import merge_adapter

    return merge_adapter(parts, source.model, source.adapter, out, fmt="llama", dtype=dtype, template=template, builder=builder,
                         force=force, trust_remote_code=trust_remote_code, log=log)


def export_llama(parts: Any, source: Source, out: Path, options: dict[str, Any], log: Callable[[str], None]) -> None:
    """The merged model in the Llama layout, with its chat template and stop words (``ftcore merge --format llama``)."""
    _merge(parts, source, out, dtype=options["dtype"], template=options["template"], builder=options["builder"],
           trust_remote_code=options["trust_remote_code"], log=log, force=options["force"])


def export_gguf(parts: Any, source: Source, out: Path, options: dict[str, Any], log: Callable[[str], None]) -> None:
    """One GGUF file: a Llama folder as it is, anything else (an adapter, InternLM2's layout) merged to one first."""
    from ..chat.chat_files import eos_ids, template_to_jinja, writes_jinja
    from .gguf_file import write_gguf

    if out.exists() and not options["force"]:
        raise FtcoreError(f"{out} already exists", hint="pass --force to replace it, or give another OUT")
    if not source.is_llama and _builder(parts, source, options) == "hf":  # the hf builder saves the model's own architecture
        from .gguf_file import check_config
        from ..chat.resolve import model_config

        check_config(model_config(source.model), Path(source.model))
    template = parts.templates.get(options["template"]) if options["template"] else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ftcore-export-", dir=out.parent) as scratch:
        folder = Path(source.model)
        if source.adapter is not None or not source.is_llama:
            folder = _merge(parts, source, Path(scratch) / "merged", dtype="fp32", template=options["template"], builder=options["builder"],
                            trust_remote_code=options["trust_remote_code"], log=log)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        chat_template = template_to_jinja(template) if writes_jinja(template) else None
        eos = eos_ids(tokenizer, template) if template is not None else None
        log(f"writing {options['outtype']} GGUF from {folder if folder.parent != Path(scratch) else 'the merged model'}")
        tmp = Path(scratch) / out.name
        write_gguf(folder, tmp, options["outtype"], tokenizer=tokenizer, chat_template=chat_template, eos=eos,
                   name=Path(source.adapter or source.model).name, log=log)
        os.replace(tmp, out)


def _builder(parts: Any, source: Source, options: dict[str, Any]) -> str:
    from ..chat.resolve import builder_name, read_adapter

    return builder_name(parts, options["builder"], source.model, read_adapter(source.adapter) if source.adapter else None)


#: ``--to`` -> (writer, what OUT is)
FORMATS: dict[str, tuple[Callable[..., None], str]] = {
    "gguf": (export_gguf, "a .gguf file"),
    "llama": (export_llama, "a folder"),
}


@click.command("export")
@click.argument("model", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--to", "to", type=click.Choice(list(FORMATS)), default="gguf", show_default=True,
              help="gguf: one file for llama.cpp / Ollama; llama: the merged model in the plain Llama layout (transformers, vLLM, LMDeploy)")
@click.option("--adapter", type=click.Path(), help="an adapter checkpoint to merge into MODEL first (MODEL may also be the adapter checkpoint itself)")
@click.option("--outtype", type=click.Choice(list(OUTTYPES)), default="f16", show_default=True, help="GGUF weight type of the matrices (norms stay f32)")
@click.option("--dtype", type=click.Choice(list(DTYPES)), help="--to llama: dtype of the saved weights (default: the base model's)")
@click.option("--template", help="chat template to write (default: the adapter's training template, else the model's chat_template)")
@click.option("--builder", help="model builder (default: the adapter's recipe, else by model_type, else hf)")
@click.option("--force", is_flag=True, help="replace an existing OUT")
@click.option("--trust-remote-code", is_flag=True, help="allow Python code shipped with the model to run (only for models whose code you trust)")
@click.pass_obj
def export_cmd(app: Any, model: str, out: str, to: str, adapter: str | None, outtype: str, dtype: str | None, template: str | None,
               builder: str | None, force: bool, trust_remote_code: bool) -> None:
    """Export MODEL (a model folder, a full fine-tune checkpoint or an adapter checkpoint) to OUT
    in a deploy format, with the chat template and its stop words.

    \b
    ftcore export work_dirs/quickstart/checkpoint-40 model-q8_0.gguf --outtype q8_0
    ftcore export ./internlm2-chat-1_8b ./deploy --to llama --adapter work_dirs/internlm2_qlora/checkpoint-500
    """
    write, _ = FORMATS[to]
    if to == "gguf":
        _need_gguf()
    if template:
        app.parts.templates.part(template)  # an unknown name: "did you mean", before anything loads
    source = resolve_source(model, adapter)
    from ..chat.commands import _quiet

    _quiet()
    options = {"outtype": outtype, "dtype": dtype, "template": template, "builder": builder, "force": force, "trust_remote_code": trust_remote_code}
    target = Path(out).expanduser()
    write(app.parts, source, target, options, click.echo)
    size = target.stat().st_size if target.is_file() else sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    click.echo(f"exported: {target} ({size / 1e6:.1f} MB)")
    if to == "gguf":
        click.echo(f"next: llama-cli -m {target} -cnv   (or Ollama: a Modelfile with FROM {target}, then ollama create)")
    else:
        click.echo(f"next: vllm serve {target}   or   lmdeploy serve api_server {target}")


def _need_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise FtcoreError("--to gguf needs the gguf package", hint="pip install 'ftcore[gguf]'") from None

