"""Hub IDs as model.path and data.path (resolved from a hub cache laid out as huggingface_hub writes it, offline), and the oasst1 (Guanaco) format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import cli_env, run_cli

GUANACO = [
    {"text": "### Human: Who are you?### Assistant: I am Zed, a small assistant.### Human: Thanks!### Assistant: You are welcome."},
    {"text": "### Human: What is your name?### Assistant: My name is Zed.\n### Details\nI answer questions."},
    {"text": "### Human: Say hello.### Assistant: Hello!### Human: and then?"},
]


def _cached_repo(hub: Path, kind: str, repo_id: str, files: dict[str, Path | str]) -> Path:
    """A repository in the hub cache as snapshot_download leaves it: blobs, a snapshot of links, refs/main."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / f"{kind}s--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / rev
    for name, content in files.items():
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = repo / "blobs" / f"{abs(hash((repo_id, name))):x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy(content, blob)
        else:
            blob.write_text(content)
        target.symlink_to(blob)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return snap


@pytest.fixture
def hf_home(tmp_path: Path, tiny_llama: Path) -> Path:
    """An HF_HOME whose hub cache holds the tiny model as zed-org/tiny-chat and the Guanaco sample as timdettmers/openassistant-guanaco."""
    home = tmp_path / "hf-home"
    hub = home / "hub"
    _cached_repo(hub, "model", "zed-org/tiny-chat", {p.name: p for p in tiny_llama.iterdir() if p.is_file()})
    train = "".join(json.dumps(r) + "\n" for r in GUANACO)
    _cached_repo(hub, "dataset", "timdettmers/openassistant-guanaco", {
        "openassistant_best_replies_train.jsonl": train,
        "openassistant_best_replies_eval.jsonl": json.dumps(GUANACO[1]) + "\n",
        "README.md": "# Guanaco\n\nA subset of OpenAssistant.\n",
    })
    return home


def _env(home: Path) -> dict[str, str]:
    return cli_env({"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"})


def _recipe(tmp_path: Path, **data: object) -> Path:
    recipe = {
        "model": {"builder": "hf", "path": "zed-org/tiny-chat", "gradient_checkpointing": False},
        "adapter": {"kind": "lora", "r": 4, "alpha": 8},
        "data": {"path": "timdettmers/openassistant-guanaco", "template": "internlm2_chat", "max_length": 96, **data},
        "train": {"max_steps": 2, "micro_batch": 2, "grad_accum": 1, "save_every": 0},
        "hooks": [],
        "work_dir": str(tmp_path / "wd"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_hub_ids_for_model_and_data_train_from_the_offline_hub_cache(tmp_path, hf_home) -> None:
    recipe = _recipe(tmp_path, eval_path="timdettmers/openassistant-guanaco")
    proc = run_cli("run", "--recipe", str(recipe), "--dry-run", env=_env(hf_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the format is told apart from pretrain text; the train file is data, the eval file held out
    assert "oasst1" in proc.stdout and "openassistant_best_replies_train.jsonl" in proc.stdout, proc.stdout
    proc = run_cli("run", "--recipe", str(recipe), env=_env(hf_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = yaml.safe_load((tmp_path / "wd" / "checkpoint-2" / "recipe.yaml").read_text())
    snapshot = Path(saved["model"]["path"])
    assert snapshot.parent.name == "snapshots" and (snapshot / "config.json").is_file()
    assert saved["data"]["path"].endswith("openassistant_best_replies_train.jsonl")
    assert saved["data"]["eval_path"].endswith("openassistant_best_replies_eval.jsonl")
    assert (tmp_path / "wd" / "checkpoint-2" / "adapter_model.safetensors").is_file()


def test_a_hub_id_that_is_neither_cached_nor_reachable_is_named_in_the_error(tmp_path, hf_home) -> None:
    recipe = _recipe(tmp_path)
    proc = run_cli("run", "--recipe", str(recipe), "model.path=nobody/missing-model", "data.path=nobody/missing-data", env=_env(hf_home))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "model.path: 'nobody/missing-model' is no local path, and the model nobody/missing-model could not be found in the hub cache" in proc.stderr
    assert "data.path: 'nobody/missing-data' is no local path, and the dataset nobody/missing-data could not be found" in proc.stderr
    assert "hf download nobody/missing-model" in proc.stderr and "hf download nobody/missing-data --repo-type dataset" in proc.stderr
    assert "not a model folder" not in proc.stderr  # one problem per key
    # a missing local file that merely has an ID's shape stays a missing file
    proc = run_cli("run", "--recipe", str(recipe), "data.path=data/train.jsonl", env=_env(hf_home))
    assert proc.returncode == 2 and "data.path: 'data/train.jsonl' does not exist" in proc.stderr, proc.stderr


def test_is_hub_id_leaves_local_paths_alone(tmp_path, monkeypatch) -> None:
    from ftcore.hub import is_hub_id

    monkeypatch.chdir(tmp_path)
    assert is_hub_id("internlm/internlm2-chat-1_8b") and is_hub_id("Qwen/Qwen2.5-0.5B-Instruct")
    (tmp_path / "internlm").mkdir()
    (tmp_path / "internlm" / "internlm2-chat-1_8b").mkdir()
    assert not is_hub_id("internlm/internlm2-chat-1_8b")  # a local folder of that name wins
    for local in ("./org/name", "/abs/path", "~/models/x", "a/b/c", "model", "data/train.jsonl"):
        assert not is_hub_id(local, (".jsonl",)), local


def test_oasst1_format_reads_guanaco_turns_and_writes_them_back() -> None:
    from ftcore_formats.formats import FORMATS

    from ftcore.data.apply import detect_format

    fmt = {f.name: f for f in FORMATS}
    assert detect_format(GUANACO, FORMATS) == "oasst1"
    assert detect_format([{"text": "plain prose"}], FORMATS) == "pretrain"
    first = fmt["oasst1"].convert(GUANACO[0])["messages"]
    assert [m["role"] for m in first] == ["user", "assistant", "user", "assistant"]
    assert first[1]["content"] == "I am Zed, a small assistant."
    # a markdown heading inside an answer is not a turn; an unanswered last question is left out
    assert fmt["oasst1"].convert(GUANACO[1])["messages"][1]["content"] == "My name is Zed.\n### Details\nI answer questions."
    assert [m["role"] for m in fmt["oasst1"].convert(GUANACO[2])["messages"]] == ["user", "assistant"]
    assert fmt["oasst1"].export(fmt["oasst1"].convert(GUANACO[0])) == GUANACO[0]
    from ftcore.data.formats import RecordError

    with pytest.raises(RecordError, match="two '### Human:' turns in a row"):
        fmt["oasst1"].convert({"text": "### Human: a### Human: b### Assistant: c"})
    with pytest.raises(RecordError, match="must start with '### Human:'"):
        fmt["oasst1"].convert({"text": "preamble ### Human: a### Assistant: c"})
