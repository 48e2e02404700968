"""Chat/prompt templates as data: the PromptTemplate record and its YAML loader."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import string

import yaml

from ..errors import FtcoreError

BOS_POLICIES = ("first", "every_turn", "none")
#: The placeholders each string field may use (anything else would fail at format time).
PLACEHOLDERS = {"system": {"system"}, "instruction": {"input", "round"}}


def _placeholders(text: str) -> set[str]:
    """The ``{name}`` fields of a str.format string (raises ValueError on bad braces)."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


@dataclass(frozen=True)
class PromptTemplate:
    """How a conversation becomes text (XTuner-compatible fields).

    A turn renders as ``system.format(system=...)`` (first turn, when a system prompt is
    given) + ``instruction.format(input=user_text, round=n)`` (``n`` is the 1-based turn
    index, for XTuner's ``{round}``) + assistant text + ``suffix`` (+ EOS when
    ``suffix_as_eos`` is false), and ``sep`` follows every turn, so turns after the first
    are preceded by it (XTuner 0.1.x writes it after the last turn as well). Only the
    assistant text and ``suffix`` (plus that EOS) are trained. ``bos`` says where the
    tokenizer's BOS token goes: ``first`` (start of the sample), ``every_turn`` (before
    every turn: XTuner's behaviour when an EOS closes each answer) or ``none``.
    ``default_system`` is used when neither the sample nor the recipe gives a system prompt.
    """

    name: str
    description: str = ""
    system: str = ""
    instruction: str = "{input}"
    suffix: str = ""
    suffix_as_eos: bool = False
    sep: str = ""
    stop_words: tuple[str, ...] = ()
    bos: str = "first"
    default_system: str | None = None
    #: Render with a Jinja chat template instead of the fields above: ``jinja`` when given (a model
    #: family's own template, kept as data), else the tokenizer's own (the ``hf`` template).
    use_tokenizer_template: bool = False
    #: The model's public Jinja chat template equivalent to this one (written on merge).
    jinja: str | None = None

    def __post_init__(self) -> None:
        for key in ("description", "system", "instruction", "suffix", "sep"):
            if not isinstance(getattr(self, key), str):
                raise FtcoreError(f"template {self.name!r}: {key} must be a string, got {type(getattr(self, key)).__name__}")
        if self.bos not in BOS_POLICIES:
            raise FtcoreError(f"template {self.name!r}: bos must be one of {', '.join(BOS_POLICIES)}, got {self.bos!r}")
        if not self.use_tokenizer_template and "{input}" not in self.instruction:
            raise FtcoreError(f"template {self.name!r}: instruction must contain {{input}}")
        if self.system and "{system}" not in self.system:
            raise FtcoreError(f"template {self.name!r}: system must contain {{system}}")
        for key, allowed in PLACEHOLDERS.items():
            try:
                used = _placeholders(getattr(self, key))
            except ValueError as exc:
                raise FtcoreError(f"template {self.name!r}: {key} is not a valid format string ({exc})", hint="write a literal brace as {{ or }}") from None
            extra = sorted(used - allowed)
            if extra:
                names = ", ".join("{" + n + "}" for n in extra)
                raise FtcoreError(f"template {self.name!r}: {key} uses unknown placeholder {names}", hint=f"{key} may use {', '.join('{' + n + '}' for n in sorted(allowed))}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "<template>") -> "PromptTemplate":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FtcoreError(f"unknown template keys: {', '.join(unknown)}", where=where, hint=f"known keys: {', '.join(sorted(known))}")
        if "name" not in data:
            raise FtcoreError("a template needs a name", where=where)
        data = dict(data)
        if "stop_words" in data:
            data["stop_words"] = tuple(data["stop_words"] or ())
        try:
            return cls(**data)
        except FtcoreError as exc:
            if exc.where is None:
                exc.where = where
            raise

    @classmethod
    def from_file(cls, path: Path) -> "PromptTemplate":
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise FtcoreError(f"cannot read template: {exc}", where=str(path)) from None
        if not isinstance(data, dict):
            raise FtcoreError("a template file must be a YAML mapping", where=str(path))
        data.setdefault("name", path.stem)
        return cls.from_dict(data, where=str(path))
