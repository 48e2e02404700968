"""The training plan: the model transforms, in their one order, and what they tell the loop.

Preparing a model for training applies a fixed sequence of transforms (the table
``TRANSFORMS``), each only when the recipe asks for it. Their order matters: the loss head
goes in before peft wraps the model (so the adapter never targets it); the base is frozen
before gradient checkpointing is enabled; checkpointed layers are offloaded before peft
wraps them (so the replay skip finds the base layers); the adapter kind (a registered
:class:`~ftcore.models.adapters.AdapterKind`: LoRA, DoRA, a full fine-tune, ...) makes the model
trainable in the middle; the fused LoRA forward, the FP8 base (which replaces the frozen layers
under peft's) and the replay skip need peft's layers; the
embeddings move to the CPU after the adapter is attached; the MLPs are sliced over tokens around
peft's layers; and ``compile`` comes last, over the final modules.

What the transforms decide for the loop travels in the :class:`TrainingPlan` they return —
whether batches go flat, which inputs stay in CPU memory, the loss head — so the loop and the
objectives read it from one object instead of probing the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..data import IGNORE
from ..errors import FtcoreError


@dataclass
class TrainingPlan:
    """A model prepared for training and how batches must reach it."""

    model: Any
    #: micro batches are laid end to end as one flat row with sample boundaries (varlen attention)
    flat: bool = False
    #: batch keys that stay in CPU memory (the loss head picks trained positions there; offloaded
    #: embeddings look up ``input_ids`` there)
    cpu_inputs: tuple[str, ...] = ()
    #: the chunked loss head, when installed (:mod:`ftcore.models.loss_head`)
    loss_head: Any = None
    #: the adapter kind that made the model trainable (:class:`ftcore.models.adapters.AdapterKind`)
    adapter: Any = None
    #: the transforms applied, in order (shown in the run's log)
    applied: list[str] = field(default_factory=list)
    #: what to change after a step runs out of GPU memory (``speed: auto``; used once): takes the
    #: model, returns the message to show
    fallback: Callable[[Any], str] | None = None
    #: what trains, in words, for the run's log (empty: the adapter kind)
    trains: str = ""
    #: the sequence-parallel group when each process trains a slice of every row
    #: (:mod:`ftcore.models.sequence_parallel`)
    sequence_parallel: Any = None

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch's model inputs: tensors except the labels, with a flat batch's sample
        boundaries attached where the varlen attention finds them."""
        import torch

        from .varlen import attach_boundaries

        inputs = attach_boundaries({k: v for k, v in batch.items() if k not in ("labels", "sequence_length") and isinstance(v, (torch.Tensor, int))})
        if self.sequence_parallel is not None and "sequence_length" in batch:
            from .sequence_parallel import mark

            mark(inputs["position_ids"], self.sequence_parallel, batch["sequence_length"])
        return inputs

    def token_nll(self, model: Any, batch: dict[str, Any], reduction: str = "sum") -> tuple[Any, Any]:
        """Next-token negative log-likelihood at the trained positions of ``batch["labels"]``.

        ``reduction="sum"``: the summed NLL (0-d); ``"none"``: one value per trained position,
        with the positions (indices into the flattened shifted labels, ``labels[:, 1:]``) as the
        second result. With a loss head the full logits never exist at once. ``model`` is the
        model as the strategy wrapped it (DDP, DeepSpeed), which must run the forward.
        """
        import torch
        import torch.nn.functional as F

        labels = batch["labels"]
        inputs = self.inputs(batch)
        if self.loss_head is not None:  # the head returns the loss itself, inside the model's forward
            with self.loss_head.computing(labels, reduction) as result:
                result.value = model(**inputs, use_cache=False).logits
            return result.value, result.positions
        logits = model(**inputs, use_cache=False).logits
        targets = labels[:, 1:].reshape(-1).to(logits.device)
        flat = (logits if labels.shape[1] > logits.shape[1] else logits[:, :-1]).reshape(-1, logits.shape[-1]).float()  # a sequence-parallel slice: every position has a target
        if reduction == "sum":
            return F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="sum"), None
        keep = (targets != IGNORE).nonzero().squeeze(1)
        return F.cross_entropy(flat.index_select(0, keep), targets.index_select(0, keep), reduction="none"), keep


@dataclass(frozen=True)
class Transform:
    """One step of preparing a model: applied when ``wanted(model_cfg, adapter)`` (the adapter kind)."""

    name: str
    wanted: Callable[[dict[str, Any], Any], bool]
    apply: Callable[[Any, dict[str, Any], dict[str, Any], TrainingPlan], Any]


