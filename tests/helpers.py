"""Helpers for tests: running the real CLI in a subprocess with a clean environment; one LoRA training step on a tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_PLUGINS = Path(__file__).resolve().parent / "fixtures" / "plugins"


def cli_env(extra: dict[str, str] | None = None, pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FTCORE_DISABLE_PLUGINS", "FTCORE_LOAD_PLUGINS")}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``ftcore ARGS`` exactly as a user would (the installed console entry point)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ftcore.cli", *args],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ftcore {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def lora_model(path: Path, quantization: str = "none", dropout: float = 0.3, adapter=None, **model_cfg):
    """A LoRA (r=8) model of the checkpoint at ``path``, prepared for training on the CPU in fp32
    exactly as ``ftcore run`` prepares it; ``adapter`` is another adapter kind (e.g. DoRA());
    ``model_cfg`` overrides ``model.*`` options."""
    import pytest
    import torch

    from ftcore.models.hf import HFBuilder
    from ftcore.models.loading import load_base_model
    from ftcore.models.plan import prepare_for_training

    if quantization != "none":
        pytest.importorskip("bitsandbytes")
    cfg = {"path": str(path), "quantization": quantization, "double_quant": True, "dtype": "fp32", "trust_remote_code": False,
           "attn_implementation": "sdpa", "gradient_checkpointing": True, "offload_activations": False, "chunked_loss": True,
           "fused_lora": False, "compile": False, **model_cfg}
    adapter_cfg = {"kind": "lora", "r": 8, "alpha": 16, "dropout": dropout, "targets": "all-linear", "modules_to_save": None, "bias": "none"}
    torch.manual_seed(0)
    return prepare_for_training(load_base_model(cfg, HFBuilder(), torch.device("cpu"), "fp32"), cfg, adapter_cfg, adapter).model


def adapter_step(model) -> tuple[float, dict]:
    """One forward/backward of a LoRA model on a fixed batch with seeded dropout masks, every
    adapter path live (B starts at zero, so it is drawn at random); returns the loss and the
    adapter gradients."""
    import torch

    from ftcore.train.objective import loss_sum

    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(3, 200, (1, 64), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(64)[None]}
    torch.manual_seed(2)  # the dropout masks
    loss, _ = loss_sum(model, batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def parts_with(plugin: str, **hooks):
    """Every installed plugin's parts, plus a plugin called ``plugin`` that registers, for each hook
    named, its ``(name, target, description)`` entries: ``parts_with("p", register_objectives=[("x", X, "an x")])``."""
    import types

    from ftcore import hookimpl
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    def registering(entries):
        def impl(register):
            for entry in entries:
                register(*entry)

        return hookimpl(impl)

    module = types.ModuleType(f"{plugin}_plugin")
    for hook, entries in hooks.items():
        setattr(module, hook, registering(entries))
    return collect_parts(get_plugin_manager(extra=[(plugin, module)]))


def load_sections(tmp_path: Path, parts, **sections):
    """A recipe of an hf model and a data file with ``sections`` on top, written to ``tmp_path`` and loaded."""
    import yaml

    from ftcore.recipe import load_recipe

    data = {"model": {"builder": "hf", "path": "m"}, "data": {"path": "d.jsonl"}, **sections}
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(data))
    return load_recipe(str(f), parts)
