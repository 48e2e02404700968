"""The core knows no plugin: ``core/ftcore`` imports no plugin package, and no library code builds
the app to find parts (only the CLI and ``ftcore.app`` do; everything else is handed ``parts``)."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

CORE = ROOT / "core" / "ftcore"
#: the modules that may build the app: the command line and the app object itself
APP_BUILDERS = {CORE / "cli.py", CORE / "app.py"}
#: calls that build the app (``installed_parts`` is the public one, for scripts)
BUILDS_APP = {"App", "installed_parts"}
#: modules that still build one, to be changed by their owners (none left)
NOT_YET: set[str] = set()


def plugin_imports(tree: ast.AST) -> list[str]:
    """Plugin packages (``ftcore_*``) imported: ``import``, ``from ... import`` and
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and _called(node) in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        found += [n for n in names if n.split(".")[0].startswith("ftcore_")]
    return found


def _called(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def app_builds(tree: ast.AST) -> list[int]:
    """Lines that call ``App(...)`` or ``installed_parts(...)``."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and _called(node) in BUILDS_APP]


def parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_checks_find_what_they_look_for() -> None:
    assert plugin_imports(ast.parse("import ftcore_llava.chat")) == ["ftcore_llava.chat"]
    assert plugin_imports(ast.parse("from ftcore_llava.serve import load_serve_model")) == ["ftcore_llava.serve"]
    assert plugin_imports(ast.parse("importlib.import_module('ftcore_zero.strategy')")) == ["ftcore_zero.strategy"]
    assert plugin_imports(ast.parse("import ftcore.api\nfrom . import ftcore_like\nfrom .x import y")) == []
    assert app_builds(ast.parse("from ftcore.app import App\nparts = App().parts")) == [2]
    assert app_builds(ast.parse("import ftcore.api as api\nparts = api.installed_parts()")) == [2]


def test_the_core_imports_no_plugin_package() -> None:
    found = [f"{path.relative_to(ROOT)}: {name}" for path in sorted(CORE.rglob("*.py")) for name in plugin_imports(parse(path))]
    assert not found, f"the core imports plugin packages (a plugin adds its behaviour through hooks): {found}"


def test_only_the_cli_and_the_app_build_the_app() -> None:
    files = [p for p in sorted(CORE.rglob("*.py")) if p not in APP_BUILDERS] + sorted((ROOT / "plugins").rglob("*.py"))
    found = [f"{path.relative_to(ROOT)}:{line}" for path in files for line in app_builds(parse(path)) if str(path.relative_to(ROOT)) not in NOT_YET]
    assert not found, f"library code builds the app to find parts (take `parts` from the caller instead): {found}"