def _loss_head(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    from .loss_head import install_loss_head

    install_loss_head(model)  # finish_plan finds it inside whatever wraps the model later
    return model


def _freeze_quantized(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    # peft's prepare_model_for_kbit_training also upcasts every non-quantized weight (norms,
    # embeddings, head) to fp32, which makes activations fp32 and adds a cast around every
    # layer (a quarter of the GPU time on an H100, see RESULTS.md). The base is frozen either
    # way; we keep its dtype and only freeze it.
    return model.requires_grad_(False)


def _checkpointing(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _offload_activations(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    from .offload import offload_checkpointed_inputs

    if not model_cfg["gradient_checkpointing"] or not offload_checkpointed_inputs(model):
        raise FtcoreError(
            "model.offload_activations keeps the inputs of gradient-checkpointed layers on the CPU, but no layer is checkpointed",
            where="model.offload_activations",
            hint="set model.gradient_checkpointing=true (or drop model.offload_activations)",
        )
    return model


def _train_mode(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    model.train()  # from_pretrained returns eval mode: no dropout, no gradient checkpointing
    return model


def _adapter(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    start = model_cfg.get("adapter")
    if not start:
        return plan.adapter.apply(model, adapter_cfg)
    if plan.adapter.trains_base:  # continue training a trained adapter (e.g. SFT, then DPO)
        raise FtcoreError("model.adapter continues a trained adapter, but adapter.kind trains the whole model", where="model.adapter",
                          hint="use adapter.kind: lora or qlora (the adapter's own rank and targets apply), or drop model.adapter")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(start), is_trainable=True)


def _fused_lora(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    from .fused_lora import fuse_lora_layers

    fuse_lora_layers(model)
    return model


def _fp8_base(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    from .fp8 import check_device, convert_frozen_linears

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    device = next(model.parameters()).device
    check_device(device)
    if not convert_frozen_linears(model, skip=(head,) if head is not None else ()):
        raise FtcoreError("model.fp8_base found no frozen linear layer to run in FP8", where="model.fp8_base",
                          hint="drop model.fp8_base (it speeds up adapters on a frozen base; sizes must be multiples of 16)")
    return model


def _replay_skip(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    from .replay import skip_in_replay  # ftcore's own offloaded checkpoint marks its replays

    skip_in_replay(model)
    return model


def _offload_embeddings(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    from .offload import offload_embeddings

    offload_embeddings(model)
    plan.cpu_inputs += ("input_ids",)
    return model


def _chunked_mlp(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    from .chunked_mlp import chunk_mlps

    if not chunk_mlps(model, int(model_cfg["mlp_chunk_tokens"])):
        raise FtcoreError("model.mlp_chunk_tokens found no decoder layer with an `mlp` to slice", where="model.mlp_chunk_tokens",
                          hint="drop model.mlp_chunk_tokens (it is for models whose decoder layers have an mlp module)")
    return model


def _compile(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], plan: TrainingPlan) -> Any:
    from .loading import compile_layers
    from .loss_head import find_loss_head

    compile_layers(model, memory_budget=model_cfg.get("compile_memory_budget") or 1.0)
    head = find_loss_head(model)
    if head is not None:
        head.compile_softmax()
    return model


#: Every transform, in the one order they are applied (see the module docstring for why).
TRANSFORMS: list[Transform] = [
    Transform("chunked loss head", lambda m, a: bool(m.get("chunked_loss", True)), _loss_head),
    Transform("frozen quantized base", lambda m, a: m["quantization"] != "none", _freeze_quantized),
    Transform("gradient checkpointing", lambda m, a: bool(m["gradient_checkpointing"]), _checkpointing),
    Transform("activation offload", lambda m, a: bool(m.get("offload_activations")), _offload_activations),
    Transform("train mode", lambda m, a: True, _train_mode),
    Transform("adapter", lambda m, a: True, _adapter),
    Transform("fused lora", lambda m, a: not a.trains_base and bool(m.get("fused_lora")), _fused_lora),
    Transform("fp8 base", lambda m, a: not a.trains_base and bool(m.get("fp8_base")), _fp8_base),
    Transform("replay skip", lambda m, a: bool(m.get("offload_activations")), _replay_skip),
    Transform("embedding offload", lambda m, a: bool(m.get("offload_embeddings")), _offload_embeddings),
    Transform("chunked mlp", lambda m, a: bool(m.get("mlp_chunk_tokens")), _chunked_mlp),
    Transform("compile", lambda m, a: bool(m.get("compile")), _compile),
]


def prepare_for_training(model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], adapter: Any = None) -> TrainingPlan:
    """Apply the wanted :data:`TRANSFORMS` in order; the plan says how to feed the result.

    ``adapter`` is the run's adapter kind (made from the registry); without it, the core's kind
    named by ``adapter_cfg["kind"]`` (for models prepared outside a run).
    """
    if adapter is None:
        from .adapters import builtin_adapter

        adapter = builtin_adapter(adapter_cfg["kind"])
    plan = TrainingPlan(model, adapter=adapter)
    for transform in TRANSFORMS:
        if transform.wanted(model_cfg, adapter):
            model = transform.apply(model, model_cfg, adapter_cfg, plan)
            plan.applied.append(transform.name)
    plan.model = model
    return finish_plan(plan)


def finish_plan(plan: TrainingPlan, flat: bool = True) -> TrainingPlan:
    """Fill in what follows from the prepared model: flat batches where its attention is the
    varlen one (and ``flat`` allows), and the labels in CPU memory where a loss head reads them."""
    from .loss_head import find_loss_head
    from .varlen import NAME

    if plan.loss_head is None:
        plan.loss_head = find_loss_head(plan.model)
    config = getattr(plan.model, "config", None)
    plan.flat = flat and getattr(config, "_attn_implementation", None) == NAME
    if plan.loss_head is not None and "labels" not in plan.cpu_inputs:
        plan.cpu_inputs += ("labels",)
    return plan
