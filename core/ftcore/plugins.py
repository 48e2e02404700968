"""Plugin discovery: entry-point loading, blocking/allow-listing by env var, load failures."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Iterable

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "ftcore"
BUILTIN_DIST = "ftcore"


@dataclass
class PluginInfo:
    """What is known about one plugin: where it comes from and whether it loaded."""

    name: str
    dist: str
    version: str
    source: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def owner(self) -> str:
        """How parts name their owner: ``plugin (dist version)``."""
        return f"{self.name} ({self.dist} {self.version})" if self.version else f"{self.name} ({self.dist})"


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers each plugin's origin and load errors."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    @property
    def failures(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.error]

    def add_plugin(self, module: object, info: PluginInfo) -> None:
        """Register an imported plugin module and record what hooks it implements."""
        self.register(module, name=info.name)
        info.hooks = sorted(h.name for h in self.get_hookcallers(module) or [])
        self.infos[info.name] = info
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            self.unregister(module)
            info.error = f"implements a hook that has no specification ({exc}); it was not loaded"


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _describe(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "?"
    return dist.metadata["Name"] or "unknown", dist.version or "?"


def get_plugin_manager(extra: Iterable[tuple[str, ModuleType]] = ()) -> PluginManager:
    """A fresh plugin manager with every allowed ``ftcore`` entry-point plugin loaded.

    ``FTCORE_DISABLE_PLUGINS=a,b`` blocks plugins by name (built-in ones too);
    ``FTCORE_LOAD_PLUGINS=a,b`` loads only those third-party plugins (built-ins always
    load). A plugin that fails to import is recorded in ``pm.failures`` and skipped.
    ``extra`` registers already-imported modules (used by tests and embedding code).
    """
    pm = PluginManager()
    disabled = set(_env_list("FTCORE_DISABLE_PLUGINS") or [])
    allowed = _env_list("FTCORE_LOAD_PLUGINS")
    seen: set[str] = set()
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        dist, version = _describe(ep)
        builtin = dist == BUILTIN_DIST
        if ep.name in disabled:
            pm.set_blocked(ep.name)
            continue
        if not builtin and allowed is not None and ep.name not in allowed:
            continue
        info = PluginInfo(ep.name, dist, version, ep.value, builtin)
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            info.error = f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"
            pm.infos[ep.name] = info
            continue
        pm.add_plugin(module, info)
    for name, module in extra:
        if name not in disabled:
            pm.add_plugin(module, PluginInfo(name, "<local>", "", module.__name__, False))
    return pm

