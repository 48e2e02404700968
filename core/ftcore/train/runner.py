"""Assembling a training run from a validated recipe and the registered parts, then driving it."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

from ..chat.chat_files import write_chat_files
from ..errors import FtcoreError
from ..recipe import with_resolved_paths
from .checkpoint import begin_checkpoint, finish_checkpoint, read_best, read_state, rng_state, set_rng_state
from .context import RunContext
from .loop import Schedule, Trainer, total_steps
from .objective import check_data_kind
from .preflight import check_resume


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_schedule(data: Any, data_cfg: dict[str, Any], train_cfg: dict[str, Any], strategy: Any) -> Schedule:
    """The data order; unpacked rows are length-grouped, and images kept apart from text."""
    import numpy as np

    lengths = groups = None
    if not data_cfg["pack"]:
        lengths = data.row_lengths()
        images = data.extras.get("image")
        if images is not None:  # one sample per row, so per-sample extras are per-row
            groups = np.array([image is not None for image in images], dtype=np.int64)
    shared = int(train_cfg.get("sequence_parallel") or 1)  # a sequence-parallel group trains the same rows
    return Schedule(len(data), train_cfg["micro_batch"], strategy.world_size // shared, strategy.rank // shared, train_cfg["seed"], data_cfg["shuffle"], lengths, groups)


def make_hooks(recipe: Any, parts: Any) -> list[Any]:
    """The recipe's training hooks, each made with its options (the entry's other keys)."""
    hooks = []
    for entry in recipe["hooks"]:
        options = {k: v for k, v in entry.items() if k != "name"}
        hooks.append(parts.hooks.part(entry["name"]).build(**options))
    return sorted(hooks, key=lambda hook: hook.order)  # stable: recipe order otherwise


def record_base_model(folder: Path, base: str) -> None:
    """Point a saved adapter's ``base_model_name_or_path`` at the user's base model folder (peft
    records the folder the weights came from, which for converted models is ftcore's cache)."""
    import json

    config = folder / "adapter_config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = base
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make_strategy(recipe: Any, parts: Any, precision: str) -> Any:
    """The recipe's strategy (``strategy.name``): ``Strategy(recipe, precision, **options)``."""
    section = recipe["strategy"]
    options = {k: v for k, v in section.items() if k != "name"}
    return parts.strategies.part(section["name"]).build(recipe, precision, **options)


def make_adapter(recipe: Any, parts: Any) -> Any:
    """The recipe's adapter kind (``adapter.kind``), made with its own ``adapter.*`` options."""
    section = recipe["adapter"]
    part = parts.adapters.part(section["kind"])
    return part.build(**{key: section[key] for key in part.options})


def make_objective(recipe: Any, parts: Any) -> Any:
    """The recipe's objective (``objective.name``) with its options."""
    section = recipe["objective"]
    options = {k: v for k, v in section.items() if k != "name"}
    return parts.objectives.part(section["name"]).build(**options)


class Run:
    """One training run: builds every part, resumes if asked, trains, saves."""

    def __init__(self, recipe: Any, parts: Any, resume: str | None = None) -> None:
        self.recipe, self.parts, self.resume = recipe, parts, resume
        self.work_dir = Path(recipe["work_dir"])
        self.ctx = RunContext(recipe, self.work_dir)
        self.hooks = make_hooks(recipe, parts)
        self.resume_from: Path | None = None
        self.stop_signal: int | None = None  # the signal that stopped training, if one did
        self.saved_recipe = with_resolved_paths(recipe, parts)  # what checkpoints record: usable from any directory

    def log(self, message: str) -> None:
        self.ctx.print(message)

    def build(self) -> None:
        from ..data.pipeline import prepare_data, split_config
        from ..models.loading import builder_and_tokenizer, count_parameters, load_base_model, resolve_precision
        from .strategy import resolve_device

        recipe, parts, ctx = self.recipe, self.parts, self.ctx
        model_cfg, data_cfg, train_cfg = recipe["model"], recipe["data"], recipe["train"]
        self.resume_from = check_resume(recipe, self.resume)  # a bad --resume fails before anything loads
        seed_everything(train_cfg["seed"])
        self.precision = resolve_precision(train_cfg["precision"], resolve_device(train_cfg["device"]))
        strategy = make_strategy(recipe, parts, self.precision)
        if model_cfg.get("fp8_base"):  # a GPU without FP8 products is refused before anything loads
            from ..models.fp8 import check_device

            check_device(strategy.device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and recipe["strategy"]["name"] == "single":
            raise FtcoreError("strategy single cannot run in several processes", where="strategy.name", hint="use strategy.name=ddp or a ZeRO strategy (zero2, zero3, ...)")
        strategy.setup()
        ctx.strategy = strategy
        from ..models.sequence_parallel import join_for_run

        self.sequence = join_for_run(recipe, strategy)
        if ctx.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            for hook in self.hooks:
                hook.setup(ctx)
        strategy.barrier()
        builder, tokenizer = builder_and_tokenizer(model_cfg, parts)
        self.builder = ctx.builder = builder
        ctx.tokenizer = tokenizer
        ctx.template = parts.templates.get(data_cfg["template"]) if data_cfg["template"] else None
        data_key = builder.data_key()
        self.check_agreement(tokenizer, data_key)
        ctx.data, ctx.data_report = prepare_data(
            split_config(data_cfg, "train"), parts.formats, tokenizer, ctx.template, train_cfg["seed"],
            is_main=strategy.is_local_main, barrier=strategy.barrier, log=self.log,
            extra_key=data_key,
        )
        self.objective = make_objective(recipe, parts)
        check_data_kind(self.objective, "side" in ctx.data.extras)  # before the weights load
        if data_cfg["eval_path"] or data_cfg["eval_ratio"]:
            ctx.eval_data, report = prepare_data(
                split_config(data_cfg, "eval"), parts.formats, tokenizer, ctx.template, train_cfg["seed"],
                is_main=strategy.is_local_main, barrier=strategy.barrier, log=self.log, extra_key=data_key,
            )
            check_data_kind(self.objective, "side" in ctx.eval_data.extras)
            self.log(f"eval data: {report.summary()}")
        model = load_base_model(model_cfg, builder, strategy.load_device, self.precision, head=self.objective.head,
                                quant_storage=strategy.quant_storage_in_compute_dtype)
        if model.config.pad_token_id is None:  # a classification head finds each row's last token by it
            model.config.pad_token_id = tokenizer.pad_token_id
        adapter = make_adapter(recipe, parts)
        choice = self.choose_levers(model, adapter, strategy)
        self.plan = builder.prepare_for_training(model, model_cfg, recipe["adapter"], adapter)
        if self.sequence is not None:
            from ..models.sequence_parallel import check_model

            check_model(model, self.plan, self.sequence)
            self.plan.sequence_parallel = self.sequence
        if choice.can_fall_back:
            from ..models.speed import fall_back

            self.plan.fallback = fall_back
        model = self.plan.model
        trainable, total = count_parameters(model)
        quant = "" if model_cfg["quantization"] == "none" else f", base quantized to {model_cfg['quantization']}"
        self.log(f"model: {total / 1e6:.2f}M parameters, {trainable / 1e6:.3f}M trainable ({self.plan.trains or recipe['adapter']['kind']}{quant}), {self.precision} on {strategy.device}")
        if model_cfg["compile"]:
            self.log("model.compile: each decoder layer is compiled with torch.compile during the first steps (a minute or two)")
        from .optim import build_optimizer, build_scheduler

        params = [p for p in model.parameters() if p.requires_grad]
        self.schedule = make_schedule(ctx.data, data_cfg, train_cfg, strategy)
        ctx.total_steps = total_steps(train_cfg, self.schedule)
        self.warn_small_data()
        resumed = None
        if self.resume_from is not None:
            state = read_state(self.resume_from)
            resumed = (int(state["step"]), int(state["total_steps"]))
            if resumed[0] >= ctx.total_steps:
                raise FtcoreError(
                    f"the checkpoint {self.resume_from} is at step {resumed[0]}, but this run has {ctx.total_steps} steps: there is nothing left to train",
                    where="train.max_steps" if train_cfg["max_steps"] else "train.epochs",
                    hint="train for longer (train.max_steps or train.epochs), or start a new run without --resume",
                )
        optimizer = build_optimizer(params, train_cfg, parts.optimizers.get(train_cfg["optimizer"]))
        scheduler = build_scheduler(optimizer, train_cfg, ctx.total_steps, resumed, parts.schedules.get(train_cfg["schedule"]))
        ctx.model, self.optimizer, self.scheduler = strategy.prepare(model, optimizer, scheduler)
        ctx.plan = self.plan

    def check_agreement(self, tokenizer: Any, data_key: str) -> None:
        """Every process (every node) has the same resolved recipe and data, or a clear error on each."""
        import yaml

        from ..data.pipeline import cache_key, split_config
        from .agreement import check_agreement, fingerprint

        if self.ctx.strategy.world_size == 1:
            return
        data_cfg, seed = self.recipe["data"], self.recipe["train"]["seed"]
        splits = ["train"] + (["eval"] if data_cfg["eval_path"] or data_cfg["eval_ratio"] else [])
        keys = [cache_key(split_config(data_cfg, split), tokenizer, self.ctx.template, data_cfg["format"], seed, data_key) for split in splits]
        check_agreement(self.ctx.strategy, fingerprint(yaml.safe_load(self.saved_recipe.to_yaml()), keys))

    def choose_levers(self, model: Any, adapter: Any, strategy: Any) -> Any:
        """``speed: auto``: fill in the levers the recipe leaves null (a resumed run keeps its
        checkpoint's), say what was chosen and why, and record it in the recipe checkpoints keep."""
        import yaml

        from ..models.speed import resolve

        saved = self.resume_from / "recipe.yaml" if self.resume_from is not None else None
        previous = yaml.safe_load(saved.read_text()) if saved is not None and saved.is_file() else None
        choice = resolve(self.recipe, model, self.ctx.data.row_lengths(), adapter.trains_base, strategy.device, strategy, previous)
        for section in ("model", "train"):
            for key in ("micro_batch", "grad_accum", *choice.levers):
                if key in self.recipe[section]:
                    self.saved_recipe[section][key] = self.recipe[section][key]
        self.log(choice.summary())
        return choice

    def warn_small_data(self) -> None:
        """Say so when one optimizer step takes several passes over the data (a handful of samples
        with the shipped grad_accum): "epoch" then grows by more than 1 a step."""
        train, per_epoch = self.recipe["train"], self.schedule.per_epoch
        if train["grad_accum"] <= per_epoch:
            return
        epochs = train["grad_accum"] / per_epoch
        samples = self.ctx.data.num_samples
        self.log(
            f"[yellow]warning:[/yellow] one step covers {epochs:.3g} epochs of {samples} sample(s) "
            f"({train['grad_accum']} micro batches of {train['micro_batch']} row(s) a step, {per_epoch} a pass over the data): "
            "lower train.grad_accum/micro_batch, or add data"
        )

    def collate(self, rows: list[int], data: Any = None) -> dict[str, Any]:
        """Micro batch of ``rows`` of the training data (or of ``data``, e.g. the eval data)."""
        from ..data.collate import collate_rows

        data = data if data is not None else self.ctx.data
        sp = self.plan.sequence_parallel
        batch = collate_rows([data.row(i) for i in rows], self.ctx.tokenizer.pad_token_id, flat=self.plan.flat, multiple_of=8 * (sp.size if sp else 1))
        batch = self.builder.prepare_batch(batch)  # e.g. images -> pixel_values
        if sp is not None:
            from ..models.sequence_parallel import shard_batch

            batch = shard_batch(batch, sp)
        return batch

    def save(self) -> Path:
        """Write ``checkpoint-STEP``; every rank takes part (sharded engines save their shards)."""
        ctx, strategy = self.ctx, self.ctx.strategy
        model = strategy.unwrap(ctx.model)
        tmp = self.work_dir / f".tmp-checkpoint-{ctx.step}"
        if ctx.is_main:
            begin_checkpoint(self.work_dir, ctx.step)
        strategy.barrier()
        with strategy.gathered(model):
            if ctx.is_main:
                self.builder.save_checkpoint(model, tmp)
        strategy.save_state(tmp)
        strategy.barrier()
        folder = self.work_dir / f"checkpoint-{ctx.step}"
        if ctx.is_main:
            import torch

            write_chat_files(tmp, ctx.tokenizer, ctx.template, system=self.recipe["data"]["system"], model=model)  # chats without ftcore too
            (tmp / "recipe.yaml").write_text(self.saved_recipe.to_yaml())
            record_base_model(tmp, self.saved_recipe["model"]["path"])
            torch.save(rng_state(), tmp / "rng.pt")
            epoch = ctx.step * self.recipe["train"]["grad_accum"] / self.schedule.per_epoch
            state = {"total_steps": ctx.total_steps, "epoch": epoch, "world_size": strategy.world_size, "metrics": ctx.metrics[-1:]}
            finish_checkpoint(self.work_dir, ctx.step, tmp, state, self.recipe["train"]["save_total_limit"])
        strategy.barrier()
        for hook in self.hooks:
            hook.after_save(ctx, folder)
        return folder

    def restore(self) -> None:
        if not self.resume:
            return
        folder = self.resume_from
        if folder is None:
            self.log(f"no checkpoint in {self.work_dir} yet; starting from the beginning")
            return
        import torch

        state = read_state(folder)
        if state["total_steps"] != self.ctx.total_steps:
            how = ("the learning rate follows the schedule planned for the new length" if state["step"] >= state["total_steps"]
                   else "the learning rate goes on from where it was to the end of the schedule over the remaining steps")
            self.log(f"the checkpoint was made for {state['total_steps']} steps, this run has {self.ctx.total_steps}: {how}")
        if not self.ctx.strategy.restores_model:
            self.builder.load_checkpoint(self.ctx.strategy.unwrap(self.ctx.model), folder)
        self.ctx.strategy.load_state(folder)
        if state["total_steps"] != self.ctx.total_steps:
            from .optim import sync_learning_rate

            sync_learning_rate(self.scheduler)
        set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
        self.ctx.step = int(state["step"])
        self.log(f"resumed from {folder} at step {self.ctx.step}/{self.ctx.total_steps}")

    def resume_command(self) -> str:
        return f"ftcore run --recipe {self.work_dir / 'recipe.yaml'} --resume"

    def execute(self) -> str:
        try:
            return self._execute()
        finally:
            if self.ctx.strategy is not None:
                self.ctx.strategy.teardown()

    def _execute(self) -> str:
        self.build()
        self.restore()
        ctx = self.ctx
        if ctx.is_main:
            (self.work_dir / "recipe.yaml").write_text(self.saved_recipe.to_yaml())
        for hook in self.hooks:
            hook.before_train(ctx)
        trainer = Trainer(ctx, self.plan, self.objective, self.optimizer, self.scheduler, self.schedule, self.collate, self.hooks, self.save, self.precision)
        outcome = trainer.run()
        self.stop_signal = trainer.stop_signal
        if outcome == "stopped":
            self.log(f"[yellow]stopped at step {ctx.step}/{ctx.total_steps}; checkpoint saved.[/yellow] Resume with:\n  {self.resume_command()}")
            return outcome
        final = self.save() if trainer.saved_at != ctx.step else self.work_dir / f"checkpoint-{ctx.step}"
        for hook in self.hooks:
            hook.after_train(ctx)
        self.summary(final)
        return outcome

    def summary(self, final: Path) -> None:
        ctx = self.ctx
        last = ctx.metrics[-1] if ctx.metrics else {}
        first = ctx.metrics[0] if ctx.metrics else {}
        base = self.recipe["model"]["path"]
        own = self.objective.next_steps(base, final)
        builder_steps = self.builder.next_steps(base, final) if own is None else None
        kind = "checkpoint" if builder_steps is not None else "full model" if self.plan.adapter is not None and self.plan.adapter.trains_base else "adapter"
        lines = [
            f"[bold green]done[/bold green]: {ctx.step} steps, loss {first.get('loss', float('nan')):.4f} -> {last.get('loss', float('nan')):.4f}",
            f"{kind}: {final}",
            "next:",
        ]
        if own is not None or builder_steps is not None:
            lines += [f"  {line}" for line in own or builder_steps]
        elif kind == "adapter":
            lines += [f"  ftcore chat {base} --adapter {final}", f"  ftcore merge {base} {final} {self.work_dir / 'merged'}"]
        else:
            lines += [f"  ftcore chat {final}"]
        best = read_best(self.work_dir)
        if best:
            lines.insert(2, f"best eval loss {best['eval_loss']:.4f}: {self.work_dir / best['checkpoint']}")
        lines.append(f"  ftcore plot {self.work_dir}")
        self.log("\n".join(lines))


def run_training(recipe: Any, parts: Any, resume: str | None = None) -> None:
    """Train as the recipe says; SIGINT/SIGTERM save a checkpoint and exit with a resume hint, with the
    status a shell gives a process that signal ended: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    import signal

    run = Run(recipe, parts, resume)
    outcome = run.execute()
    if outcome == "stopped":
        sys.exit(128 + (run.stop_signal or signal.SIGTERM))
