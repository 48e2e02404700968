"""The formats plugin: openai, alpaca, medical, conversation, sharegpt, oasst1 and pretrain dataset formats."""

from __future__ import annotations

from ftcore.api import hookimpl


@hookimpl
def register_dataset_formats(register) -> None:
    from .formats import FORMATS

    for fmt in FORMATS:
        register(fmt)
