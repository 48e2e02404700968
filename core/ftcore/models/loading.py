"""Loading a base model for training: builder and tokenizer, precision, quantisation (NF4/int8), LoRA targets, compile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import FtcoreError

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def builder_and_tokenizer(model_cfg: dict[str, Any], parts: Any) -> tuple[Any, Any]:
    """The run's model builder (configured with its ``model.*`` options when it takes them)
    and the tokenizer it loads, with a pad token."""
    part = parts.models.part(model_cfg["builder"])
    builder = part.build(model_cfg, parts, **{key: model_cfg[key] for key in part.options})
    tokenizer = builder.load_tokenizer(model_cfg["tokenizer_path"] or model_cfg["path"], trust_remote_code=model_cfg["trust_remote_code"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return builder, tokenizer


def resolve_precision(requested: str, device: Any) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    import torch

    if requested != "auto":
        if device.type == "cpu" and requested == "fp16":
            raise FtcoreError("fp16 training needs a GPU", where="train.precision", hint="use fp32 or bf16 on CPU")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def quantization_config(kind: str, double_quant: bool, compute_dtype: Any, storage_dtype: Any = None) -> Any:
    """A bitsandbytes config for ``nf4``/``fp4``/``int8``, or None for ``none``; ``storage_dtype``: the
    dtype 4-bit weights are packed into (``bnb_4bit_quant_storage``; uint8 by default)."""
    if kind == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise FtcoreError(f"model.quantization={kind} needs bitsandbytes ({exc})", hint="pip install 'ftcore[quant]'") from None
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        **({"bnb_4bit_quant_storage": storage_dtype} if storage_dtype is not None else {}),
    )


def load_base_model(model_cfg: dict[str, Any], builder: Any, device: Any, precision: str, device_map: Any = None, head: str = "causal_lm",
                    quant_storage: bool = False) -> Any:
    """The base model in the training dtype (quantized if asked), on ``device``; ``head``: the model
    class's head as the objective needs it (``causal_lm``, or ``sequence_classification`` for a reward model);
    ``quant_storage``: pack 4-bit weights into that dtype too (a strategy that shards parameters needs one dtype)."""
    import torch

    dtype = getattr(torch, DTYPES[precision])
    if model_cfg["dtype"] != "auto":
        dtype = getattr(torch, DTYPES[model_cfg["dtype"]])
    quant = quantization_config(model_cfg["quantization"], model_cfg["double_quant"], dtype, dtype if quant_storage else None)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": bool(model_cfg["trust_remote_code"])}
    if model_cfg["attn_implementation"] != "auto":
        kwargs["attn_implementation"] = model_cfg["attn_implementation"]
    else:
        from .varlen import register

        kwargs["attn_implementation"] = register()  # packed samples attend only to themselves
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device_map or ({"": device.index or 0} if device.type == "cuda" else {"": "cpu"})
    if head != "causal_lm":  # a builder's load_model takes `head` when it can build that head
        kwargs["head"] = head
    model = builder.load_model(model_cfg["path"], **kwargs)
    if quant is None:
        model.to(device)
    model.config.use_cache = False
    return model


def lora_targets(model: Any, targets: Any) -> Any:
    """``all-linear`` -> every linear layer's module name except the LM head; else as given."""
    if targets != "all-linear":
        return targets
    import torch

    try:
        import bitsandbytes as bnb

        linear_types: tuple[type, ...] = (torch.nn.Linear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    except ImportError:
        linear_types = (torch.nn.Linear,)
    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, linear_types) and mod is not head}
    return sorted(names)


#: ``torch.compile`` options for each decoder layer. Dynamic shapes: packed micro batches vary in
#: length, and one compiled graph serves them all instead of one recompile per length.
COMPILE_OPTIONS: dict[str, Any] = {"dynamic": True}


def decoder_layers(model: Any) -> list[Any]:
    """The model's repeated blocks (the classes its ``_no_split_modules`` names), under any peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in kinds]


def compile_layers(model: Any, memory_budget: float = 1.0) -> int:
    """``torch.compile`` every decoder layer in place (regional compilation: the layers share one
    compiled graph, so compiling costs one layer's time, not the model's). Returns how many.
    ``memory_budget`` below 1: the share of the saved activations the compiled layers keep
    (the compiler recomputes the cheapest of the rest in backward; it applies process-wide)."""
    import torch._functorch.config as functorch_config

    layers = decoder_layers(model)
    if not layers:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        raise FtcoreError(
            f"model.compile: cannot find the decoder layers of {type(base).__name__} (it names none in _no_split_modules)",
            where="model.compile",
            hint="set model.compile=false",
        )
    cache_compiled()
    functorch_config.activation_memory_budget = memory_budget
    for layer in layers:
        layer.compile(**COMPILE_OPTIONS)
    return len(layers)


def cache_compiled() -> None:
    """Keep compiled kernels and graphs across runs (inductor's FX graph and AOTAutograd caches, in
    ``~/.cache/ftcore/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` says where): a second run of the
    same shape compiles in seconds instead of a minute."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "ftcore" / "inductor"))
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
