"""Adapter kinds (``adapter.kind``): how a loaded model is made trainable — LoRA, QLoRA, DoRA or a full fine-tune.

A kind is a registered class (hook ``register_adapters``). Preparing a model applies it at the
``adapter`` step of :data:`ftcore.models.plan.TRANSFORMS`: after the base is frozen (a quantized
one), gradient checkpointing is on and checkpointed inputs are offloaded, and before the fused
LoRA forward, the replay skip, the embedding offload and ``compile``, which all work on the
layers it leaves. Every kind receives the whole ``adapter`` section (``r``, ``alpha``,
``dropout``, ``targets``, ``modules_to_save``, ``bias`` are the core's keys); a kind's own
extra ``adapter.*`` keys are its constructor's typed keyword arguments (:mod:`ftcore.options`).
"""

from __future__ import annotations

from typing import Any


class AdapterKind:
    """Base class of a registered adapter kind; override :meth:`apply`.

    Two class attributes tell the rest of the run what the kind implies: ``quantized_base``
    (the base loads 4-bit: ``model.quantization`` defaults to ``nf4``, as QLoRA) and
    ``trains_base`` (every base weight trains: checkpoints hold the whole model, and a quantized
    base is refused).
    """

    #: the base loads quantized (``model.quantization`` defaults to nf4)
    quantized_base: bool = False
    #: every base weight trains (checkpoints hold the whole model; a quantized base is refused)
    trains_base: bool = False

    def apply(self, model: Any, adapter_cfg: dict[str, Any]) -> Any:
        """Make ``model`` trainable as this kind says; returns the model to train (e.g. peft's wrapper)."""
        raise NotImplementedError


class LoRA(AdapterKind):
    """LoRA adapters (peft) on the adapter.targets layers; the base stays frozen."""

    def lora_config(self, model: Any, adapter_cfg: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of peft's ``LoraConfig``; a subclass adds its own (DoRA: ``use_dora``)."""
        from .loading import lora_targets

        return {
            "r": adapter_cfg["r"],
            "lora_alpha": adapter_cfg["alpha"],
            "lora_dropout": adapter_cfg["dropout"],
            "target_modules": lora_targets(model, adapter_cfg["targets"]),
            "modules_to_save": adapter_cfg["modules_to_save"],
            "bias": adapter_cfg["bias"],
            # a reward model's score head is saved with the adapter (peft's SEQ_CLS modules_to_save)
            "task_type": "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM",
        }

    def apply(self, model: Any, adapter_cfg: dict[str, Any]) -> Any:
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(**self.lora_config(model, adapter_cfg)))


class QLoRA(LoRA):
    """LoRA on a 4-bit quantized base (model.quantization defaults to nf4)."""

    quantized_base = True


class DoRA(LoRA):
    """Weight-decomposed LoRA (peft's use_dora): a trained magnitude per output beside the LoRA direction."""

    def lora_config(self, model: Any, adapter_cfg: dict[str, Any]) -> dict[str, Any]:
        return {**super().lora_config(model, adapter_cfg), "use_dora": True}


class Full(AdapterKind):
    """Full fine-tune: every weight of the base trains (no quantized base)."""

    trains_base = True

    def apply(self, model: Any, adapter_cfg: dict[str, Any]) -> Any:
        return model.requires_grad_(True)


#: The kinds the core registers: name -> class (its docstring's first line is the description).
ADAPTERS: dict[str, type[AdapterKind]] = {"lora": LoRA, "qlora": QLoRA, "dora": DoRA, "full": Full}


def builtin_adapter(name: str) -> AdapterKind:
    """A core kind by name, for a model prepared outside a run (tests, benchmarks); a run uses the registry."""
    from ..errors import FtcoreError

    if name not in ADAPTERS:
        raise FtcoreError(f"{name!r} is not one of the core's adapter kinds ({', '.join(ADAPTERS)})", hint="pass the adapter kind object")
    return ADAPTERS[name]()
