"""The training-hook protocol and the built-in hooks (dataset_info, evaluate_chat, throughput, metrics_log, tensorboard)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from ..options import Option
from ..recipe import NAME, REQUIRED, Field
from .context import RunContext


class TrainingHook:
    """Base class: override the events you need. A hook's options are its constructor's typed
    keyword arguments with real defaults (``Annotated[int, Option("...", ge=1)] = 10``), given
    by the recipe entry (``{name: throughput, every: 5}``) and checked before the run starts.

    Events, in order: ``setup`` (before model and data are loaded), ``before_train``,
    ``after_step`` (after every optimizer step, with that step's metrics), ``after_save``
    (with the checkpoint folder) and ``after_train``. ``creates`` lists recipe keys whose
    paths this hook creates in ``setup`` (validation then does not require them to exist).
    Hooks run in recipe order, except that a larger ``order`` runs later (a hook that
    records the metrics runs after the hooks that add to them).
    """

    creates: tuple[str, ...] = ()
    order: int = 0

    def setup(self, ctx: RunContext) -> None: ...

    def before_train(self, ctx: RunContext) -> None: ...

    def after_step(self, ctx: RunContext, metrics: dict[str, Any]) -> None: ...

    def after_save(self, ctx: RunContext, folder: Any) -> None: ...

    def after_train(self, ctx: RunContext) -> None: ...


class DatasetInfo(TrainingHook):
    """Print sample/row/token counts and one decoded sample with its trained part."""

    def before_train(self, ctx: RunContext) -> None:
        if not ctx.is_main:
            return
        data, report = ctx.data, ctx.data_report
        ctx.print(f"[bold]dataset[/bold] {report.summary()}")
        if len(data):
            row = data.row(0)
            ids, labels = row["input_ids"], row["labels"]
            end = int(row["cu_seqlens"][1])
            text = ctx.tokenizer.decode(ids[:end].tolist())
            trained = ctx.tokenizer.decode(ids[:end][labels[:end] != -100].tolist())
            ctx.print(f"[bold]sample[/bold] {text!r}")
            ctx.print(f"[bold]trained part[/bold] {trained!r}")


class MetricsLog(TrainingHook):
    """Append one JSON line per optimizer step to ``work_dir/metrics.jsonl``."""

    order = 100  # after the hooks that add metrics (throughput's tflops and mfu)

    def before_train(self, ctx: RunContext) -> None:
        self.path = ctx.work_dir / "metrics.jsonl"
        if ctx.is_main and self.path.exists():  # a resumed run rewrites the steps after its checkpoint
            kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= ctx.step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def after_step(self, ctx: RunContext, metrics: dict[str, Any]) -> None:
        if ctx.is_main:
            with self.path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")


class Throughput(TrainingHook):
    """Report tokens/s, achieved TFLOP/s and an MFU estimate every ``every`` steps."""

    def __init__(
        self,
        every: Annotated[int, Option("report every N steps", ge=1)] = 10,
        peak_tflops: Annotated[float | None, Option("device peak TFLOP/s for MFU (default: known GPUs' dense bf16 peak)", gt=0)] = None,
    ) -> None:
        self.every, self.peak_tflops = every, peak_tflops

    def before_train(self, ctx: RunContext) -> None:
        from ..models.loading import count_parameters

        model = ctx.strategy.unwrap(ctx.model)
        trainable, total = count_parameters(model)
        # Forward 2N + backward 2N (activation grads) + 2 per trained weight (weight grads: 6N
        # for a full fine-tune, about 4N for an adapter).
        self.flops_per_token = 4 * total + 2 * trainable
        self.peak = self.peak_tflops or _peak_tflops(ctx.strategy.device)

    def after_step(self, ctx: RunContext, metrics: dict[str, Any]) -> None:
        every = self.every
        tflops = metrics["tokens_per_s"] * self.flops_per_token / 1e12
        metrics["tflops"] = round(tflops, 2)
        if self.peak:
            metrics["mfu"] = round(tflops / self.peak, 4)
        if ctx.step % every == 0 or ctx.step == ctx.total_steps:
            mfu = f", MFU {metrics['mfu']:.1%}" if "mfu" in metrics else ""
            ctx.print(f"throughput step {ctx.step}: {metrics['tokens_per_s']:.0f} tokens/s, {tflops:.2f} TFLOP/s{mfu}")


def _peak_tflops(device: Any) -> float | None:
    """Dense bf16 peak of known GPUs (None when unknown, e.g. on CPU)."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40": 181.0, "A10": 125.0, "4090": 165.0}.items():
        if key in name:
            return value
    return None


#: a prompt with an image (``evaluate_chat``'s ``prompts`` entries, as XTuner's evaluation_images)
IMAGE_PROMPT = {
    "text": Field((str,), REQUIRED, "the question", nullable=False, pattern=NAME.pattern),
    "image": Field((str,), REQUIRED, "an image file (relative to the current directory)", nullable=False, pattern=NAME.pattern, is_path=True),
}


