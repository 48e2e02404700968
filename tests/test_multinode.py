"""Several machines, simulated on this one: two launchers (`--nnodes 2 --node-rank 0|1`, loopback, gloo),
each with its own data cache, train as one process does, checkpoint, resume exactly; nodes that disagree stop."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env, run_cli
from test_fsdp import NO_DROPOUT, STEPS, assert_same_run, train
from test_train import make_recipe, metrics

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(recipe: Path, tmp_path: Path, *args: str, node1: tuple[str, ...] = ()) -> list[subprocess.CompletedProcess]:
    """``ftcore run`` as two machines of one process each would start it; every machine processes the
    data into its own cache (``FTCORE_CACHE_DIR``), as machines without a shared home do."""
    launch = ["--nproc-per-node", "1", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    procs = []
    for rank, extra in ((0, ()), (1, node1)):
        cmd = [sys.executable, "-m", "ftcore.cli", "run", "--recipe", str(recipe), *args, *extra, *launch, "--node-rank", str(rank)]
        env = cli_env({"FTCORE_CACHE_DIR": str(tmp_path / f"cache-node{rank}")})
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def check(runs: list[subprocess.CompletedProcess]) -> None:
    for node, run in enumerate(runs):
        assert run.returncode == 0, f"node {node} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory, tiny_llama, self_cognition_file) -> Path:
    """The one-process LoRA run (4 rows a step) every strategy on two nodes must reproduce; its work_dir."""
    return train(tmp_path_factory.mktemp("reference"), tiny_llama, self_cognition_file, "single", NO_DROPOUT)


def assert_fsdp_checkpoint_is_a_plain_adapter(ckpt: Path, reference: Path, base: Path, tmp_path: Path) -> None:
    """The files a one-process run writes (plus the sharded state), and `ftcore merge` reads it as any adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert {p.name for p in reference.iterdir()} - {"optimizer.pt"} <= {p.name for p in ckpt.iterdir()}
    assert (ckpt / "fsdp" / ".metadata").is_file() and (ckpt / "scheduler.pt").is_file()
    run_cli("merge", str(base), str(ckpt), str(tmp_path / "merged"), "--dtype", "fp32", check=True)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    single = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(reference)).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, single(ids).logits, atol=1e-3)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero2"])
def test_two_nodes_train_like_one_process_and_resume_exactly(strategy, tmp_path, tiny_llama, self_cognition_file, lora_reference) -> None:
    if strategy == "zero2":
        pytest.importorskip("deepspeed")
    first = tmp_path / "first"
    first.mkdir()
    # 2 nodes x 1 process x micro_batch 1 x grad_accum 2 = the reference's 4 rows a step
    recipe = make_recipe(first, tiny_llama, self_cognition_file, adapter=NO_DROPOUT, strategy={"name": strategy}, train={"max_steps": STEPS, "micro_batch": 1, "grad_accum": 2})
    runs = two_nodes(recipe, tmp_path)
    check(runs)
    assert runs[0].stdout.count("done:") == 1 and "done:" not in runs[1].stdout  # rank 0 reports
    assert_same_run(first / "wd", lora_reference, "adapter_model.safetensors")
    assert (tmp_path / "cache-node0").is_dir() and (tmp_path / "cache-node1").is_dir()  # each machine processed the data itself
    if strategy == "fsdp":
        assert_fsdp_checkpoint_is_a_plain_adapter(first / "wd" / f"checkpoint-{STEPS}", lora_reference / f"checkpoint-{STEPS}", tiny_llama, tmp_path)

    second = tmp_path / "second"
    (second / "wd").mkdir(parents=True)
    shutil.copytree(first / "wd" / "checkpoint-3", second / "wd" / "checkpoint-3")
    resumed = make_recipe(second, tiny_llama, self_cognition_file, adapter=NO_DROPOUT, strategy={"name": strategy}, train={"max_steps": STEPS, "micro_batch": 1, "grad_accum": 2})
    runs = two_nodes(resumed, tmp_path, "--resume")
    check(runs)
    assert "at step 3/6" in runs[0].stdout
    assert [(m["loss"], m["grad_norm"]) for m in metrics(second / "wd")] == [(m["loss"], m["grad_norm"]) for m in metrics(first / "wd")[3:]]
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "wd" / f"checkpoint-{STEPS}" / "adapter_model.safetensors")) for d in (first, second))
    assert all((a[k] == b[k]).all() for k in a)


def test_nodes_with_different_recipes_stop_with_the_difference_on_every_node(tmp_path, tiny_llama, self_cognition_file) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file, strategy={"name": "ddp"})
    runs = two_nodes(recipe, tmp_path, node1=("train.lr=0.001",))
    for node, run in enumerate(runs):
        assert run.returncode == 2, (node, run.stderr)
        assert "do not have the same recipe: node 1" in run.stderr and "train.lr=0.001 (rank 0: 0.005)" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and "Loading weights" not in run.stderr
