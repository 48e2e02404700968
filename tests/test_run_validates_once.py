"""``ftcore run`` loads and validates the recipe once: a ``single`` recipe launched on several
processes becomes ``ddp`` in the loaded recipe, where only ``strategy.name`` is checked again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from ftcore.cli import create_cli, use_strategy
from ftcore.errors import FtcoreError
from ftcore.recipe import Recipe

from test_train import make_recipe


def test_single_becomes_ddp_for_several_processes_with_one_validation(monkeypatch, tmp_path, tiny_llama, self_cognition_file) -> None:
    import ftcore.recipe

    validated = []
    validate = ftcore.recipe.validate
    monkeypatch.setattr(ftcore.recipe, "validate", lambda recipe, *args, **kwargs: (validated.append(recipe.source), validate(recipe, *args, **kwargs))[1])
    recipe = make_recipe(tmp_path, tiny_llama, self_cognition_file)
    result = CliRunner().invoke(create_cli(), ["run", "--recipe", str(recipe), "--nproc-per-node", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "using strategy ddp" in result.stdout and "strategy  ddp" in result.stdout
    assert validated == [str(recipe)]


def _strategies(**options: dict) -> SimpleNamespace:
    return SimpleNamespace(strategies=SimpleNamespace(part=lambda name: SimpleNamespace(options=options.get(name, {}))))


def test_switching_strategy_checks_the_keys_the_recipe_gives() -> None:
    given = Recipe({"strategy": {"name": "single", "gpus_per_host": 2}}, "r.yaml", {"strategy.gpus_per_host": "r.yaml:7"})
    with pytest.raises(FtcoreError, match=r"strategy 'ddp' takes no strategy.gpus_per_host \(two processes\)") as err:
        use_strategy(given, _strategies(), "ddp", "two processes")
    assert err.value.where == "r.yaml:7" and given["strategy"]["name"] == "single"
    # a default that validation filled in for the old strategy (no line) just goes
    filled = Recipe({"strategy": {"name": "single", "gpus_per_host": 2}}, "r.yaml", {})
    use_strategy(filled, _strategies(), "ddp", "two processes")
    assert filled["strategy"] == {"name": "ddp"} and filled.lines["strategy.name"] == "two processes"
    # a key the new strategy takes stays
    kept = Recipe({"strategy": {"name": "single", "gpus_per_host": 2}}, "r.yaml", {"strategy.gpus_per_host": "r.yaml:7"})
    use_strategy(kept, _strategies(ddp={"gpus_per_host": None}), "ddp", "two processes")
    assert kept["strategy"] == {"name": "ddp", "gpus_per_host": 2}
