"""ftcore: a plugin-based framework for fine-tuning large language models."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker plugins use to implement hooks: ``@ftcore.hookimpl``.
hookimpl = pluggy.HookimplMarker("ftcore")

__all__ = ["__version__", "hookimpl"]
