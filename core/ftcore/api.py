"""ftcore's public API for plugins: every type and helper a plugin needs, and nothing else.

Plugins import from here only (``from ftcore.api import hookimpl, ModelBuilder, ...``); what
is not listed may change between releases. Names are imported on first use, so importing
this module stays instant (``ftcore --help`` and ``ftcore list`` load every plugin).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module it lives in (inside the ``ftcore`` package)
_EXPORTS: dict[str, str] = {
    # hooks and errors
    "hookimpl": "", "FtcoreError": ".errors", "ValidationError": ".errors", "Problem": ".errors",
    # recipe options: a part's options are its constructor's keyword arguments, typed Annotated[type, Option(...)]
    "Option": ".options", "Field": ".recipe", "F": ".recipe", "NAME": ".recipe", "REQUIRED": ".recipe", "deep_merge": ".recipe",
    "yaml_files": ".parts",
    # part base classes and what they are handed
    "ModelBuilder": ".models.builder", "HFBuilder": ".models.hf", "TrainingPlan": ".models.plan", "finish_plan": ".models.plan", "IGNORE": ".data",
    "lora_targets": ".models.loading", "decoder_layers": ".models.loading", "HEADS": ".models.hf", "install_loss_head": ".models.loss_head",
    "AdapterKind": ".models.adapters", "LoRA": ".models.adapters", "adam_kwargs": ".train.optim",
    "Strategy": ".train.strategy", "SingleStrategy": ".train.strategy", "DDPStrategy": ".train.strategy",
    "TrainingHook": ".train.hooks", "RunContext": ".train.context",
    "Objective": ".train.objective", "SFT": ".train.objective", "send_to_device": ".models.transfer",
    "DatasetFormat": ".data.formats", "RecordError": ".data.formats", "require": ".data.formats", "Message": ".data.formats",
    "sample_turns": ".data.formats", "sample_messages": ".data.formats", "sample_extras": ".data.formats",
    "load_records": ".data.load", "write_records": ".data.files",
    "encode_batch": ".data.encode", "pack": ".data.pack", "collate_rows": ".data.collate", "expand_pairs": ".data.pairs",
    "PromptTemplate": ".data.template",
    # checkpoints
    "latest_checkpoint": ".train.checkpoint", "list_checkpoints": ".train.checkpoint",
    # chat and generation (for plugins that add chat or serve behaviour: a chat backend)
    "ChatModel": ".chat.generate", "Generation": ".chat.generate", "Sampling": ".chat.generate", "prompt_ids": ".chat.generate", "stop_token_ids": ".chat.generate", "template_to_jinja": ".chat.merge",
    "ChatBackend": ".chat.backends", "ChatArgs": ".chat.backends", "add_chat_backend": ".chat.backends", "DTYPES": ".models.loading",
    # for scripts and notebooks (a plugin gets the parts from its caller)
    "installed_parts": ".app",
    # making data and tiny models for tests and quickstarts
    "self_cognition_records": ".data.self_cognition", "make_tiny_causal_lm": ".models.tiny", "make_tokenizer": ".models.tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"ftcore.api has no {name!r} (public names: {', '.join(__all__)})")
    value = getattr(importlib.import_module(_EXPORTS[name] or ".", "ftcore"), name)
    globals()[name] = value
    return value
