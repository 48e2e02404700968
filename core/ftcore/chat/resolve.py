"""What to chat with: MODEL and ``--adapter`` resolved into a :class:`ChatPlan` (adapter folders,
whose training checkpoint says how they were trained; the builder, base model, template and
device), checked before anything heavy is loaded, then loaded as a ``ChatModel``.
(``ftcore.models.loading`` is the other loader: a base model for training.)

An adapter folder's ``recipe.yaml`` names the builder, base model, template and system
prompt; PEFT's ``adapter_config.json`` names the base model (``base_model_name_or_path``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import FtcoreError
from .generate import ChatModel

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


# --------------------------------------------------------------------------- adapters


@dataclass
class AdapterInfo:
    """What an adapter folder says about how it was trained."""

    path: Path
    #: ``base_model_name_or_path`` of adapter_config.json
    base: str | None = None
    #: model.builder / model.path of recipe.yaml (when present)
    builder: str | None = None
    model_path: str | None = None
    #: recipe.yaml's model.trust_remote_code: the adapter *asks* for the base's own code; only the
    #: user's --trust-remote-code grants it
    asks_remote_code: bool = False
    #: data.template / data.system of recipe.yaml (when present)
    template: str | None = None
    system: str | None = None
    has_recipe: bool = False

    @property
    def weights(self) -> Path:
        return next(self.path / n for n in ADAPTER_WEIGHTS if (self.path / n).is_file())


def read_adapter(path: str | Path) -> AdapterInfo:
    """Read an adapter folder, or say clearly what is missing from it."""
    p = Path(path).expanduser()
    hint = "give a checkpoint folder of a LoRA/QLoRA run (work_dir/checkpoint-N), which holds adapter_config.json and adapter_model.safetensors"
    if not p.is_dir():
        raise FtcoreError(f"adapter folder {str(path)!r} does not exist", hint=hint)
    config = p / "adapter_config.json"
    if not config.is_file():
        extra = " (it holds a full model, which needs no adapter: use it as MODEL)" if (p / "config.json").is_file() else ""
        raise FtcoreError(f"adapter folder {str(path)!r} has no adapter_config.json{extra}", hint=hint)
    if not any((p / n).is_file() for n in ADAPTER_WEIGHTS):
        raise FtcoreError(f"adapter folder {str(path)!r} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})", hint=hint)
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FtcoreError(f"cannot read adapter_config.json: {exc}", where=str(config)) from None
    info = AdapterInfo(path=p, base=cfg.get("base_model_name_or_path") or None)
    recipe = p / "recipe.yaml"
    if recipe.is_file():
        import yaml

        try:
            data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise FtcoreError(f"cannot read the adapter's recipe: {exc}", where=str(recipe)) from None
        model = data.get("model") or {}
        dataset = data.get("data") or {}
        info.has_recipe = True
        info.builder = model.get("builder")
        info.model_path = model.get("path")
        info.asks_remote_code = model.get("trust_remote_code") is True
        info.template = dataset.get("template")
        info.system = dataset.get("system")
    return info


def recorded_builder(path: str | Path) -> str | None:
    """The ``model.builder`` a training folder's ``recipe.yaml`` names (a checkpoint's or a work
    dir's), or None when there is none to read (cheap: no adapter files needed)."""
    import yaml

    recipe = Path(path).expanduser() / "recipe.yaml"
    try:
        data = yaml.safe_load(recipe.read_text(encoding="utf-8")) if recipe.is_file() else None
    except (OSError, yaml.YAMLError):
        return None  # read_adapter reports an unreadable recipe where it matters
    model = data.get("model") if isinstance(data, dict) else None
    name = model.get("builder") if isinstance(model, dict) else None
    return name if isinstance(name, str) and name else None


