"""The strategy protocol (how a run uses devices and processes) and the ``single`` strategy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol


class Strategy(Protocol):
    """How a training run is spread over devices.

    The loop calls, in order: ``setup()``, ``prepare(model, optimizer, scheduler)``, then
    per micro batch ``backward(loss)`` and per optimizer step ``step()``; checkpoints use
    ``save_state(dir)``/``load_state(dir)`` for engine state and ``unwrap(model)`` for the
    model to save. ``rank``/``world_size``/``is_main`` describe this process.
    """

    rank: int
    world_size: int
    device: Any

    @property
    def is_main(self) -> bool: ...

    def setup(self) -> None: ...

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]: ...

    def backward(self, loss: Any) -> None: ...

    def step(self) -> float: ...

    def all_reduce_sum(self, value: float) -> float: ...

    def barrier(self) -> None: ...

    def unwrap(self, model: Any) -> Any: ...

    def save_state(self, folder: Path) -> None: ...

    def load_state(self, folder: Path) -> None: ...

    def teardown(self) -> None: ...


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


class SingleStrategy:
    """One process on one CUDA device or the CPU, with optional fp16 loss scaling."""

    name = "single"

    def __init__(self, recipe: Any, precision: str) -> None:
        self.recipe = recipe
        self.precision = precision
        self.rank = 0
        self.world_size = 1
        self.device = resolve_device(recipe["train"]["device"])
        self.max_grad_norm = float(recipe["train"]["max_grad_norm"] or 0.0)
        self.model = self.optimizer = self.scheduler = self.scaler = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self) -> None:
        pass

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        import torch

        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)
        return model, optimizer, scheduler

    def backward(self, loss: Any) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def clip_and_step(self) -> float:
        """Unscale, clip, step; returns the gradient norm before clipping."""
        import torch

        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def step(self) -> float:
        return self.clip_and_step()

    def all_reduce_sum(self, value: float) -> float:
        return value

    def barrier(self) -> None:
        pass

    def unwrap(self, model: Any) -> Any:
        return model

    def save_state(self, folder: Path) -> None:
        import torch

        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        torch.save(state, folder / "optimizer.pt")

    def load_state(self, folder: Path) -> None:
        import torch

        state = torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def teardown(self) -> None:
        pass
