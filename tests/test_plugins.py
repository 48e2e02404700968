"""The plugin system: entry-point loading, third-party plugins, blocking, allow-listing, broken plugins."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest

from ftcore import hookimpl
from ftcore.errors import FtcoreError
from ftcore.parts import collect_parts
from ftcore.plugins import get_plugin_manager
from ftcore.registry import Part, Registry

from helpers import cli_env, run_cli


def _list_json(env) -> list[dict]:
    proc = run_cli("list", "--json", env=env, check=True)
    return json.loads(proc.stdout)


def test_builtin_plugins_load_through_entry_points() -> None:
    pm = get_plugin_manager()
    assert {"core", "formats", "internlm2"} <= set(pm.infos)
    assert all(pm.infos[n].builtin and pm.infos[n].dist == "ftcore" for n in ("core", "formats", "internlm2"))
    assert "register_prompt_templates" in pm.infos["core"].hooks


def test_third_party_plugin_parts_are_listed_with_their_owner(plugin_site) -> None:
    rows = _list_json(cli_env(pythonpath=str(plugin_site)))
    owners = {(r["kind"], r["name"]): r["plugin"] for r in rows}
    assert owners[("recipes", "example_recipe")] == "example (ftcore-example 0.3.1)"
    assert owners[("templates", "example_chat")] == "example (ftcore-example 0.3.1)"
    assert owners[("formats", "example_qa")] == "example (ftcore-example 0.3.1)"
    assert owners[("templates", "internlm2_chat")].startswith("core (ftcore ")


def test_disabled_plugin_parts_disappear(plugin_site) -> None:
    rows = _list_json(cli_env({"FTCORE_DISABLE_PLUGINS": "example"}, pythonpath=str(plugin_site)))
    names = {r["name"] for r in rows}
    assert "example_recipe" not in names and "example_chat" not in names
    assert "internlm2_chat" in names


def test_allow_list_loads_only_named_third_party_plugins(plugin_site) -> None:
    env = cli_env({"FTCORE_LOAD_PLUGINS": "nothing_else"}, pythonpath=str(plugin_site))
    proc = run_cli("list", "--json", env=env, check=True)
    names = {r["name"] for r in json.loads(proc.stdout)}
    assert "example_recipe" not in names and "internlm2_qlora" in names
    assert "broken" not in proc.stderr  # not loaded at all, so no failure either
    names = {r["name"] for r in _list_json(cli_env({"FTCORE_LOAD_PLUGINS": "example"}, pythonpath=str(plugin_site)))}
    assert "example_recipe" in names


def test_broken_plugin_gives_one_clear_line_and_the_rest_works(plugin_site) -> None:
    proc = run_cli("list", "recipes", env=cli_env(pythonpath=str(plugin_site)))
    assert proc.returncode == 0
    lines = [l for l in proc.stderr.splitlines() if "broken" in l]
    assert len(lines) == 1
    assert "plugin 'broken' (ftcore-broken 0.0.1)" in lines[0]
    assert "RuntimeError: this plugin is broken on purpose" in lines[0]
    assert "FTCORE_DISABLE_PLUGINS=broken" in lines[0]
    assert "Traceback" not in proc.stderr
    assert "example_recipe" in proc.stdout and "quickstart" in proc.stdout


def test_plugins_command_shows_version_source_and_hooks(plugin_site) -> None:
    proc = run_cli("plugins", "--json", env=cli_env(pythonpath=str(plugin_site)), check=True)
    info = {p["name"]: p for p in json.loads(proc.stdout)}
    assert info["example"]["version"] == "0.3.1" and info["example"]["source"] == "ftcore_example"
    from ftcore.parts import KINDS

    assert info["example"]["hooks"] == sorted([*KINDS.values(), "register_commands"])  # the example plugin has a part of every kind
    assert info["broken"]["error"].startswith("failed to import")


def test_dry_run_accepts_a_third_party_recipe(plugin_site, tmp_path, tiny_llama) -> None:
    shutil.copytree(tiny_llama, tmp_path / "my-model")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qa.jsonl").write_text('{"q": "hi", "a": "hello"}\n')
    proc = run_cli("run", "--recipe", "example_recipe", "--dry-run", cwd=tmp_path, env=cli_env(pythonpath=str(plugin_site)))
    assert proc.returncode == 0, proc.stderr
    assert "format=example_qa template=example_chat" in proc.stdout


def test_duplicate_names_are_an_error_naming_both_plugins() -> None:
    registry: Registry = Registry("templates", "template")
    registry.add(Part("chatml", object(), "a (pkg-a 1.0)"))
    with pytest.raises(FtcoreError) as err:
        registry.add(Part("chatml", object(), "b (pkg-b 2.0)"))
    assert "a (pkg-a 1.0)" in str(err.value) and "b (pkg-b 2.0)" in str(err.value)


def test_duplicate_of_a_builtin_part_skips_the_later_plugin_naming_both() -> None:
    mod = types.ModuleType("dup_plugin")

    @hookimpl
    def register_model_builders(register):
        register("hf", "x:y", "a second hf")

    mod.register_model_builders = register_model_builders
    pm = get_plugin_manager(extra=[("dup", mod)])
    parts = collect_parts(pm)  # no longer fails for everyone: only the later plugin is skipped
    assert parts.models.part("hf").owner.startswith("core (ftcore ")
    assert "model builder 'hf' is registered twice: by plugin core" in pm.infos["dup"].error
    assert "by plugin dup (<local>)" in pm.infos["dup"].error


def test_hook_implementation_without_spec_is_reported() -> None:
    mod = types.ModuleType("typo_plugin")

    @hookimpl
    def register_recipe(register):  # missing "s": matches no hook spec
        pass

    mod.register_recipe = register_recipe
    pm = get_plugin_manager(extra=[("typo", mod)])
    assert pm.infos["typo"].error and "register_recipe" in pm.infos["typo"].error
    assert not pm.is_registered(mod)


def test_plugin_manager_is_a_fresh_factory() -> None:
    a, b = get_plugin_manager(), get_plugin_manager()
    assert a is not b and set(a.infos) == set(b.infos)


def test_lazy_part_that_cannot_load_names_plugin_and_target() -> None:
    part = Part("ghost", "no_such_module_xyz:build", "ghost (pkg 1)")
    with pytest.raises(FtcoreError, match="ghost .*no_such_module_xyz:build"):
        part.load()


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "recipes", "--json"], ["plugins"]])
def test_help_and_list_do_not_import_heavy_libraries(args) -> None:
    code = (
        "import sys, runpy; sys.argv = ['ftcore', *%r]\n"
        "try:\n    runpy.run_module('ftcore.cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'deepspeed', 'datasets') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n" % (args,)
    )
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert "HEAVY=\n" in proc.stderr or proc.stderr.rstrip().endswith("HEAVY="), proc.stderr
