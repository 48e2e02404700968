"""Optimizers and learning-rate schedules: the core's registered ones (torch AdamW, bitsandbytes
8-bit/paged; cosine, linear, constant) and building them for a run.

An optimizer part is a callable ``build(params, train_cfg) -> torch.optim.Optimizer`` over the
trainable parameters (``train.lr``, ``train.weight_decay``, ``train.betas`` are the recipe's).
A schedule part is a decay function ``decay(progress) -> float``: the share of the way from the
peak learning rate down to ``train.min_lr_ratio`` still left at ``progress`` (0 when warmup ends,
1 at the last step), so 1.0 at the start; the core adds the linear warmup, the minimum and the
continuation of a resumed run whose length changed.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..errors import FtcoreError

Decay = Callable[[float], float]


def adam_kwargs(train_cfg: dict[str, Any]) -> dict[str, Any]:
    """The recipe's learning rate, weight decay and betas as Adam-style keyword arguments."""
    return {"lr": train_cfg["lr"], "weight_decay": train_cfg["weight_decay"], "betas": tuple(train_cfg["betas"])}


def adamw(params: list[Any], train_cfg: dict[str, Any]) -> Any:
    """torch AdamW (fused kernel when every parameter is on a GPU)."""
    import torch

    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **adam_kwargs(train_cfg))


def _without_sync(cls: type) -> type:
    """``cls`` (a bitsandbytes optimizer) whose step does not wait for the device after every
    parameter. bitsandbytes synchronizes after each update, which only paged state needs (its
    prefetches are asynchronous); otherwise every kernel runs on the current stream in order, and
    the waits only stall the host: on an H200 they cost a quarter of a 1.8B LoRA step (RESULTS.md,
    session 7). Paged optimizers keep bitsandbytes' own step."""
    import torch

    class NoSync(cls):  # type: ignore[misc, valid-type]
        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            if self.is_paged:
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self.initialized:
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            for gindex, group in enumerate(self.param_groups):
                for pindex, p in enumerate(group["params"]):
                    if p.grad is None:
                        continue
                    if len(self.state[p]) == 0:
                        self.init_state(group, p, gindex, pindex)
                    self.update_step(group, p, gindex, pindex)
            return loss

    NoSync.__name__ = NoSync.__qualname__ = cls.__name__
    return NoSync


def _bitsandbytes(name: str, cls: str, doc: str) -> Callable[[list[Any], dict[str, Any]], Any]:
    def build(params: list[Any], train_cfg: dict[str, Any]) -> Any:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise FtcoreError(f"train.optimizer={name} needs bitsandbytes", hint="pip install 'ftcore[quant]'") from None
        return _without_sync(getattr(bnb.optim, cls))(params, **adam_kwargs(train_cfg))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


adamw_8bit = _bitsandbytes("adamw_8bit", "AdamW8bit", "bitsandbytes 8-bit AdamW (optimizer state in 8 bits)")
paged_adamw_8bit = _bitsandbytes("paged_adamw_8bit", "PagedAdamW8bit", "bitsandbytes 8-bit AdamW with paged state (spills to CPU memory under pressure)")
paged_adamw_32bit = _bitsandbytes("paged_adamw_32bit", "PagedAdamW32bit", "bitsandbytes 32-bit AdamW with paged state")


def cosine(progress: float) -> float:
    """half a cosine from the peak down to the minimum"""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def linear(progress: float) -> float:
    """a straight line from the peak down to the minimum"""
    return 1.0 - progress


def constant(progress: float) -> float:
    """the peak learning rate throughout (after warmup)"""
    return 1.0


#: The optimizers and schedules the core registers: name -> callable (its docstring is the description).
OPTIMIZERS: dict[str, Callable[[list[Any], dict[str, Any]], Any]] = {
    "adamw": adamw, "adamw_8bit": adamw_8bit, "paged_adamw_8bit": paged_adamw_8bit, "paged_adamw_32bit": paged_adamw_32bit,
}
SCHEDULES: dict[str, Decay] = {"cosine": cosine, "linear": linear, "constant": constant}


def _builtin(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise FtcoreError(f"{name!r} is not one of the core's {what} ({', '.join(table)})", hint=f"pass the registered {what[:-1]}")
    return table[name]


def build_optimizer(params: list[Any], train_cfg: dict[str, Any], build: Callable[..., Any] | None = None) -> Any:
    """The optimizer over the trainable parameters: ``build`` (the registered ``train.optimizer``),
    or the core's optimizer of that name for a model trained outside a run."""
    build = build or _builtin(OPTIMIZERS, train_cfg["optimizer"], "optimizers")
    return build(params, train_cfg)


def lr_factor(step: int, total: int, warmup: int, decay: Decay, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (linear warmup, then ``decay`` down to ``min_ratio``)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * decay(progress)


def build_scheduler(optimizer: Any, train_cfg: dict[str, Any], total: int, resumed: tuple[int, int] | None = None, decay: Decay | None = None) -> Any:
    """Warmup, then the schedule ``decay`` (the registered ``train.schedule``; the core's of that
    name when not given), over ``total`` steps.

    ``resumed=(step, old_total)``: a run resumed from a checkpoint made mid-way through a schedule
    of another length goes on from the learning rate it had reached to the end of the schedule over
    the remaining steps (no jump); a run that had finished its schedule and is extended follows the
    schedule planned for the new length.
    """
    import torch

    decay = decay or _builtin(SCHEDULES, train_cfg["schedule"], "schedules")
    warmup = int(round(train_cfg["warmup_ratio"] * total))
    min_ratio = train_cfg["min_lr_ratio"]
    if resumed is None or resumed[1] == total or resumed[0] >= resumed[1]:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, decay, min_ratio))
    step, old_total = resumed
    old_warmup = int(round(train_cfg["warmup_ratio"] * old_total))
    reached = lr_factor(step, old_total, old_warmup, decay, min_ratio)

    def factor(s: int) -> float:
        if s < step:
            return lr_factor(s, old_total, old_warmup, decay, min_ratio)
        # from the rate reached down to the minimum over the remaining steps
        return min_ratio + (reached - min_ratio) * decay(min(1.0, (s - step) / max(1, total - step)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sync_learning_rate(scheduler: Any) -> None:
    """Set the optimizer's learning rates to what ``scheduler`` gives at its current step (after
    loading a checkpoint made under another schedule, the loaded rates are the old schedule's)."""
    if isinstance(getattr(scheduler, "lr_lambdas", None), list):
        lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(scheduler.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs
