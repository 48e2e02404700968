"""Records that know where they came from: ``RecordList`` and ``where_of`` (``"train.jsonl:12"``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .files import BY_NAME


class RecordList(list):
    """A list of record dicts; ``where(i)`` says which file and line record ``i`` came from.

    Slicing returns a plain list; use ``subset(indices)`` to keep the locations.
    """

    def __init__(
        self,
        records: Iterable[dict[str, Any]] = (),
        origins: Iterable[tuple[int, int, int]] = (),
        files: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(records)
        #: ``(path, kind)`` for every file read; ``kind`` names a ``files.FileType``.
        self.files: list[tuple[str, str]] = list(files)
        #: per record: ``(file index, line or row, list index for .json files)``.
        self.origins: list[tuple[int, int, int]] = list(origins)

    def where(self, i: int) -> str:
        """``file:line`` (text files), ``file:line (item [k])`` (.json) or ``file:row N`` (tables)."""
        if i >= len(self.origins):
            return f"record {i + 1}"
        f, pos, item = self.origins[i]
        path, kind = self.files[f]
        return BY_NAME[kind].where(path, pos, item)

    def subset(self, indices: Iterable[int]) -> "RecordList":
        """The records at ``indices`` (in that order), keeping their locations."""
        indices = list(indices)
        origins = [self.origins[i] for i in indices] if self.origins else []
        return RecordList((self[i] for i in indices), origins, self.files)


def where_of(records: Sequence[Any], i: int) -> str:
    """Where record ``i`` came from, for any sequence (plain lists say ``record N``)."""
    if isinstance(records, RecordList):
        return records.where(i)
    return f"record {i + 1}"
