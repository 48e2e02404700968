"""ftcore: a plugin-based framework for fine-tuning large language models."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker plugins use to implement hooks: ``@ftcore.hookimpl``.
hookimpl = pluggy.HookimplMarker("ftcore")

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str):  # ``ftcore.ModelBuilder`` etc.: the public API, re-exported lazily
    import importlib

    if name.startswith("__") or name == "api":
        raise AttributeError(name)
    return getattr(importlib.import_module("ftcore.api"), name)
