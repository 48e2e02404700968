"""The ZeRO plugin: DeepSpeed ZeRO stage 1/2/3 strategies, with optional CPU offload."""

from __future__ import annotations

from ftcore.api import hookimpl

STRATEGIES = {
    "zero1": "ZeRO-1: optimizer states sharded across processes",
    "zero2": "ZeRO-2: optimizer states and gradients sharded",
    "zero3": "ZeRO-3: optimizer states, gradients and parameters sharded",
    "zero2_offload": "ZeRO-2 with optimizer states offloaded to CPU memory",
    "zero3_offload": "ZeRO-3 with parameters and optimizer states offloaded to CPU memory",
}


@hookimpl
def register_strategies(register) -> None:
    for name, description in STRATEGIES.items():
        register(name, f"ftcore_zero.strategy:{name.upper()}", f"DeepSpeed {description}")
