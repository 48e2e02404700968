"""Chat backends: a plugin adds ``--NAME SOURCE`` (and its own options) to ``ftcore chat`` and
``ftcore serve`` through ``register_commands``, and loads what to chat with; the core knows none
of them. A fake backend answers without any model, so these tests load nothing heavy."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from ftcore import hookimpl
from ftcore.api import ChatArgs, ChatBackend, ChatModel, FtcoreError, Sampling, add_chat_backend
from ftcore.app import App
from ftcore.cli import create_cli
from ftcore.plugins import get_plugin_manager

from helpers import run_cli


class _Answer:
    """What ``ChatModel.generation`` returns, reduced to what the terminal chat uses."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __iter__(self):
        yield self.text


@dataclass
class EchoModel(ChatModel):
    """Answers with what it was asked: the last message, the image sizes of the conversation, the token limit."""

    accepts_images: bool = True

    def generation(self, messages: list[dict[str, Any]], sampling: Sampling = Sampling()) -> Any:
        sizes = [len(image) for m in messages for image in m.get("images", ())]
        return _Answer(f"{self.name}: {messages[-1]['content']} images={sizes} max={sampling.max_new_tokens}")


class EchoBackend(ChatBackend):
    name = "echo"
    help = "answer with the question"
    metavar = "NAME"

    def __init__(self, loaded: list | None = None) -> None:
        self.loaded = loaded if loaded is not None else []

    def options(self) -> list[click.Parameter]:
        return [click.Option(["--shout"], is_flag=True, help="answer in capitals (with --echo)")]

    def check(self, source: str, args: ChatArgs, options: dict[str, Any]) -> None:
        if source == "bad":
            raise FtcoreError("echo cannot use 'bad'")

    def load(self, parts: Any, source: str, args: ChatArgs, options: dict[str, Any], warn: Any) -> ChatModel:
        self.loaded.append((parts, source, args, options))
        return EchoModel(model=None, tokenizer=None, template=parts.templates.get("internlm2_chat"), name=source.upper() if options["shout"] else source)


class MirrorBackend(EchoBackend):
    name = "mirror"

    def options(self) -> list[click.Parameter]:
        return []


def _plugin(name: str, **hooks: Any) -> tuple[str, types.ModuleType]:
    module = types.ModuleType(f"{name}_plugin")
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(module, hook_name, hookimpl(fn))
    return name, module


def _cli(*plugins: tuple[str, types.ModuleType]) -> tuple[click.Group, App]:
    app = App(pm=get_plugin_manager(extra=list(plugins)))
    return create_cli(app), app


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG" + bytes(60))
    return path


