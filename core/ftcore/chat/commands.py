"""``ftcore merge``, ``ftcore chat`` and ``ftcore serve``: using a model after training.

Only click is imported at module level; each command imports torch/transformers (and the
server library) when it runs, so ``ftcore --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import FtcoreError


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


def _sampling_options(func: Any) -> Any:
    options = [
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True, help="longest answer, in tokens"),
        click.option("--temperature", type=click.FloatRange(min=0.0), default=0.7, show_default=True, help="sampling temperature; 0 = greedy (deterministic)"),
        click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=0.9, show_default=True, help="nucleus sampling"),
        click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="sample among the k likeliest tokens (0 = off)"),
        click.option("--repetition-penalty", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True, help="> 1 discourages repeating"),
        click.option("--seed", type=int, default=None, help="random seed, for reproducible sampling"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


#: Only the person running ftcore may let a model's own Python code run; no file can.
TRUST_OPTION = click.option("--trust-remote-code", is_flag=True, help="allow Python code shipped with the model to run (only for models whose code you trust)")


def _model_options(func: Any) -> Any:
    options = [
        click.option("--adapter", type=click.Path(), help="a LoRA/QLoRA checkpoint folder (work_dir/checkpoint-N) to apply"),
        click.option("--template", help="chat template (default: the adapter's training template, else the tokenizer's chat_template)"),
        click.option("--system", help="system prompt (default: the adapter's recipe data.system, else the template's)"),
        click.option("--bits", type=click.Choice(["4", "8"]), help="load the model quantized: 4 = NF4, 8 = int8 (bitsandbytes)"),
        click.option("--builder", help="model builder (default: the adapter's recipe, else by model_type, else hf; see `ftcore list models`)"),
        TRUST_OPTION,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(app: Any, model: str, adapter: str | None, template: str | None, system: str | None, bits: str | None, builder: str | None, trust_remote_code: bool) -> Any:
    from .loading import load_chat_model, plan_chat

    plan = plan_chat(app.parts, model, adapter=adapter, builder=builder, template=template, system=system, bits=int(bits) if bits else None, trust_remote_code=trust_remote_code)
    _quiet()
    return load_chat_model(app.parts, plan, warn=_warn)


@click.command("merge")
@click.argument("base", type=click.Path())
@click.argument("adapter", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--max-shard-size", default="2GB", show_default=True, help="largest safetensors shard, e.g. 2GB or 500MB")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), help="dtype of the saved weights (default: the base model's)")
@click.option("--format", "fmt", type=click.Choice(["native", "llama"]), default="native", show_default=True, help="weight layout: the builder's native one, or Llama's")
@click.option("--builder", help="model builder (default: the adapter's recipe, else by model_type, else hf)")
@click.option("--template", help="chat template to write as chat_template (default: the adapter's training template)")
@click.option("--force", is_flag=True, help="replace a non-empty OUT")
@TRUST_OPTION
@click.pass_obj
def merge_cmd(app: Any, base: str, adapter: str, out: str, max_shard_size: str, dtype: str | None, fmt: str, builder: str | None, template: str | None, force: bool, trust_remote_code: bool) -> None:
    """Merge the LoRA ADAPTER into BASE and save a standalone model to OUT.

    OUT holds sharded safetensors, the tokenizer with the training template as its
    chat_template, and a generation_config whose eos_token_id includes the template's stop
    tokens, so plain transformers chats with it correctly.
    """
    from .merge import merge_adapter

    merge_adapter(
        app.parts, base, adapter, out, max_shard_size=max_shard_size, dtype=dtype, fmt=fmt,
        builder=builder, template=template, force=force, trust_remote_code=trust_remote_code, log=click.echo, before_load=_quiet,
    )
    click.echo(f"next: ftcore chat {out}")


@click.command("chat")
@click.argument("model", type=click.Path())
@_model_options
@click.option("--prompt", help="answer this once and exit ('-' reads it from stdin)")
@click.option("--llava", "llava_dir", type=click.Path(), help="a LLaVA run's checkpoint (or work dir): chat about --image with MODEL as the LLM")
@click.option("--visual-encoder", type=click.Path(), help="the CLIP vision tower folder (with --llava)")
@click.option("--image", type=click.Path(), help="the image to talk about (with --llava)")
@_sampling_options
@click.pass_obj
def chat_cmd(app: Any, model: str, adapter: str | None, template: str | None, system: str | None, bits: str | None, builder: str | None, trust_remote_code: bool,
             prompt: str | None, llava_dir: str | None, visual_encoder: str | None, image: str | None,
             max_new_tokens: int, temperature: float, top_p: float, top_k: int, repetition_penalty: float, seed: int | None) -> None:
    """Chat with MODEL (a model folder, or an adapter checkpoint) in the terminal.

    Answers stream as they are generated. Type /reset to start a new conversation and
    /exit (or Ctrl-D) to quit. With --prompt, answer once and exit.
    """
    from .terminal import chat_once, chat_loop

    if prompt == "-":
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise FtcoreError("--prompt - read an empty prompt from stdin")
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty}
    if llava_dir:
        _chat_llava(model, llava_dir, visual_encoder, image, prompt, template, system, builder, settings)
        return
    chat_model = _load(app, model, adapter, template, system, bits, builder, trust_remote_code)
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    if prompt is not None:
        chat_once(chat_model, prompt, settings)
    else:
        chat_loop(chat_model, settings)


def _chat_llava(model: str, llava_dir: str, visual_encoder: str | None, image: str | None, prompt: str | None,
                template: str | None, system: str | None, builder: str | None, settings: dict[str, Any]) -> None:
    """Image chat through the llava plugin (it owns the model; the core only parses flags)."""
    if not visual_encoder or not image:
        raise FtcoreError("--llava needs --visual-encoder PATH and --image IMG")
    try:
        from ftcore_llava.chat import interactive, load_llava
    except ImportError:
        raise FtcoreError("--llava needs the llava plugin", hint="it ships with ftcore; check `ftcore plugins`") from None
    chat = load_llava(model, llava_dir, visual_encoder, llm_builder=builder, template=template, system=system)
    if prompt is None:
        interactive(chat, image, **settings)
        return
    for piece in chat.stream(image, prompt, **settings):
        click.echo(piece, nl=False)
    click.echo()


@click.command("serve")
@click.argument("model", type=click.Path())
@_model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0 = every interface)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="FTCORE_API_KEY", help="require 'Authorization: Bearer KEY' on /v1 (env FTCORE_API_KEY)")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="default and upper limit of max_tokens (also clamped to what fits in the model's context)")
@click.option("--request-timeout", type=click.FloatRange(min=0.0, min_open=True), default=300.0, show_default=True,
              help="seconds a request may take, queueing included; then its answer ends with finish_reason 'length'")
@click.option("--max-body-mb", type=click.FloatRange(min=0.0, min_open=True), default=8.0, show_default=True,
              help="largest request body, in megabytes (images included); larger ones get 413")
@click.option("--llava", "llava_dir", type=click.Path(), help="a LLaVA run's checkpoint (or work dir): MODEL is its LLM; requests may carry image_url parts")
@click.option("--visual-encoder", type=click.Path(), help="the CLIP vision tower folder (with --llava)")
@click.pass_obj
def serve_cmd(app: Any, model: str, adapter: str | None, template: str | None, system: str | None, bits: str | None, builder: str | None, trust_remote_code: bool,
              host: str, port: int, api_key: str | None, max_new_tokens: int, request_timeout: float, max_body_mb: float,
              llava_dir: str | None, visual_encoder: str | None) -> None:
    """Serve MODEL over an OpenAI-compatible API (/v1/chat/completions, /v1/models) with a chat page at /.

    One request is answered at a time; an answer stops when its client disconnects or
    --request-timeout passes. SIGTERM cuts running answers short and exits 0.
    Needs the serve extra: pip install 'ftcore[serve]'.
    """
    import os

    from .loading import load_chat_model, plan_chat
    from .serve import check_server_deps, open_socket, serve

    if api_key is None and os.environ.get("FTCORE_API_KEY") is not None:
        api_key = os.environ["FTCORE_API_KEY"]  # click reads an empty variable as unset
    if api_key is not None and not api_key.strip():
        raise FtcoreError("the API key is empty (--api-key or FTCORE_API_KEY), which would switch authentication off: "
                          "give a non-empty key, or neither to serve without one")
    check_server_deps()
    if llava_dir and not visual_encoder:
        raise FtcoreError("--llava needs --visual-encoder PATH")
    plan = None if llava_dir else plan_chat(app.parts, model, adapter=adapter, builder=builder, template=template, system=system, bits=int(bits) if bits else None, trust_remote_code=trust_remote_code)
    sock = open_socket(host, port)  # before loading: a busy port fails fast
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        _warn(f"warning: listening on {host} without --api-key: anyone who can reach this address can use the model")
    _quiet()
    if llava_dir:
        try:
            from ftcore_llava.serve import load_serve_model
        except ImportError:
            raise FtcoreError("--llava needs the llava plugin", hint="it ships with ftcore; check `ftcore plugins`") from None
        chat_model = load_serve_model(model, llava_dir, visual_encoder, llm_builder=builder, template=template, system=system)
    else:
        chat_model = load_chat_model(app.parts, plan, warn=_warn)
    serve(chat_model, sock, api_key=api_key, max_new_tokens=max_new_tokens, request_timeout=request_timeout, max_body_bytes=int(max_body_mb * 1_000_000))


def add_chat_commands(cli: click.Group) -> None:
    """Add ``merge``, ``chat`` and ``serve`` to the ``ftcore`` group."""
    cli.add_command(merge_cmd)
    cli.add_command(chat_cmd)
    cli.add_command(serve_cmd)
