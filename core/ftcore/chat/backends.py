"""Chat backends: how a plugin makes ``ftcore chat`` and ``ftcore serve`` load something that a
model folder and an adapter do not describe (an image model with its vision tower, say).

A backend named ``N`` adds ``--N SOURCE`` and its own options to both commands; when the user
gives ``--N``, the backend loads the :class:`~ftcore.chat.generate.ChatModel` instead of the
core. A model that takes images sets ``accepts_images``: ``chat --image`` and ``serve``'s
``image_url`` parts then reach it as ``messages[i]["images"]`` (raw bytes). A plugin adds a
backend from ``register_commands``::

    @hookimpl
    def register_commands(cli):
        from ftcore.api import add_chat_backend
        from .chat import MyBackend   # a module that imports no torch
        add_chat_backend(cli, MyBackend())

A backend is kept as a hidden entry of the command group (named ``chat --N``), so it lives and
dies with its plugin's commands: a plugin whose ``register_commands`` fails takes it back with
its commands, a name or option that is taken is refused (the plugin is skipped, with the
reason), and a plugin that fails later, while registering parts, is named when ``--N`` is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import click
from click.core import ParameterSource

from ..errors import FtcoreError


@dataclass(frozen=True)
class ChatArgs:
    """What the user gave ``ftcore chat``/``serve`` besides a backend's own options."""

    model: str
    adapter: str | None = None
    template: str | None = None
    system: str | None = None
    bits: int | None = None
    builder: str | None = None
    trust_remote_code: bool = False


class ChatBackend:
    """Base class of a chat backend: loads a ``ChatModel`` for ``--NAME SOURCE``.

    Set ``name`` (lower case: the option ``--NAME`` chooses the backend) and ``help``; override
    :meth:`load`, and :meth:`options` and :meth:`check` when the backend needs more than SOURCE.
    """

    name: str = ""
    help: str = ""
    metavar: str = "DIR"

    def options(self) -> list[click.Parameter]:
        """The backend's own options, on both commands (e.g. ``click.Option(["--visual-encoder"])``);
        they may only be given together with ``--NAME``."""
        return []

    def check(self, source: str, args: ChatArgs, options: dict[str, Any]) -> None:
        """Cheap checks before anything is loaded (``serve`` opens its port after them): raise
        ``FtcoreError`` for a missing option or a SOURCE that cannot be right."""

    def load(self, parts: Any, source: str, args: ChatArgs, options: dict[str, Any], warn: Callable[[str], None]) -> Any:
        """The ``ChatModel`` to chat with. ``parts`` are the registered parts (builders,
        templates), ``options`` the values of :meth:`options` by parameter name, ``warn`` prints
        a warning line."""
        raise NotImplementedError(f"chat backend {self.name!r} does not implement load()")


def entry_name(name: str) -> str:
    """The command-group key of backend ``name``."""
    return f"chat --{name}"


class BackendEntry(click.Command):
    """A backend's hidden place in the command group: ``--NAME`` and the backend's options."""

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend
        self.flag = click.Option([f"--{backend.name}"], metavar=backend.metavar, help=backend.help)
        super().__init__(entry_name(backend.name), params=[self.flag, *backend.options()], callback=self._refuse, hidden=True,
                         help=f"chat backend: use `ftcore chat MODEL --{backend.name} {backend.metavar}` or `ftcore serve MODEL --{backend.name} {backend.metavar}`")

    @property
    def own_params(self) -> list[click.Parameter]:
        return self.params[1:]

    def _refuse(self, **values: Any) -> None:
        name, metavar = self.backend.name, self.backend.metavar
        raise FtcoreError(f"{self.name!r} is a chat backend, not a command", hint=f"use ftcore chat MODEL --{name} {metavar} (or ftcore serve MODEL --{name} {metavar})")


def _names(param: click.Parameter) -> list[str]:
    return [*param.opts, *param.secondary_opts, *([param.name] if param.name else [])]


def add_chat_backend(cli: click.Group, backend: ChatBackend) -> None:
    """Give ``ftcore chat`` and ``ftcore serve`` of ``cli`` the option ``--NAME`` (and the
    backend's own): with it, ``backend`` loads what to chat with. Call it from ``register_commands``;
    a name or option already taken raises (and the calling plugin is skipped)."""
    if not isinstance(backend, ChatBackend):
        raise FtcoreError(f"add_chat_backend takes a ChatBackend instance, got {backend!r:.80}")
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", backend.name or ""):
        raise FtcoreError(f"a chat backend's name becomes its option --NAME: lower-case letters, digits and dashes, got {backend.name!r}")
    entry = BackendEntry(backend)
    if entry.name in cli.commands:
        raise FtcoreError(f"a chat backend called {backend.name!r} is already registered (--{backend.name} in `ftcore chat --help`)")
    taken: dict[str, str] = {"-h": "the help option", "--help": "the help option"}
    for command in ("chat", "serve"):
        for param in getattr(cli.commands.get(command), "params", []):
            taken.update((n, f"ftcore {command}") for n in _names(param) if n not in taken)
    for other in backend_entries(cli):
        taken.update((n, f"chat backend {other.backend.name!r}") for p in other.params for n in _names(p))
    clashes = []
    for param in entry.params:
        flags = [n for n in [*param.opts, *param.secondary_opts] if n in taken]
        if flags or param.name in taken:
            name = flags[0] if flags else f"an option named {param.name!r}"
            clashes.append(f"{name} (taken by {taken[flags[0] if flags else param.name]})")
    if clashes:
        raise FtcoreError(f"chat backend {backend.name!r} cannot add {', '.join(clashes)}")
    cli.add_command(entry)


def backend_entries(cli: Any) -> list[BackendEntry]:
    """The chat backends of command group ``cli``, in registration order."""
    return [c for c in getattr(cli, "commands", {}).values() if isinstance(c, BackendEntry)]


class ModelCommand(click.Command):
    """``chat`` and ``serve``: their own options, then those of every chat backend of the group."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        extra = [p for entry in backend_entries(ctx.find_root().command) for p in entry.params]
        return params[: len(self.params)] + extra + params[len(self.params):]  # help stays last


def chosen_backend(ctx: click.Context, app: Any, values: dict[str, Any]) -> BackendEntry | None:
    """The backend whose ``--NAME`` the user gave (None: the core loads MODEL); refuses two
    backends at once, a backend's option without its ``--NAME``, and a backend whose plugin failed."""
    entries = backend_entries(ctx.find_root().command)
    chosen = [e for e in entries if values.get(e.flag.name) is not None]
    if len(chosen) > 1:
        raise FtcoreError(f"{' and '.join(f'--{e.backend.name}' for e in chosen)} cannot be used together")
    for entry in entries:
        given = [p for p in entry.own_params if ctx.get_parameter_source(p.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
        if given and entry not in chosen:
            raise FtcoreError(f"{given[0].opts[0]} goes with --{entry.backend.name} {entry.backend.metavar}")
    if not chosen:
        return None
    app.parts  # registering parts may find the backend's plugin broken
    owner = app.pm.command_owner(chosen[0].name)
    if owner is not None and owner.error:
        raise FtcoreError(f"--{chosen[0].backend.name} comes from plugin {owner.label}, which failed: {owner.error} ({owner.remedy})")
    return chosen[0]


def backend_options(entry: BackendEntry, values: dict[str, Any]) -> dict[str, Any]:
    """The values of ``entry``'s own options, by parameter name."""
    return {p.name: values.get(p.name) for p in entry.own_params if p.name}
