"""The ``llava`` model builder: CLIP vision tower + projector + any registered LLM builder.

``model.path`` is the LLM (loaded by ``model.llm_builder``, quantized as ``model.quantization``
says); ``model.visual_encoder`` the CLIP folder. The ``adapter`` section is the LLM's adapter;
``model.visual_encoder_lora`` puts LoRA on the vision tower; the projector always trains.
Checkpoints hold ``llm_adapter/`` and ``visual_encoder_adapter/`` (PEFT layout),
``projector/`` (config.json + model.safetensors), or ``llm/`` / ``visual_encoder/`` (HF
layout) for a part trained fully.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ftcore.api import NAME, F, FtcoreError, ModelBuilder, Option, TrainingPlan

from .data import IMAGE_TOKEN, load_image_processor, pixel_values, resolve_image, use_image_folder

#: ``model.visual_encoder_lora`` keys: the vision tower's LoRA.
VISION_LORA = {
    "r": F(int, 64, "LoRA rank", ge=1),
    "alpha": F(float, 16, "LoRA alpha", gt=0),
    "dropout": F(float, 0.05, "LoRA dropout (a probability)", ge=0, lt=1),
    "targets": F((str, list), "all-linear", "'all-linear' or module names", items=NAME, min_len=1, pattern=NAME.pattern),
}

VISION_LORA_DEFAULTS = {key: spec.default for key, spec in VISION_LORA.items()}
LLM_ADAPTER, VISION_ADAPTER, PROJECTOR, LLM_FULL, VISION_FULL = "llm_adapter", "visual_encoder_adapter", "projector", "llm", "visual_encoder"


def resolve_projector(path: str | Path) -> Path:
    """A projector folder from ``path``: the folder itself, ``path/projector``, or the latest checkpoint's."""
    from ftcore.api import latest_checkpoint

    p = Path(path).expanduser()
    for candidate in (p, p / PROJECTOR):
        if (candidate / "model.safetensors").is_file() and (candidate / "config.json").is_file():
            return candidate
    latest = latest_checkpoint(p) if p.is_dir() else None
    if latest is not None and (latest / PROJECTOR / "model.safetensors").is_file():
        return latest / PROJECTOR
    raise FtcoreError(
        f"no pretrained projector in {str(path)!r}",
        where="model.projector",
        hint="point it at the pretraining run's work dir, one of its checkpoint-N folders, or a projector/ folder",
    )