def test_hook_register_commands_adds_a_chat_backend_to_chat_and_serve(tmp_path, image) -> None:
    loaded: list = []
    cli, app = _cli(_plugin("echo", register_commands=lambda cli: add_chat_backend(cli, EchoBackend(loaded))))
    runner = CliRunner()
    for command in ("chat", "serve"):
        result = runner.invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "--echo NAME" in result.output and "--shout" in result.output, result.output
    result = runner.invoke(cli, ["chat", str(tmp_path / "base"), "--echo", "hello", "--shout", "--image", str(image), "--prompt", "what is it?", "--max-new-tokens", "7"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "HELLO: what is it? images=[64] max=7"
    parts, source, args, options = loaded[0]
    assert parts is app.parts and source == "hello" and options == {"shout": True}  # the parts come from the caller
    assert args == ChatArgs(model=str(tmp_path / "base"))
    # a conversation: the first message carries the image; /image starts one about another
    other = tmp_path / "other.png"
    other.write_bytes(bytes(10))
    result = runner.invoke(cli, ["chat", "base", "--echo", "e", "--image", str(image)], input=f"one\ntwo\n/image {other}\nthree\n/exit\n")
    assert result.exit_code == 0, result.output
    answers = [line.split(">>> ")[-1] for line in result.stdout.splitlines() if "e: " in line]
    assert answers == ["e: one images=[64] max=256", "e: two images=[64] max=256", "e: three images=[10] max=256"]
    assert "/image PATH" in result.stderr  # the banner says how


def test_a_backends_option_needs_its_flag_and_two_backends_are_not_used_at_once() -> None:
    cli, _ = _cli(_plugin("echo", register_commands=lambda cli: [add_chat_backend(cli, EchoBackend()), add_chat_backend(cli, MirrorBackend())]))
    runner = CliRunner()
    result = runner.invoke(cli, ["chat", "m", "--shout", "--prompt", "hi"])
    assert isinstance(result.exception, FtcoreError) and "--shout goes with --echo NAME" in str(result.exception)
    result = runner.invoke(cli, ["chat", "m", "--echo", "a", "--mirror", "b", "--prompt", "hi"])
    assert isinstance(result.exception, FtcoreError) and "--echo and --mirror cannot be used together" in str(result.exception)


def test_check_runs_before_serve_opens_its_port(monkeypatch) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")

    def no_port(*args: Any) -> None:
        raise AssertionError("serve opened its port before the backend's check")

    monkeypatch.setattr("ftcore.chat.serve.open_socket", no_port)
    cli, _ = _cli(_plugin("echo", register_commands=lambda cli: add_chat_backend(cli, EchoBackend())))
    result = CliRunner().invoke(cli, ["serve", "m", "--echo", "bad", "--port", "0"])
    assert isinstance(result.exception, FtcoreError) and "echo cannot use 'bad'" in str(result.exception)


def test_image_needs_a_model_that_takes_images() -> None:
    cli, _ = _cli(_plugin("echo", register_commands=lambda cli: add_chat_backend(cli, EchoBackend())))
    result = CliRunner().invoke(cli, ["chat", "m", "--image", "x.png", "--prompt", "hi"])
    assert isinstance(result.exception, FtcoreError)
    assert "--image needs a model that takes images: load one with" in str(result.exception) and "--echo NAME" in str(result.exception)


@pytest.mark.parametrize(("backend", "problem"), [
    (type("Adapter", (EchoBackend,), {"options": lambda self: [click.Option(["--adapter"])]}), "cannot add --adapter (taken by ftcore chat)"),
    (type("Prompt", (EchoBackend,), {"name": "prompt"}), "cannot add --prompt (taken by ftcore chat)"),
    (type("Upper", (EchoBackend,), {"name": "Echo"}), "lower-case letters, digits and dashes"),
])
def test_a_taken_option_or_a_bad_name_skips_the_plugin_and_the_rest_work(backend, problem) -> None:
    cli, app = _cli(_plugin("clash", register_commands=lambda cli: add_chat_backend(cli, backend())))
    assert problem in app.pm.infos["clash"].error
    result = CliRunner().invoke(cli, ["chat", "--help"])
    assert result.exit_code == 0 and "--shout" not in result.output


def test_the_same_backend_name_twice_skips_the_later_plugin() -> None:
    cli, app = _cli(_plugin("first", register_commands=lambda cli: add_chat_backend(cli, EchoBackend())),
                    _plugin("second", register_commands=lambda cli: add_chat_backend(cli, EchoBackend())))
    assert app.pm.infos["first"].error is None
    assert "a chat backend called 'echo' is already registered" in app.pm.infos["second"].error


def test_register_commands_that_fails_after_adding_a_backend_takes_it_back() -> None:
    def adds_then_raises(cli: click.Group) -> None:
        add_chat_backend(cli, EchoBackend())
        raise RuntimeError("commands broke")

    cli, app = _cli(_plugin("half", register_commands=adds_then_raises))
    assert app.pm.infos["half"].error == "register_commands raised RuntimeError: commands broke"
    result = CliRunner().invoke(cli, ["chat", "m", "--echo", "x", "--prompt", "hi"])
    assert result.exit_code == 2 and "No such option '--echo'" in result.output


def test_a_backend_whose_plugin_failed_registering_parts_is_refused_naming_it() -> None:
    def formats(register: Any) -> None:
        raise ValueError("formats broke")

    loaded: list = []
    cli, _ = _cli(_plugin("halfway", register_commands=lambda cli: add_chat_backend(cli, EchoBackend(loaded)), register_dataset_formats=formats))
    result = CliRunner().invoke(cli, ["chat", "m", "--echo", "x", "--prompt", "hi"])
    assert isinstance(result.exception, FtcoreError) and not loaded
    assert "--echo comes from plugin 'halfway' (<local>), which failed: register_dataset_formats raised ValueError" in str(result.exception)


def test_the_llava_plugin_adds_its_backend_and_disabling_it_removes_it() -> None:
    assert "--llava DIR" in run_cli("chat", "--help", check=True).stdout
    assert "--visual-encoder" in run_cli("serve", "--help", check=True).stdout
    from helpers import cli_env

    help_text = run_cli("chat", "--help", env=cli_env({"FTCORE_DISABLE_PLUGINS": "llava"}), check=True).stdout
    assert "--llava" not in help_text and "--visual-encoder" not in help_text
    proc = run_cli("serve", "base", "--llava", "run", "--port", "0")  # checked by the backend before anything loads
    assert proc.returncode == 2 and "'run' is not a llava checkpoint (no projector/ folder)" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
