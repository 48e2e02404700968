"""The wandb and mlflow training hooks, offline: one tiny run logs its recipe, every step's loss and the final checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import cli_env, run_cli


def _run(tmp_path: Path, model: Path, data: Path, hook: dict, env: dict[str, str]) -> Path:
    recipe = {
        "model": {"builder": "hf", "path": str(model), "gradient_checkpointing": False},
        "adapter": {"kind": "lora", "r": 4, "alpha": 8},
        "data": {"path": str(data), "format": "openai", "template": "internlm2_chat", "max_length": 64},
        "train": {"max_steps": 3, "micro_batch": 2, "grad_accum": 1, "save_every": 0},
        "hooks": [hook],
        "work_dir": str(tmp_path / "wd"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = run_cli("run", "--recipe", str(path), env=cli_env(env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp_path / "wd"


def test_wandb_offline_run_has_the_recipe_the_losses_and_the_checkpoint(tmp_path, tiny_llama, self_cognition_file) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'ftcore[wandb]')")
    wd = _run(tmp_path, tiny_llama, self_cognition_file, {"name": "wandb", "project": "ftcore-test"}, {"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    runs = list((wd / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((wd / "wandb").iterdir())
    log = next(runs[0].glob("run-*.wandb")).read_bytes()  # the run as wandb sync uploads it
    assert b"template" in log and b"max_steps" in log and b"lora" in log  # the recipe as config
    assert log.count(b"loss") >= 3  # every step's metrics
    assert b"adapter_model.safetensors" in log  # the final checkpoint, as a model artifact
    assert (wd / "wandb-run-id").read_text().strip() in runs[0].name


def test_mlflow_file_store_run_has_the_recipe_every_step_and_the_checkpoint(tmp_path, tiny_llama, self_cognition_file) -> None:
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'ftcore[mlflow]')")
    store = (tmp_path / "mlruns").as_uri()
    wd = _run(tmp_path, tiny_llama, self_cognition_file, {"name": "mlflow", "tracking_uri": store, "experiment": "tiny"},
               {"MLFLOW_ALLOW_FILE_STORE": "true"})
    from mlflow.tracking import MlflowClient

    import os

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # reading the same local file store back
    client = MlflowClient(tracking_uri=store)
    run = client.get_run((wd / "mlflow-run-id").read_text().strip())
    assert run.info.status == "FINISHED"
    assert run.data.params["adapter.r"] == "4" and run.data.params["data.template"] == "internlm2_chat"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert "recipe.yaml" in artifacts and "checkpoint/adapter_model.safetensors" in artifacts


def test_a_missing_tracker_names_the_extra_to_install(tmp_path, tiny_llama, self_cognition_file) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "wandb.py").write_text("raise ImportError('wandb is blocked for this test')\n")
    recipe = {"model": {"builder": "hf", "path": str(tiny_llama)}, "data": {"path": str(self_cognition_file), "template": "internlm2_chat"},
              "train": {"max_steps": 1}, "hooks": ["wandb"], "work_dir": str(tmp_path / "wd")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = run_cli("run", "--recipe", str(tmp_path / "r.yaml"), env=cli_env(pythonpath=str(blocker)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip install 'ftcore[wandb]'" in proc.stderr
