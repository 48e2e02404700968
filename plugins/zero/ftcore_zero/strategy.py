"""DeepSpeed ZeRO strategies whose DeepSpeed config is derived from the recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from ftcore.api import DDPStrategy, FtcoreError, Option, deep_merge

ENGINE_TAG = "deepspeed"


def deepspeed_config(recipe: Any, stage: int, offload: bool, precision: str, extra: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """The DeepSpeed config implied by the recipe, then ``extra`` (``strategy.config``) on top.

    Micro batch, accumulation, clipping and precision come from ``train``, so nothing is set
    twice; ``extra`` may be a mapping of DeepSpeed keys or a JSON file path.
    """
    train = recipe["train"]
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train["micro_batch"],
        "gradient_accumulation_steps": train["grad_accum"],
        "gradient_clipping": float(train["max_grad_norm"] or 0.0),
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if isinstance(extra, str):
        path = Path(extra)
        try:
            extra = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise FtcoreError(f"cannot read the DeepSpeed config {extra!r}: {exc}", where="strategy.config") from None
    return deep_merge(config, extra or {})


class ZeroStrategy(DDPStrategy):
    """DeepSpeed's engine with a ZeRO stage; checkpoints add the engine's own sharded state."""

    stage = 2
    offload = False
    #: the engine restores trainable weights itself on resume (they may be partitioned)
    restores_model = True

    def __init__(
        self,
        recipe: Any,
        precision: str,
        config: Annotated[dict | str | None, Option("DeepSpeed settings on top of the ones derived from the recipe: a mapping of DeepSpeed keys, or a JSON file path")] = None,
    ) -> None:
        super().__init__(recipe, precision)
        self.extra_config = config
        if self.stage == 3 and recipe["model"]["quantization"] != "none":
            raise FtcoreError(
                "QLoRA (a 4-bit quantized base) cannot be partitioned by ZeRO-3",
                where="strategy.name",
                hint="use zero2 (the 4-bit base is small already, and ZeRO-2 shards the optimizer and gradients)",
            )
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise FtcoreError("ZeRO strategies need DeepSpeed", hint="pip install 'ftcore[deepspeed]'") from None

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        import deepspeed

        self.config = deepspeed_config(self.recipe, self.stage, self.offload, self.precision, self.extra_config)
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.config)
        self.model, self.optimizer, self.scheduler = engine, optimizer, scheduler
        return engine, optimizer, scheduler

    def backward(self, loss: Any, last: bool = True) -> None:
        # The loop already divides by the step's trained-token count; DeepSpeed applies the
        # update (and clipping) on the accumulation boundary.
        self.model.backward(loss, scale_wrt_gas=False)
        self.model.step()

    def step(self) -> float:
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def unwrap(self, model: Any) -> Any:
        return getattr(model, "module", model)

    def gathered(self, model: Any) -> Any:
        import contextlib

        if self.stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def save_state(self, folder: Path) -> None:
        self.model.save_checkpoint(str(folder), tag=ENGINE_TAG, save_latest=False, exclude_frozen_parameters=True)

    def load_state(self, folder: Path) -> None:
        path, _ = self.model.load_checkpoint(str(folder), tag=ENGINE_TAG, load_module_strict=False)
        if path is None:
            raise FtcoreError(f"{folder} has no DeepSpeed engine state", hint="resume it with the strategy it was trained with")


class ZERO1(ZeroStrategy):
    name, stage = "zero1", 1


class ZERO2(ZeroStrategy):
    name, stage = "zero2", 2


class ZERO3(ZeroStrategy):
    name, stage = "zero3", 3


class ZERO2_OFFLOAD(ZeroStrategy):
    name, stage, offload = "zero2_offload", 2, True


class ZERO3_OFFLOAD(ZeroStrategy):
    name, stage, offload = "zero3_offload", 3, True
