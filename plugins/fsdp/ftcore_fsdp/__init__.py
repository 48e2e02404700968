"""The FSDP plugin: the ``fsdp`` strategy (PyTorch FSDP2, ``fully_shard`` per decoder layer)."""

from __future__ import annotations

from ftcore.api import hookimpl


@hookimpl
def register_strategies(register) -> None:
    register("fsdp", "ftcore_fsdp.strategy:FSDP", "PyTorch FSDP2: parameters, gradients and optimizer state sharded per decoder layer (LoRA, QLoRA, full)")
