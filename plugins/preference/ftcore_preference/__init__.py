"""The preference plugin: pair dataset formats (and the DPO, IPO, ORPO, SimPO and reward losses in ``losses``)."""

from __future__ import annotations

from ftcore.api import hookimpl


@hookimpl
def register_dataset_formats(register) -> None:
    from .formats import FORMATS

    for fmt in FORMATS:
        register(fmt)
