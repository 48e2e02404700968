"""Map functions from each supported raw record layout to ftcore messages."""

from __future__ import annotations

from ftcore.data.formats import DatasetFormat, require


def _openai(record: dict) -> dict:
    return {"messages": require(record, "messages", list)}


FORMATS = [
    DatasetFormat("openai", _openai, lambda r: "messages" in r, "{messages: [{role, content, loss?}]} (system/user/assistant)"),
]
