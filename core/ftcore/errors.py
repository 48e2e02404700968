"""User-facing error types: what went wrong, where, and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass, field


class FtcoreError(Exception):
    """An error caused by user input; the CLI prints it without a traceback.

    ``where`` is a location (file:line, a recipe key path, a record id) and ``hint``
    says what to do about it.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


@dataclass
class Problem:
    """One validation problem: a key path, a message and an optional location/hint."""

    path: str
    message: str
    location: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        text = f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


@dataclass
class ValidationError(FtcoreError):
    """Several problems found at once (e.g. in a recipe); all of them are reported."""

    problems: list[Problem] = field(default_factory=list)
    source: str = "recipe"

    def __post_init__(self) -> None:
        FtcoreError.__init__(self, self._render())

    def _render(self) -> str:
        n = len(self.problems)
        lines = [f"{self.source} has {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)
