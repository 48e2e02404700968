"""Terminal output: the rich console every command and hook prints through."""

from __future__ import annotations

from typing import Any


def console(stderr: bool = False) -> Any:
    """A rich console that never hard-wraps (so logs and copied commands stay on one line)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)
