"""Plugin discovery: entry-point loading, blocking/allow-listing by env var, contained plugin failures.

A plugin that fails (at import, in a hook, or with an invalid registration) is recorded on its
``PluginInfo.error`` and skipped; every other plugin keeps working. Built-in plugins (distribution
``ftcore``) load first, and a third-party entry point cannot take a built-in's name.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, Iterable

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
    #: what the user can do about ``error`` (default: disable the plugin by name).
    hint: str | None = None
    #: the commands this plugin added through ``register_commands``.
    commands: list[str] = field(default_factory=list)

    @property
    def owner(self) -> str:
        """How parts name their owner: ``plugin (dist version)``."""
        return f"{self.name} ({self.dist} {self.version})" if self.version else f"{self.name} ({self.dist})"

    @property
    def label(self) -> str:
        """How messages name the plugin: ``'plugin' (dist version)``."""
        return f"{self.name!r} ({self.dist} {self.version})" if self.version else f"{self.name!r} ({self.dist})"

    @property
    def remedy(self) -> str:
        return self.hint or f"disable it with FTCORE_DISABLE_PLUGINS={self.name}"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (an FtcoreError's ``where`` and ``hint`` included)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def describe_exception(exc: BaseException, doing: str) -> str:
    """``doing raised Type: message``, or ``doing called sys.exit(N)`` for a SystemExit."""
    if isinstance(exc, SystemExit):
        return f"{doing} called sys.exit({'' if exc.code is None else repr(exc.code)})"
    return f"{doing} raised {type(exc).__name__}: {one_line(exc)}"


def trace(message: str) -> None:
    """With ``FTCORE_TRACE_PLUGINS=1``, one line on stderr (which plugin registered what)."""
    if os.environ.get("FTCORE_TRACE_PLUGINS", "").strip().lower() not in ("", "0", "false", "no", "off"):
        print(f"ftcore: trace: {message}", file=sys.stderr)


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers each plugin's origin and failures."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        #: plugins by name, in load order (built-ins first).
        self.infos: dict[str, PluginInfo] = {}
        #: entry points refused because their name was taken (e.g. shadowing a built-in).
        self.rejected: list[PluginInfo] = []

    @property
    def failures(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.error] + self.rejected

    def all_infos(self) -> list[PluginInfo]:
        return list(self.infos.values()) + self.rejected

    def add_plugin(self, module: object, info: PluginInfo) -> None:
        """Register an imported plugin module and record what hooks it implements."""
        taken = self.infos.get(info.name)
        if taken is not None:
            info.error = f"plugin name {info.name!r} is taken by plugin {taken.owner}; rename one of them"
            info.hint = "rename one of them, or disable one with FTCORE_DISABLE_PLUGINS=<name>"
            self.rejected.append(info)
            return
        self.infos[info.name] = info
        try:
            self.register(module, name=info.name)
        except (ValueError, pluggy.PluginValidationError) as exc:  # e.g. a module registered twice, a bad hook signature
            info.error = f"cannot be registered: {one_line(exc)}"
            return
        info.hooks = sorted(h.name for h in self.get_hookcallers(module) or [])
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            self.unregister(module)
            info.error = f"implements a hook that has no specification ({exc}); it was not loaded"

    def mark_broken(self, name: str, reason: str) -> PluginInfo:
        """Record why plugin ``name`` failed and unregister it, so none of its hooks runs again."""
        info = self.infos.get(name)
        if info is None:  # registered directly with pm.register, not through get_plugin_manager
            info = self.infos[name] = PluginInfo(name, "<local>", "", name, False)
        if info.error is None:
            info.error = reason
        if self.get_plugin(name) is not None:
            self.unregister(name=name)
        return info

    def load_order(self) -> list[str]:
        """Registered plugin names, built-ins first, then in load order."""
        registered = [name for name, plugin in self.list_name_plugin() if plugin is not None]
        known = [n for n in self.infos if n in registered]
        known.sort(key=lambda n: not self.infos[n].builtin)  # stable: keeps load order within each group
        return known + [n for n in registered if n not in self.infos]

    def add_commands(self, cli: Any) -> None:
        """Call every plugin's ``register_commands``; a plugin that raises, or that would replace a
        command someone else added, is marked broken and the commands it added are taken back."""
        impls: dict[str, list[Any]] = {}
        for impl in self.hook.register_commands.get_hookimpls():
            impls.setdefault(impl.plugin_name, []).append(impl)
        core_commands = set(cli.commands)
        for name in self.load_order():
            info = self.infos.get(name)
            for impl in impls.get(name, []):
                before = dict(cli.commands)
                problem = None
                try:
                    impl.function(cli=cli)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - a broken plugin must not break the others
                    problem = describe_exception(exc, "register_commands")
                replaced = sorted(n for n in before if cli.commands.get(n) is not before[n])
                if problem is None and replaced:
                    owners = {n: ("ftcore" if n in core_commands else next((i.owner for i in self.infos.values() if n in i.commands), "another plugin")) for n in replaced}
                    problem = "register_commands replaced " + ", ".join(f"command {n!r} of {owners[n]}" for n in replaced)
                if problem is not None:
                    cli.commands.clear()
                    cli.commands.update(before)
                    self.mark_broken(name, problem)
                    break
                added = sorted(set(cli.commands) - set(before))
                if info is not None:
                    info.commands += added
                for command in added:
                    trace(f"plugin {info.label if info else repr(name)} registered command {command!r}")

    def command_owner(self, command: str | None) -> PluginInfo | None:
        """The plugin that added ``command`` (None for the core's own commands)."""
        return next((i for i in self.infos.values() if command in i.commands), None)


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


def _load(ep: EntryPoint, info: PluginInfo) -> ModuleType | None:
    """Import an entry point; any failure but Ctrl-C (SystemExit included) is recorded on ``info``."""
    try:
        return ep.load()
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        info.error = f"called sys.exit({'' if exc.code is None else repr(exc.code)}) at import"
    except BaseException as exc:  # noqa: BLE001 - a broken plugin must not break the others
        info.error = f"failed to import {ep.value!r}: {type(exc).__name__}: {one_line(exc)}"
    return None


def get_plugin_manager(extra: Iterable[tuple[str, ModuleType]] = ()) -> PluginManager:
    """A fresh plugin manager with every allowed ``ftcore`` entry-point plugin loaded.

    ``FTCORE_DISABLE_PLUGINS=a,b`` blocks plugins by name (built-in ones too);
    ``FTCORE_LOAD_PLUGINS=a,b`` loads only those third-party plugins (built-ins always
    load). Built-in plugins load first; a third-party entry point named like one is not
    loaded. A plugin that fails to import (or calls ``sys.exit``) is recorded in
    ``pm.failures`` and skipped. ``extra`` registers already-imported modules (used by
    tests and embedding code).
    """
    pm = PluginManager()
    disabled = set(_env_list("FTCORE_DISABLE_PLUGINS") or [])
    allowed = _env_list("FTCORE_LOAD_PLUGINS")
    found: dict[tuple[str, str], tuple[EntryPoint, str]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist, version = _describe(ep)
        found.setdefault((ep.name, dist), (ep, version))  # the same distribution visible twice on sys.path
    for (name, dist), (ep, version) in sorted(found.items(), key=lambda kv: (kv[0][1] != BUILTIN_DIST, kv[0])):
        builtin = dist == BUILTIN_DIST
        if name in disabled:
            pm.set_blocked(name)
            continue
        if not builtin and allowed is not None and name not in allowed:
            continue
        info = PluginInfo(name, dist, version, ep.value, builtin)
        taken = pm.infos.get(name)
        if taken is not None:
            whose = "the built-in plugin" if taken.builtin else f"plugin {taken.owner}"
            info.error = f"entry point name {name!r} is taken by {whose}; rename it"
            info.hint = f"uninstall {dist}, or rename its entry point"
            pm.rejected.append(info)
            continue
        module = _load(ep, info)
        if module is None:
            pm.infos[name] = info
            continue
        pm.add_plugin(module, info)
    for name, module in extra:
        if name not in disabled:
            pm.add_plugin(module, PluginInfo(name, "<local>", "", module.__name__, False))
    return pm
