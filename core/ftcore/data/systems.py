"""Named system prompts (presets), as data files beside the chat templates: ``templates/systems/NAME.yaml``.

A preset file holds ``text`` (the system prompt) and ``description`` (one line for help texts).
``data.system: alpaca`` (or ``ftcore data convert --system medical``) names one; any other
value is the system prompt itself. Files are read only when a name is looked up or listed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import FtcoreError

#: The package and folder the preset files are in.
PACKAGE, FOLDER = "ftcore.templates", "systems"


def _folder() -> Path:
    from importlib import resources

    return Path(str(resources.files(PACKAGE).joinpath(FOLDER)))


def preset_names() -> list[str]:
    """Every preset's name, sorted (no file is read)."""
    folder = _folder()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


@lru_cache(maxsize=None)
def preset(name: str) -> tuple[str, str]:
    """``(text, description)`` of the preset ``name``; an unknown name raises ``FtcoreError``."""
    import yaml

    path = _folder() / f"{name}.yaml"
    if name not in preset_names():
        raise FtcoreError(f"no system prompt preset called {name!r}", hint=f"presets: {', '.join(preset_names())}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
        raise FtcoreError("a system prompt preset must be a mapping with a non-empty text", where=str(path))
    return data["text"].strip(), str(data.get("description") or "")


def system_text(value: str) -> str:
    """The system prompt ``value`` means: a preset's text when it is a preset's name, else ``value`` itself."""
    return preset(value)[0] if value in preset_names() else value


def presets_help() -> str:
    """``name: description`` per preset, one a line (for ``--help`` texts)."""
    return "\n".join(f"  {name}: {preset(name)[1]}" for name in preset_names())
