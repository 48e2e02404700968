"""``ftcore merge``, ``ftcore chat`` and ``ftcore serve``: using a model after training.

Only click is imported at module level; each command imports torch/transformers (and the
server library) when it runs, so ``ftcore --help`` stays fast. What to chat with is MODEL
(with ``--adapter``), or what a plugin's chat backend loads (``--NAME SOURCE``: see
:mod:`ftcore.chat.backends`).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import FtcoreError
from ..models.loading import DTYPES
from .backends import BackendEntry, ChatArgs, ModelCommand, backend_entries, backend_options, chosen_backend
from .generate import Sampling


def _warn(message: str) -> None:
    click.secho(message, fg="yellow", err=True)


def _quiet() -> None:
    """No progress bars or library chatter around the answers."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


#: ``ftcore chat``'s sampling options: one per :class:`~ftcore.chat.generate.Sampling` field but
#: ``stop``, handed to the command as one ``sampling`` argument.
SAMPLING_OPTIONS = [
    click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True, help="longest answer, in tokens"),
    click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
                 help="sampling temperature; 0 = greedy: the same answer every time, what a fine-tune learned (sampling makes small models ramble; try 0.7 for varied answers)"),
    click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=0.9, show_default=True, help="nucleus sampling"),
    click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="sample among the k likeliest tokens (0 = off)"),
    click.option("--repetition-penalty", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True, help="> 1 discourages repeating"),
    click.option("--seed", type=int, default=None, help="random seed, for reproducible sampling"),
]


