"""Code from a model or adapter folder runs only on the user's --trust-remote-code, never on a
checkpoint's say-so; chat templates render in a sandbox."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import cli_env, run_cli

EVIL = '''
import os
from pathlib import Path

Path(os.environ["FTCORE_TEST_MARKER"]).write_text("remote code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    model_type = "evil_llama"


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
'''


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Path]:
    """A base model whose config maps to a .py file that writes a marker when imported, and a real
    LoRA adapter for it whose recipe.yaml claims ``trust_remote_code: true``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("evil")
    base = root / "evil-base"
    shutil.copytree(tiny_llama, base)
    (base / "evil.py").write_text(EVIL)
    config = json.loads((base / "config.json").read_text())
    config.update(model_type="evil_llama", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"})
    (base / "config.json").write_text(json.dumps(config))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_llama)), LoraConfig(r=4, target_modules=["q_proj"]))
    adapter = root / "adapter"
    model.save_pretrained(str(adapter))
    recipe = {"model": {"builder": "hf", "path": str(base), "trust_remote_code": True}, "data": {"template": "vicuna"}}
    (adapter / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return {"base": base, "adapter": adapter, "marker": root / "marker", "modules": root / "hf-modules"}


def env_for(evil: dict[str, Path]) -> dict[str, str]:
    return cli_env({"FTCORE_TEST_MARKER": str(evil["marker"]), "HF_MODULES_CACHE": str(evil["modules"])})


def refused(evil: dict[str, Path], *args: str, cwd: Path | None = None) -> str:
    proc = run_cli(*args, env=env_for(evil), cwd=cwd)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not evil["marker"].exists(), "the checkpoint's code ran without --trust-remote-code"
    return proc.stderr


def test_chat_with_an_adapter_that_claims_trust_runs_no_code(evil) -> None:
    err = refused(evil, "chat", str(evil["adapter"]), "--prompt", "hi", "--max-new-tokens", "2")
    assert "recipe.yaml asks for the base model's own Python code" in err
    assert "config.json (auto_map)" in err and "evil.py" in err and "--trust-remote-code" in err


def test_serve_with_that_adapter_runs_no_code(evil) -> None:
    err = refused(evil, "serve", str(evil["base"]), "--adapter", str(evil["adapter"]), "--port", "0")
    assert "--trust-remote-code" in err


def test_merge_with_that_adapter_runs_no_code_and_writes_nothing(evil, tmp_path) -> None:
    err = refused(evil, "merge", str(evil["base"]), str(evil["adapter"]), str(tmp_path / "out"))
    assert "--trust-remote-code" in err
    assert not (tmp_path / "out").exists()


def test_a_recipe_may_ask_for_remote_code_but_only_the_flag_grants_it(evil, tmp_path, self_cognition_file) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"builder": "hf", "path": str(evil["base"]), "trust_remote_code": True},
        "data": {"path": str(self_cognition_file), "template": "vicuna"}, "train": {"max_steps": 1, "device": "cpu"},
    }))
    err = refused(evil, "run", "--recipe", str(recipe), "--work-dir", str(tmp_path / "w"), "--dry-run")
    assert f"{recipe}:" in err and "model.trust_remote_code" in err and "--trust-remote-code" in err
    refused(evil, "run", "--recipe", str(recipe), "--work-dir", str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_the_users_flag_is_what_lets_the_code_run(evil) -> None:
    proc = run_cli("chat", str(evil["adapter"]), "--trust-remote-code", "--prompt", "hi", "--max-new-tokens", "2", "--temperature", "0", env=env_for(evil))
    assert proc.returncode == 0, proc.stderr
    assert evil["marker"].read_text() == "remote code ran"
    evil["marker"].unlink()


def test_a_chat_template_cannot_escape_its_sandbox(tmp_path, tiny_llama) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    marker = tmp_path / "pwned"
    cfg_file = model / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["chat_template"] = "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    cfg_file.write_text(json.dumps(cfg))
    proc = run_cli("chat", str(model), "--template", "hf", "--prompt", "hi", "--max-new-tokens", "2")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "chat_template" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
