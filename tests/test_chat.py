"""``ftcore chat``: one-shot and interactive chat through the real CLI with a tiny trained adapter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import cli_env, run_cli

pytestmark = pytest.mark.slow


def train_zed_adapter(root: Path, model: Path, data: Path, template: str = "internlm2_chat") -> Path:
    """Train (once per test session and folder) a LoRA adapter on ``data`` (self-cognition records: "Zed"
    by default) with ``template``; return its checkpoint.

    Shared with test_serve.py: a second caller finds the finished checkpoint and reuses it.
    """
    ckpt = root / "wd" / "checkpoint-30"
    if (ckpt / "adapter_model.safetensors").is_file():
        return ckpt
    root.mkdir(parents=True, exist_ok=True)
    recipe = {
        "model": {"builder": "hf", "path": str(model), "gradient_checkpointing": False},
        "adapter": {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.05},
        "data": {"path": str(data), "format": "openai", "template": template, "max_length": 128},
        "train": {"max_steps": 30, "lr": 5.0e-3, "micro_batch": 2, "grad_accum": 2, "save_every": 0, "seed": 1},
        "hooks": [],
        "work_dir": str(root / "wd"),
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_cli("run", "--recipe", str(path), check=True)
    assert (ckpt / "recipe.yaml").is_file()
    return ckpt


@pytest.fixture(scope="module")
def zed(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, self_cognition_file: Path) -> Path:
    return train_zed_adapter(tmp_path_factory.getbasetemp() / "zed-adapter", tiny_llama, self_cognition_file)


def test_prompt_answers_once_with_what_the_adapter_learned(tiny_llama, zed) -> None:
    proc = run_cli("chat", str(tiny_llama), "--adapter", str(zed), "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert "Zed" in proc.stdout
    # stdout is the answer alone (scripts can capture it); no stop word leaks into it
    assert proc.stdout.strip().splitlines()[0].startswith("I am Zed") and len(proc.stdout.strip().splitlines()) == 1
    assert "<|im_end|>" not in proc.stdout and "Traceback" not in proc.stderr


def test_interactive_chat_streams_answers_keeps_history_and_obeys_reset_and_exit(zed) -> None:
    # the adapter folder alone as MODEL: its base model comes from its recipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftcore.cli", "chat", str(zed), "--temperature", "0", "--max-new-tokens", "24"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), text=True,
    )
    out, err = proc.communicate("Who are you?\n/reset\nRESET\nWho are you?\n/exit\nthis is never read\n", timeout=120)
    assert proc.returncode == 0, err
    assert "/reset starts a new conversation" in err  # the banner goes to stderr
    answers = [line for line in out.splitlines() if "Zed" in line]
    assert len(answers) == 2, out  # the same question after /reset gets the same (greedy) answer
    assert answers[0] == answers[1]
    assert out.count("(new conversation)") == 2
    assert "never read" not in out


def test_bad_flags_and_missing_models_give_clear_errors(tmp_path, tiny_llama) -> None:
    def fails(*args: str) -> str:
        proc = run_cli("chat", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        return proc.stderr

    assert "Invalid value for '--bits'" in fails(str(tiny_llama), "--bits", "3", "--prompt", "hi")
    assert "Invalid value for '--temperature'" in fails(str(tiny_llama), "--temperature", "-1", "--prompt", "hi")
    assert "does not exist" in fails(str(tmp_path / "nowhere"), "--prompt", "hi")
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    assert "has no adapter_config.json" in fails(str(tiny_llama), "--adapter", str(empty), "--prompt", "hi")
    assert "did you mean 'internlm2_chat'" in fails(str(tiny_llama), "--template", "internlm2_caht", "--prompt", "hi")
    assert "no model builder called 'hff'" in fails(str(tiny_llama), "--builder", "hff", "--prompt", "hi")
    # the tiny model's tokenizer has no chat_template, and no adapter names a template
    assert "pass --template NAME" in fails(str(tiny_llama), "--prompt", "hi")


def test_prompt_from_stdin_and_a_template_that_disagrees_with_the_adapter(tiny_llama, zed) -> None:
    from click.testing import CliRunner

    from ftcore.cli import create_cli

    runner = CliRunner()
    result = runner.invoke(create_cli(), ["chat", str(tiny_llama), "--adapter", str(zed), "--prompt", "-", "--temperature", "0", "--max-new-tokens", "24"], input="Who are you?\n")
    assert result.exit_code == 0, result.output
    assert "Zed" in result.stdout
    result = runner.invoke(create_cli(), ["chat", str(tiny_llama), "--adapter", str(zed), "--template", "vicuna", "--prompt", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert "trained with template 'internlm2_chat', but --template is 'vicuna'" in result.stderr


def test_echo_to_prompt_stdin_answers_as_the_typed_prompt_greedy_by_default(tiny_llama, zed) -> None:
    # `echo "Who are you?" | ftcore chat ... --prompt -`: the newline echo adds is not part of the
    # question, and with no --temperature the answer is the greedy one, the same every time
    typed = run_cli("chat", str(tiny_llama), "--adapter", str(zed), "--prompt", "Who are you?", "--max-new-tokens", "24")
    piped = subprocess.run([sys.executable, "-m", "ftcore.cli", "chat", str(tiny_llama), "--adapter", str(zed), "--prompt", "-", "--max-new-tokens", "24"],
                           input="Who are you?\n", capture_output=True, text=True, env=cli_env(), timeout=300)
    assert typed.returncode == 0 and piped.returncode == 0, (typed.stderr, piped.stderr)
    assert typed.stdout.startswith("I am Zed"), typed.stdout
    assert piped.stdout == typed.stdout
    help_text = run_cli("chat", "--help").stdout
    assert "[default: 0.0;" in " ".join(help_text.split()) and "greedy" in help_text


def test_bits_4_loads_the_base_in_nf4_and_still_answers(tiny_llama, zed) -> None:
    pytest.importorskip("bitsandbytes")
    from ftcore.chat.generate import Sampling
    from ftcore.chat.resolve import load_chat_model
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    chat = load_chat_model(collect_parts(get_plugin_manager()), str(tiny_llama), adapter=str(zed), bits=4)
    kinds = {type(m).__name__ for m in chat.model.modules()}
    assert "Linear4bit" in kinds
    answer = chat.generation([{"role": "user", "content": "Who are you?"}], Sampling(max_new_tokens=16)).run()
    assert "Zed" in answer


def test_stop_words_are_held_back_until_clear() -> None:
    from ftcore.chat.generate import _cut_at_stop, _held_back

    assert _held_back("Hello <|im", ["<|im_end|>"]) == 4
    assert _held_back("Hello <", ["<|im_end|>", "###"]) == 1
    assert _held_back("Hello", ["<|im_end|>"]) == 0
    assert _cut_at_stop("Hi there### User: x", ["###", "User:"]) == ("Hi there", True)
    assert _cut_at_stop("Hi there", ["###"]) == ("Hi there", False)
