"""The optimisation loop: token-weighted loss over accumulated micro batches, exact data order, signals."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import FtcoreError
from .context import RunContext


@dataclass
class Schedule:
    """Where every micro batch comes from, derived from the seed alone (so resume is exact).

    Micro batch ``g`` (global, counted from the start of training) belongs to epoch
    ``g // per_epoch``; within an epoch the rows follow a seeded permutation, and each rank
    takes its own ``micro_batch`` rows of every global micro batch.

    With ``lengths`` (unpacked rows, one sample each) the permutation is length-grouped:
    cut into mega-batches of ``GROUP`` global micro batches, each sorted by ``groups``
    (e.g. image or text) and then by length, longest first, so a micro batch holds samples
    of one kind and similar length and padding stays small.
    """

    num_rows: int
    micro_batch: int
    world_size: int
    rank: int
    seed: int
    shuffle: bool = True
    lengths: np.ndarray | None = None
    groups: np.ndarray | None = None

    GROUP = 50

    @property
    def per_epoch(self) -> int:
        """Micro batches per epoch (the last is topped up by wrapping around)."""
        return max(1, math.ceil(self.num_rows / (self.micro_batch * self.world_size)))

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            order = np.arange(self.num_rows)
        else:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        if self.lengths is None:
            return order
        size = self.GROUP * self.micro_batch * self.world_size
        groups = self.groups if self.groups is not None else np.zeros(self.num_rows, dtype=np.int64)
        chunks = []
        for start in range(0, self.num_rows, size):
            chunk = order[start : start + size]
            chunks.append(chunk[np.lexsort((-self.lengths[chunk], groups[chunk]))])
        return np.concatenate(chunks)

    def rows(self, g: int) -> list[int]:
        epoch, j = divmod(g, self.per_epoch)
        if getattr(self, "_cached_epoch", None) != epoch:  # one permutation per epoch, not per call
            self._cached_epoch, self._cached_order = epoch, self.epoch_order(epoch)
        order = self._cached_order
        width = self.micro_batch * self.world_size
        idx = (np.arange(j * width, (j + 1) * width) % self.num_rows)[self.rank * self.micro_batch : (self.rank + 1) * self.micro_batch]
        return order[idx].tolist()


def total_steps(train_cfg: dict[str, Any], schedule: Schedule) -> int:
    """``max_steps`` if set, else enough optimizer steps for ``epochs`` passes."""
    if train_cfg.get("max_steps"):
        return int(train_cfg["max_steps"])
    return max(1, math.ceil(train_cfg["epochs"] * schedule.per_epoch / train_cfg["grad_accum"]))


def to_device(batch: dict[str, Any], device: Any, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """A collated batch's tensors on ``device`` (:func:`send_to_device`), except the ``keep`` keys."""
    import torch

    from ..models.transfer import send_to_device

    return {k: send_to_device(v, device) if isinstance(v, torch.Tensor) and k not in keep else v for k, v in batch.items()}


class StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each optimizer step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequested":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs optimizer steps from ``ctx.step`` to ``ctx.total_steps`` with hooks and checkpoints."""

    def __init__(self, ctx: RunContext, plan: Any, objective: Any, optimizer: Any, scheduler: Any, schedule: Schedule,
                 collate: Callable[[list[int]], dict[str, Any]], hooks: list[Any], save: Callable[[], Any], precision: str) -> None:
        self.ctx, self.plan, self.objective, self.optimizer, self.scheduler = ctx, plan, objective, optimizer, scheduler
        self.schedule, self.collate, self.hooks, self.save = schedule, collate, hooks, save
        self.precision = precision
        train = ctx.recipe["train"]
        self.grad_accum = train["grad_accum"]
        self.save_every = train["save_every"]
        self.log_every = max(1, train["log_every"])
        self.eval_every, self.keep_best = train.get("eval_every", 0), train.get("keep_best")
        self.saved_at: int | None = None  # the step of the last checkpoint the loop wrote
        self.stop_signal: int | None = None  # the signal that stopped the run, if one did
        self.row_lengths = ctx.data.row_lengths()

    def _autocast(self) -> Any:
        import contextlib

        import torch

        device = self.ctx.strategy.device
        if self.precision in ("bf16", "fp16") and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return contextlib.nullcontext()

    def data_batches(self) -> Iterator[dict[str, Any]]:
        """Every row of the training data once, in micro batches on the device, with the model in
        eval mode, gradients off and the run's autocast on (for passes over the data that do not train)."""
        for batch, _ in self._batches(self.ctx.data, list(range(len(self.ctx.data)))):
            yield batch

    def _batches(self, data: Any, rows: list[int], count: int | None = None) -> Iterator[tuple[dict[str, Any], bool]]:
        """``(batch, real)``: ``rows`` of ``data`` in micro batches, as :meth:`data_batches` gives them;
        ``count`` adds repeated batches (``real`` false) so every process runs as many forwards."""
        import torch

        ctx = self.ctx
        model, size = ctx.model, ctx.recipe["train"]["micro_batch"]
        starts = range(0, len(rows), size)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i in range(max(len(starts), count or 0)):
                    chunk = rows[starts[i] : starts[i] + size] if i < len(starts) else rows[-size:]
                    batch = to_device(self.collate(chunk, data), ctx.strategy.device, keep=self.plan.cpu_inputs)
                    with self._autocast():
                        yield batch, i < len(starts)
        finally:
            model.train(was_training)

    def evaluate(self) -> dict[str, float]:
        """The objective's loss and metrics on the held-out data, weighted as in training and
        summed over every process (each takes its share of the rows): ``eval_loss``, ``eval_...``."""
        import torch

        ctx, strategy, objective = self.ctx, self.ctx.strategy, self.objective
        data = ctx.eval_data
        rank, groups = self.schedule.rank, self.schedule.world_size  # sequence-parallel processes share rows
        rows = list(range(rank, len(data), groups))
        per_rank = -(-len(data) // groups)
        size = ctx.recipe["train"]["micro_batch"]
        sums: dict[str, Any] = {}
        total = 0
        for batch, real in self._batches(data, rows or [0], -(-per_rank // size)):
            lsum, metrics = objective.loss(self.plan, self.plan.model, batch)  # no DDP wrapper: no gradient sync to do
            if not real or not rows:
                continue  # this process had fewer rows: it only took part in the forwards
            total += objective.weight(batch)
            for name, value in (("loss", lsum), *metrics.items()):
                sums[name] = sums.get(name, 0.0) + float(value.detach() if isinstance(value, torch.Tensor) else value)
        total = strategy.all_reduce_sum(float(total))
        return {f"eval_{name}": strategy.all_reduce_sum(value) / max(total, 1.0) for name, value in sorted(sums.items())}

    def train_step(self) -> dict[str, Any]:
        """One optimizer step: the objective's summed loss over the step's micro batches, divided
        by their total weight (trained tokens for SFT) across every process."""
        import torch

        ctx, strategy, objective = self.ctx, self.ctx.strategy, self.objective
        first = ctx.step * self.grad_accum
        rows = [self.schedule.rows(g) for g in range(first, first + self.grad_accum)]
        batches = [self.collate(r) for r in rows]
        total = strategy.all_reduce_sum(float(sum(objective.weight(b) for b in batches)))
        if total == 0:
            raise FtcoreError(f"step {ctx.step + 1} has no {objective.weight_name.replace('_', ' ')}", hint="check data.template and the format; `ftcore data show` shows which tokens are trained")
        # Gradient averaging across ranks divides by world_size; scale it back so the
        # result is the weighted mean over the whole global batch.
        scale = strategy.world_size / total
        sums: dict[str, Any] = {"loss": torch.zeros((), device=strategy.device)}
        for i, batch in enumerate(batches):
            batch = to_device(batch, strategy.device, keep=self.plan.cpu_inputs)
            with self._autocast():
                lsum, metrics = objective.loss(self.plan, ctx.model, batch)
            strategy.backward(lsum * scale, last=i == len(batches) - 1)
            for name, value in (("loss", lsum), *metrics.items()):  # read back once per step, not per micro batch
                sums[name] = sums.get(name, 0.0) + (value.detach().float() if isinstance(value, torch.Tensor) else value)
        out = {name: strategy.all_reduce_sum(float(value)) / total for name, value in sums.items()}
        if not math.isfinite(out["loss"]):
            return out
        out["grad_norm"] = strategy.step()
        shared = strategy.world_size // self.schedule.world_size  # processes that train the same rows (sequence parallel)
        real = strategy.all_reduce_sum(float(self.row_lengths[np.concatenate(rows)].sum()) / shared)  # non-padding tokens, all ranks
        return {**out, objective.weight_name: int(total), "real_tokens": int(real)}

    def guarded_step(self) -> dict[str, Any]:
        """:meth:`train_step`; a step that runs out of GPU memory is retried once after the plan's
        fallback (``speed: auto`` chose the levers), with what it changed in the log."""
        import torch

        try:
            return self.train_step()
        except torch.OutOfMemoryError:
            fallback, self.plan.fallback = self.plan.fallback, None
            if fallback is None:
                raise
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        self.ctx.print(f"[yellow]{fallback(self.plan.model)}[/yellow]")
        return self.train_step()

    def run(self) -> str:
        """Train to the end; returns ``done``, ``stopped`` (signal) or raises on NaN."""
        from .checkpoint import mark_best, prune, read_best

        ctx = self.ctx
        self.objective.before_train(ctx, self.plan, self.data_batches)
        best = (read_best(ctx.work_dir) or {}).get("eval_loss", math.inf)  # kept across a resume
        progress = _Progress(ctx, ("eval_loss", *self.objective.shown))
        with StopRequested() as stop, progress:
            timer = time.perf_counter()
            while ctx.step < ctx.total_steps:
                lr = self.scheduler.get_last_lr()[0]
                metrics = self.guarded_step()
                if not math.isfinite(metrics["loss"]):
                    good = self._last_good()
                    raise FtcoreError(
                        f"the loss became {metrics['loss']} at step {ctx.step + 1}; training stopped and the step was not applied",
                        hint="lower train.lr, check the data, or use train.precision=fp32/bf16; "
                        + (f"the last good checkpoint is {good}" if good else "no checkpoint was written"),
                    )
                ctx.step += 1
                now = time.perf_counter()
                elapsed, timer = now - timer, now
                real = metrics.pop("real_tokens")
                metrics.update(step=ctx.step, lr=lr, epoch=round(ctx.step * self.grad_accum / self.schedule.per_epoch, 4),
                               tokens_per_s=round(real / max(elapsed, 1e-9), 1), time=round(elapsed, 4))
                if ctx.strategy.device.type == "cuda":
                    import torch

                    metrics["max_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                evaluating = ctx.eval_data is not None and ((self.eval_every and ctx.step % self.eval_every == 0) or ctx.step == ctx.total_steps)
                if evaluating:
                    metrics.update(self.evaluate())
                ctx.metrics.append(metrics)
                for hook in self.hooks:
                    hook.after_step(ctx, metrics)
                progress.update(metrics)
                improved = evaluating and self.keep_best is not None and metrics[self.keep_best] < best
                if (self.save_every and ctx.step % self.save_every == 0 and ctx.step < ctx.total_steps) or stop.signum or improved:
                    folder = self.save()
                    self.saved_at = ctx.step
                    if improved:
                        best = metrics[self.keep_best]
                        if ctx.is_main:
                            mark_best(ctx.work_dir, folder, best)
                            prune(ctx.work_dir, ctx.recipe["train"]["save_total_limit"])  # the previous best may go now
                if stop.signum:
                    self.stop_signal = stop.signum  # the run's exit status says which: 130 (Ctrl-C) or 143 (SIGTERM)
                    return "stopped"
                timer = time.perf_counter()
        return "done"

    def _last_good(self) -> str | None:
        from .checkpoint import latest_checkpoint

        found = latest_checkpoint(self.ctx.work_dir)
        return str(found) if found else None


class _Progress:
    """A rich progress bar on terminals. Elsewhere (a log file) a plain line every ``train.log_every``
    steps, and at this run's first and last: the time of day, the step, the metrics, a smoothed
    tokens/s, the time elapsed and the time left (main process only)."""

    #: weight of the newest step in the smoothed tokens/s (about the last 10 steps count)
    SMOOTHING = 0.1

    def __init__(self, ctx: RunContext, shown: tuple[str, ...] = ()) -> None:
        self.ctx, self.shown = ctx, shown
        self.bar: Any = None
        self.every = max(1, ctx.recipe["train"]["log_every"])
        self.rate: float | None = None

    def __enter__(self) -> "_Progress":
        import sys

        self.started, self.first_step = time.monotonic(), self.ctx.step  # a resumed run times its own steps
        if self.ctx.is_main and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.ctx.total_steps, completed=self.ctx.step, info="")
        return self

    def update(self, m: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        rate = m["tokens_per_s"]
        self.rate = rate if self.rate is None else (1 - self.SMOOTHING) * self.rate + self.SMOOTHING * rate
        shown = "".join(f" {name.rsplit('/', 1)[-1]} {m[name]:.3g}" for name in self.shown if name in m)
        head = f"epoch {m['epoch']:.2f} loss {m['loss']:.4f}{shown} lr {m['lr']:.2e}"
        if self.bar:
            self.bar.update(self.task, completed=m["step"], info=f"{head} {rate:.0f} tok/s{_gpu_memory()}")
            return
        step, total = m["step"], self.ctx.total_steps
        if step % self.every and step != total and step != self.first_step + 1:
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed / max(step - self.first_step, 1) * (total - step)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} step {step}/{total} {head} {self.rate:.0f} tok/s{_gpu_memory()} elapsed {self.clock(elapsed)} eta {self.clock(eta)}", flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.bar:
            self.bar.stop()

    @staticmethod
    def clock(seconds: float) -> str:
        """``H:MM:SS``."""
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _gpu_memory() -> str:
    import torch

    if torch.cuda.is_available():
        return f" mem {torch.cuda.max_memory_allocated() / 2**30:.1f}GiB"
    return ""