def _sampling_options(func: Any) -> Any:
    import dataclasses
    import functools

    fields = {f.name for f in dataclasses.fields(Sampling)}

    @functools.wraps(func)
    def with_sampling(*args: Any, **kwargs: Any) -> Any:
        sampling = Sampling(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
        return func(*args, sampling=sampling, **kwargs)

    for option in reversed(SAMPLING_OPTIONS):
        with_sampling = option(with_sampling)
    return with_sampling


#: Only the person running ftcore may let a model's own Python code run; no file can.
TRUST_OPTION = click.option("--trust-remote-code", is_flag=True, help="allow Python code shipped with the model to run (only for models whose code you trust)")


ADAPTER_OPTION = click.option("--adapter", type=click.Path(), help="a LoRA/QLoRA checkpoint folder (work_dir/checkpoint-N) to apply")
#: serve's --adapter: one checkpoint (served alone), or NAME=PATH as often as needed (the base and each adapter served)
SERVE_ADAPTER_OPTION = click.option("--adapter", "adapters", multiple=True, metavar="[NAME=]PATH",
                                    help="a LoRA checkpoint folder served alone; or NAME=PATH, repeated: the base and each adapter, picked by the request's model")


def _model_options(func: Any, adapter: Any = ADAPTER_OPTION) -> Any:
    options = [
        adapter,
        click.option("--template", help="chat template (default: the adapter's training template, else the tokenizer's chat_template)"),
        click.option("--system", help="system prompt (default: the adapter's recipe data.system, else the template's)"),
        click.option("--bits", type=click.Choice(["4", "8"]), help="load the model quantized: 4 = NF4, 8 = int8 (bitsandbytes)"),
        click.option("--builder", help="model builder (default: the adapter's recipe, else by model_type, else hf; see `ftcore list models`)"),
        TRUST_OPTION,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _args(model: str, adapter: str | None, template: str | None, system: str | None, bits: str | None, builder: str | None, trust_remote_code: bool) -> ChatArgs:
    return ChatArgs(model, adapter, template, system, int(bits) if bits else None, builder, trust_remote_code)


def _plan(app: Any, args: ChatArgs) -> Any:
    """MODEL and the options, checked (cheap; nothing loaded)."""
    from .resolve import plan_chat

    return plan_chat(app.parts, args.model, adapter=args.adapter, builder=args.builder, template=args.template, system=args.system,
                     bits=args.bits, trust_remote_code=args.trust_remote_code)


def _load(app: Any, args: ChatArgs, backend: BackendEntry | None, values: dict[str, Any], plan: Any) -> Any:
    """The ChatModel: loaded by the chosen backend, else by the core from ``plan``."""
    _quiet()
    if backend is not None:
        return backend.backend.load(app.parts, values[backend.flag.name], args, backend_options(backend, values), _warn)
    from .resolve import load_chat_model

    return load_chat_model(app.parts, plan, warn=_warn)


def _prepare(app: Any, args: ChatArgs, values: dict[str, Any], image: str | None = None) -> tuple[BackendEntry | None, Any]:
    """The chosen backend (checked) or the core's plan for MODEL: everything cheap, before loading."""
    ctx = click.get_current_context()
    backend = chosen_backend(ctx, app, values)
    if backend is None:
        if image is not None:  # the core's models are text only
            options = " or ".join(f"--{e.backend.name} {e.backend.metavar}" for e in backend_entries(ctx.find_root().command))
            raise FtcoreError(f"--image needs a model that takes images: {'load one with ' + options if options else 'no installed plugin adds one'}")
        return None, _plan(app, args)
    backend.backend.check(values[backend.flag.name], args, backend_options(backend, values))
    return backend, None


@click.command("merge")
@click.argument("base", type=click.Path())
@click.argument("adapter", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--max-shard-size", default="2GB", show_default=True, help="largest safetensors shard, e.g. 2GB or 500MB")
@click.option("--dtype", type=click.Choice(list(DTYPES)), help="dtype of the saved weights (default: the base model's)")
@click.option("--format", "fmt", type=click.Choice(["native", "llama"]),
              help="weight layout (default: one plain transformers loads without remote code: Llama's for InternLM2, else the model's own); "
                   "native = the family's own (InternLM2's needs its code files in BASE)")
@click.option("--builder", help="model builder (default: the adapter's recipe, else by model_type, else hf)")
@click.option("--template", help="chat template to write as chat_template (default: the adapter's training template)")
@click.option("--force", is_flag=True, help="replace a non-empty OUT")
@TRUST_OPTION
@click.pass_obj
def merge_cmd(app: Any, base: str, adapter: str, out: str, max_shard_size: str, dtype: str | None, fmt: str | None, builder: str | None, template: str | None, force: bool, trust_remote_code: bool) -> None:
    """Merge the LoRA ADAPTER into BASE and save a standalone model to OUT.

    OUT holds sharded safetensors, the tokenizer with the training template as its
    chat_template, and a generation_config whose eos_token_id includes the template's stop
    tokens, so plain transformers chats with it correctly (no remote code; vLLM and LMDeploy
    load it as is). A reward-model adapter becomes a sequence-classification model
    (AutoModelForSequenceClassification).
    """
    from .merge import merge_adapter

    from .resolve import model_config

    merge_adapter(
        app.parts, base, adapter, out, max_shard_size=max_shard_size, dtype=dtype, fmt=fmt,
        builder=builder, template=template, force=force, trust_remote_code=trust_remote_code, log=click.echo, before_load=_quiet,
    )
    if any(str(a).endswith("ForSequenceClassification") for a in model_config(out).get("architectures") or []):
        click.echo(f"a reward model: AutoModelForSequenceClassification.from_pretrained({out!r}) scores tokenizer.apply_chat_template(conversation)")
    else:
        click.echo(f"next: ftcore chat {out}   (deploy: ftcore export {out} OUT.gguf, or vllm serve {out})")


@click.command("chat", cls=ModelCommand)
@click.argument("model", type=click.Path())
@_model_options
@click.option("--prompt", help="answer this once and exit ('-' reads it from stdin)")
@click.option("--image", type=click.Path(), help="an image to talk about (a model that takes images: see the options below)")
@_sampling_options
@click.pass_obj
def chat_cmd(app: Any, model: str, adapter: str | None, template: str | None, system: str | None, bits: str | None, builder: str | None, trust_remote_code: bool,
             prompt: str | None, image: str | None, sampling: Sampling, **backend_values: Any) -> None:
    """Chat with MODEL (a model folder, or an adapter checkpoint) in the terminal.

    Answers stream as they are generated. Type /reset to start a new conversation and
    /exit (or Ctrl-D) to quit. With --prompt, answer once and exit.
    """
    from .terminal import chat_loop, chat_once, read_image

    if prompt == "-":
        prompt = sys.stdin.read().strip()  # `echo` ends it with a newline the user never typed as a question
        if not prompt:
            raise FtcoreError("--prompt - read an empty prompt from stdin")
    args = _args(model, adapter, template, system, bits, builder, trust_remote_code)
    backend, plan = _prepare(app, args, backend_values, image)
    picture = read_image(image) if image is not None else None
    chat_model = _load(app, args, backend, backend_values, plan)
    if picture is not None and not chat_model.accepts_images:
        raise FtcoreError(f"--image: {chat_model.name} does not take images")
    if picture is None and chat_model.accepts_images:  # a model that takes images, asked without one: say so
        _warn("note: no --image: " + ("the answer comes from the text alone" if prompt is not None else "a conversation without a picture; /image PATH starts one about a picture"))
    if prompt is not None:
        chat_once(chat_model, prompt, sampling, image=picture)
    else:
        chat_loop(chat_model, sampling, image=picture)


def _serve_options(func: Any) -> Any:
    return _model_options(func, SERVE_ADAPTER_OPTION)


@click.command("serve", cls=ModelCommand)
@click.argument("model", type=click.Path())
@_serve_options
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0 = every interface)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="FTCORE_API_KEY", help="require 'Authorization: Bearer KEY' on /v1 (env FTCORE_API_KEY)")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="default and upper limit of max_tokens (also clamped to what fits in the model's context)")
@click.option("--request-timeout", type=click.FloatRange(min=0.0, min_open=True), default=300.0, show_default=True,
              help="seconds a request may take, queueing included; then its answer ends with finish_reason 'length'")
