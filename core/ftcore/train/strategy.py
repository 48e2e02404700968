"""The strategy base class (how a run uses devices and processes) and the ``single`` and ``ddp`` strategies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class Strategy:
    """Base class of a registered strategy: how a training run is spread over devices.

    Constructed as ``Strategy(recipe, precision, **options)``: a strategy's options (the
    ``strategy.*`` keys it takes) are its constructor's typed keyword arguments after
    ``precision``, with real defaults (see :mod:`ftcore.options`). The loop calls, in order: ``setup()``,
    ``prepare(model, optimizer, scheduler)``, then per micro batch ``backward(loss, last)``
    and per optimizer step ``step()``; checkpoints use ``save_state(dir)``/``load_state(dir)``
    for engine state and ``unwrap(model)`` for the model to save. ``rank``/``world_size``/
    ``is_main`` describe this process. ``prepare``, ``backward``, ``step`` and the state
    methods are required; the rest default to one process. A strategy that places the model
    itself (sharding it) says where the base loads first (``load_device``) and what ``prepare``
    will change on each device (``memory_change``, for ``speed: auto``).
    """

    name = ""
    #: whether ``load_state`` also restores the model's trained weights (sharded engines do)
    restores_model = False
    #: a 4-bit base packs its weights into the compute dtype (``bnb_4bit_quant_storage``), so a strategy
    #: that shards parameters (FSDP) sees one dtype per layer
    quant_storage_in_compute_dtype = False

    def __init__(self, recipe: Any, precision: str) -> None:
        self.recipe, self.precision = recipe, precision
        self.rank, self.world_size = 0, 1
        self.device = resolve_device(recipe["train"]["device"])

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """The first process on this machine (each machine processes the data into its own cache)."""
        return int(os.environ.get("LOCAL_RANK", self.rank)) == 0

    def setup(self) -> None:
        """Join the process group, if any (before the model is loaded)."""

    @property
    def load_device(self) -> Any:
        """Where the base model loads before :meth:`prepare`: this process's device (a sharding
        strategy may load it in CPU memory and move only this process's shard)."""
        return self.device

    def memory_change(self, model: Any) -> int:
        """Bytes :meth:`prepare` will add to this process's device for ``model`` as loaded (negative:
        it frees them, e.g. by sharding); ``speed: auto`` chooses before ``prepare`` runs."""
        return 0

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        raise NotImplementedError

    def backward(self, loss: Any, last: bool = True) -> None:
        """Backward of one micro batch; ``last`` marks the final one before ``step()``."""
        raise NotImplementedError

    def step(self) -> float:
        """Clip, step the optimizer and the schedule, zero the gradients; the gradient norm."""
        raise NotImplementedError

    def all_reduce_sum(self, value: float) -> float:
        return value

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (a picklable value)."""
        return [obj]

    def barrier(self) -> None:
        pass

    def unwrap(self, model: Any) -> Any:
        return model

    def gathered(self, model: Any) -> Any:
        """A context in which every parameter of ``model`` is whole (for saving)."""
        import contextlib

        return contextlib.nullcontext()

    def save_state(self, folder: Path) -> None:
        raise NotImplementedError

    def load_state(self, folder: Path) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        pass


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


class SingleStrategy(Strategy):
    """One process on one CUDA device or the CPU, with optional fp16 loss scaling."""

    name = "single"

    def __init__(self, recipe: Any, precision: str) -> None:
        super().__init__(recipe, precision)
        self.max_grad_norm = float(recipe["train"]["max_grad_norm"] or 0.0)
        self.model = self.optimizer = self.scheduler = self.scaler = None

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        import torch

        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)
        return model, optimizer, scheduler

    def backward(self, loss: Any, last: bool = True) -> None:
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


def _init_process_group(device: Any) -> None:
    """Join the process group torchrun describes (or a group of one when run directly)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


class DDPStrategy(SingleStrategy):
    """torch DistributedDataParallel: one process per device (NCCL on GPUs, gloo on CPU)."""

    name = "ddp"

    def setup(self) -> None:
        import torch.distributed as dist

        _init_process_group(self.device)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
        super().prepare(wrapped, optimizer, scheduler)
        return wrapped, optimizer, scheduler

    def backward(self, loss: Any, last: bool = True) -> None:
        import contextlib

        with contextlib.nullcontext() if last else self.model.no_sync():
            super().backward(loss)

    def all_reduce_sum(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def unwrap(self, model: Any) -> Any:
        return getattr(model, "module", model)

    def save_state(self, folder: Path) -> None:
        if self.is_main:  # optimizer state is the same on every rank
            super().save_state(folder)

    def teardown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