def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def base_of(info: AdapterInfo) -> str:
    """The base model an adapter was trained on (recipe model.path, else adapter_config's)."""
    for candidate in (info.model_path, info.base):
        if candidate and (Path(candidate).expanduser() / "config.json").is_file():
            return str(candidate)
    recorded = [f"{name} {value!r}" for name, value in (("recipe.yaml model.path", info.model_path), ("adapter_config.json base_model_name_or_path", info.base)) if value]
    raise FtcoreError(
        f"cannot find the base model of the adapter in {info.path}: "
        + (f"it records {' and '.join(recorded)}, and no model folder is there" if recorded else "it records none")
        + (f" (relative paths are read from {Path.cwd()})" if any(v and not Path(v).is_absolute() for v in (info.model_path, info.base)) else ""),
        hint="name the base model folder explicitly: ftcore chat BASE --adapter ADAPTER (or ftcore serve BASE --adapter ADAPTER, ftcore merge BASE ADAPTER OUT)",
    )


def tokenizer_folder(model_path: str, info: AdapterInfo | None) -> str:
    """Where to load the tokenizer from: the base model, else the adapter checkpoint (which saves the training tokenizer)."""
    from ..models.hf import has_tokenizer

    if info is not None and not has_tokenizer(model_path) and has_tokenizer(info.path):
        return str(info.path)
    return model_path