@click.option("--max-body-mb", type=click.FloatRange(min=0.0, min_open=True), default=8.0, show_default=True,
              help="largest request body, in megabytes (images included); larger ones get 413")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True, help="most answers generated together (continuous batching)")
@click.option("--max-queue", type=click.IntRange(min=0), default=256, show_default=True,
              help="most requests waiting for a place in the batch; more get 429 with Retry-After")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="one JSON line per request on stderr")
@click.pass_obj
def serve_cmd(app: Any, model: str, adapters: tuple[str, ...], template: str | None, system: str | None, bits: str | None, builder: str | None,
              trust_remote_code: bool, host: str, port: int, api_key: str | None, max_new_tokens: int, request_timeout: float, max_body_mb: float,
              max_batch: int, max_queue: int, access_log: bool, **backend_values: Any) -> None:
    """Serve MODEL over an OpenAI-compatible API (/v1/chat/completions, /v1/models) with a chat page at /.

    Concurrent requests are generated together (continuous batching). With --adapter NAME=PATH
    (repeatable) MODEL is a base model and the request's "model" picks the base or an adapter;
    each adapter answers with its own chat template and system prompt. GET /health says 200
    once the model has loaded, GET /metrics gives Prometheus metrics. An answer stops when its
    client disconnects or --request-timeout passes. SIGTERM cuts running answers short and exits 0.
    Needs the serve extra: pip install 'ftcore[serve]'.
    """
    import os

    from .catalog import Catalog, load_catalog, plan_catalog, split_adapter_options
    from .serve import check_server_deps, open_socket, serve

    if api_key is None and os.environ.get("FTCORE_API_KEY") is not None:
        api_key = os.environ["FTCORE_API_KEY"]  # click reads an empty variable as unset
    if api_key is not None and not api_key.strip():
        raise FtcoreError("the API key is empty (--api-key or FTCORE_API_KEY), which would switch authentication off: "
                          "give a non-empty key, or neither to serve without one")
    check_server_deps()
    adapter, named = split_adapter_options(adapters)
    args = _args(model, adapter, template, system, bits, builder, trust_remote_code)
    if named:
        if chosen_backend(click.get_current_context(), app, backend_values) is not None:
            raise FtcoreError("--adapter NAME=PATH serves adapters on a base model; a chat backend option (--NAME SOURCE) loads its own model: give one or the other")
        catalog_plan = plan_catalog(app.parts, model, named, builder=builder, template=template, system=system,
                                    bits=args.bits, trust_remote_code=trust_remote_code)

        def load() -> Catalog:
            _quiet()
            return load_catalog(app.parts, catalog_plan, warn=_warn)

        label = f"{model} with adapters {', '.join(named)}"
    else:
        backend, plan = _prepare(app, args, backend_values)

        def load() -> Catalog:
            return Catalog.single(_load(app, args, backend, backend_values, plan))

        label = adapter or model
    sock = open_socket(host, port)  # before loading: a busy port fails fast
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        _warn(f"warning: listening on {host} without --api-key: anyone who can reach this address can use the model")
    serve(load, sock, label=label, api_key=api_key, max_new_tokens=max_new_tokens, request_timeout=request_timeout,
          max_body_bytes=int(max_body_mb * 1_000_000), max_batch=max_batch, max_queue=max_queue, access_log=access_log)


def add_chat_commands(cli: click.Group) -> None:
    """Add ``merge``, ``chat`` and ``serve`` to the ``ftcore`` group."""
    cli.add_command(merge_cmd)
    cli.add_command(chat_cmd)
    cli.add_command(serve_cmd)
