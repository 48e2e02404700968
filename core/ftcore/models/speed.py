"""``speed: auto``: the training levers chosen from the GPU's free memory and the run's shape.

A lever the recipe sets is kept as set; ``auto`` fills in only the ones it leaves open (``null``).
The choice is data — a :class:`Choice` with the values and the reason for each — made by
:func:`choose` from a :class:`Shape` (read off the model's config) and the free memory, so it is
unit-tested from synthetic figures. Memory is estimated per token and layer from measurements on
an H200 (benchmarks/RESULTS.md, "speed: auto"); a chosen setting that still runs out of memory
falls back once to gradient checkpointing (:meth:`Choice.fallback`).

What is fastest, in order (measured, 1.8B and 7B shapes): no gradient checkpointing (recompute
costs about a quarter of a step), then larger micro batches (up to about 16k tokens each), then
``compile`` (1.5x on 1.8B LoRA, but a minute of compiling the first time: only for runs long
enough to repay it). Adapters always get the fused LoRA forward (the same loss and gradients as
peft's, with less memory traffic). Offloading activations or embeddings only saves memory, so it is
chosen only where nothing else fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The model levers, with their value where nothing chooses them (``speed: manual`` and CPU runs).
MANUAL = {"gradient_checkpointing": True, "offload_activations": False, "offload_embeddings": False, "fused_lora": False, "compile": False, "fp8_base": False,
          "compile_memory_budget": 1.0, "mlp_chunk_tokens": 0}
#: Levers ``auto`` leaves at their manual value unless the recipe sets them (they change the numbers).
NEVER_CHOSEN = frozenset({"fp8_base"})
#: Tokens per MLP slice ``auto`` picks when a sample does not fit even with its layer inputs in CPU memory.
MLP_CHUNK = 8192
#: The compiled layers' activation memory budget ``auto`` lowers to when that lets a step skip
#: gradient checkpointing or take a larger micro batch (recomputing elementwise results is cheap).
LOW_BUDGET = 0.9
#: Share of a step's time left when the compiled layers recompute elementwise results (an estimate).
RECOMPUTE_COST = 0.98
GIB = 2**30
#: Tokens per micro batch beyond which a larger micro batch no longer speeds up a step.
MAX_MICRO_TOKENS = 16384
#: A run compiles when it trains at least this many tokens (about five minutes of a 1.8B LoRA on an
#: H200: compiling the layers takes about a minute the first time and repays it from there).
COMPILE_MIN_TOKENS = 10_000_000
#: Share of a step's time left when layers are recomputed in backward (gradient checkpointing), measured.
CHECKPOINTING_COST = 0.74
#: Free memory ``auto`` leaves unplanned (allocator fragmentation, CUDA workspaces, the estimate's error).
HEADROOM = 0.12
RESERVE = 1.5 * GIB


@dataclass(frozen=True)
class Shape:
    """What memory and speed depend on, read off a model's config and the run's settings."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_dim: int
    max_length: int
    #: the whole model trains (full fine-tune) rather than an adapter
    trains_base: bool = False
    #: LoRA rank (for the trainable-parameter estimate)
    rank: int = 64
    #: total parameters of the base (full fine-tunes: gradients and optimizer state for each)
    params: int = 0
    #: optimizer state bytes per trainable parameter (AdamW 8, 8-bit AdamW 2)
    state_bytes: int = 8
    #: tokens the whole run trains (an upper bound: rows x max_length x epochs)
    run_tokens: int = 0

    @classmethod
    def of(cls, config: Any, max_length: int, trains_base: bool, rank: int, params: int, optimizer: str, run_tokens: int) -> "Shape":
        text = getattr(config, "text_config", None) or config  # multimodal models: the language model's
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv = getattr(text, "num_key_value_heads", None) or heads
        return cls(layers=text.num_hidden_layers, hidden=text.hidden_size, intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
                   vocab=text.vocab_size, kv_dim=kv * head_dim, max_length=max_length, trains_base=trains_base, rank=rank,
                   params=params, state_bytes=2 if "8bit" in optimizer else 8, run_tokens=run_tokens)

    def trainable(self) -> int:
        """Trainable parameters: every base weight, or LoRA on every linear layer of each decoder layer."""
        if self.trains_base:
            return self.params
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return self.layers * self.rank * (9 * h + 2 * kv + 3 * i)  # q, k, v, o, gate, up, down: rank x (in + out)

    def layer_bytes(self, tokens: int, compiled: bool, budget: float = 1.0, mlp_chunk: int = 0) -> int:
        """Activations one decoder layer keeps for backward over ``tokens`` (bf16; compiled layers
        keep fewer intermediates: the fused norm, RoPE and SwiGLU; under a memory budget below 1 they
        recompute the SwiGLU product and a norm output, benchmarks/saved_activations.py; a sliced MLP
        holds one slice's wide intermediates at a time)."""
        h, i = self.hidden, self.intermediate
        if not compiled:
            narrow, wide = 13 * h, 4.5 * i
        else:
            narrow, wide = (9 * h, 3 * i) if budget >= 1 else (8 * h, 2 * i)
        if mlp_chunk and mlp_chunk < tokens:
            wide *= mlp_chunk / tokens
        return int(tokens * 2 * (narrow + wide))

    def need(self, tokens: int, levers: dict[str, Any]) -> int:
        """Bytes a step needs on the GPU beyond the loaded weights, with ``levers``."""
        compiled = bool(levers.get("compile"))
        one_layer = self.layer_bytes(tokens, compiled, levers.get("compile_memory_budget") or 1.0, levers.get("mlp_chunk_tokens") or 0)
        if not levers.get("gradient_checkpointing"):
            acts = self.layers * one_layer
        elif levers.get("offload_activations"):
            acts = 2 * one_layer  # the layer being recomputed and the next one's prefetched input
        else:
            acts = self.layers * tokens * 2 * self.hidden + one_layer  # each layer's input, plus one layer replayed
        # trainable weights in fp32 with their gradient (full fine-tunes: bf16 gradients), optimizer state
        weights = self.trainable() * ((2 if self.trains_base else 8) + self.state_bytes)
        head = 4 * 640 * self.vocab * 2 + tokens * self.hidden * 4  # a loss-head chunk's logits and gradient, the final hidden states
        return int(acts + weights + head)


@dataclass
class Choice:
    """The levers and micro batch ``auto`` settled on, and why."""

    levers: dict[str, Any]
    micro_batch: int
    grad_accum: int
    reasons: list[str] = field(default_factory=list)
    #: whether a runtime out-of-memory may still turn gradient checkpointing on (once)
    can_fall_back: bool = False

    def summary(self) -> str:
        on = []  # switches that are on, and settings that differ from their manual value
        for name, value in self.levers.items():
            if value is True or (not isinstance(value, bool) and value != MANUAL.get(name)):
                on.append(name.replace("_", " ") + ("" if isinstance(value, bool) else f" {value}"))
        head = f"speed auto: micro batch {self.micro_batch} x grad_accum {self.grad_accum}; " + (", ".join(on) if on else "no extra levers")
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


def _options(rows_per_step: int, max_length: int) -> list[int]:
    """Micro batches that divide the rows of an optimizer step, largest first, up to MAX_MICRO_TOKENS tokens."""
    sizes = [m for m in range(1, rows_per_step + 1) if rows_per_step % m == 0 and (m == 1 or m * max_length <= MAX_MICRO_TOKENS)]
    return sorted(sizes, reverse=True)


def _speed(tokens: int, checkpointing: bool) -> float:
    """Relative tokens/s of a micro batch of ``tokens`` (small batches leave the GPU waiting on launches)."""
    return tokens / (tokens + 3000) * (CHECKPOINTING_COST if checkpointing else 1.0)