def attach_adapter(model: Any, info: AdapterInfo) -> Any:
    """``model`` wrapped in the adapter (PEFT), checking that every saved weight found its place."""
    from peft import PeftModel, get_peft_model_state_dict

    hint = f"the adapter must be loaded onto the base model it was trained on (adapter_config.json says {info.base!r})"
    try:
        peft_model = PeftModel.from_pretrained(model, str(info.path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise FtcoreError(f"the adapter in {info.path} does not fit this base model: {detail[:600]}", hint=hint) from None
    saved = set(_saved_keys(info.weights))
    expected = set(get_peft_model_state_dict(peft_model).keys())
    unexpected, missing = sorted(saved - expected), sorted(expected - saved)
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} adapter weight(s) have no place in this model (e.g. {unexpected[0]})")
        if missing:
            parts.append(f"{len(missing)} adapter weight(s) this model expects are not in the adapter (e.g. {missing[0]})")
        raise FtcoreError(f"the adapter in {info.path} does not fit this base model: {'; '.join(parts)}", hint=hint)
    return peft_model


def _saved_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    import torch

    return list(torch.load(str(path), map_location="cpu", weights_only=True).keys())


# --------------------------------------------------------------------------- choosing parts


def model_config(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def builder_name(parts: Any, name: str | None, model_path: str | Path, adapter: AdapterInfo | None = None) -> str:
    """The builder to load with: ``--builder``, else the adapter's recipe's, else one named
    after the checkpoint's ``model_type`` (e.g. ``internlm2``), else ``hf``. Checked, not loaded."""
    if not name and adapter is not None and adapter.builder:
        name = adapter.builder
    if not name:
        model_type = model_config(model_path).get("model_type")
        name = model_type if model_type and model_type in parts.models else "hf"
    parts.models.part(name)  # an unknown name: an error with "did you mean"
    return name


def resolve_builder(parts: Any, name: str | None, model_path: str | Path, adapter: AdapterInfo | None = None) -> tuple[str, Any]:
    """(name, builder object) as :func:`builder_name` chooses."""
    chosen = builder_name(parts, name, model_path, adapter)
    return chosen, parts.models.get(chosen)


def resolve_template(
    parts: Any,
    name: str | None,
    adapter: AdapterInfo | None,
    tokenizer: Any,
    warn: Callable[[str], None] = lambda message: None,
) -> Any:
    """The chat template: ``--template`` when given (warning when the adapter was trained with
    another), else the adapter's training template, else the tokenizer's own chat_template
    (``hf``); otherwise an error asking for ``--template``."""
    trained = adapter.template if adapter is not None else None
    if name:
        if trained and trained != name:
            warn(f"warning: the adapter was trained with template {trained!r}, but --template is {name!r}; answers may be poor")
        return parts.templates.get(name)
    if trained:
        return parts.templates.get(trained)
    if getattr(tokenizer, "chat_template", None):
        return parts.templates.get("hf")
    raise FtcoreError(
        "cannot tell which chat template to use: the model's tokenizer has no chat_template and no adapter recipe names one",
        hint="pass --template NAME (see `ftcore list templates`)",
    )


def pick_device(requested: str = "auto") -> Any:
    import torch

    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ChatPlan:
    """What ``load_chat_model`` will load, checked before anything heavy is imported."""

    model_path: str
    adapter: AdapterInfo | None
    builder: str
    template: str | None
    system: str | None
    bits: int | None = None
    #: the user's --trust-remote-code: the base model's own Python code may run
    trust_remote_code: bool = False


def plan_chat(
    parts: Any,
    model_path: str,
    *,
    adapter: str | None = None,
    builder: str | None = None,
    template: str | None = None,
    system: str | None = None,
    bits: int | None = None,
    trust_remote_code: bool = False,
) -> ChatPlan:
    """Check the model folder, adapter files, builder and template names (cheap; no torch).

    MODEL may itself be an adapter folder: its base then comes from its recipe or adapter_config.
    """
    info = None
    if adapter is None and is_adapter_dir(model_path):
        info = read_adapter(model_path)
        model_path = base_of(info)
    elif adapter is not None:
        info = read_adapter(adapter)
    p = Path(model_path).expanduser()
    if not (p / "config.json").is_file():
        raise FtcoreError(
            f"model folder {model_path!r} {'has no config.json' if p.is_dir() else 'does not exist'}",
            hint="give a local checkpoint folder (config.json, *.safetensors, tokenizer files), or an adapter checkpoint folder",
        )
    chosen = builder_name(parts, builder, model_path, info)
    for name in (template, info.template if info is not None else None):
        if name:
            parts.templates.part(name)
    if system is None and info is not None:
        system = info.system
    return ChatPlan(model_path=str(model_path), adapter=info, builder=chosen, template=template, system=system, bits=bits, trust_remote_code=trust_remote_code)


def load_chat_model(
    parts: Any,
    model_path: str | ChatPlan,
    *,
    adapter: str | None = None,
    builder: str | None = None,
    template: str | None = None,
    system: str | None = None,
    bits: int | None = None,
    device: str = "auto",
    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> ChatModel:
    """Load MODEL (and ``adapter``) through the registered builder, ready to chat
    (``model_path`` may be a :class:`ChatPlan` made by :func:`plan_chat`)."""
    import torch

    from ..models.loading import quantization_config

    plan = model_path if isinstance(model_path, ChatPlan) else plan_chat(
        parts, model_path, adapter=adapter, builder=builder, template=template, system=system, bits=bits
    )
    info = plan.adapter
    build = parts.models.get(plan.builder)
    trust = plan.trust_remote_code
    if info is not None and info.asks_remote_code and not trust:
        warn(f"note: {info.path / 'recipe.yaml'} asks for the base model's own Python code (model.trust_remote_code: true); "
             "it does not run unless you pass --trust-remote-code")
    tokenizer = build.load_tokenizer(tokenizer_folder(plan.model_path, info), trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    chat_template = resolve_template(parts, plan.template, info, tokenizer, warn)
    dev = pick_device(device)
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust}
    if plan.bits:
        kwargs["quantization_config"] = quantization_config({4: "nf4", 8: "int8"}[plan.bits], True, dtype)
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    model = build.load_model(plan.model_path, **kwargs)
    if not plan.bits:
        model.to(dev)
    if info is not None:
        model = attach_adapter(model, info)
    model.eval()
    name = (info.path if info is not None else Path(plan.model_path)).expanduser().resolve().name
    return ChatModel(model=model, tokenizer=tokenizer, template=chat_template, system=plan.system, name=name or plan.builder)