class EvaluateChat(TrainingHook):
    """Answer the recipe's prompts before training, every ``every`` steps and at the end; a prompt
    ``{text, image}`` asks about an image (for a model that takes images, e.g. LLaVA)."""

    def __init__(
        self,
        prompts: Annotated[list[Annotated[str | dict, Option(pattern=NAME.pattern, keys=IMAGE_PROMPT)]], Option("questions to ask: text, or {text, image: PATH}")] = (),
        every: Annotated[int, Option("also evaluate every N steps (0: only before and after)", ge=0)] = 0,
        max_new_tokens: Annotated[int, Option("answer length", ge=1)] = 64,
        system: Annotated[str | None, Option("system prompt for the evaluation (default: data.system)")] = None,
    ) -> None:
        self.prompts, self.every, self.max_new_tokens, self.system = list(prompts), every, max_new_tokens, system

    def setup(self, ctx: RunContext) -> None:
        """Every image is there before any weights load (a hook listed earlier may have made it)."""
        from pathlib import Path

        from ..errors import FtcoreError

        for i, prompt in enumerate(self.prompts):
            if isinstance(prompt, dict) and not Path(prompt["image"]).expanduser().is_file():
                raise FtcoreError(f"image {prompt['image']!r} does not exist", where=f"evaluate_chat prompts[{i}].image", hint="give an image file, relative to the current directory")

    def before_train(self, ctx: RunContext) -> None:
        self._evaluate(ctx, "before training" if ctx.step == 0 else f"resumed at step {ctx.step}")

    def after_step(self, ctx: RunContext, metrics: dict[str, Any]) -> None:
        every = self.every
        if every and ctx.step % every == 0 and ctx.step != ctx.total_steps:
            self._evaluate(ctx, f"step {ctx.step}")

    def after_train(self, ctx: RunContext) -> None:
        self._evaluate(ctx, "after training")

    def _evaluate(self, ctx: RunContext, label: str) -> None:
        if not ctx.is_main:
            return
        from pathlib import Path

        from ..chat.generate import Sampling
        from ..errors import FtcoreError

        system = self.system or ctx.recipe["data"]["system"]
        model = ctx.strategy.unwrap(ctx.model)
        chat = ctx.builder.chat_model(model, ctx.tokenizer, ctx.template, system)
        answers = []
        was_training = model.training
        model.eval()
        try:
            for prompt in self.prompts:
                text, image = (prompt, None) if isinstance(prompt, str) else (prompt["text"], prompt["image"])
                message: dict[str, Any] = {"role": "user", "content": text}
                if image is not None:
                    if not chat.accepts_images:
                        raise FtcoreError(f"model builder {ctx.recipe['model']['builder']!r} makes a model that takes no images", where="evaluate_chat prompts", hint="ask image questions of an image model (e.g. model.builder: llava)")
                    message["images"] = [Path(image).expanduser().read_bytes()]
                answer = chat.generation([message], Sampling(max_new_tokens=self.max_new_tokens)).run()
                answers.append({"prompt": text, **({"image": image} if image is not None else {}), "answer": answer})
                shown = f" (image {image})" if image is not None else ""
                ctx.print(f"[bold cyan]eval ({label})[/bold cyan] {text!r}{shown} -> {answer!r}")
        finally:
            if was_training:
                model.train()
        out = ctx.work_dir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        name = "before" if ctx.step == 0 and label == "before training" else f"step-{ctx.step}"
        (out / f"{name}.json").write_text(json.dumps({"step": ctx.step, "label": label, "answers": answers}, ensure_ascii=False, indent=2))


class TensorBoard(TrainingHook):
    """Write every step metric (loss, learning rate, throughput, an objective's rewards) to TensorBoard (``pip install 'ftcore[tensorboard]'``)."""

    order = 100  # after the hooks that add metrics

    def before_train(self, ctx: RunContext) -> None:
        if not ctx.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            from ..errors import FtcoreError

            raise FtcoreError(f"the tensorboard hook needs tensorboard ({exc})", hint="pip install 'ftcore[tensorboard]'") from None
        self.writer = SummaryWriter(str(ctx.work_dir / "tensorboard"))

    def after_step(self, ctx: RunContext, metrics: dict[str, Any]) -> None:
        if ctx.is_main:  # every number the step reported: loss, lr, throughput, an objective's rewards, ...
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}", value, ctx.step)

    def after_train(self, ctx: RunContext) -> None:
        if ctx.is_main:
            self.writer.close()


#: (name, class path, description) of the hooks the core registers.
BUILTIN_HOOKS = [
    ("dataset_info", "ftcore.train.hooks:DatasetInfo", "print dataset counts and one decoded sample"),
    ("metrics_log", "ftcore.train.hooks:MetricsLog", "one JSON line per step in work_dir/metrics.jsonl (step, loss, lr, tokens_per_s)"),
    ("throughput", "ftcore.train.hooks:Throughput", "tokens/s, TFLOP/s and MFU estimate"),
    ("evaluate_chat", "ftcore.train.hooks:EvaluateChat", "answer prompts before training, every N steps and at the end (work_dir/eval/)"),
    ("tensorboard", "ftcore.train.hooks:TensorBoard", "loss, lr and throughput to TensorBoard (optional extra)"),
]