def choose(shape: Shape | None, free: int, model_cfg: dict[str, Any], train_cfg: dict[str, Any], cuda: bool) -> Choice:
    """The levers for a run: those ``model_cfg``/``train_cfg`` set (non-null) are kept; the rest are
    chosen for speed within ``free`` bytes of GPU memory (measured after the weights loaded)."""
    fixed = {k: model_cfg.get(k) for k in MANUAL if model_cfg.get(k) is not None}
    user_micro = train_cfg.get("micro_batch")
    grad_accum = train_cfg["grad_accum"]
    if not cuda or shape is None:
        why = "a CPU run" if not cuda else "the model's config does not give its shape (layers, hidden size, heads)"
        return Choice({**MANUAL, **fixed}, user_micro or 1, grad_accum, [f"{why}: the levers as the recipe sets them, gradient checkpointing on otherwise"])
    reasons: list[str] = []
    levers = dict(fixed)
    if "compile" not in fixed:
        levers["compile"] = shape.run_tokens >= COMPILE_MIN_TOKENS
        reasons.append(f"compile {'on' if levers['compile'] else 'off'}: the run trains up to {shape.run_tokens / 1e6:.1f}M tokens "
                       f"({'enough' if levers['compile'] else 'too few'} to repay about a minute of compiling; threshold {COMPILE_MIN_TOKENS / 1e6:.0f}M)")
    if "fused_lora" not in fixed and not shape.trains_base:
        levers["fused_lora"] = True
        reasons.append("fused lora on: each LoRA product is added into the base output inside its GEMM (peft's loss and gradients, "
                       "less memory traffic: +25% on 1.8B QLoRA DPO)")
    if levers.get("offload_activations"):
        levers.setdefault("gradient_checkpointing", True)  # offload keeps the checkpointed layers' inputs
    budget = max(0, int(free * (1 - HEADROOM) - RESERVE))
    sizes = [user_micro] if user_micro else _options(grad_accum, shape.max_length)
    rows_per_step = (user_micro or 1) * grad_accum
    budgets = [levers["compile_memory_budget"]] if "compile_memory_budget" in levers else [1.0, LOW_BUDGET] if levers.get("compile") else [1.0]
    candidates = []
    for gc in ([levers["gradient_checkpointing"]] if "gradient_checkpointing" in levers else [False, True]):
        for m in sizes:
            for low in budgets:
                trial = {**MANUAL, **levers, "gradient_checkpointing": gc, "compile_memory_budget": low}
                if shape.need(m * shape.max_length, trial) <= budget:
                    candidates.append((_speed(m * shape.max_length, gc) * (RECOMPUTE_COST if low < 1 else 1.0), m, gc, low))
    if candidates:
        _, micro, gc, low = max(candidates)
        levers["gradient_checkpointing"] = gc
        levers["compile_memory_budget"] = low
        need = shape.need(micro * shape.max_length, {**MANUAL, **levers})
        reasons.append(f"gradient checkpointing {'on' if gc else 'off'}, micro batch {micro} ({micro * shape.max_length} tokens): "
                       f"about {need / GIB:.1f} GiB of the {free / GIB:.1f} GiB free" + ("" if gc else " without recomputing layers"))
        if low < 1:
            reasons.append(f"compile memory budget {low}: the compiled layers recompute cheap elementwise results in backward, so that fits")
    else:  # nothing fits as is: keep every layer's input in CPU memory, and the embeddings
        micro, gc = sizes[-1], True
        levers.update(gradient_checkpointing=True)
        levers.setdefault("offload_activations", True)
        levers.setdefault("offload_embeddings", True)
        need = shape.need(micro * shape.max_length, {**MANUAL, **levers})
        reasons.append(f"tight memory ({free / GIB:.1f} GiB free, about {need / GIB:.1f} GiB needed at micro batch {micro}): "
                       "gradient checkpointing with layer inputs and embeddings in CPU memory")
        if need > budget and "mlp_chunk_tokens" not in fixed and shape.max_length > MLP_CHUNK:
            levers["mlp_chunk_tokens"] = MLP_CHUNK
            need = shape.need(micro * shape.max_length, {**MANUAL, **levers})
            reasons.append(f"still tight: each MLP runs over {MLP_CHUNK} tokens at a time (about {need / GIB:.1f} GiB)")
    for lever, value in MANUAL.items():
        levers.setdefault(lever, value)
    if user_micro is None and micro != 1:
        reasons.append(f"{rows_per_step} rows an optimizer step as the recipe has them: {micro} per micro batch x {rows_per_step // micro}")
    can_fall_back = not levers["gradient_checkpointing"] and "gradient_checkpointing" not in fixed
    return Choice(levers, micro, rows_per_step // micro, reasons, can_fall_back)


def free_memory(device: Any) -> int:
    """Bytes this process can still allocate on the GPU ``device``: what the device has free, or less
    where the process is capped (``torch.cuda.set_per_process_memory_fraction``), counting what it
    holds already."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(device)
    if fraction < 1.0:
        free = min(free, int(fraction * total) - torch.cuda.memory_reserved(device))
    return max(0, int(free))


def resolve(recipe: Any, model: Any, row_lengths: Any, trains_base: bool, device: Any, strategy: Any, previous: Any = None) -> Choice:
    """Choose the levers ``recipe`` leaves null for ``model`` (loaded, on ``device``) and write them
    into the recipe. ``row_lengths``: tokens in each packed row of the training data; ``previous``:
    the recipe of the checkpoint a run resumes from, whose choices it keeps (the same schedule)."""
    model_cfg, train_cfg, adapter_cfg = recipe["model"], recipe["train"], recipe["adapter"]
    if previous is not None:
        for key in MANUAL:
            if model_cfg.get(key) is None:
                model_cfg[key] = previous["model"].get(key)
        if train_cfg.get("micro_batch") is None:
            train_cfg["micro_batch"], train_cfg["grad_accum"] = previous["train"]["micro_batch"], previous["train"]["grad_accum"]
    cuda = device.type == "cuda"
    free = 0
    if cuda:
        mine = max(0, free_memory(device) - strategy.memory_change(model)) if strategy.is_main else 0  # as it will be once the strategy placed the model
        free = int(strategy.all_reduce_sum(float(mine)))  # rank 0's figure: every rank chooses alike
    import numpy as np

    row_lengths = np.asarray(row_lengths)
    rows = len(row_lengths)
    split = train_cfg.get("sequence_parallel") or 1  # processes that share each row: a row's tokens each
    rows_per_step = (train_cfg.get("micro_batch") or 1) * train_cfg["grad_accum"] * max(1, strategy.world_size // split)
    steps = train_cfg["max_steps"] or -(-int(train_cfg["epochs"] * rows) // rows_per_step)
    mean_row = float(row_lengths.mean()) if rows else 0.0
    try:
        shape = Shape.of(model.config, -(-int(row_lengths.max()) // split) if rows else 1, trains_base, int(adapter_cfg.get("r") or 64),
                         sum(p.numel() for p in model.parameters()), train_cfg["optimizer"], run_tokens=int(steps * rows_per_step * mean_row)) if cuda else None
    except (AttributeError, TypeError):  # a config without the usual fields: the manual levers
        shape = None
    choice = choose(shape, free, model_cfg, train_cfg, cuda)
    if strategy.world_size > 1:
        choice.can_fall_back = False
    model_cfg.update(choice.levers)
    train_cfg["micro_batch"], train_cfg["grad_accum"] = choice.micro_batch, choice.grad_accum
    return choice


def describe(data: dict[str, Any]) -> str:
    """One line for ``run --dry-run``: the levers the recipe sets and those ``auto`` will choose."""
    levers = {**{k: data["model"].get(k) for k in MANUAL}, "micro_batch": data["train"].get("micro_batch")}
    open_ = [k for k, v in levers.items() if v is None and k not in NEVER_CHOSEN]
    set_ = [f"{k}={v}" for k, v in levers.items() if v is not None]
    mode = data.get("speed", "auto")
    if mode == "auto" and open_:
        return f"auto: {', '.join(open_)} chosen from the GPU's free memory when the model has loaded" + (f"; set: {', '.join(set_)}" if set_ else "")
    return f"{mode}: {', '.join(set_)}"


def fall_back(model: Any) -> str:
    """After an out-of-memory error under ``speed: auto``: turn gradient checkpointing on (once)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return ("speed auto: the step ran out of GPU memory without gradient checkpointing; "
            "turned it on and retrying the step (set model.gradient_checkpointing=true to start that way)")
