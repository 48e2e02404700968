"""The per-invocation application object: plugin manager plus lazily collected parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from .parts import Parts, collect_parts
from .plugins import PluginManager, get_plugin_manager


@dataclass
class App:
    """What a CLI command needs: the plugins and, on first use, their registered parts."""

    pm: PluginManager = field(default_factory=get_plugin_manager)
    _parts: Parts | None = None

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            self._parts = collect_parts(self.pm)
        return self._parts
