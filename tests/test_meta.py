"""Meta-tests: every hook spec is documented (docstring and CONTRIBUTING.md) and exercised by a test."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from ftcore import hookspecs

ROOT = Path(__file__).resolve().parent.parent
SPECS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]
# Where each hook is exercised: a plugin implementing it that the tests load and assert on.
EXERCISED_BY = {
    "register_recipes": ["example_recipe"],
    "register_dataset_formats": ["example_qa"],
    "register_prompt_templates": ["example_chat"],
    "register_model_builders": ["register_model_builders", "internlm2"],
    "register_strategies": ["zero2", "ddp"],
    "register_training_hooks": ["evaluate_chat", "quickstart"],
    "register_objectives": ["objective.name", "SFT()"],
    "register_commands": ["data", "merge"],
    "register_adapters": ["register_adapters"],
    "register_optimizers": ["adamw_8bit"],
    "register_schedules": ["register_schedules"],
}


def test_the_hook_set_is_the_documented_one() -> None:
    assert sorted(SPECS) == sorted(EXERCISED_BY)


@pytest.mark.parametrize("name", SPECS)
def test_hook_has_a_docstring_with_its_parameters(name) -> None:
    fn = getattr(hookspecs, name)
    doc = inspect.getdoc(fn) or ""
    params = list(inspect.signature(fn).parameters)
    assert doc and all(f":param {p}:" in doc for p in params), name


@pytest.mark.parametrize("name", SPECS)
def test_hook_is_documented_for_plugin_authors(name) -> None:
    assert f"`{name}(" in (ROOT / "CONTRIBUTING.md").read_text()


@pytest.mark.parametrize("name", SPECS)
def test_hook_is_exercised_by_a_test(name) -> None:
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_meta.py")
    assert any(needle in tests for needle in EXERCISED_BY[name]), name
