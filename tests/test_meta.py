"""Meta-tests (datasette style): every hook spec is documented with its full signature, has a
``test_hook_<name>`` test and an example part in the fixture plugin; every registered part is listed
with a description. Each check is a function that returns what is missing, and is itself shown to
catch a hook that is not documented, tested or listed."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

from ftcore import hookspecs
from helpers import FIXTURE_PLUGINS, ROOT, cli_env, run_cli

SPECS = {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")}
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")


def signature(name: str) -> str:
    """How CONTRIBUTING.md writes a hook: ``register_x(register)``, every parameter named."""
    return f"{name}({', '.join(inspect.signature(SPECS[name]).parameters)})"


def undocumented(names, text: str) -> list[str]:
    """Hooks whose full signature is not in ``text`` as `` `register_x(param, ...)` ``, or whose
    row in the hook table does not point at its part in the example plugin."""
    missing = []
    for name in names:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{signature(name)}`")), None)
        if row is None or "ftcore_example" not in row:
            missing.append(name)
    return missing


def defined_test_functions(root: Path) -> set[str]:
    """Every ``test_*`` function defined anywhere under ``root``."""
    names = set()
    for path in root.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def untested(names, tests: set[str]) -> list[str]:
    """Hooks with no test function named ``test_hook_<name>`` (or ``test_hook_<name>_...``)."""
    return [n for n in names if not any(t == f"test_hook_{n}" or t.startswith(f"test_hook_{n}_") for t in tests)]


def test_every_hook_spec_has_a_docstring_with_its_parameters() -> None:
    bad = [n for n, fn in SPECS.items() if not all(f":param {p}:" in (inspect.getdoc(fn) or "") for p in inspect.signature(fn).parameters)]
    assert SPECS and not bad, bad


def test_every_hook_is_documented_with_its_full_signature_and_example() -> None:
    assert not undocumented(SPECS, CONTRIBUTING)


def test_every_hook_has_a_test_hook_function() -> None:
    assert not untested(SPECS, defined_test_functions(ROOT / "tests"))


def test_the_meta_checks_catch_what_is_missing() -> None:
    """A hook with a parameter the docs leave out, or no test_hook_ function, is reported."""
    row = f"| `{signature('register_recipes')}` | see ftcore_example |"
    assert undocumented(["register_recipes"], row) == []
    assert undocumented(["register_recipes"], row.replace("(register)", "()")) == ["register_recipes"]
    assert undocumented(["register_recipes"], row.replace("ftcore_example", "the fixture")) == ["register_recipes"]
    assert untested(["register_recipes", "register_schedules"], {"test_hook_register_recipes_lists", "test_hook_register_schedule"}) == ["register_schedules"]


def test_the_example_plugin_implements_every_hook_and_imports_only_the_public_api(plugin_site) -> None:
    from test_api import ftcore_imports

    proc = run_cli("plugins", "--json", env=cli_env(pythonpath=str(plugin_site)), check=True)
    example = next(p for p in json.loads(proc.stdout) if p["name"] == "example")
    assert example["hooks"] == sorted(SPECS) and example["status"] == "ok"
    imports = {m for f in (FIXTURE_PLUGINS / "ftcore_example").rglob("*.py") for m in ftcore_imports(f)}
    assert imports == {"ftcore.api"}, imports


def test_every_registered_part_is_listed_with_a_description(plugin_site) -> None:
    env = cli_env(pythonpath=str(plugin_site))
    code = ("import json; from ftcore.parts import KINDS, collect_parts; from ftcore.plugins import get_plugin_manager\n"
            "parts = collect_parts(get_plugin_manager())\n"
            "print(json.dumps([[kind, p.name] for kind in KINDS for p in parts.kind(kind)]))")
    registered = {tuple(x) for x in json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)}
    rows = json.loads(run_cli("list", "--json", env=env, check=True).stdout)
    listed = {(r["kind"], r["name"]) for r in rows}
    assert registered == listed, registered ^ listed
    assert not [r for r in rows if not r["description"].strip()]
    from ftcore.parts import KINDS

    assert {kind for kind, _ in listed} == set(KINDS)  # every kind has a part, and the example plugin one of each
    assert {r["kind"] for r in rows if r["plugin"].startswith("example ")} == set(KINDS)


def test_the_trace_names_the_plugin_of_every_part(plugin_site) -> None:
    proc = run_cli("list", "--json", env=cli_env({"FTCORE_TRACE_PLUGINS": "1"}, pythonpath=str(plugin_site)), check=True)
    rows = json.loads(proc.stdout)
    traced = set(re.findall(r"registered (.+?) '([^']+)'", proc.stderr))
    from ftcore.parts import LABELS

    assert {(LABELS[r["kind"]], r["name"]) for r in rows} <= traced
