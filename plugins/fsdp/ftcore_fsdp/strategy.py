"""The ``fsdp`` strategy: PyTorch FSDP2 (``fully_shard`` on each decoder layer, then the root).

Every process holds a shard of every parameter, gradient and optimizer state; a layer's whole
parameters exist only while it runs. Checkpoints hold the same model files as a one-process run
(the trained weights gathered on the main process) and, beside them, the sharded trainable weights
and optimizer state as a ``torch.distributed.checkpoint`` folder (``fsdp/``) that resume reads.

FSDP-QLoRA: the 4-bit base keeps its packed weights in the compute dtype
(``bnb_4bit_quant_storage``, see :attr:`FSDP.quant_storage_in_compute_dtype`), so a layer's packed
base weights, norms and LoRA weights shard as one flat buffer of one dtype.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any, Iterator

from ftcore.api import DDPStrategy, FtcoreError, Option, Problem, ValidationError, decoder_layers

STATE_DIR = "fsdp"
SCHEDULER_FILE = "scheduler.pt"


def refusals(recipe: Any, precision: str, offload_params: bool, device: Any) -> list[tuple[str, str, str]]:
    """``(key, what is wrong, what to do)`` for each setting FSDP cannot run with (checked before anything loads)."""
    model = recipe["model"]
    found = []
    if precision == "fp16":
        found.append(("train.precision", "fsdp trains in bf16 or fp32, not fp16 (no sharded loss scaling here)",
                      "use train.precision=bf16 (a GPU without bf16: strategy.name=ddp or zero2)"))
    if model["quantization"] == "int8":
        found.append(("model.quantization", "fsdp cannot shard an 8-bit (LLM.int8) base",
                      "use model.quantization=nf4 (FSDP-QLoRA), or strategy.name=ddp"))
    if model.get("offload_embeddings"):
        found.append(("model.offload_embeddings", "fsdp shards the embeddings with the model; they cannot also stay in CPU memory",
                      "set model.offload_embeddings=false (strategy.offload_params=true keeps every shard in CPU memory)"))
    if model.get("fp8_base"):
        found.append(("model.fp8_base", "the FP8 base is held in buffers, which fsdp does not shard: every GPU would hold the whole base",
                      "drop model.fp8_base, or use strategy.name=ddp (each GPU holds the base anyway)"))
    if offload_params and device.type != "cuda":
        found.append(("strategy.offload_params", f"moves parameters from the GPU to CPU memory, but this run is on {device.type}",
                      "drop strategy.offload_params"))
    return found


class FSDP(DDPStrategy):
    """PyTorch FSDP2 over every process (NCCL on GPUs, gloo on CPU); LoRA, QLoRA (4-bit base) and full fine-tunes."""

    name = "fsdp"
    #: resume restores the trainable weights from the sharded state (``fsdp/``), not from the model files
    restores_model = True
    #: a 4-bit base stores its packed weights in the compute dtype, so they shard with the rest of their layer
    quant_storage_in_compute_dtype = True

    def __init__(
        self,
        recipe: Any,
        precision: str,
        offload_params: Annotated[bool, Option("keep the parameter, gradient and optimizer-state shards in CPU memory (FSDP2's CPUOffloadPolicy; the optimizer steps on the CPU): for models the GPUs cannot hold, slower")] = False,
        reshard_after_forward: Annotated[bool, Option("free each layer's gathered parameters after its forward and gather them again for the backward (least memory); false keeps them until the backward (less communication)")] = True,
        load_in_cpu_memory: Annotated[bool, Option("load (and quantize) the base in CPU memory; sharding then moves each layer's shard to the GPU, so no GPU ever holds the whole model: for a model larger than one GPU (e.g. 70B QLoRA on two 24 GiB cards); slower to start")] = False,
    ) -> None:
        super().__init__(recipe, precision)
        self.offload_params, self.reshard_after_forward, self.load_in_cpu_memory = offload_params, reshard_after_forward, load_in_cpu_memory
        problems = refusals(recipe, precision, offload_params, self.device)
        if len(problems) == 1:
            key, what, hint = problems[0]
            raise FtcoreError(what, where=key, hint=hint)
        if problems:
            raise ValidationError(problems=[Problem(key, what, hint=hint) for key, what, hint in problems], source="strategy fsdp")
        if recipe["model"].get("offload_embeddings") is None:
            recipe["model"]["offload_embeddings"] = False  # speed: auto must not choose it either

    @property
    def load_device(self) -> Any:
        import torch

        return torch.device("cpu") if self.load_in_cpu_memory else self.device

    def memory_change(self, model: Any) -> int:
        """Each device ends up with a 1/world share of every parameter and buffer (none with
        ``offload_params``: the shards stay in CPU memory), whatever it holds now."""
        import itertools

        tensors = list(itertools.chain(model.parameters(), model.buffers()))
        here = sum(t.numel() * t.element_size() for t in tensors if t.device == self.device)
        share = 0 if self.offload_params else sum(t.numel() * t.element_size() for t in tensors) // self.world_size
        return share - here

    def mixed_precision(self, model: Any) -> Any:
        """bf16 gathers and fp32 gradient reduction when the model's weights are not all one dtype
        (LoRA weights in fp32 on a bf16 base); None when they are (FSDP2 then keeps them as they are)."""
        import torch
        from torch.distributed.fsdp import MixedPrecisionPolicy

        base = model.get_input_embeddings().weight.dtype  # the dtype the base loaded in (packed 4-bit weights too)
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if dtypes <= {base}:
            return None
        return MixedPrecisionPolicy(param_dtype=base, reduce_dtype=torch.float32)

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

        names = {id(p): name for name, p in model.named_parameters()}
        options: dict[str, Any] = {"mesh": init_device_mesh(self.device.type, (self.world_size,)), "reshard_after_forward": self.reshard_after_forward}
        policy = self.mixed_precision(model)
        if policy is not None:
            options["mp_policy"] = policy
        if self.offload_params:
            options["offload_policy"] = CPUOffloadPolicy()
        for layer in decoder_layers(model):
            fully_shard(layer, **options)  # a layer loaded in CPU memory moves to the device here, one at a time
        fully_shard(model, **options)
        for module in model.modules():  # a 4-bit layer's quantization constants stay whole, on every device
            state = getattr(module, "quant_state", None)
            if state is not None and callable(getattr(state, "to", None)):
                state.to(self.device)
        # fully_shard replaces every parameter with its sharded DTensor: the optimizer (made before,
        # with no state yet) steps the shards instead.
        sharded = dict(model.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(p)]] for p in group["params"]]
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        return model, optimizer, scheduler

    def backward(self, loss: Any, last: bool = True) -> None:
        loss.backward()  # each micro batch's gradients are reduce-scattered into the shards

    def step(self) -> float:
        import torch
        from torch.distributed.tensor import DTensor

        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def unwrap(self, model: Any) -> Any:
        return model  # FSDP2 shards the model in place: there is no wrapper

    def _state_options(self, **extra: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(ignore_frozen_params=True, **extra)  # what trains; the frozen base comes from model.path

    @contextlib.contextmanager
    def gathered(self, model: Any) -> Iterator[None]:
        """On the main process, every trained parameter whole (in CPU memory) while the model files are
        written: the same files, names and shapes a one-process run writes. Every process takes part."""
        import torch
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(model, options=self._state_options(full_state_dict=True, cpu_offload=True))
        swapped: list[tuple[Any, str, Any]] = []
        if self.is_main:
            whole = {id(p): torch.nn.Parameter(full[name], requires_grad=p.requires_grad) for name, p in model.named_parameters() if name in full}
            for module in model.modules():
                for attr, p in list(module._parameters.items()):
                    if p is not None and id(p) in whole:
                        swapped.append((module, attr, p))
                        module._parameters[attr] = whole[id(p)]
        try:
            yield
        finally:
            for module, attr, p in swapped:
                module._parameters[attr] = p

    def save_state(self, folder: Path) -> None:
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=self._state_options())
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder / STATE_DIR))
        if self.is_main:
            torch.save({"scheduler": self.scheduler.state_dict()}, folder / SCHEDULER_FILE)

    def load_state(self, folder: Path) -> None:
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if not (folder / STATE_DIR / ".metadata").is_file():
            raise FtcoreError(f"{folder} has no FSDP state ({STATE_DIR}/)", where="--resume", hint="resume it with the strategy it was trained with")
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=self._state_options())
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=str(folder / STATE_DIR))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=self._state_options(strict=False))  # the frozen base is not in it: it came from model.path
        saved = torch.load(folder / SCHEDULER_FILE, map_location="cpu", weights_only=True)
        self.scheduler.load_state_dict(saved["scheduler"])
