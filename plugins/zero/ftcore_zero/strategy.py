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
    return deep_merge(config, read_extra(extra))


def read_extra(extra: dict[str, Any] | str | None) -> dict[str, Any]:
    """``strategy.config``: a mapping of DeepSpeed keys, or the JSON file that holds one."""
    if isinstance(extra, str):
        try:
            return json.loads(Path(extra).read_text())
        except (OSError, ValueError) as exc:
            raise FtcoreError(f"cannot read the DeepSpeed config {extra!r}: {exc}", where="strategy.config") from None
    return extra or {}


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
        if self.stage == 3 and recipe["model"].get("fp8_base"):
            raise FtcoreError("the FP8 base is held in buffers, which ZeRO-3 does not partition: every GPU would hold the whole base",
                              where="model.fp8_base", hint="drop model.fp8_base, or use zero2 (each GPU holds the base anyway)")
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise FtcoreError("ZeRO strategies need DeepSpeed", hint="pip install 'ftcore[deepspeed]'") from None

    def placement(self, model: Any) -> dict[str, Any]:
        """DeepSpeed settings for where the model's weights live (ZeRO-3 decides; the others shard none)."""
        return {}

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        import deepspeed

        derived = deep_merge(deepspeed_config(self.recipe, self.stage, self.offload, self.precision), self.placement(model))
        self.config = deep_merge(derived, read_extra(self.extra_config))  # the user's settings win
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
    """ZeRO-3. Training an adapter, the frozen base is what ZeRO-3 would shard, and gathering it
    again for every forward and backward is what made ZeRO-3 slow (0.37x one GPU for LoRA): where
    it fits on each device (``keep_base``), the base stays whole (DeepSpeed's parameter
    persistence) and only what trains is sharded with its gradients and optimizer state; a base
    too large for one device is sharded, the one way it trains at all."""

    name, stage = "zero3", 3

    def __init__(
        self,
        recipe: Any,
        precision: str,
        config: Annotated[dict | str | None, Option("DeepSpeed settings on top of the ones derived from the recipe: a mapping of DeepSpeed keys, or a JSON file path")] = None,
        keep_base: Annotated[str, Option("adapters: keep the frozen base whole on each device (auto: where it takes under half the free memory) instead of sharding it", choices=("auto", "always", "never"))] = "auto",
    ) -> None:
        super().__init__(recipe, precision, config)
        self.keep_base = keep_base

    def placement(self, model: Any) -> dict[str, Any]:
        frozen = [p for p in model.parameters() if not p.requires_grad]
        size = sum(p.numel() * p.element_size() for p in frozen)
        if not frozen:
            return {}  # a full fine-tune: everything trains, everything is sharded
        keep = self.keep_base == "always" or (self.keep_base == "auto" and size < self.free_memory() / 2)
        keep = self.all_reduce_sum(float(keep) if self.is_main else 0.0) > 0  # rank 0 decides for all: one placement
        if self.is_main:
            how = "stays whole on each device; only the trained weights are sharded" if keep else f"is sharded over {self.world_size} process(es)"
            print(f"zero3: the frozen base ({size / 2**30:.2f} GiB) {how} (strategy.keep_base={self.keep_base})", flush=True)
        if not keep:
            return {}
        largest = max(p.numel() for p in model.parameters())
        return {"zero_optimization": {"stage3_param_persistence_threshold": largest + 1}}  # every weight persists: gathered once, never released

    def free_memory(self) -> float:
        """Free memory of this process's device (the CPU's available memory on a CPU run)."""
        import torch

        if self.device.type == "cuda":
            return float(torch.cuda.mem_get_info(self.device)[0])
        import os

        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class ZERO2_OFFLOAD(ZeroStrategy):
    name, stage, offload = "zero2_offload", 2, True


class ZERO3_OFFLOAD(ZeroStrategy):
    name, stage, offload = "zero3_offload", 3, True