def vision_lora_config(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    unknown = set(value) - set(VISION_LORA_DEFAULTS)
    if unknown:
        raise FtcoreError(f"unknown key(s) {', '.join(sorted(unknown))}", where="model.visual_encoder_lora", hint=f"known keys: {', '.join(VISION_LORA_DEFAULTS)}")
    return {**VISION_LORA_DEFAULTS, **value}


def describe_training(llm_adapter: str | None, llm_full: bool, vision_lora: dict[str, Any] | None, vision_full: bool) -> str:
    """What trains, for the run's log: e.g. "projector; LLM and vision tower frozen" (stage 1)."""
    trained, frozen = ["projector"], []
    if llm_adapter:
        trained.append(f"{llm_adapter} on the LLM")
    elif llm_full:
        trained.append("the whole LLM")
    else:
        frozen.append("LLM")
    if vision_lora:
        trained.append(f"LoRA r {vision_lora['r']} on the vision tower")
    elif vision_full:
        trained.append("the whole vision tower")
    else:
        frozen.append("vision tower")
    return ", ".join(trained) + (f"; {' and '.join(frozen)} frozen" if frozen else "")


class LlavaBuilder(ModelBuilder):
    """Builds a :class:`~ftcore_llava.model.LlavaModel`; ``configure`` binds it to a recipe's model section."""

    def __init__(self, cfg: dict[str, Any] | None = None, llm_builder: Any = None) -> None:
        self.cfg = cfg
        self.llm_builder = llm_builder
        self.tokenizer: Any = None
        self.image_token_id: int | None = None
        self._processor: Any = None
        self._num_image_tokens: int | None = None
        #: an image the run trained on (the closing hint's ``--image``)
        self.example_image: Path | None = None

    # -- binding to a recipe -------------------------------------------------------

    def configure(
        self,
        model_cfg: dict[str, Any],
        parts: Any,
        *,
        visual_encoder: Annotated[str, Option("CLIP checkpoint folder (CLIPVisionModel weights + preprocessor_config.json)", is_path=True)],
        llm_builder: Annotated[str, Option("builder that loads the LLM at model.path (internlm2, hf, ...)", registry="models")] = "internlm2",
        image_folder: Annotated[str | None, Option("folder the records' image paths are relative to (default: the current directory)", is_path=True)] = None,
        projector: Annotated[str | None, Option("a pretrained projector to start from: a projector/ folder, a checkpoint holding one, or a work dir (its latest checkpoint)", is_path=True)] = None,
        pad_image_to_square: Annotated[bool, Option("pad images to a square with the image processor's mean colour before resizing")] = True,
        visual_select_layer: Annotated[int, Option("vision layer whose patch features feed the projector, counted from the last (-1; CLS token dropped)", le=-1)] = -2,
        projector_depth: Annotated[int, Option("linear layers in the projector (GELU between them)", ge=1)] = 2,
        freeze_llm: Annotated[bool, Option("keep the LLM's own weights frozen (its LoRA, if any, still trains)")] = True,
        llm_lora: Annotated[bool, Option("put the adapter section's LoRA on the LLM (false: no LLM adapter, e.g. for pretraining the projector)")] = True,
        freeze_visual_encoder: Annotated[bool, Option("keep the vision tower's own weights frozen (its LoRA, if any, still trains)")] = True,
        visual_encoder_lora: Annotated[dict | None, Option("LoRA on the vision tower: {r, alpha, dropout, targets}; none for no vision LoRA", keys=VISION_LORA)] = None,
    ) -> "LlavaBuilder":
        """A builder for this run's ``model`` section (the registered object stays unbound); the
        keyword arguments are the ``model.*`` keys this builder adds to the recipe."""
        options = {k: v for k, v in locals().items() if k not in ("self", "model_cfg", "parts")}
        model_cfg = {**model_cfg, **options}
        if model_cfg.get("llm_builder") == "llava":
            raise FtcoreError("the LLM of a llava model cannot itself be llava", where="model.llm_builder")
        vision = Path(model_cfg["visual_encoder"]).expanduser()
        if not (vision / "config.json").is_file():
            raise FtcoreError(f"vision tower folder {str(vision)!r} has no config.json", where="model.visual_encoder", hint="download a CLIP checkpoint (e.g. openai/clip-vit-large-patch14-336) to that folder")
        if model_cfg.get("image_folder") and not Path(model_cfg["image_folder"]).expanduser().is_dir():
            raise FtcoreError(f"image folder {model_cfg['image_folder']!r} does not exist", where="model.image_folder")
        cfg = dict(model_cfg)
        cfg["visual_encoder_lora"] = vision_lora_config(cfg.get("visual_encoder_lora"))
        use_image_folder(cfg.get("image_folder"))  # the llava format checks images against it
        return LlavaBuilder(cfg, parts.models.get(cfg["llm_builder"]))

    def data_key(self) -> str:
        """What else shapes the processed data: the image folder the records' paths resolve in."""
        return str(Path(self._require_cfg().get("image_folder") or ".").expanduser().resolve())

    def _require_cfg(self) -> dict[str, Any]:
        if self.cfg is None:
            raise FtcoreError("the llava builder must be configured with a recipe's model section first (LlavaBuilder.configure)")
        return self.cfg

    # -- the protocol ------------------------------------------------------------------

    def load_tokenizer(self, path: str, trust_remote_code: bool = False) -> Any:
        """The LLM's tokenizer with ``<image>`` added as a special token."""
        from tokenizers import AddedToken

        self._require_cfg()
        tok = self.llm_builder.load_tokenizer(path, trust_remote_code=trust_remote_code)
        if IMAGE_TOKEN not in tok.get_vocab():
            tok.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        self.tokenizer = tok
        self.image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        return tok

    def load_model(self, path: str, **kwargs: Any) -> Any:
        """The LLM (through ``model.llm_builder``), the CLIP vision tower and the projector."""
        import torch
        from transformers import CLIPVisionModel

        from .model import LlavaModel, Projector

        cfg = self._require_cfg()
        if self.image_token_id is None:
            self.load_tokenizer(cfg.get("tokenizer_path") or path, trust_remote_code=kwargs.get("trust_remote_code", False))
        llm = self.llm_builder.load_model(path, **kwargs)
        dtype = kwargs.get("dtype") or torch.float32
        vision = CLIPVisionModel.from_pretrained(str(Path(cfg["visual_encoder"]).expanduser()), dtype=dtype)
        projector = Projector(vision.config.hidden_size, llm.config.hidden_size, depth=cfg.get("projector_depth", 2))
        if cfg.get("projector"):
            projector.load_weights(resolve_projector(cfg["projector"]))
        device = next(llm.parameters()).device
        vision.to(device)
        projector.to(device)
        return LlavaModel(llm, vision, projector, self.image_token_id, select_layer=cfg.get("visual_select_layer", -2))

    def prepare_for_training(self, model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], adapter: Any) -> TrainingPlan:
        """Freeze flags, the run's adapter kind (LoRA, QLoRA, DoRA, ...) on the LLM, LoRA on the vision
        tower, a trainable projector; batches stay padded rows (images expand each row's ``<image>`` token)."""
        from peft import LoraConfig, get_peft_model

        from ftcore.api import finish_plan, lora_targets

        cfg = self._require_cfg()
        llm, vision = model.llm, model.visual_encoder
        quantized = model_cfg["quantization"] != "none"
        checkpointing = model_cfg["gradient_checkpointing"]
        llm_lora = bool(cfg["llm_lora"]) and not adapter.trains_base
        if quantized and not llm_lora and not cfg["freeze_llm"]:
            raise FtcoreError("a quantized LLM cannot be trained fully", where="model.freeze_llm", hint="set model.freeze_llm=true, or model.quantization=none")
        if model_cfg.get("chunked_loss", True):
            from ftcore.api import install_loss_head

            install_loss_head(llm)
        if quantized:
            from peft import prepare_model_for_kbit_training

            llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            llm.requires_grad_(not cfg["freeze_llm"] and not llm_lora)
            if checkpointing:
                llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if llm_lora:
            llm = adapter.apply(llm, adapter_cfg)
        vlora = cfg["visual_encoder_lora"]
        vision.requires_grad_(not cfg["freeze_visual_encoder"] and not vlora)
        if vlora:
            if checkpointing:
                vision.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            vision = get_peft_model(vision, LoraConfig(r=vlora["r"], lora_alpha=vlora["alpha"], lora_dropout=vlora["dropout"], target_modules=lora_targets(vision, vlora["targets"])))
        model.projector.requires_grad_(True)
        model.llm, model.visual_encoder = llm, vision
        trains = describe_training(adapter_cfg["kind"] if llm_lora else None, not cfg["freeze_llm"], vlora, not cfg["freeze_visual_encoder"])
        return finish_plan(TrainingPlan(model, adapter=adapter, trains=trains), flat=False)

    # -- chat during and after training ------------------------------------------------

    def chat_model(self, model: Any, tokenizer: Any, template: Any, system: str | None = None) -> Any:
        """A :class:`~ftcore_llava.chat.LlavaChat` on the model as it trains: ``evaluate_chat``
        prompts with ``image:`` are answered about that image."""
        from .chat import LlavaChat

        cfg = self._require_cfg()
        return LlavaChat(model=model, tokenizer=tokenizer, template=template, system=system, processor=self.processor,
                         pad_to_square=bool(cfg.get("pad_image_to_square", True)))

    def next_steps(self, base: str, checkpoint: Path) -> list[str]:
        """Chat about an image with the checkpoint, and export it to transformers' LLaVA layout."""
        image = self.example_image or "IMAGE.jpg"  # the vision tower: the one the checkpoint's recipe.yaml records
        return [f"ftcore chat {base} --llava {checkpoint} --image {image}",
                f"ftcore llava export {checkpoint} {Path(checkpoint).parent / 'hf'}"]

    def merge_command(self, base: str, checkpoint: Path, out: str) -> str:
        """``ftcore merge`` cannot merge a llava checkpoint (a vision tower and a projector beside the
        LLM's adapter): ``ftcore llava export`` writes it as transformers' LLaVA model (``--llm BASE``
        when BASE is a model folder other than the LLM the checkpoint's recipe.yaml records)."""
        import shlex

        from .chat import read_recipe

        recorded = (read_recipe(Path(checkpoint)).get("model") or {}).get("path")
        llm = Path(base).expanduser()
        other = (llm / "config.json").is_file() and not (recorded and Path(recorded).expanduser().resolve() == llm.resolve())
        return shlex.join(["ftcore", "llava", "export", str(checkpoint), str(out), *(["--llm", str(base)] if other else [])])

    # -- batches -----------------------------------------------------------------------

    @property
    def processor(self) -> Any:
        if self._processor is None:
            self._processor = load_image_processor(Path(self._require_cfg()["visual_encoder"]).expanduser())
        return self._processor

    @property
    def num_image_tokens(self) -> int:
        if self._num_image_tokens is None:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(str(Path(self._require_cfg()["visual_encoder"]).expanduser()))
            vision = getattr(cfg, "vision_config", cfg)
            self._num_image_tokens = (vision.image_size // vision.patch_size) ** 2
        return self._num_image_tokens

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Images -> ``pixel_values``; each ``<image>`` token becomes one slot per image patch.

        Labels at image slots are -100 and position ids are renumbered inside each sample,
        so ``labels`` line up with the sequence the LLM sees.
        """
        import torch

        from .model import expand_image_tokens

        cfg = self._require_cfg()
        images = batch.pop("image", None)
        ids, labels, positions = (batch[k].numpy() for k in ("input_ids", "labels", "position_ids"))
        n = self.num_image_tokens
        rows, paths = [], []
        for r in range(len(ids)):
            row_images = [p for p in (images[r] if images is not None else []) if p]
            found = int((ids[r] == self.image_token_id).sum())
            if found != len(row_images):
                raise FtcoreError(
                    f"a batch row has {found} {IMAGE_TOKEN} token(s) for {len(row_images)} image(s)",
                    hint="a sample was probably cut inside its prompt by data.max_length; raise it",
                )
            paths += [resolve_image(p, cfg.get("image_folder")) for p in row_images]
            if self.example_image is None and paths:
                self.example_image = paths[0]
            rows.append(expand_image_tokens(ids[r], labels[r], positions[r], self.image_token_id, n) if found else (ids[r], labels[r], positions[r]))
        width = -(-max(len(r[0]) for r in rows) // 8) * 8
        pad_id = self.tokenizer.pad_token_id if self.tokenizer is not None and self.tokenizer.pad_token_id is not None else 0
        out = {k: np.empty((len(rows), width), dtype=np.int64) for k in ("input_ids", "labels", "position_ids")}
        for i, (row_ids, row_labels, row_pos) in enumerate(rows):
            k = len(row_ids)
            out["input_ids"][i] = np.concatenate([row_ids, np.full(width - k, pad_id)])
            out["labels"][i] = np.concatenate([row_labels, np.full(width - k, -100)])
            out["position_ids"][i] = np.concatenate([row_pos, np.arange(width - k)])
        batch.update({k: torch.from_numpy(v) for k, v in out.items()})
        if paths:
            batch["pixel_values"] = pixel_values(paths, self.processor, cfg.get("pad_image_to_square", True))
        return batch

    # -- checkpoints -------------------------------------------------------------------

    def save_checkpoint(self, model: Any, folder: Path) -> None:
        """``llm_adapter/``, ``visual_encoder_adapter/`` (PEFT), ``projector/``; ``llm/`` or ``visual_encoder/`` when trained fully."""
        from peft import PeftModel

        folder = Path(folder)
        for part, adapter_dir, full_dir in ((model.llm, LLM_ADAPTER, LLM_FULL), (model.visual_encoder, VISION_ADAPTER, VISION_FULL)):
            if isinstance(part, PeftModel):
                part.save_pretrained(str(folder / adapter_dir), safe_serialization=True)
            elif any(p.requires_grad for p in part.parameters()):
                part.save_pretrained(str(folder / full_dir), safe_serialization=True)
        model.projector.save_pretrained(folder / PROJECTOR)

    def load_checkpoint(self, model: Any, folder: Path) -> None:
        """Put the weights :meth:`save_checkpoint` wrote back into ``model``."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / PROJECTOR / "model.safetensors").is_file():
            raise FtcoreError(f"checkpoint {folder} has no {PROJECTOR}/ (it was not written by the llava builder)")
        for part, adapter_dir, full_dir in ((model.llm, LLM_ADAPTER, LLM_FULL), (model.visual_encoder, VISION_ADAPTER, VISION_FULL)):
            if (folder / adapter_dir / "adapter_model.safetensors").is_file():
                set_peft_model_state_dict(part, load_file(str(folder / adapter_dir / "adapter_model.safetensors")))
            elif (folder / full_dir).is_dir():
                from transformers.modeling_utils import load_sharded_checkpoint

                if (folder / full_dir / "model.safetensors").is_file():
                    part.load_state_dict(load_file(str(folder / full_dir / "model.safetensors")), strict=False)
                else:
                    load_sharded_checkpoint(part, str(folder / full_dir), strict=False)
        model.projector.load_state_dict(load_file(str(folder / PROJECTOR / "model.safetensors")))

    def save(self, model: Any, out_dir: Path, max_shard_size: str = "2GB", layout: str = "native") -> None:
        """The LLM and vision tower with their adapters merged (``llm/``, ``visual_encoder/``) and ``projector/``."""
        from peft import PeftModel

        out_dir = Path(out_dir)
        for part, name in ((model.llm, LLM_FULL), (model.visual_encoder, VISION_FULL)):
            merged = part.merge_and_unload() if isinstance(part, PeftModel) else part
            merged.save_pretrained(str(out_dir / name), max_shard_size=max_shard_size, safe_serialization=True)
        model.projector.save_pretrained(out_dir / PROJECTOR)
        (out_dir / "llava.json").write_text(json.dumps({"image_token": IMAGE_TOKEN, "visual_select_layer": model.select_layer}, indent=2))


build = LlavaBuilder()
