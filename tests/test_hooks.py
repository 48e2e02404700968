"""Every hook, through the real CLI with the example plugin (tests/fixtures/plugins/ftcore_example)
installed: ``ftcore list --json`` shows its part with the plugin as owner, and the part works — in
one tiny training run of ``example_recipe``, which uses every example part, and in one dry run
whose every bad option value is reported with its key. ``test_meta.py`` requires a
``test_hook_<name>`` here for every hook spec."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import cli_env, run_cli

EXAMPLE = "example (ftcore-example 0.3.1)"


@pytest.fixture(scope="module")
def env(plugin_site) -> dict[str, str]:
    return cli_env(pythonpath=str(plugin_site))


@pytest.fixture(scope="module")
def listed(env) -> dict[tuple[str, str], dict]:
    return {(r["kind"], r["name"]): r for r in json.loads(run_cli("list", "--json", env=env, check=True).stdout)}


def qa_file(self_cognition_file: Path, out: Path) -> Path:
    """The self-cognition samples as {q, a} records (the example format)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in self_cognition_file.read_text().splitlines():
        messages = json.loads(line)["messages"]
        rows.append({"q": messages[-2]["content"], "a": messages[-1]["content"]})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def example_run(tmp_path_factory, env, tiny_llama, self_cognition_file):
    """``ftcore run --recipe example_recipe`` in a folder holding ./my-model and data/qa.jsonl."""
    root = tmp_path_factory.mktemp("example-run")
    shutil.copytree(tiny_llama, root / "my-model")
    qa_file(self_cognition_file, root / "data" / "qa.jsonl")
    proc = run_cli("run", "--recipe", "example_recipe", cwd=root, env=env, check=True)
    work_dir = root / "work_dirs" / "example_recipe"
    metrics = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return proc, work_dir, metrics


BAD = {
    "model.keep_layers=0": "model.keep_layers: must be >= 1, got 0",
    "adapter.init=xavier": "adapter.init: must be one of default, gaussian, got 'xavier'",
    "strategy.max_skips=0": "strategy.max_skips: must be >= 1, got 0",
    "objective.gamma=-1": "objective.gamma: must be >= 0 and <= 10, got -1.0",
    "hooks=[{name: example_progress, every: 0, file: a/b}]": "hooks[0].every: must be >= 1, got 0",
}


@pytest.fixture(scope="module")
def bad_dry_run(tmp_path_factory, env):
    """One dry run of example_recipe with a bad value for an option of every example part that has one."""
    return run_cli("run", "--recipe", "example_recipe", *BAD, "--dry-run", cwd=tmp_path_factory.mktemp("bad"), env=env)


def owned(listed, kind: str, name: str) -> dict:
    row = listed[(kind, name)]
    assert row["plugin"] == EXAMPLE and row["description"], row
    return row


def refused(bad_dry_run, key: str) -> None:
    assert bad_dry_run.returncode == 2, bad_dry_run.stdout + bad_dry_run.stderr
    assert next(message for override, message in BAD.items() if message.startswith(key)) in bad_dry_run.stderr, bad_dry_run.stderr


def test_hook_register_recipes(listed, example_run, env, tmp_path) -> None:
    owned(listed, "recipes", "example_recipe")
    shown = run_cli("show", "example_recipe", env=env, check=True).stdout
    assert "builder: example_hf" in shown and "name: example_focal" in shown
    proc, work_dir, _ = example_run
    assert (work_dir / "recipe.yaml").is_file() and "done: 12 steps" in proc.stdout


def test_hook_register_dataset_formats(listed, example_run, env, tmp_path, self_cognition_file) -> None:
    owned(listed, "formats", "example_qa")
    assert "64 records (example_qa)" in example_run[0].stdout
    out = tmp_path / "qa.jsonl"
    run_cli("data", "convert", str(self_cognition_file), str(out), "--to", "example_qa", env=env, check=True)
    first = json.loads(out.read_text().splitlines()[0])
    assert set(first) == {"q", "a"} and "Zed" in first["a"]


def test_hook_register_prompt_templates(listed, example_run) -> None:
    owned(listed, "templates", "example_chat")
    sample = next(line for line in example_run[0].stdout.splitlines() if line.startswith("sample "))
    assert "Q: " in sample and "\\nA: " in sample


def test_hook_register_model_builders(listed, example_run, bad_dry_run) -> None:
    from safetensors.torch import load_file

    owned(listed, "models", "example_hf")
    keys = load_file(str(example_run[1] / "checkpoint-12" / "adapter_model.safetensors"))
    assert keys and all(".layers.0." in k for k in keys)  # model.keep_layers: 1 of the tiny model's 2 layers
    refused(bad_dry_run, "model.keep_layers")


def test_hook_register_adapters(listed, example_run, bad_dry_run) -> None:
    owned(listed, "adapters", "example_rslora")
    assert json.loads((example_run[1] / "checkpoint-12" / "adapter_config.json").read_text())["use_rslora"] is True
    refused(bad_dry_run, "adapter.init")


def test_hook_register_strategies(listed, example_run, bad_dry_run) -> None:
    owned(listed, "strategies", "example_single")
    assert (example_run[1] / "progress.txt").read_text().splitlines()[0] == "# strategy SkipNonFinite"
    refused(bad_dry_run, "strategy.max_skips")


def test_hook_register_training_hooks(listed, example_run, bad_dry_run) -> None:
    owned(listed, "hooks", "example_progress")
    _, work_dir, metrics = example_run
    lines = (work_dir / "progress.txt").read_text().splitlines()[1:]
    assert [int(line.split()[0]) for line in lines] == [2, 4, 6, 8, 10, 12]  # every: 2
    assert float(lines[0].split()[1]) == pytest.approx(metrics[1]["loss"], abs=1e-4)
    refused(bad_dry_run, "hooks[0].every")
    assert "hooks[0].file" in bad_dry_run.stderr  # the pattern of its file name


def test_hook_register_objectives(listed, example_run, bad_dry_run) -> None:
    owned(listed, "objectives", "example_focal")
    losses = [m["loss"] for m in example_run[2]]
    assert all("nll" in m for m in example_run[2]) and all(m["loss"] <= m["nll"] for m in example_run[2])  # focal <= plain NLL
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses  # it trains
    refused(bad_dry_run, "objective.gamma")


def test_hook_register_optimizers(listed, example_run) -> None:
    import torch

    owned(listed, "optimizers", "example_nadam")
    state = torch.load(example_run[1] / "checkpoint-12" / "optimizer.pt", weights_only=True)
    assert "momentum_decay" in state["optimizer"]["param_groups"][0]  # NAdam's own setting


def test_hook_register_schedules(listed, example_run) -> None:
    owned(listed, "schedules", "example_steps")
    lrs = [m["lr"] for m in example_run[2]]
    assert lrs == pytest.approx([5e-3] * 3 + [2.5e-3] * 3 + [1.25e-3] * 3 + [6.25e-4] * 3)  # halves at each quarter


def test_hook_register_commands(env, tmp_path, self_cognition_file) -> None:
    proc = run_cli("example-stats", str(qa_file(self_cognition_file, tmp_path / "qa.jsonl")), env={**env, "FTCORE_TRACE_PLUGINS": "1"}, check=True)
    assert "64 question/answer records" in proc.stdout
    assert f"plugin {EXAMPLE.replace('example', repr('example'), 1)} registered command 'example-stats'" in proc.stderr, proc.stderr
    assert "example-stats" not in run_cli("--help", env={**env, "FTCORE_DISABLE_PLUGINS": "example"}, check=True).stdout
