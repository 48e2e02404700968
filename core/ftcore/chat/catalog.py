"""What ``ftcore serve`` serves: one model, or a base model with named adapters on it
(``--adapter NAME=PATH``), each with its own chat template, system prompt and stop words.

The adapters are loaded once into one peft model (``load_adapter`` under internal names), so
requests for different adapters share the base weights and decode in the same batch (peft's
per-row ``adapter_names``). An adapter trained on another base is refused before anything loads,
naming both; one whose weights do not fit the base is refused when it loads.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import FtcoreError
from .batching import BASE_ROW
from .generate import ChatModel
from .resolve import AdapterInfo, ChatPlan, _saved_keys, is_adapter_dir, load_chat_model, model_config, plan_chat, read_adapter

#: config.json fields that two checkpoints of the same base model share
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")
NAME = re.compile(r"^[^\s=]+$")


@dataclass
class Served:
    """One name a client can ask for: its ChatModel (shared weights; its own template, system
    prompt and name) and the peft adapter its rows use (None: the base, or the one model)."""

    name: str
    chat: ChatModel
    adapter: str | None = None


@dataclass
class Catalog:
    """The served names, in listing order; ``default`` answers a request that names none."""

    entries: dict[str, Served]
    default: str
    #: rows name their adapter (several adapters on one base)
    multi_adapter: bool = False

    @classmethod
    def single(cls, chat: ChatModel) -> "Catalog":
        return cls({chat.name: Served(chat.name, chat)}, chat.name)

    @property
    def model(self) -> Any:
        return self.entries[self.default].chat.model

    @property
    def first(self) -> ChatModel:
        return self.entries[self.default].chat

    def names(self) -> list[str]:
        return list(self.entries)


@dataclass
class CatalogPlan:
    """``ftcore serve BASE --adapter NAME=PATH ...`` checked, nothing loaded."""

    base: ChatPlan
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)
    #: the base's own template was given (--template) rather than borrowed to load it
    base_template: str | None = None


def split_adapter_options(values: tuple[str, ...] | list[str]) -> tuple[str | None, dict[str, str]]:
    """``--adapter`` values as (the one checkpoint of the single form, or None; NAME -> PATH).

    One value without ``=`` is the single form (the adapter alone is served, named after its
    folder); any ``NAME=PATH`` value, or several values, serve the base and each adapter (a value
    without a name is named after its folder).
    """
    values = list(values)
    if len(values) == 1 and "=" not in values[0]:
        return values[0], {}
    named: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).expanduser().resolve().name, value
        if not name or not path or not NAME.match(name):
            raise FtcoreError(f"--adapter {value!r}: give NAME=PATH, with a name of no spaces (e.g. --adapter medical=work_dirs/med/checkpoint-300)")
        if name in named:
            raise FtcoreError(f"--adapter: the name {name!r} is given twice ({named[name]} and {path})", hint="give each adapter its own name: --adapter NAME=PATH")
        named[name] = path
    return None, named


def _shape(path: str | Path) -> dict[str, Any]:
    config = model_config(path)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    return {k: (text or config).get(k, config.get(k)) for k in SHAPE_KEYS}


def check_base(name: str, info: AdapterInfo, base: str) -> None:
    """Refuse an adapter trained on another base than ``base``, naming both.

    The adapter's recorded base (recipe model.path, adapter_config base_model_name_or_path) must
    be the same folder, or a model of the same shape (a copy, or the same hub model downloaded);
    a recorded base that is not on this machine must at least have the same folder name.
    """
    served = Path(base).expanduser().resolve()
    recorded = [c for c in (info.model_path, info.base) if c]
    for candidate in recorded:
        path = Path(candidate).expanduser()
        if (path / "config.json").is_file():
            if path.resolve() == served or _shape(path) == _shape(served):
                return
            differ = [k for k in SHAPE_KEYS if _shape(path)[k] != _shape(served)[k]]
            detail = f"their config.json differ in {', '.join(differ)}"
            break
        if path.name.lower() == served.name.lower():
            return
    else:
        if not recorded:
            return  # nothing recorded: its weights are checked against the base when it loads
        detail = "neither the folder nor its name matches"
    raise FtcoreError(
        f"adapter {name!r} ({info.path}) was trained on {recorded[0]!r}, but this server serves the base {str(served)!r}: {detail}",
        hint="serve each adapter on the base it was trained on (one ftcore serve per base model)",
    )


def plan_catalog(parts: Any, base: str, adapters: dict[str, str], *, builder: str | None = None, template: str | None = None,
                 system: str | None = None, bits: int | None = None, trust_remote_code: bool = False) -> CatalogPlan:
    """Check BASE, every adapter folder, that each was trained on BASE, and the template names (cheap)."""
    if is_adapter_dir(base):
        raise FtcoreError(f"{base!r} is an adapter folder; with --adapter NAME=PATH, MODEL is the base model the adapters were trained on",
                          hint="ftcore serve BASE --adapter NAME=PATH [--adapter NAME2=PATH2 ...]")
    infos = {name: read_adapter(path) for name, path in adapters.items()}
    base_name = Path(base).expanduser().resolve().name
    if base_name in infos:
        raise FtcoreError(f"--adapter: the name {base_name!r} is the base model's; give the adapter another name")
    for name, info in infos.items():
        check_base(name, info, base)
    borrowed = template or next((i.template for i in infos.values() if i.template), None)
    plan = plan_chat(parts, base, builder=builder, template=borrowed, system=system, bits=bits, trust_remote_code=trust_remote_code)
    for info in infos.values():
        if info.template:
            parts.templates.part(info.template)
    return CatalogPlan(base=plan, adapters=infos, base_template=template)


def load_catalog(parts: Any, plan: CatalogPlan, warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> Catalog:
    """Load the base once, every adapter into it, and a ChatModel per served name."""
    from peft import PeftModel, get_peft_model_state_dict

    base = load_chat_model(parts, plan.base, warn=warn)
    tokenizer = base.tokenizer
    base_served = bool(plan.base_template or getattr(tokenizer, "chat_template", None))
    base_template = parts.templates.get(plan.base_template) if plan.base_template else (parts.templates.get("hf") if base_served else base.template)
    entries: dict[str, Served] = {}
    if base_served:
        entries[base.name] = Served(base.name, replace(base, template=base_template), BASE_ROW)
    else:
        warn(f"note: the base model {base.name} is not served on its own: it has no chat template (pass --template NAME to serve it too)")
    model = base.model
    for i, (name, info) in enumerate(plan.adapters.items()):
        internal = f"adapter_{i}"
        hint = f"adapter {name!r} must be served on the base model it was trained on (it records {info.model_path or info.base!r}; this server serves {plan.base.model_path!r})"
        try:
            if i == 0:
                model = PeftModel.from_pretrained(model, str(info.path), adapter_name=internal, is_trainable=False)
            else:
                model.load_adapter(str(info.path), adapter_name=internal, is_trainable=False)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
            raise FtcoreError(f"adapter {name!r} ({info.path}) does not fit the base {plan.base.model_path!r}: {detail[:600]}", hint=hint) from None
        saved = {k.replace(f".{internal}.", ".") for k in _saved_keys(info.weights)}
        expected = {k for k in get_peft_model_state_dict(model, adapter_name=internal).keys()}
        if saved != expected:
            extra = sorted(saved - expected) or sorted(expected - saved)
            raise FtcoreError(f"adapter {name!r} ({info.path}) does not fit the base {plan.base.model_path!r}: its weights and the base's layers differ (e.g. {extra[0]})", hint=hint)
        template = parts.templates.get(info.template) if info.template else base_template
        system = info.system if info.system is not None else plan.base.system
        entries[name] = Served(name, ChatModel(model=model, tokenizer=tokenizer, template=template, system=system, name=name), internal)
    model.eval()
    for served in entries.values():
        served.chat.model = model
    return Catalog(entries, default=next(iter(entries)), multi_adapter=True)
