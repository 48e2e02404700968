"""Shared fixtures: running the real CLI in a subprocess, installed fixture plugins, tiny models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURE_PLUGINS


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture plugin packages, really installed (pip, no deps) into a private site dir."""
    site = tmp_path_factory.mktemp("plugin-site")
    for name in ("ftcore_example", "ftcore_broken"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(FIXTURE_PLUGINS / name)],
            check=True,
            capture_output=True,
        )
    return site


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ftcore-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    """Keep data/conversion caches out of the user's home during tests."""
    monkeypatch.setenv("FTCORE_CACHE_DIR", str(cache_dir))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama-layout checkpoint with its tokenizer."""
    from ftcore.models.tiny import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def self_cognition_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 English "who are you" samples for the assistant "Zed" (openai format JSONL)."""
    import json

    from ftcore.data.self_cognition import self_cognition_records

    path = tmp_path_factory.mktemp("data") / "self_cognition.jsonl"
    records = self_cognition_records("Zed", 64, "en", 0)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
