"""Sending tensors from CPU memory to the training device without waiting for the device."""

from __future__ import annotations

from typing import Any


def send_to_device(tensor: Any, device: Any) -> Any:
    """``tensor`` on ``device``. From CPU memory to a GPU it goes through pinned memory, so the copy
    is queued behind the GPU's work instead of waiting for it (a copy from pageable memory waits)."""
    pin = device.type == "cuda" and tensor.device.type == "cpu"
    return (tensor.pin_memory() if pin else tensor).to(device, non_blocking=pin)
