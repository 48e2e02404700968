"""Fixtures for the plugin-isolation tests: the deliberately broken plugin packages, really installed.

They get their own site dir (not ``plugin_site``) so that their warnings never reach the output
other tests assert on. ``tests/`` is on ``sys.path`` through the root ``tests/conftest.py``, so
``helpers`` imports here as everywhere else.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURE_PLUGINS

#: The example plugin (must keep working) and one package per way a plugin can fail.
ISOLATION_PLUGINS = (
    "ftcore_example",
    "ftcore_broken",
    "ftcore_hook_raises",
    "ftcore_dup_openai",
    "ftcore_bad_template",
    "ftcore_exit_at_import",
    "ftcore_shadow_formats",
)


@pytest.fixture(scope="session")
def isolation_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every fixture plugin of ``ISOLATION_PLUGINS`` installed (pip, no deps) into a private site dir;
    tests choose which third-party plugins load with ``FTCORE_LOAD_PLUGINS``."""
    site = tmp_path_factory.mktemp("isolation-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site),
         *(str(FIXTURE_PLUGINS / name) for name in ISOLATION_PLUGINS)],
        check=True,
        capture_output=True,
    )
    return site
