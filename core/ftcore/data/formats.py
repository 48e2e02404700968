"""The dataset-format base class (a named map between a raw record and a sample) and helpers for writing one."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import FtcoreError

#: A message as every format produces it: role is system, user or assistant;
#: ``loss`` (assistant turns only, default True) says whether the turn is trained.
Message = dict[str, Any]
#: A record (one raw item of a data file) or a sample (``{"messages": [...]}`` or ``{"text": ...}``).
Record = dict[str, Any]


class RecordError(FtcoreError):
    """A record that does not fit its format; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DatasetFormat:
    """A dataset format: register an instance with ``register_dataset_formats``.

    Build one from plain functions, ``DatasetFormat(name, convert, detect=None,
    description="", export=None)``, or subclass it, set the class attributes ``name``
    and ``description`` and override the methods (then register ``MyFormat()``):

    - ``convert(record)`` (required) returns ``{"messages": [...]}`` (chat data) or
      ``{"text": str}`` (pre-training data), or ``None`` to drop the record on purpose
      (e.g. alpaca's ``<nooutput>``); it raises ``RecordError`` for a malformed record.
      Extra keys in the returned dict (e.g. ``image``) travel with the sample.
    - ``detect(record) -> bool`` says whether a record looks like this format; used when
      a recipe names no format. The default is False: the format is never auto-detected
      (``can_detect`` is then False).
    - ``export(sample) -> dict`` is the inverse of ``convert``: a sample back to this
      format's record, for ``ftcore data convert --to NAME``. Raise ``RecordError`` for a
      sample the format cannot hold. The default raises: ``can_export`` is True only when
      a subclass overrides ``export`` or an ``export`` function was given.
    """

    #: The name recipes (``data.format``) and ``--from``/``--to`` use.
    name: str = ""
    #: One line for ``ftcore list formats``.
    description: str = ""
    _convert: Callable[[Record], Record | None] | None = None
    _detect: Callable[[Record], bool] | None = None
    _export: Callable[[Record], Record] | None = None

    def __init__(
        self,
        name: str | None = None,
        convert: Callable[[Record], Record | None] | None = None,
        detect: Callable[[Record], bool] | None = None,
        description: str | None = None,
        export: Callable[[Record], Record] | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        if description is not None:
            self.description = description
        self._convert, self._detect, self._export = convert, detect, export
        if convert is None and type(self).convert is DatasetFormat.convert:
            raise TypeError(f"dataset format {self.name!r} needs a convert function (or a subclass that overrides convert)")

    def convert(self, record: Record) -> Record | None:
        """The sample for ``record`` (``{"messages": [...]}`` or ``{"text": ...}``), or None to drop it."""
        if self._convert is None:
            raise NotImplementedError(f"dataset format {self.name!r} has no convert")
        return self._convert(record)

    def detect(self, record: Record) -> bool:
        """Whether ``record`` looks like this format; False (never auto-detected) by default."""
        return bool(self._detect(record)) if self._detect is not None else False

    def export(self, sample: Record) -> Record:
        """This format's record for ``sample``; by default the format cannot be written."""
        if self._export is None:
            raise RecordError(f"format {self.name!r} cannot write records (it has no export)")
        return self._export(sample)

    @property
    def can_detect(self) -> bool:
        """True when ``detect`` can say yes: a subclass overrides it or a detect function was given."""
        return self._detect is not None or type(self).detect is not DatasetFormat.detect

    @property
    def can_export(self) -> bool:
        """True when ``export`` works: a subclass overrides it or an export function was given."""
        return self._export is not None or type(self).export is not DatasetFormat.export

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def require(record: Record, field: str, types: type | tuple[type, ...] = str) -> Any:
    """``record[field]``, raising a ``RecordError`` naming the field if absent or mistyped."""
    if field not in record or record[field] is None:
        raise RecordError(f"missing field {field!r}", field)
    value = record[field]
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise RecordError(f"field {field!r} must be {names}, got {type(value).__name__}", field)
    return value


# -- helpers for export: a sample's parts, checked for what a target can hold --------------


def sample_extras(sample: Record) -> Record:
    """The keys of ``sample`` besides ``messages``/``text`` (``id``, ``image``, ...), to write back unchanged."""
    return {k: v for k, v in sample.items() if k not in ("messages", "text")}


def sample_messages(sample: Record, target: str) -> list[Message]:
    """``sample["messages"]``; a text-only (pretrain) sample raises a ``RecordError`` naming ``target``."""
    if "messages" not in sample:
        raise RecordError(f"a text-only (pretrain) record has no conversation to write as {target}", "text")
    return sample["messages"]


def sample_turns(sample: Record, target: str) -> list[tuple[str, str, str]]:
    """``(system, user, assistant)`` turns of a conversation that alternates user/assistant.

    System messages before a user message join that turn's system text (``""`` when none).
    A conversation ``target`` cannot hold (two user messages in a row, a reply with no
    question, a system message inside a turn, an unanswered last message) raises a
    ``RecordError`` for the ``messages`` field.
    """
    turns: list[tuple[str, str, str]] = []
    system: list[str] = []
    user: str | None = None

    def fail(message: str) -> None:
        raise RecordError(message, "messages")

    for i, m in enumerate(sample_messages(sample, target)):
        role, content = m["role"], m["content"]
        if role not in ("system", "user", "assistant") or m.get("tool_calls"):
            fail(f"message {i} is a tool call or result; {target} cannot hold tool calls (openai can)")
        if role == "system":
            if user is not None:
                fail(f"message {i} is a system message between a user message and its reply; {target} cannot hold that")
            system.append(content)
        elif role == "user":
            if user is not None:
                fail(f"messages {i - 1} and {i} are two user messages in a row; {target} needs user/assistant turns")
            user = content
        else:
            if user is None:
                fail(f"message {i} is an assistant message with no user message before it; {target} needs user/assistant turns")
            turns.append(("\n".join(system), user, content))
            system, user = [], None
    if user is not None or system:
        fail(f"the conversation does not end with an assistant message; {target} needs complete turns")
    return turns
