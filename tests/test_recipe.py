"""Recipes: YAML loading, extends, key=value overrides, validation that reports every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcore.errors import FtcoreError, ValidationError
from ftcore.parts import collect_parts
from ftcore.plugins import get_plugin_manager
from ftcore.recipe import load_recipe, parse_override


@pytest.fixture(scope="module")
def parts():
    return collect_parts(get_plugin_manager())


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_five_line_user_recipe_extends_a_registered_one(parts, tmp_path) -> None:
    f = write(tmp_path / "mine.yaml", "extends: internlm2_qlora\ndata:\n  path: my.jsonl\ntrain:\n  lr: 1.0e-4\n")
    recipe = load_recipe(str(f), parts)
    assert recipe["model"]["builder"] == "internlm2" and recipe["adapter"]["kind"] == "qlora"
    assert recipe["data"]["path"] == "my.jsonl" and recipe["data"]["template"] == "internlm2_chat"
    assert recipe["train"]["lr"] == 1e-4 and recipe["train"]["grad_accum"] == 16
    assert recipe["model"]["quantization"] == "nf4"  # qlora implies a 4-bit base
    assert recipe["work_dir"] == "./work_dirs/mine"


def test_extends_a_file_relative_to_the_recipe(parts, tmp_path) -> None:
    write(tmp_path / "base.yaml", "model: {builder: hf, path: m}\ndata: {path: d.jsonl, template: default}\ntrain: {lr: 0.5}\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\ntrain: {seed: 7}\n")
    recipe = load_recipe(str(child), parts)
    assert recipe["train"]["lr"] == 0.5 and recipe["train"]["seed"] == 7


def test_extends_loop_is_an_error(parts, tmp_path) -> None:
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(FtcoreError, match="loop"):
        load_recipe(str(tmp_path / "a.yaml"), parts)


@pytest.mark.parametrize(
    "text,key,value",
    [("train.lr=1e-4", "train.lr", 1e-4), ("data.pack=false", "data.pack", False), ("train.max_steps=10", "train.max_steps", 10),
     ("adapter.targets=[q_proj,v_proj]", "adapter.targets", ["q_proj", "v_proj"]), ("data.system=You are kind", "data.system", "You are kind")],
)
def test_overrides_are_typed(text, key, value) -> None:
    assert parse_override(text) == (key, value)


def test_overrides_apply_with_dotted_paths(parts) -> None:
    recipe = load_recipe("internlm2_qlora", parts, ["train.lr=1e-4", "data.pack=false", "strategy.name=single"])
    assert recipe["train"]["lr"] == 1e-4 and recipe["data"]["pack"] is False


def test_all_problems_reported_together_with_key_paths_and_lines(parts, tmp_path) -> None:
    f = write(
        tmp_path / "bad.yaml",
        "model:\n  builder: internlm3\n  path: m\nadapter:\n  kind: lora\n  rank: 8\ndata:\n  path: d.jsonl\n  template: internlm2_chatt\n  max_length: long\ntrain:\n  lr: -1\nhooks: [evaluate_chatt]\nmodle: {}\n",
    )
    with pytest.raises(ValidationError) as err:
        load_recipe(str(f), parts, ["train.epochz=2"])
    text = str(err.value)
    problems = {p.path: p for p in err.value.problems}
    assert set(problems) >= {"model.builder", "adapter.rank", "data.template", "data.max_length", "train.lr", "hooks[0].name", "modle", "train.epochz"}
    assert problems["adapter.rank"].location == f"{f}:6"
    assert "did you mean 'r'" in text and "did you mean 'internlm2_chat'" in text and "did you mean 'model'" in text
    assert "internlm2" in problems["model.builder"].message  # lists what exists
    assert problems["data.max_length"].message.startswith("must be an integer")
    assert problems["train.epochz"].location == "override 'train.epochz=2'"


def test_missing_required_keys(parts, tmp_path) -> None:
    f = write(tmp_path / "empty.yaml", "description: nothing\n")
    with pytest.raises(ValidationError) as err:
        load_recipe(str(f), parts)
    assert {p.path for p in err.value.problems} == {"model.builder", "model.path", "data.path"}


def test_invalid_yaml_names_file_and_line(parts, tmp_path) -> None:
    f = write(tmp_path / "broken.yaml", "model:\n  builder: hf\n  path: [unclosed\n")
    with pytest.raises(FtcoreError) as err:
        load_recipe(str(f), parts)
    assert f"{f}:" in str(err.value) and "not valid YAML" in str(err.value)


def test_recipes_are_never_executed(parts, tmp_path) -> None:
    f = write(tmp_path / "evil.yaml", "model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(FtcoreError):
        load_recipe(str(f), parts)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_missing_model_path_fails_validation_saying_what_to_put_there(parts) -> None:
    with pytest.raises(ValidationError) as err:
        load_recipe("internlm2_qlora", parts, check_paths=True)
    problem = {p.path: p for p in err.value.problems}["model.path"]
    assert "internlm2-chat-1_8b" in problem.message and "download the base model" in problem.hint


def test_hook_options_are_validated(parts, tmp_path) -> None:
    f = write(tmp_path / "h.yaml", "model: {builder: hf, path: m}\ndata: {path: d}\nhooks:\n  - {name: evaluate_chat, prompts: [hi], evry: 3}\n")
    with pytest.raises(ValidationError, match="hooks\\[0\\].evry: unknown key .*did you mean 'every'"):
        load_recipe(str(f), parts)


def test_every_shipped_recipe_validates(parts) -> None:
    for name in parts.recipes.names():
        recipe = load_recipe(name, parts)
        assert recipe.name == name
