"""Optimizers (torch AdamW, bitsandbytes 8-bit/paged) and warmup + cosine/linear/constant schedules."""

from __future__ import annotations

import math
from typing import Any

from ..errors import FtcoreError


def build_optimizer(params: list[Any], train_cfg: dict[str, Any]) -> Any:
    """The optimizer named by ``train.optimizer`` over the trainable parameters."""
    import torch

    kind = train_cfg["optimizer"]
    kwargs = {"lr": train_cfg["lr"], "weight_decay": train_cfg["weight_decay"], "betas": tuple(train_cfg["betas"])}
    if kind == "adamw":
        fused = all(p.is_cuda for p in params)
        return torch.optim.AdamW(params, fused=fused or None, **kwargs)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise FtcoreError(f"train.optimizer={kind} needs bitsandbytes", hint="pip install 'ftcore[quant]'") from None
    classes = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit, "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}
    return classes[kind](params, **kwargs)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (linear warmup, then the schedule)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: Any, train_cfg: dict[str, Any], total: int, resumed: tuple[int, int] | None = None) -> Any:
    """Warmup, then the schedule, over ``total`` steps.

    ``resumed=(step, old_total)``: a run resumed from a checkpoint made mid-way through a schedule
    of another length goes on from the learning rate it had reached to the end of the schedule over
    the remaining steps (no jump); a run that had finished its schedule and is extended follows the
    schedule planned for the new length.
    """
    import torch

    warmup = int(round(train_cfg["warmup_ratio"] * total))
    schedule, min_ratio = train_cfg["schedule"], train_cfg["min_lr_ratio"]
    if resumed is None or resumed[1] == total or resumed[0] >= resumed[1]:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, schedule, min_ratio))
    step, old_total = resumed
    old_warmup = int(round(train_cfg["warmup_ratio"] * old_total))
    reached = lr_factor(step, old_total, old_warmup, schedule, min_ratio)

    def factor(s: int) -> float:
        if s < step:
            return lr_factor(s, old_total, old_warmup, schedule, min_ratio)
        rest = lr_factor(s - step, total - step, 0, schedule, min_ratio)  # 1 -> min_ratio over the remaining steps
        return min_ratio + (reached - min_ratio) * (rest - min_ratio) / (1.0 - min_ratio) if min_ratio < 1 else reached

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sync_learning_rate(scheduler: Any) -> None:
    """Set the optimizer's learning rates to what ``scheduler`` gives at its current step (after
    loading a checkpoint made under another schedule, the loaded rates are the old schedule's)."""
    if isinstance(getattr(scheduler, "lr_lambdas", None), list):
        lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(scheduler.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs
