"""The public plugin API: ``ftcore.api`` holds what plugins need, plugins import nothing else, and
importing it stays cheap."""

from __future__ import annotations

import ast
import subprocess
import sys

from helpers import ROOT

#: plugin imports of internal modules still to be replaced by ftcore.api (issue #16's remaining work)
NOT_YET: set[tuple[str, str]] = set()


def ftcore_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "ftcore":
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "ftcore")


def test_built_in_plugins_import_only_the_public_api() -> None:
    found = {(str(f.relative_to(ROOT)), m) for f in (ROOT / "plugins").rglob("*.py") for m in ftcore_imports(f) if m != "ftcore.api"}
    assert found <= NOT_YET, f"plugins import ftcore internals (use ftcore.api): {sorted(found - NOT_YET)}"


def test_every_public_name_resolves_without_importing_torch() -> None:
    code = "import sys, ftcore.api as api\nnames = [n for n in api.__all__ if n not in ('install_loss_head',)]\n[getattr(api, n) for n in names]\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_an_unknown_name_lists_the_public_ones() -> None:
    import pytest

    import ftcore.api as api

    with pytest.raises(AttributeError, match="ModelBuilder"):
        api.NoSuchThing  # noqa: B018
