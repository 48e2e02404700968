"""Plugin isolation (issue #15, item 4): a plugin that fails is skipped with one warning line naming it
and what it did, every other plugin keeps working, and ``--strict-plugins`` turns the warning into an error.

Each failure kind is a real package installed into ``isolation_site`` (see ``conftest.py``) and
exercised through the real CLI in a subprocess; the rarer kinds are checked in-process.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ftcore import hookimpl
from ftcore.app import App
from ftcore.cli import create_cli
from ftcore.data.formats import DatasetFormat
from ftcore.data.template import PromptTemplate
from ftcore.errors import FtcoreError
from ftcore.parts import collect_parts
from ftcore.plugins import get_plugin_manager

from helpers import cli_env, run_cli


@dataclass(frozen=True)
class Case:
    """One way a plugin can fail, and how ftcore must describe it."""

    plugin: str  # entry point name
    dist: str
    reason: str  # what the warning and `ftcore plugins` must say it did
    needs: dict  # recipe data keys that need a part the plugin would have provided
    missing_note: str  # what the "no X called Y" error adds
    absent: tuple[str, ...] = ()  # its parts (of every kind) that must not be listed

    @property
    def label(self) -> str:
        return f"plugin '{self.plugin}' ({self.dist} "


CASES = {
    "import_raises": Case(
        "broken", "ftcore-broken", "failed to import 'ftcore_broken': RuntimeError: this plugin is broken on purpose",
        {"format": "broken_qa"}, "failed and may provide it: failed to import"),
    "hook_raises": Case(
        "hook_raises", "ftcore-hook-raises", "register_dataset_formats raised ValueError: boom",
        {"format": "hookfail_qa"}, "would provide it but failed: register_dataset_formats raised ValueError: boom",
        absent=("hookfail_qa", "hookfail_chat")),
    "duplicate_of_builtin": Case(
        "dup_openai", "ftcore-dup-openai",
        "dataset format 'openai' is registered twice: by plugin formats (ftcore ",
        {"template": "dup_chat"}, "would provide it but failed: dataset format 'openai' is registered twice",
        absent=("dup_chat",)),
    "invalid_template": Case(
        "bad_template", "ftcore-bad-template", "register_prompt_templates registered an invalid template: ",
        {"template": "bad_chat"}, "would provide it but failed: register_prompt_templates registered an invalid template",
        absent=("bad_chat", "badtpl_qa")),
    "sys_exit_at_import": Case(
        "exit_at_import", "ftcore-exit-at-import", "called sys.exit(3) at import",
        {"format": "exit_qa"}, "failed and may provide it: called sys.exit(3) at import"),
    "shadows_builtin": Case(
        "formats", "ftcore-shadow-formats", "entry point name 'formats' is taken by the built-in plugin; rename it",
        {"format": "shadow_qa"}, "failed and may provide it: entry point name 'formats' is taken",
        absent=("shadow_qa",)),
}
PARAMS = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))


def _env(site: Path, plugins: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return cli_env({"FTCORE_LOAD_PLUGINS": plugins, **(extra or {})}, pythonpath=str(site))


def _lines_naming(text: str, case: Case) -> list[str]:
    return [line for line in text.splitlines() if case.label in line]


def _write_recipe(tmp_path: Path, **data: str) -> Path:
    """A recipe (openai data, internlm2_chat template unless overridden) whose paths exist."""
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qa.jsonl").write_text('{"q": "hi", "a": "hello"}\n')
    fmt, template = data.get("format", "example_qa"), data.get("template", "internlm2_chat")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: {builder: hf, path: ./my-model}\n"
        "adapter: {kind: lora, r: 8, alpha: 16}\n"
        f"data: {{path: data/qa.jsonl, format: {fmt}, template: {template}, max_length: 512}}\n"
        "train: {max_steps: 10, grad_accum: 1}\n"
    )
    return recipe


# --- through the real CLI: one package per failure kind ------------------------------------------


@PARAMS
def test_list_skips_the_broken_plugin_with_one_warning_and_lists_everything_else(isolation_site, case) -> None:
    proc = run_cli("list", "--json", env=_env(isolation_site, f"{case.plugin},example"))
    assert proc.returncode == 0, proc.stderr
    rows = {(r["kind"], r["name"]): r["plugin"] for r in json.loads(proc.stdout)}
    assert rows[("formats", "openai")].startswith("formats (ftcore ")  # built-ins keep their parts
    assert rows[("templates", "internlm2_chat")].startswith("core (ftcore ")
    assert rows[("recipes", "quickstart")].startswith("internlm2 (ftcore ")
    assert rows[("formats", "example_qa")] == "example (ftcore-example 0.3.1)"  # so do other third-party plugins
    assert not [name for (_, name) in rows if name in case.absent]  # a half plugin never runs
    assert not [owner for owner in rows.values() if case.dist in owner]
    warnings = _lines_naming(proc.stderr, case)
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("ftcore: warning: ") and "skipped" in warnings[0] and case.reason in warnings[0]
    assert "Traceback" not in proc.stderr


@PARAMS
def test_plugins_command_shows_the_broken_plugin_with_its_reason(isolation_site, case) -> None:
    proc = run_cli("plugins", "--json", env=_env(isolation_site, f"{case.plugin},example"))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    broken = [r for r in rows if r["name"] == case.plugin and r["distribution"] == case.dist]
    assert len(broken) == 1 and broken[0]["status"] == "broken" and case.reason in broken[0]["error"]
    sound = [r for r in rows if r["distribution"] != case.dist]
    assert {"core", "formats", "example"} <= {r["name"] for r in sound}
    assert all(r["status"] == "ok" and r["error"] is None for r in sound)
    human = run_cli("plugins", env=_env(isolation_site, f"{case.plugin},example", {"COLUMNS": "400"}))
    assert human.returncode == 0 and f"broken, skipped: {case.reason}" in human.stdout


@PARAMS
def test_recipe_needing_a_part_of_the_broken_plugin_fails_naming_the_plugin(isolation_site, case, tmp_path) -> None:
    recipe = _write_recipe(tmp_path, **case.needs)
    proc = run_cli("run", "--recipe", str(recipe), "--dry-run", cwd=tmp_path, env=_env(isolation_site, f"{case.plugin},example"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    problem = [line for line in proc.stderr.splitlines() if repr(next(iter(case.needs.values()))) in line]
    assert problem and case.label in problem[0] and case.missing_note in problem[0], proc.stderr
    assert "Traceback" not in proc.stderr


@PARAMS
def test_recipe_of_sound_plugins_still_validates_next_to_a_broken_plugin(isolation_site, case, tmp_path) -> None:
    recipe = _write_recipe(tmp_path, format="openai" if case.plugin == "dup_openai" else "example_qa")
    proc = run_cli("show", str(recipe), cwd=tmp_path, env=_env(isolation_site, f"{case.plugin},example"))
    assert proc.returncode == 0, proc.stderr
    assert "builder: hf" in proc.stdout


@PARAMS
@pytest.mark.parametrize("how", ["flag", "env"])
def test_strict_mode_makes_the_plugin_failure_a_one_line_error(isolation_site, case, how) -> None:
    args = ("--strict-plugins", "list") if how == "flag" else ("list",)
    extra = {"FTCORE_STRICT_PLUGINS": "1"} if how == "env" else {}
    proc = run_cli(*args, env=_env(isolation_site, f"{case.plugin},example", extra))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert case.label in lines[0] and case.reason in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("how", ["flag", "env"])
def test_strict_mode_passes_when_every_plugin_is_sound(isolation_site, how) -> None:
    args = ("--strict-plugins", "list", "--json") if how == "flag" else ("list", "--json")
    proc = run_cli(*args, env=_env(isolation_site, "example", {"FTCORE_STRICT_PLUGINS": "1"} if how == "env" else {}))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "example_qa" in proc.stdout


def test_entry_point_named_like_a_builtin_does_not_replace_it(isolation_site) -> None:
    env = _env(isolation_site, "formats")
    formats = {r["name"]: r for r in json.loads(run_cli("list", "formats", "--json", env=env, check=True).stdout)}
    assert formats["openai"]["plugin"].startswith("formats (ftcore ") and "alpaca" in formats
    assert "shadow_qa" not in formats
    rows = [r for r in json.loads(run_cli("plugins", "--json", env=env, check=True).stdout) if r["name"] == "formats"]
    assert {(r["distribution"], r["status"]) for r in rows} == {("ftcore", "ok"), ("ftcore-shadow-formats", "broken")}


def test_duplicate_of_a_builtin_part_keeps_the_builtin(isolation_site) -> None:
    proc = run_cli("list", "formats", "--json", env=_env(isolation_site, "dup_openai"), check=True)
    openai = [r for r in json.loads(proc.stdout) if r["name"] == "openai"]
    assert len(openai) == 1 and openai[0]["plugin"].startswith("formats (ftcore ") and "IMPOSTOR" not in openai[0]["description"]


def test_trace_env_var_logs_which_plugin_registered_each_part(isolation_site) -> None:
    proc = run_cli("list", "--json", env=_env(isolation_site, "example", {"FTCORE_TRACE_PLUGINS": "1"}), check=True)
    assert "ftcore: trace: plugin 'example' (ftcore-example 0.3.1) registered dataset format 'example_qa'" in proc.stderr.splitlines()
    assert "ftcore: trace: plugin 'formats' (ftcore 0.1.0) registered dataset format 'openai'" in proc.stderr.splitlines()
    quiet = run_cli("list", "--json", env=_env(isolation_site, "example"), check=True)
    assert "trace" not in quiet.stderr


# --- in-process: the rarer failure kinds -----------------------------------------------------------


def _plugin(name: str, **hooks) -> tuple[str, types.ModuleType]:
    mod = types.ModuleType(f"{name}_plugin")
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(mod, hook_name, hookimpl(fn))
    return name, mod


def _fmt(name: str) -> DatasetFormat:
    return DatasetFormat(name, lambda r: {"messages": []}, None, f"{name} format")


def test_duplicate_between_two_third_party_plugins_skips_the_later_one_naming_both() -> None:
    first = _plugin("first", register_dataset_formats=lambda register: register(_fmt("qa")))
    second = _plugin("second", register_dataset_formats=lambda register: [register(_fmt("qa")), register(_fmt("second_only"))])
    pm = get_plugin_manager(extra=[first, second])
    parts = collect_parts(pm)
    assert parts.formats.part("qa").owner == "first (<local>)" and "second_only" not in parts.formats
    assert pm.infos["first"].error is None
    error = pm.infos["second"].error
    assert "dataset format 'qa' is registered twice: by plugin first (<local>) and by plugin second (<local>)" in error
    with pytest.raises(FtcoreError, match="plugin 'second' .* would provide it but failed"):
        parts.formats.part("second_only")


def _registers_twice(register) -> None:
    register(PromptTemplate(name="twice", instruction="{input}"))
    register(PromptTemplate(name="twice", instruction="Q: {input}"))


@pytest.mark.parametrize(
    "hook, expected",
    [
        (lambda register: register(types.SimpleNamespace(name="ns_chat")), "registered a template that is not a PromptTemplate"),
        (lambda register: register(PromptTemplate(name="", instruction="{input}")), "registered a template without a name"),
        (_registers_twice, "registered template 'twice' twice"),
    ],
    ids=["not_a_template", "nameless", "twice_in_one_plugin"],
)
def test_invalid_template_registration_skips_only_that_plugin(hook, expected) -> None:
    good = _plugin("good", register_prompt_templates=lambda register: register(PromptTemplate(name="good_chat", instruction="{input}")))
    bad = _plugin("bad", register_prompt_templates=hook, register_dataset_formats=lambda register: register(_fmt("bad_qa")))
    pm = get_plugin_manager(extra=[good, bad])
    parts = collect_parts(pm)
    assert expected in pm.infos["bad"].error
    assert "good_chat" in parts.templates and "internlm2_chat" in parts.templates
    assert "bad_qa" not in parts.formats and not pm.is_registered(bad[1])  # all its parts, of every kind, dropped


def test_sys_exit_inside_a_hook_is_contained() -> None:
    def exits(register):
        raise SystemExit(4)

    pm = get_plugin_manager(extra=[_plugin("quitter", register_strategies=exits)])
    parts = collect_parts(pm)
    assert pm.infos["quitter"].error == "register_strategies called sys.exit(4)"
    assert "single" in parts.strategies


def test_ctrl_c_inside_a_hook_is_not_swallowed() -> None:
    def interrupted(register):
        raise KeyboardInterrupt

    pm = get_plugin_manager(extra=[_plugin("slow", register_recipes=interrupted)])
    with pytest.raises(KeyboardInterrupt):
        collect_parts(pm)


def test_import_failure_is_warned_once_even_when_parts_are_collected_later() -> None:
    pm = get_plugin_manager(extra=[_plugin("raiser", register_recipes=lambda register: 1 / 0)])
    lines: list[str] = []
    app = App(pm=pm, warn=lines.append)
    app.report_plugin_failures()
    assert lines == []  # found only when parts are collected
    app.parts
    app.parts
    app.report_plugin_failures()
    assert lines == ["ftcore: warning: plugin 'raiser' (<local>) skipped: register_recipes raised ZeroDivisionError: division by zero "
                     "(disable it with FTCORE_DISABLE_PLUGINS=raiser)"]


def test_strict_app_raises_naming_the_plugin_when_parts_are_collected() -> None:
    app = App(pm=get_plugin_manager(extra=[_plugin("raiser", register_recipes=lambda register: 1 / 0)]), strict=True)
    with pytest.raises(FtcoreError, match="plugin 'raiser' .* failed: register_recipes raised ZeroDivisionError") as err:
        app.parts
    assert "\n" not in str(err.value)


def test_register_commands_that_raises_takes_back_its_commands_and_the_rest_work() -> None:
    def adds_then_raises(cli):
        cli.add_command(click.Command("half", callback=lambda: None))
        raise RuntimeError("commands broke")

    app = App(pm=get_plugin_manager(extra=[_plugin("cmds", register_commands=adds_then_raises)]))
    cli = create_cli(app)
    assert "half" not in cli.commands and {"list", "data", "merge"} <= set(cli.commands)
    assert app.pm.infos["cmds"].error == "register_commands raised RuntimeError: commands broke"
    result = CliRunner().invoke(cli, ["list", "strategies"])
    assert result.exit_code == 0 and "single" in result.output


def test_plugin_cannot_replace_a_core_command() -> None:
    def replaces_list(cli):
        cli.add_command(click.Command("list", callback=lambda: click.echo("HIJACKED")))

    app = App(pm=get_plugin_manager(extra=[_plugin("hijack", register_commands=replaces_list)]))
    cli = create_cli(app)
    assert "replaced command 'list' of ftcore" in app.pm.infos["hijack"].error
    result = CliRunner().invoke(cli, ["list", "strategies"])
    assert result.exit_code == 0 and "HIJACKED" not in result.output and "single" in result.output


def test_command_of_a_plugin_broken_while_registering_parts_refuses_to_run() -> None:
    def commands(cli):
        cli.add_command(click.Command("hello", callback=lambda: click.echo("HELLO RAN")))

    def formats(register):
        raise ValueError("formats broke")

    app = App(pm=get_plugin_manager(extra=[_plugin("halfway", register_commands=commands, register_dataset_formats=formats)]))
    result = CliRunner().invoke(create_cli(app), ["hello"])
    assert "HELLO RAN" not in result.output
    assert isinstance(result.exception, FtcoreError)
    assert "command 'hello' comes from plugin 'halfway' (<local>), which failed: register_dataset_formats raised ValueError" in str(result.exception)
