"""The dataset-format protocol: a named map from a raw record to messages or text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import FtcoreError

#: A message as every format produces it: role is system, user or assistant;
#: ``loss`` (assistant turns only, default True) says whether the turn is trained.
Message = dict[str, Any]


class RecordError(FtcoreError):
    """A record that does not fit its format; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class DatasetFormat:
    """A registered dataset format.

    ``convert(record)`` returns ``{"messages": [...]}`` (chat data) or ``{"text": str}``
    (pre-training data), or ``None`` to drop the record on purpose (e.g. alpaca's
    ``<nooutput>``); it raises ``RecordError`` for a malformed record. Extra keys in the
    returned dict (e.g. ``image``) travel with the sample. ``detect(record)`` says whether
    a record looks like this format (used when a recipe names no format).
    """

    name: str
    convert: Callable[[dict[str, Any]], dict[str, Any] | None]
    detect: Callable[[dict[str, Any]], bool] | None = None
    description: str = ""


def require(record: dict[str, Any], field: str, types: type | tuple[type, ...] = str) -> Any:
    """``record[field]``, raising a ``RecordError`` naming the field if absent or mistyped."""
    if field not in record or record[field] is None:
        raise RecordError(f"missing field {field!r}", field)
    value = record[field]
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise RecordError(f"field {field!r} must be {names}, got {type(value).__name__}", field)
    return value
