"""Part options are the constructor's typed keyword arguments: the validator derives each recipe key's
type, default and range from the signature, reports every bad value, and the run binds the checked
values to the same signature."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest

from ftcore.api import Objective, Option, TrainingHook
from ftcore.errors import FtcoreError, ValidationError
from ftcore.options import construct, signature_options
from ftcore.recipe import REQUIRED
from helpers import load_sections, parts_with


class Scaled(Objective):
    """An objective with every kind of option a recipe can give."""

    def __init__(
        self,
        beta: Annotated[float, Option("KL weight", gt=0)] = 0.1,
        steps: Annotated[int, Option("a count", ge=1, le=8)] = 2,
        mode: Annotated[Literal["mean", "sum"], Option("how to reduce")] = "mean",
        tags: Annotated[list[Annotated[str, Option(pattern=r"[a-z]+")]], Option("lowercase tags", max_len=3)] = (),
        label: Annotated[str | None, Option("a label")] = None,
        extra: Annotated[dict, Option("free-form settings")] = None,
        on: Annotated[bool, Option("a switch")] = True,
    ) -> None:
        self.beta, self.steps, self.mode, self.tags, self.label, self.extra, self.on = beta, steps, mode, list(tags), label, extra, on


class NeedsPath(TrainingHook):
    def __init__(self, path: Annotated[str, Option("a file", is_path=True)], every: int = 1) -> None:
        self.path, self.every = path, every


def test_fields_are_derived_from_the_signature() -> None:
    opts = signature_options(Scaled)
    assert opts["beta"].types == (float,) and opts["beta"].gt == 0 and opts["beta"].default == 0.1 and opts["beta"].help == "KL weight"
    assert opts["steps"].ge == 1 and opts["steps"].le == 8
    assert opts["mode"].choices == ("mean", "sum") and opts["mode"].types == (str,)
    assert opts["tags"].types == (list,) and opts["tags"].default == [] and opts["tags"].max_len == 3
    assert opts["tags"].items.types == (str,) and opts["tags"].items.pattern == "[a-z]+" and not opts["tags"].items.nullable
    assert opts["label"].nullable and opts["label"].types == (str,)
    assert opts["extra"].types == (dict,) and opts["on"].types == (bool,)
    needs = signature_options(NeedsPath)
    assert needs["path"].default is REQUIRED and needs["path"].is_path and needs["every"].types == (int,)
    assert Scaled().beta == 0.1  # real defaults: the part works in plain Python


def test_a_strategy_s_options_come_after_recipe_and_precision() -> None:
    from ftcore.train.strategy import SingleStrategy

    class Tuned(SingleStrategy):
        def __init__(self, recipe, precision, bucket_mb: Annotated[int, Option("bucket size", ge=1)] = 25) -> None:
            super().__init__(recipe, precision)
            self.bucket_mb = bucket_mb

    assert list(signature_options(Tuned, skip=2)) == ["bucket_mb"]
    assert signature_options(SingleStrategy, skip=2) == {}


@pytest.mark.parametrize("bad,message", [
    ("def __init__(self, x=1): pass", "has no type annotation"),
    ("def __init__(self, x: object = 1): pass", "which a recipe cannot give"),
    ("def __init__(self, x: int = 1, /): pass", "positional-only"),
    ("def __init__(self, x: list = []): pass", None),
])
def test_options_a_recipe_cannot_give_are_a_clear_error(bad, message) -> None:
    namespace: dict = {}
    exec(f"class Bad:\n    {bad}", namespace)
    if message is None:
        assert signature_options(namespace["Bad"])["x"].default == []
        return
    with pytest.raises(FtcoreError, match=message):
        signature_options(namespace["Bad"])


def test_an_option_takes_field_s_constraints_only() -> None:
    with pytest.raises(TypeError, match="unknown constraint.*minimum"):
        Option("x", minimum=1)


def test_construct_binds_to_the_signature_and_names_the_part() -> None:
    assert construct(Scaled, beta=0.5).beta == 0.5
    with pytest.raises(FtcoreError, match="'scaled': .*unexpected keyword argument 'gamma'"):
        construct(Scaled, where="'scaled'", gamma=1)
    with pytest.raises(FtcoreError, match="missing a required argument: 'path'"):
        construct(NeedsPath)


@pytest.fixture(scope="module")
def parts():
    return parts_with("scaled", register_objectives=[("scaled", Scaled, "an objective with typed options")],
                      register_training_hooks=[("needs_path", NeedsPath, "a hook with a required option")])


def test_a_recipe_s_objective_options_are_checked_all_at_once(tmp_path, parts) -> None:
    recipe = load_sections(tmp_path, parts, objective={"name": "scaled", "beta": 1})
    assert recipe["objective"] == {"name": "scaled", "beta": 1.0, "steps": 2, "mode": "mean", "tags": [], "label": None, "extra": None, "on": True}
    with pytest.raises(ValidationError) as err:
        load_sections(tmp_path, parts, objective={"name": "scaled", "beta": 0, "steps": 9, "mode": "max", "tags": ["ok", "Bad"], "on": "yes", "gama": 1},
              hooks=[{"name": "needs_path"}])
    problems = {p.path: p.message for p in err.value.problems}
    assert problems["objective.beta"] == "must be > 0, got 0.0"
    assert problems["objective.steps"] == "must be >= 1 and <= 8, got 9"
    assert "must be one of mean, sum" in problems["objective.mode"]
    assert "objective.tags[1]" in problems and "objective.on" in problems
    assert problems["objective.gama"] == "unknown key"
    assert problems["hooks[0].path"] == "is required"


def test_the_run_makes_the_part_with_the_checked_options(tmp_path, parts) -> None:
    from ftcore.train.runner import make_hooks, make_objective

    recipe = load_sections(tmp_path, parts, objective={"name": "scaled", "tags": ["a"]}, hooks=[{"name": "needs_path", "path": "x.txt"}, "throughput"])
    objective = make_objective(recipe, parts)
    assert isinstance(objective, Scaled) and objective.tags == ["a"] and objective.beta == 0.1
    hook, throughput = make_hooks(recipe, parts)
    assert hook.path == "x.txt" and throughput.every == 10


def test_strategy_config_is_the_zero_strategies_option_and_old_recipes_still_load(tmp_path, parts) -> None:
    recipe = load_sections(tmp_path, parts, strategy={"name": "zero2", "config": {"zero_optimization": {"reduce_bucket_size": 1}}})
    assert recipe["strategy"]["config"] == {"zero_optimization": {"reduce_bucket_size": 1}}
    assert load_sections(tmp_path, parts, strategy={"name": "single", "config": None})["strategy"] == {"name": "single"}  # as older versions saved it
    with pytest.raises(ValidationError) as err:
        load_sections(tmp_path, parts, strategy={"name": "single", "config": {"a": 1}})
    assert [(p.path, p.message) for p in err.value.problems] == [("strategy.config", "unknown key")]
    with pytest.raises(ValidationError, match="strategy.config: must be a mapping or a string"):
        load_sections(tmp_path, parts, strategy={"name": "zero3", "config": 5})
