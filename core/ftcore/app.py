"""The per-invocation application object: plugin manager, lazily collected parts, plugin-failure reporting."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

from .errors import FtcoreError
from .parts import Parts, collect_parts
from .plugins import PluginInfo, PluginManager, get_plugin_manager


@dataclass
class App:
    """What a CLI command needs: the plugins and, on first use, their registered parts.

    Plugin failures are reported once each, when they are found (at import, or when parts
    are collected): through ``warn`` as one line each, or, with ``strict``, as an
    ``FtcoreError`` naming every failed plugin.
    """

    pm: PluginManager = field(default_factory=get_plugin_manager)
    strict: bool = False
    warn: Callable[[str], None] | None = None
    _parts: Parts | None = None
    _reported: set[int] = field(default_factory=set)

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            self._parts = collect_parts(self.pm)
            self.report_plugin_failures()
        return self._parts

    def report_plugin_failures(self) -> None:
        """Warn about (or, when strict, raise for) plugin failures not reported yet."""
        new: list[PluginInfo] = [i for i in self.pm.failures if id(i) not in self._reported]
        self._reported.update(id(i) for i in new)
        if not new:
            return
        if self.strict:
            failures = "; ".join(f"plugin {i.label} failed: {i.error}" for i in new)
            raise FtcoreError(
                f"{failures} (--strict-plugins or FTCORE_STRICT_PLUGINS makes plugin failures errors; "
                f"{'; '.join(i.remedy for i in new)})"
            )
        if self.warn is not None:
            for info in new:
                self.warn(f"ftcore: warning: plugin {info.label} skipped: {info.error} ({info.remedy})")


def installed_parts(strict: bool = False) -> Parts:
    """Every part of the installed plugins, as the ``ftcore`` command sees them, for scripts and
    notebooks (e.g. ``answer_with_image(..., parts=installed_parts())``). A plugin that fails is
    skipped with a warning line on stderr (with ``strict``, an ``FtcoreError``). Library code
    takes the parts from its caller instead."""
    return App(strict=strict, warn=lambda line: print(line, file=sys.stderr)).parts
