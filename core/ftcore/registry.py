"""One generic registry of named parts (name -> object, owning plugin, description)."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

from .errors import FtcoreError

T = TypeVar("T")


@dataclass
class Part(Generic[T]):
    """A registered part. ``target`` may be a lazy ``"module:attr"`` string.

    Its recipe ``options`` are read from its signature when first asked for (see
    :mod:`ftcore.options`), so registering and listing parts imports nothing.
    """

    name: str
    target: Any
    owner: str
    description: str = ""
    #: the registry kind (e.g. "hooks"): which signature holds the options
    kind: str = ""
    _options: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def options(self) -> dict[str, Any]:
        """Option name -> ``ftcore.recipe.Field``, derived from the part's signature (loads the part)."""
        if self._options is None:
            from .options import part_options

            self._options = part_options(self.kind, self.load(), f"{self.name!r} (plugin {self.owner})")
        return self._options

    def build(self, *leading: Any, **options: Any) -> Any:
        """The part made for a run: its class (or, for a builder, ``configure``) called with the
        core's leading arguments and the recipe's checked options, bound to its signature."""
        from .options import SIGNATURES, construct

        target = self.load()
        fn = SIGNATURES[self.kind][0](target) if self.kind in SIGNATURES else target
        return construct(fn, *leading, where=f"{self.name!r} (plugin {self.owner})", **options)

    def load(self) -> T:
        """The registered object, importing it first if it was registered lazily."""
        if isinstance(self.target, str) and ":" in self.target:
            module, _, attr = self.target.partition(":")
            try:
                obj: Any = importlib.import_module(module)
                for piece in attr.split("."):
                    obj = getattr(obj, piece)
            except (ImportError, AttributeError) as exc:
                raise FtcoreError(
                    f"{self.name!r} (from plugin {self.owner}) points at {self.target!r}, which cannot be loaded: {exc}",
                    hint="reinstall the plugin or check that its optional dependencies are installed",
                ) from exc
            self.target = obj
        return self.target


class Registry(Generic[T]):
    """Parts of one kind (e.g. "formats"), keyed by unique name."""

    def __init__(self, kind: str, label: str | None = None) -> None:
        self.kind = kind
        self.label = label or kind
        self._parts: dict[str, Part[T]] = {}
        #: name -> why it is absent: a part a broken plugin tried to register.
        self.missing: dict[str, str] = {}
        #: broken plugins that might have provided any unknown name of this kind.
        self.failed: list[str] = []

    def problem(self, part: Part[T]) -> str | None:
        """Why ``part`` cannot be added (no name, or a name already taken), or None."""
        if not part.name or not isinstance(part.name, str):
            return f"plugin {part.owner} registered a {self.label} without a name"
        existing = self._parts.get(part.name)
        if existing is not None:
            return f"{self.label} {part.name!r} is registered twice: by plugin {existing.owner} and by plugin {part.owner}"
        return None

    def add(self, part: Part[T]) -> None:
        """Add a part; a second part with the same name is an error naming both owners."""
        problem = self.problem(part)
        if problem:
            raise FtcoreError(problem, hint="rename one of them, or disable a plugin with FTCORE_DISABLE_PLUGINS=<name>")
        self._parts[part.name] = part

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[Part[T]]:
        return iter(sorted(self._parts.values(), key=lambda p: p.name))

    def __len__(self) -> int:
        return len(self._parts)

    def names(self) -> list[str]:
        return sorted(self._parts)

    def part(self, name: str) -> Part[T]:
        """The part called ``name``; an unknown name lists close matches and every choice."""
        try:
            return self._parts[name]
        except KeyError:
            raise FtcoreError(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        """The loaded object registered as ``name``."""
        return self.part(name).load()

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=3)
        msg = f"no {self.label} called {name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        msg += f" (registered: {', '.join(self.names()) or 'none'}; see `ftcore list {self.kind}`)"
        if name in self.missing:
            msg += f" ({self.missing[name]})"
        elif self.failed:
            msg += f" ({'; '.join(self.failed)})"
        return msg
