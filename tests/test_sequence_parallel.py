"""Sequence parallelism (train.sequence_parallel) on CPU with gloo: two processes sharing each packed row's tokens
(all-to-all over heads around the varlen attention) train exactly as one process does, under ddp and fsdp."""

from __future__ import annotations

import pytest

from helpers import run_cli
from test_fsdp import NO_DROPOUT, assert_same_run
from test_train import make_recipe

pytestmark = pytest.mark.slow


def test_two_processes_sharing_rows_match_one_process(tmp_path, tiny_llama, self_cognition_file) -> None:
    # the same rows a step (micro batch 2 x grad accum 2): the two processes split every row's tokens between them;
    # gradient checkpointing on, so each layer's recomputation exchanges the heads again
    train = {"max_steps": 3, "micro_batch": 2, "grad_accum": 2}
    for name, extra in (("one", {}), ("ddp", {"strategy": {"name": "ddp"}}), ("fsdp", {"strategy": {"name": "fsdp"}})):
        (tmp_path / name).mkdir()
        recipe = make_recipe(tmp_path / name, tiny_llama, self_cognition_file, adapter=NO_DROPOUT, train={**train, "sequence_parallel": 1 if name == "one" else 2}, **extra)
        run_cli("run", "--recipe", str(recipe), "model.gradient_checkpointing=true", *(["--nproc-per-node", "2"] if name != "one" else []), check=True)
    for name in ("ddp", "fsdp"):
        assert_same_run(tmp_path / name / "wd", tmp_path / "one" / "wd", "adapter_model.safetensors")


def test_sequence_parallel_needs_a_multiple_of_its_processes(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, train={"sequence_parallel": 2})
    proc = run_cli("run", "--recipe", str(recipe))
    assert proc.returncode == 2 and "error: train.sequence_parallel: 2 processes a row, but the run has 1 process(es)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "Loading weights" not in proc.stderr
