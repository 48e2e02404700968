"""The model-builder base class: how a recipe's ``model`` section becomes a tokenizer, a model and a training plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .plan import TrainingPlan


class ModelBuilder:
    """Base class of a registered model builder; override what your model family needs.

    ``load_tokenizer`` and ``load_model`` are required. ``load_model`` receives ordinary
    ``from_pretrained`` keyword arguments prepared by the core (``dtype``,
    ``quantization_config``, ``attn_implementation``, ``device_map``, ``trust_remote_code``)
    and returns a transformers ``PreTrainedModel``; when an objective needs another head
    (a reward model: ``head="sequence_classification"``, one score, see ``ftcore.api.HEADS``)
    it receives ``head`` too. Every other method has a default that
    suits a plain causal LM.
    """

    def load_tokenizer(self, path: str, trust_remote_code: bool = False) -> Any:
        raise NotImplementedError

    def load_model(self, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def save(self, model: Any, out_dir: Path, max_shard_size: str = "2GB", layout: str = "native") -> None:
        """Write a (merged or fully fine-tuned) model as safetensors, in the builder's ``native``
        layout or, where it differs, Llama's (``layout="llama"``)."""
        model.save_pretrained(str(out_dir), max_shard_size=max_shard_size, safe_serialization=True)

    def configure(self, model_cfg: dict[str, Any], parts: Any) -> "ModelBuilder":
        """The builder for one run's ``model`` section.

        A builder's options (``model.*`` keys it adds to the recipe) are this method's typed
        keyword arguments after ``parts``, with real defaults where they are optional:
        ``def configure(self, model_cfg, parts, *, layers: Annotated[int | None, Option("...", ge=1)] = None)``.
        The validator checks them from the signature; the run calls ``configure`` with the checked
        values and uses the builder it returns (the registered object stays unbound).
        """
        return self

    def data_key(self) -> str:
        """What besides the recipe's data section shapes processed data (part of the cache key)."""
        return ""

    def prepare_for_training(self, model: Any, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], adapter: Any) -> TrainingPlan:
        """Adapters, freezing and the speed levers: the core's :data:`ftcore.models.plan.TRANSFORMS`.
        ``adapter`` is the run's adapter kind (:class:`ftcore.models.adapters.AdapterKind`), made
        with its options; apply it with ``adapter.apply(model, adapter_cfg)``."""
        from .plan import prepare_for_training

        return prepare_for_training(model, model_cfg, adapter_cfg, adapter)

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A collated batch as the model takes it (e.g. image paths -> ``pixel_values``)."""
        return batch

    def chat_model(self, model: Any, tokenizer: Any, template: Any, system: str | None = None) -> Any:
        """A :class:`~ftcore.chat.generate.ChatModel` answering with ``model`` as it trains (the
        ``evaluate_chat`` hook); a builder whose model takes images returns one that reads them."""
        from ..chat.generate import ChatModel

        return ChatModel(model=model, tokenizer=tokenizer, template=template, system=system)

    def next_steps(self, base: str, checkpoint: Path) -> list[str] | None:
        """Commands a finished run suggests for its last checkpoint (None: the core's ``chat``/``merge``)."""
        return None

    def merge_command(self, base: str, checkpoint: Path, out: str) -> str | None:
        """The command that writes ``checkpoint`` (a checkpoint or work dir of a run with this builder)
        as a standalone model at ``out``, when ``ftcore merge BASE CHECKPOINT OUT`` cannot: its
        checkpoints are not one PEFT adapter (e.g. a vision tower and a projector beside the LLM's
        adapter). ``ftcore merge`` then refuses, before loading anything, and names this command.
        None (the default): ``ftcore merge`` merges them. Called on the registered (unconfigured) builder."""
        return None

    def save_checkpoint(self, model: Any, folder: Path) -> None:
        """The trained weights into a checkpoint folder: an adapter in PEFT's layout, or the full model."""
        model.save_pretrained(str(folder), safe_serialization=True)

    def load_checkpoint(self, model: Any, folder: Path) -> None:
        """Put what :meth:`save_checkpoint` wrote back into ``model`` (resume)."""
        from .checkpoint_weights import load_trained_weights

        load_trained_weights(model, folder)
