"""The README's main command: `ftcore run --recipe quickstart` on a fresh machine, then plot and chat."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli

pytestmark = pytest.mark.slow


def test_quickstart_learns_its_self_introduction_then_plots_and_chats(tmp_path) -> None:
    proc = run_cli("run", "--recipe", "quickstart", cwd=tmp_path, check=True, timeout=600)
    wd = tmp_path / "work_dirs" / "quickstart"
    before = json.loads((wd / "eval" / "before.json").read_text())["answers"][0]["answer"]
    after = json.loads((wd / "eval" / "step-40.json").read_text())["answers"][0]["answer"]
    assert "ftcore" not in before  # a random model does not know its name
    assert "ftcore" in after and "assistant" in after.lower()
    assert "eval (after training)" in proc.stdout and "done: 40 steps" in proc.stdout
    ckpt = wd / "checkpoint-40"
    # the model folder is InternLM2's own layout (fused wqkv), loaded without remote code
    config = json.loads((wd / "tiny-internlm2-chat" / "config.json").read_text())
    assert config["architectures"] == ["InternLM2ForCausalLM"]

    plot = run_cli("plot", str(wd), check=True)
    png = wd / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in plot.stdout

    chat = run_cli("chat", str(wd / "tiny-internlm2-chat"), "--adapter", str(ckpt), "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "24", check=True)
    assert "ftcore" in chat.stdout


def test_quickstart_with_compiled_layers_learns_too(tmp_path) -> None:
    """model.compile=true through the CLI: torch.compile'd decoder layers (flat batches, varlen
    attention kept eager) train to the same self-introduction."""
    proc = run_cli("run", "--recipe", "quickstart", "model.compile=true", "train.max_steps=30", cwd=tmp_path, check=True, timeout=600)
    assert "model.compile: each decoder layer is compiled" in proc.stdout and "done: 30 steps" in proc.stdout
    after = json.loads((tmp_path / "work_dirs" / "quickstart" / "eval" / "step-30.json").read_text())["answers"][0]["answer"]
    assert "ftcore" in after


def test_plot_without_metrics_says_what_to_do(tmp_path) -> None:
    proc = run_cli("plot", str(tmp_path))
    assert proc.returncode == 2 and "metrics.jsonl" in proc.stderr and "metrics_log" in proc.stderr


def test_quickstart_with_the_memory_savers_learns_too(tmp_path) -> None:
    """The 7B-in-8-GiB settings through the CLI (layer inputs and embeddings in CPU memory, the
    fused LoRA forward) train to the same self-introduction."""
    proc = run_cli("run", "--recipe", "quickstart", "model.gradient_checkpointing=true", "model.offload_activations=true", "model.offload_embeddings=true",
                   "model.fused_lora=true", "train.max_steps=30", cwd=tmp_path, check=True, timeout=600)
    assert "done: 30 steps" in proc.stdout
    after = json.loads((tmp_path / "work_dirs" / "quickstart" / "eval" / "step-30.json").read_text())["answers"][0]["answer"]
    assert "ftcore" in after
